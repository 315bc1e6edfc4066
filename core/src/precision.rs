//! Acting with snapshots: an inference-only copy of a [`Network`] whose weights are stored as
//! f32, bf16 or f16 and read directly by the forward pass.
//!
//! The learner trains f32 master weights; actors act with a snapshot. A bf16/f16 snapshot
//! halves the memory and bandwidth of acting and of model storage. The acting path runs each
//! row on the calling thread with GEMV sweeps (no pool wake-up, no allocation: scratch buffers
//! are owned by the caller), which is what batch-1 acting wants.
//!
//! One semantic difference from training: the acting path has no expert capacity limit (every
//! token reaches its top-k experts). Capacity is a device for balanced batched training; at
//! inference a dropped token would only be a worse answer.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use half::{bf16, f16, slice::HalfFloatSliceExt};
use safetensors::tensor::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, Blob};
use crate::error::{CoreError, Result};
use crate::kernels;
use crate::network::{BlockConfig, HeadConfig, Network, NetworkConfig};
use crate::normalizer::ObsNormalizer;
use crate::param::Module;
use crate::tensor::Tensor;

/// Value of the `format` metadata key of a snapshot file.
pub const SNAPSHOT_FORMAT: &str = "autodidact-snapshot";

/// Storage precision of a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// 32-bit floats (exact copy of the master weights).
    F32,
    /// bfloat16: f32's range, 8 bits of mantissa.
    Bf16,
    /// IEEE half: 11 bits of mantissa, range to ±65504.
    F16,
}

/// A weight element type the acting path can read.
pub trait Weight: Copy + Default + Send + Sync + 'static {
    /// The safetensors dtype it is stored as.
    const DTYPE: Dtype;
    /// Which [`Precision`] this is.
    const PRECISION: Precision;
    /// Rounds an f32 to this type.
    fn from_f32(x: f32) -> Self;
    /// Widens to f32.
    fn to_f32(self) -> f32;
    /// Little-endian bytes of a slice.
    fn to_le_bytes(x: &[Self]) -> Vec<u8>;
    /// Parses little-endian bytes (length already checked to be a multiple of the size).
    fn from_le_bytes(b: &[u8]) -> Vec<Self>;
    /// `y += a · row`, widening `row` on the fly (`scratch` is at least `row.len()` long).
    fn axpy_row(a: f32, row: &[Self], y: &mut [f32], scratch: &mut [f32]);
}

impl Weight for f32 {
    const DTYPE: Dtype = Dtype::F32;
    const PRECISION: Precision = Precision::F32;
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn to_le_bytes(x: &[Self]) -> Vec<u8> {
        checkpoint::f32_bytes(x)
    }
    fn from_le_bytes(b: &[u8]) -> Vec<Self> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
    fn axpy_row(a: f32, row: &[Self], y: &mut [f32], _: &mut [f32]) {
        kernels::axpy(a, row, y);
    }
}

kernels::multiversion! {
    /// `y += a · row` for bf16 `row`: widening bf16 is a 16-bit shift, fused into the loop.
    fn axpy_bf16(a: f32, row: &[bf16], y: &mut [f32]) {
        for (yi, w) in y.iter_mut().zip(row) {
            *yi += a * f32::from_bits(u32::from(w.to_bits()) << 16);
        }
    }
}

impl Weight for bf16 {
    const DTYPE: Dtype = Dtype::BF16;
    const PRECISION: Precision = Precision::Bf16;
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn to_le_bytes(x: &[Self]) -> Vec<u8> {
        x.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect()
    }
    fn from_le_bytes(b: &[u8]) -> Vec<Self> {
        b.chunks_exact(2)
            .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])))
            .collect()
    }
    fn axpy_row(a: f32, row: &[Self], y: &mut [f32], _: &mut [f32]) {
        axpy_bf16(a, row, y);
    }
}

impl Weight for f16 {
    const DTYPE: Dtype = Dtype::F16;
    const PRECISION: Precision = Precision::F16;
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn to_le_bytes(x: &[Self]) -> Vec<u8> {
        x.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect()
    }
    fn from_le_bytes(b: &[u8]) -> Vec<Self> {
        b.chunks_exact(2)
            .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
            .collect()
    }
    fn axpy_row(a: f32, row: &[Self], y: &mut [f32], scratch: &mut [f32]) {
        // `half` converts slices with F16C when the CPU has it.
        let s = &mut scratch[..row.len()];
        row.convert_to_f32_slice(s);
        kernels::axpy(a, s, y);
    }
}

#[derive(Clone, Debug)]
struct Lin<W> {
    w: Vec<W>,
    b: Vec<f32>,
    d_in: usize,
    d_out: usize,
}

impl<W: Weight> Lin<W> {
    fn forward(&self, x: &[f32], y: &mut [f32], scratch: &mut [f32]) {
        let y = &mut y[..self.d_out];
        y.copy_from_slice(&self.b);
        for (i, &xi) in x[..self.d_in].iter().enumerate() {
            W::axpy_row(
                xi,
                &self.w[i * self.d_out..(i + 1) * self.d_out],
                y,
                scratch,
            );
        }
    }
}

#[derive(Clone, Debug)]
struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

impl Norm {
    fn forward(&self, x: &[f32], y: &mut [f32]) {
        let d = self.gamma.len();
        // The training layer's statistics, so acting normalises exactly as training does.
        let (mu, rs) = crate::layers::layer_norm_row_stats(&x[..d], 1e-5);
        for i in 0..d {
            y[i] = (x[i] - mu) * rs * self.gamma[i] + self.beta[i];
        }
    }
}

#[derive(Clone, Debug)]
enum Ffn<W> {
    Moe {
        router: Lin<W>,
        experts: Vec<(Lin<W>, Lin<W>)>,
        top_k: usize,
        normalize: bool,
    },
    Dense {
        fc1: Lin<W>,
        fc2: Lin<W>,
    },
}

#[derive(Clone, Debug)]
enum Head<W> {
    Linear(Lin<W>),
    DuelingQ { value: Lin<W>, adv: Lin<W> },
    PolicyValue { logits: Lin<W>, value: Lin<W> },
}

/// Caller-owned buffers for [`ActingNet::forward`], so acting allocates nothing per call.
#[derive(Clone, Debug, Default)]
pub struct Scratch {
    x: Vec<f32>,
    n: Vec<f32>,
    f: Vec<f32>,
    h: Vec<f32>,
    e: Vec<f32>,
    p: Vec<f32>,
    o: Vec<f32>,
    w: Vec<f32>,
    inp: Vec<f32>,
}

/// An inference-only network with weights of type `W` (f32, bf16 or f16).
#[derive(Clone, Debug)]
pub struct ActingNet<W> {
    config: NetworkConfig,
    normalizer: ObsNormalizer,
    input: Lin<W>,
    blocks: Vec<(Norm, Ffn<W>)>,
    final_norm: Norm,
    head: Head<W>,
    widest: usize,
}

type Getter<'a, W> = dyn FnMut(&str, &[usize]) -> Result<Vec<W>> + 'a;

impl<W: Weight> ActingNet<W> {
    fn build(
        config: NetworkConfig,
        normalizer: ObsNormalizer,
        get: &mut Getter<'_, W>,
    ) -> Result<Self> {
        config.validate()?;
        let d = config.d_model;
        let mut lin = |name: &str, d_in: usize, d_out: usize| -> Result<Lin<W>> {
            let w = get(&format!("{name}.w"), &[d_in, d_out])?;
            let b = get(&format!("{name}.b"), &[d_out])?
                .into_iter()
                .map(W::to_f32)
                .collect();
            Ok(Lin { w, b, d_in, d_out })
        };
        let input = lin("input", config.obs_dim, d)?;
        let mut widest = config.obs_dim.max(d).max(config.head.out_dim());
        let mut blocks_lin = Vec::new();
        for (i, b) in config.blocks.iter().enumerate() {
            let name = format!("blocks.{i}");
            let ffn = match *b {
                BlockConfig::Moe {
                    d_hidden,
                    n_experts,
                    top_k,
                    normalize_gates: normalize,
                    ..
                } => {
                    widest = widest.max(d_hidden).max(n_experts);
                    let router = lin(&format!("{name}.moe.router"), d, n_experts)?;
                    let mut experts = Vec::with_capacity(n_experts);
                    for e in 0..n_experts {
                        experts.push((
                            lin(&format!("{name}.moe.experts.{e}.fc1"), d, d_hidden)?,
                            lin(&format!("{name}.moe.experts.{e}.fc2"), d_hidden, d)?,
                        ));
                    }
                    Ffn::Moe {
                        router,
                        experts,
                        top_k,
                        normalize,
                    }
                }
                BlockConfig::Dense { d_hidden } => {
                    widest = widest.max(d_hidden);
                    Ffn::Dense {
                        fc1: lin(&format!("{name}.fc1"), d, d_hidden)?,
                        fc2: lin(&format!("{name}.fc2"), d_hidden, d)?,
                    }
                }
            };
            blocks_lin.push((name, ffn));
        }
        let head = match config.head {
            HeadConfig::Linear { out_dim } => Head::Linear(lin("head.out", d, out_dim)?),
            HeadConfig::DuelingQ { n_actions } => Head::DuelingQ {
                value: lin("head.value", d, 1)?,
                adv: lin("head.advantage", d, n_actions)?,
            },
            HeadConfig::PolicyValue { n_actions } => Head::PolicyValue {
                logits: lin("head.logits", d, n_actions)?,
                value: lin("head.value", d, 1)?,
            },
        };
        let mut norm = |name: &str| -> Result<Norm> {
            Ok(Norm {
                gamma: get(&format!("{name}.gamma"), &[d])?
                    .into_iter()
                    .map(W::to_f32)
                    .collect(),
                beta: get(&format!("{name}.beta"), &[d])?
                    .into_iter()
                    .map(W::to_f32)
                    .collect(),
            })
        };
        let mut blocks = Vec::with_capacity(blocks_lin.len());
        for (name, ffn) in blocks_lin {
            blocks.push((norm(&format!("{name}.norm"))?, ffn));
        }
        let final_norm = norm("final_norm")?;
        Ok(ActingNet {
            config,
            normalizer,
            input,
            blocks,
            final_norm,
            head,
            widest,
        })
    }

    /// A snapshot of `net`'s current weights, rounded to `W`.
    pub fn from_network(net: &Network) -> Result<Self> {
        let mut params: HashMap<String, &Tensor> = HashMap::new();
        net.visit_params(&mut |p| {
            params.insert(p.name.clone(), &p.value);
        });
        let mut get = |name: &str, shape: &[usize]| -> Result<Vec<W>> {
            match params.get(name) {
                Some(t) if t.shape() == shape => {
                    Ok(t.data().iter().map(|&v| W::from_f32(v)).collect())
                }
                _ => Err(CoreError::Config(format!(
                    "snapshot: network has no parameter `{name}` of shape {shape:?}"
                ))),
            }
        };
        Self::build(net.config().clone(), net.normalizer.clone(), &mut get)
    }

    /// The network config.
    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// Storage precision of the weights.
    pub fn precision(&self) -> Precision {
        W::PRECISION
    }

    /// Buffers sized for this network.
    pub fn scratch(&self) -> Scratch {
        let z = vec![0.0; self.widest.max(1)];
        Scratch {
            x: z.clone(),
            n: z.clone(),
            f: z.clone(),
            h: z.clone(),
            e: z.clone(),
            p: z.clone(),
            o: z.clone(),
            w: z.clone(),
            inp: z,
        }
    }

    /// Output of the head for each row of `obs: [batch, obs_dim]`, written into `out`.
    pub fn forward(&self, obs: &Tensor, out: &mut Tensor, s: &mut Scratch) -> Result<()> {
        obs.expect_cols("ActingNet::forward", self.config.obs_dim)?;
        if !obs.all_finite() {
            return Err(CoreError::Input(
                "observation contains NaN or infinity".into(),
            ));
        }
        if s.x.len() < self.widest {
            *s = self.scratch();
        }
        let od = self.config.head.out_dim();
        out.resize(&[obs.rows(), od]);
        for r in 0..obs.rows() {
            self.forward_row(obs.row(r), s);
            out.row_mut(r).copy_from_slice(&s.o[..od]);
        }
        Ok(())
    }

    fn forward_row(&self, obs: &[f32], s: &mut Scratch) {
        let d = self.config.d_model;
        let od = obs.len();
        s.inp[..od].copy_from_slice(obs);
        self.normalizer.apply_row(&mut s.inp[..od]);
        self.input.forward(&s.inp, &mut s.x, &mut s.w);
        for (norm, ffn) in &self.blocks {
            norm.forward(&s.x, &mut s.n);
            s.f[..d].fill(0.0);
            match ffn {
                Ffn::Dense { fc1, fc2 } => {
                    fc1.forward(&s.n, &mut s.h, &mut s.w);
                    gelu_in_place(&mut s.h[..fc1.d_out]);
                    fc2.forward(&s.h, &mut s.f, &mut s.w);
                }
                Ffn::Moe {
                    router,
                    experts,
                    top_k,
                    normalize,
                } => {
                    let e_n = experts.len();
                    router.forward(&s.n, &mut s.p, &mut s.w);
                    let pr = &mut s.p[..e_n];
                    let mx = pr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0.0;
                    for p in pr.iter_mut() {
                        *p = (*p - mx).exp();
                        sum += *p;
                    }
                    for p in pr.iter_mut() {
                        *p /= sum;
                    }
                    // Top-k with ties to the lower index, as in training; chosen marked by -1.
                    let mut chosen = [0usize; 64];
                    let k = (*top_k).min(64);
                    let mut total = 0.0;
                    for slot in chosen.iter_mut().take(k) {
                        let mut best = 0;
                        let mut bp = f32::NEG_INFINITY;
                        for (i, &p) in pr.iter().enumerate() {
                            if p > bp {
                                best = i;
                                bp = p;
                            }
                        }
                        *slot = best;
                        total += bp.max(0.0);
                        pr[best] = -1.0 - bp.max(0.0); // remember p as −1 − p
                    }
                    for &e in &chosen[..k] {
                        let p = -1.0 - pr[e];
                        let g = if !*normalize {
                            p
                        } else if total > 0.0 {
                            p / total
                        } else {
                            1.0 / k as f32
                        };
                        let (fc1, fc2) = &experts[e];
                        fc1.forward(&s.n, &mut s.h, &mut s.w);
                        gelu_in_place(&mut s.h[..fc1.d_out]);
                        fc2.forward(&s.h, &mut s.e, &mut s.w);
                        kernels::axpy(g, &s.e[..d], &mut s.f[..d]);
                    }
                }
            }
            for (x, &f) in s.x[..d].iter_mut().zip(&s.f[..d]) {
                *x += f;
            }
        }
        self.final_norm.forward(&s.x, &mut s.n);
        match &self.head {
            Head::Linear(l) => l.forward(&s.n, &mut s.o, &mut s.w),
            Head::DuelingQ { value, adv } => {
                value.forward(&s.n, &mut s.h, &mut s.w);
                let v = s.h[0];
                adv.forward(&s.n, &mut s.o, &mut s.w);
                let n = adv.d_out;
                let mean = s.o[..n].iter().sum::<f32>() / n as f32;
                for q in &mut s.o[..n] {
                    *q += v - mean;
                }
            }
            Head::PolicyValue { logits, value } => {
                logits.forward(&s.n, &mut s.o, &mut s.w);
                value.forward(&s.n, &mut s.h, &mut s.w);
                s.o[logits.d_out] = s.h[0];
            }
        }
    }

    /// Writes the snapshot to `path` atomically (safetensors, weights in `W`'s dtype).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut blobs: BTreeMap<String, Blob> = BTreeMap::new();
        let put_lin = |blobs: &mut BTreeMap<String, Blob>, name: &str, l: &Lin<W>| {
            blobs.insert(
                format!("{name}.w"),
                Blob {
                    dtype: W::DTYPE,
                    shape: vec![l.d_in, l.d_out],
                    bytes: W::to_le_bytes(&l.w),
                },
            );
            let b: Vec<W> = l.b.iter().map(|&v| W::from_f32(v)).collect();
            blobs.insert(
                format!("{name}.b"),
                Blob {
                    dtype: W::DTYPE,
                    shape: vec![l.d_out],
                    bytes: W::to_le_bytes(&b),
                },
            );
        };
        let put_norm = |blobs: &mut BTreeMap<String, Blob>, name: &str, n: &Norm| {
            for (suffix, v) in [("gamma", &n.gamma), ("beta", &n.beta)] {
                let w: Vec<W> = v.iter().map(|&x| W::from_f32(x)).collect();
                blobs.insert(
                    format!("{name}.{suffix}"),
                    Blob {
                        dtype: W::DTYPE,
                        shape: vec![v.len()],
                        bytes: W::to_le_bytes(&w),
                    },
                );
            }
        };
        put_lin(&mut blobs, "input", &self.input);
        for (i, (norm, ffn)) in self.blocks.iter().enumerate() {
            put_norm(&mut blobs, &format!("blocks.{i}.norm"), norm);
            match ffn {
                Ffn::Moe {
                    router, experts, ..
                } => {
                    put_lin(&mut blobs, &format!("blocks.{i}.moe.router"), router);
                    for (e, (fc1, fc2)) in experts.iter().enumerate() {
                        put_lin(&mut blobs, &format!("blocks.{i}.moe.experts.{e}.fc1"), fc1);
                        put_lin(&mut blobs, &format!("blocks.{i}.moe.experts.{e}.fc2"), fc2);
                    }
                }
                Ffn::Dense { fc1, fc2 } => {
                    put_lin(&mut blobs, &format!("blocks.{i}.fc1"), fc1);
                    put_lin(&mut blobs, &format!("blocks.{i}.fc2"), fc2);
                }
            }
        }
        put_norm(&mut blobs, "final_norm", &self.final_norm);
        match &self.head {
            Head::Linear(l) => put_lin(&mut blobs, "head.out", l),
            Head::DuelingQ { value, adv } => {
                put_lin(&mut blobs, "head.value", value);
                put_lin(&mut blobs, "head.advantage", adv);
            }
            Head::PolicyValue { logits, value } => {
                put_lin(&mut blobs, "head.logits", logits);
                put_lin(&mut blobs, "head.value", value);
            }
        }
        checkpoint::normalizer_blobs(&self.normalizer, &mut blobs);
        let mut meta = HashMap::new();
        meta.insert("format".into(), SNAPSHOT_FORMAT.into());
        meta.insert(
            "format_version".into(),
            checkpoint::FORMAT_VERSION.to_string(),
        );
        meta.insert(
            "precision".into(),
            format!("{:?}", W::PRECISION).to_lowercase(),
        );
        let cfg =
            serde_json::to_string(&self.config).map_err(|e| CoreError::Config(e.to_string()))?;
        meta.insert("network_config".into(), cfg);
        checkpoint::write_safetensors(path, &blobs, meta)
    }

    /// Reads a snapshot written by [`ActingNet::save`] with the same weight type.
    ///
    /// The stored config passes [`NetworkConfig::validate`] before anything is sized from it,
    /// and each tensor's dtype and shape are checked before it is converted, so a forged
    /// header is a typed error rather than an abort on allocation.
    pub fn load(path: &Path) -> Result<Self> {
        let (bytes, meta) = checkpoint::read_safetensors(path, SNAPSHOT_FORMAT)?;
        let err = |reason: String| CoreError::Checkpoint {
            path: path.display().to_string(),
            reason,
        };
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| err(format!("truncated or corrupted: {e}")))?;
        let cfg_json = meta
            .get("network_config")
            .ok_or_else(|| err("missing network_config".into()))?;
        let config: NetworkConfig =
            serde_json::from_str(cfg_json).map_err(|e| err(format!("network_config: {e}")))?;
        config
            .validate()
            .map_err(|e| err(format!("stored network config is invalid: {e}")))?;
        let mut normalizer =
            ObsNormalizer::new(config.obs_dim, config.normalize_obs, config.obs_clip);
        checkpoint::read_normalizer(path, &st, &mut normalizer)?;
        let mut used = 3;
        let mut get = |name: &str, shape: &[usize]| -> Result<Vec<W>> {
            let t = st
                .tensor(name)
                .map_err(|_| err(format!("missing tensor `{name}`")))?;
            if t.dtype() != W::DTYPE {
                return Err(err(format!(
                    "tensor `{name}` is {:?}, expected {:?} (load it with the matching precision)",
                    t.dtype(),
                    W::DTYPE
                )));
            }
            if t.shape() != shape {
                return Err(err(format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?}",
                    t.shape()
                )));
            }
            used += 1;
            Ok(W::from_le_bytes(t.data()))
        };
        let net = Self::build(config, normalizer, &mut get)?;
        if used != st.len() {
            return Err(err(format!(
                "holds {} tensors, the network uses {used}",
                st.len()
            )));
        }
        Ok(net)
    }
}

fn gelu_in_place(h: &mut [f32]) {
    for v in h.iter_mut() {
        *v = kernels::gelu_scalar(*v);
    }
}

/// A snapshot of any precision, for callers that choose the precision at run time.
#[derive(Clone, Debug)]
pub enum Snapshot {
    /// f32 weights.
    F32(ActingNet<f32>),
    /// bf16 weights.
    Bf16(ActingNet<bf16>),
    /// f16 weights.
    F16(ActingNet<f16>),
}

impl Snapshot {
    /// A snapshot of `net` in `precision`.
    pub fn from_network(net: &Network, precision: Precision) -> Result<Self> {
        Ok(match precision {
            Precision::F32 => Snapshot::F32(ActingNet::from_network(net)?),
            Precision::Bf16 => Snapshot::Bf16(ActingNet::from_network(net)?),
            Precision::F16 => Snapshot::F16(ActingNet::from_network(net)?),
        })
    }

    /// Buffers for [`Snapshot::forward`].
    pub fn scratch(&self) -> Scratch {
        match self {
            Snapshot::F32(n) => n.scratch(),
            Snapshot::Bf16(n) => n.scratch(),
            Snapshot::F16(n) => n.scratch(),
        }
    }

    /// See [`ActingNet::forward`].
    pub fn forward(&self, obs: &Tensor, out: &mut Tensor, s: &mut Scratch) -> Result<()> {
        match self {
            Snapshot::F32(n) => n.forward(obs, out, s),
            Snapshot::Bf16(n) => n.forward(obs, out, s),
            Snapshot::F16(n) => n.forward(obs, out, s),
        }
    }

    /// The network config.
    pub fn config(&self) -> &NetworkConfig {
        match self {
            Snapshot::F32(n) => n.config(),
            Snapshot::Bf16(n) => n.config(),
            Snapshot::F16(n) => n.config(),
        }
    }

    /// Saves in the snapshot's own precision.
    pub fn save(&self, path: &Path) -> Result<()> {
        match self {
            Snapshot::F32(n) => n.save(path),
            Snapshot::Bf16(n) => n.save(path),
            Snapshot::F16(n) => n.save(path),
        }
    }

    /// Loads a snapshot of whatever precision the file holds.
    pub fn load(path: &Path) -> Result<Self> {
        let (_, meta) = checkpoint::read_safetensors(path, SNAPSHOT_FORMAT)?;
        match meta.get("precision").map(String::as_str) {
            Some("f32") => Ok(Snapshot::F32(ActingNet::load(path)?)),
            Some("bf16") => Ok(Snapshot::Bf16(ActingNet::load(path)?)),
            Some("f16") => Ok(Snapshot::F16(ActingNet::load(path)?)),
            other => Err(CoreError::Checkpoint {
                path: path.display().to_string(),
                reason: format!("unknown precision {other:?}"),
            }),
        }
    }
}
