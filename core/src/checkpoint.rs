//! Checkpoints in safetensors: the network's f32 master weights, the observation normaliser,
//! and optionally the AdamW moments, with the network config, optimizer state and a checksum
//! in the file's metadata.
//!
//! Writes are atomic: the file is written beside its destination, fsynced, renamed over it,
//! and the directory fsynced, so a crash leaves either the old checkpoint or the new one.
//! Loading validates the stored config against [`crate::limits`], checks every tensor's name,
//! dtype and shape against it before building anything, and the checksum against the bytes, so
//! a truncated, corrupted, mismatched or forged file is a typed error rather than a silently
//! wrong model or an abort on allocation.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};
use crate::network::{Network, NetworkConfig};
use crate::normalizer::ObsNormalizer;
use crate::optim::{AdamW, AdamWConfig};
use crate::param::Module;

/// Value of the `format` metadata key.
pub const FORMAT: &str = "autodidact-checkpoint";
/// Current checkpoint format version.
pub const FORMAT_VERSION: u32 = 1;

/// Optimizer state stored in metadata beside the moment tensors.
#[derive(Serialize, Deserialize)]
struct OptimizerMeta {
    config: AdamWConfig,
    step: u64,
    skipped: u64,
}

/// A checkpoint read back from disk.
#[derive(Debug)]
pub struct LoadedCheckpoint {
    /// The network, rebuilt from its config with the stored weights and normaliser.
    pub network: Network,
    /// The optimizer with its moments, if the checkpoint holds one.
    pub optimizer: Option<AdamW>,
    /// Caller metadata stored with [`save_checkpoint`] (e.g. model version, env steps).
    pub extra: BTreeMap<String, String>,
}

fn ck_err(path: &Path, reason: impl Into<String>) -> CoreError {
    CoreError::Checkpoint {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

fn io_err(path: &Path, source: std::io::Error) -> CoreError {
    CoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub(crate) fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub(crate) fn f64_bytes(x: &[f64]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// An owned tensor ready for serialisation.
pub(crate) struct Blob {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// CRC32 over every tensor's name and bytes, in name order.
pub(crate) fn checksum<'a>(items: impl Iterator<Item = (&'a str, &'a [u8])>) -> String {
    let mut h = crc32fast::Hasher::new();
    for (name, bytes) in items {
        h.update(name.as_bytes());
        h.update(bytes);
    }
    format!("{:08x}", h.finalize())
}

/// Serialises `blobs` with `meta` (plus a checksum) and writes the file atomically.
pub(crate) fn write_safetensors(
    path: &Path,
    blobs: &BTreeMap<String, Blob>,
    mut meta: HashMap<String, String>,
) -> Result<()> {
    meta.insert(
        "checksum".into(),
        checksum(blobs.iter().map(|(n, b)| (n.as_str(), b.bytes.as_slice()))),
    );
    let views = blobs
        .iter()
        .map(|(n, b)| TensorView::new(b.dtype, b.shape.clone(), &b.bytes).map(|v| (n.clone(), v)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| ck_err(path, format!("cannot build tensor view: {e}")))?;
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| ck_err(path, format!("cannot serialise: {e}")))?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` so that a crash or power loss at any point leaves the old file or
/// the new one, and so that once it returns `Ok` the new file survives a power loss:
///
/// 1. the destination's directory is opened first, so a missing directory (or a file where
///    the directory should be) is an IO error naming it, before anything is written;
/// 2. the bytes go to a temporary file beside the destination, which is fsynced (its data is
///    on disk before any name points to it);
/// 3. the temporary file is renamed over the destination (atomic on POSIX file systems);
/// 4. the directory is fsynced, which is what makes the rename itself durable: until then
///    the directory entry may be lost with the page cache, and the old file comes back.
///
/// An error at step 4 is returned too: the new file is then in place but may not survive a
/// power loss, and the caller must not act as if it would (e.g. delete the previous file).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| ck_err(path, "not a file path"))?;
    let dir_handle = open_dir(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
        f.write_all(bytes).map_err(|e| io_err(&tmp, e))?;
        f.sync_all().map_err(|e| io_err(&tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
        dir_handle.sync_all().map_err(|e| io_err(dir, e))
    })();
    if result.is_err() {
        // Gone already if the rename happened; otherwise do not leave it behind.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Opens `dir` for fsync, checking that it is a directory.
fn open_dir(dir: &Path) -> Result<File> {
    let d = File::open(dir).map_err(|e| io_err(dir, e))?;
    let meta = d.metadata().map_err(|e| io_err(dir, e))?;
    if !meta.is_dir() {
        return Err(io_err(dir, std::io::Error::other("not a directory")));
    }
    Ok(d)
}

/// Reads a safetensors file, checks the `format` key and the checksum, and returns the bytes
/// and metadata.
pub(crate) fn read_safetensors(
    path: &Path,
    format: &str,
) -> Result<(Vec<u8>, HashMap<String, String>)> {
    let bytes = fs::read(path).map_err(|e| io_err(path, e))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| {
        ck_err(
            path,
            format!("not a readable safetensors file (truncated or corrupted?): {e}"),
        )
    })?;
    let meta = meta.metadata().clone().unwrap_or_default();
    match meta.get("format") {
        Some(f) if f == format => {}
        Some(f) => {
            return Err(ck_err(
                path,
                format!("is a `{f}` file, expected `{format}`"),
            ));
        }
        None => {
            return Err(ck_err(
                path,
                format!("has no `format` metadata; not an autodidact `{format}` file"),
            ));
        }
    }
    match meta.get("format_version").map(|v| v.parse::<u32>()) {
        Some(Ok(v)) if v <= FORMAT_VERSION => {}
        Some(Ok(v)) => {
            return Err(ck_err(
                path,
                format!(
                    "format version {v} is newer than this build supports ({FORMAT_VERSION}); upgrade autodidact"
                ),
            ));
        }
        _ => return Err(ck_err(path, "missing or malformed `format_version`")),
    }
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| ck_err(path, format!("truncated or corrupted: {e}")))?;
    let mut names: Vec<String> = st.names().into_iter().map(|n| n.to_string()).collect();
    names.sort();
    let want = meta
        .get("checksum")
        .ok_or_else(|| ck_err(path, "missing checksum"))?;
    let mut tensors = Vec::with_capacity(names.len());
    for n in &names {
        let t = st
            .tensor(n)
            .map_err(|e| ck_err(path, format!("tensor {n}: {e}")))?;
        tensors.push((n.as_str(), t.data()));
    }
    let got = checksum(tensors.into_iter());
    if &got != want {
        return Err(ck_err(
            path,
            format!("checksum mismatch (stored {want}, computed {got}): the file is corrupted"),
        ));
    }
    Ok((bytes, meta))
}

/// The view of tensor `name`, checked to be F32 of exactly `shape`, without copying it.
fn f32_view<'a>(
    path: &Path,
    st: &'a SafeTensors<'_>,
    name: &str,
    shape: &[usize],
) -> Result<TensorView<'a>> {
    let t = st.tensor(name).map_err(|_| {
        ck_err(
            path,
            format!("missing tensor `{name}`; the checkpoint does not match this network"),
        )
    })?;
    if t.dtype() != Dtype::F32 {
        return Err(ck_err(
            path,
            format!("tensor `{name}` has dtype {:?}, expected F32", t.dtype()),
        ));
    }
    if t.shape() != shape {
        return Err(ck_err(
            path,
            format!(
                "tensor `{name}` has shape {:?}, expected {shape:?}",
                t.shape()
            ),
        ));
    }
    Ok(t)
}

/// Reads tensor `name` as f32 values of exactly `shape` (little-endian bytes of dtype F32).
pub(crate) fn read_f32(
    path: &Path,
    st: &SafeTensors<'_>,
    name: &str,
    shape: &[usize],
) -> Result<Vec<f32>> {
    Ok(f32_view(path, st, name, shape)?
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

pub(crate) fn read_f64(
    path: &Path,
    st: &SafeTensors<'_>,
    name: &str,
    len: usize,
) -> Result<Vec<f64>> {
    Ok(f64_tensor(path, st, name, len)?
        .data()
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect())
}

/// The f64 tensor `name` of shape `[len]`, or an error naming what is wrong with it.
fn f64_tensor<'a>(
    path: &Path,
    st: &SafeTensors<'a>,
    name: &str,
    len: usize,
) -> Result<safetensors::tensor::TensorView<'a>> {
    let t = st
        .tensor(name)
        .map_err(|_| ck_err(path, format!("missing tensor `{name}`")))?;
    if t.dtype() != Dtype::F64 || t.shape() != [len] {
        return Err(ck_err(
            path,
            format!(
                "tensor `{name}` should be F64 of shape [{len}], is {:?} {:?}",
                t.dtype(),
                t.shape()
            ),
        ));
    }
    Ok(t)
}

/// The normaliser's statistics as f64 tensors (checkpoints and snapshots store them alike).
pub(crate) fn normalizer_blobs(n: &ObsNormalizer, blobs: &mut BTreeMap<String, Blob>) {
    let dim = n.mean.len();
    blobs.insert(
        "normalizer.mean".into(),
        Blob {
            dtype: Dtype::F64,
            shape: vec![dim],
            bytes: f64_bytes(&n.mean),
        },
    );
    blobs.insert(
        "normalizer.var".into(),
        Blob {
            dtype: Dtype::F64,
            shape: vec![dim],
            bytes: f64_bytes(&n.var),
        },
    );
    blobs.insert(
        "normalizer.count".into(),
        Blob {
            dtype: Dtype::F64,
            shape: vec![1],
            bytes: f64_bytes(&[n.count]),
        },
    );
}

/// Checks, before the network is built, that the file holds exactly the tensors `cfg` needs
/// (and their AdamW moments if present), each F32 of the right shape.
fn check_stored_shapes(
    path: &Path,
    st: &SafeTensors<'_>,
    cfg: &NetworkConfig,
    has_optimizer: bool,
) -> Result<()> {
    let has_moments = has_optimizer && st.names().iter().any(|n| n.starts_with("optim.m."));
    let mut params = 0usize;
    cfg.visit_param_shapes(&mut |name, shape| {
        params += 1;
        f32_view(path, st, name, shape)?;
        if has_moments {
            f32_view(path, st, &format!("optim.m.{name}"), shape)?;
            f32_view(path, st, &format!("optim.v.{name}"), shape)?;
        }
        Ok(())
    })?;
    // Parameters (and moments) plus the normaliser's mean, var and count.
    let expected = params * if has_moments { 3 } else { 1 } + 3;
    if st.len() != expected {
        return Err(ck_err(
            path,
            format!(
                "holds {} tensors, this network needs {expected}; it was written for a different network",
                st.len()
            ),
        ));
    }
    let dim = cfg.obs_dim;
    for (name, len) in [
        ("normalizer.mean", dim),
        ("normalizer.var", dim),
        ("normalizer.count", 1),
    ] {
        f64_tensor(path, st, name, len)?;
    }
    Ok(())
}

/// Reads what [`normalizer_blobs`] wrote into `n`, whose dimension is already set.
pub(crate) fn read_normalizer(
    path: &Path,
    st: &SafeTensors<'_>,
    n: &mut ObsNormalizer,
) -> Result<()> {
    let dim = n.mean.len();
    n.mean = read_f64(path, st, "normalizer.mean", dim)?;
    n.var = read_f64(path, st, "normalizer.var", dim)?;
    n.count = read_f64(path, st, "normalizer.count", 1)?[0];
    Ok(())
}

/// Saves `net` (and `opt`, if given) to `path` atomically. `extra` is caller metadata stored
/// verbatim (model version, environment steps, …).
pub fn save_checkpoint(
    path: &Path,
    net: &Network,
    opt: Option<&AdamW>,
    extra: &BTreeMap<String, String>,
) -> Result<()> {
    let mut blobs = BTreeMap::new();
    let mut names = Vec::new();
    net.visit_params(&mut |p| {
        names.push(p.name.clone());
        blobs.insert(
            p.name.clone(),
            Blob {
                dtype: Dtype::F32,
                shape: p.value.shape().to_vec(),
                bytes: f32_bytes(p.value.data()),
            },
        );
    });
    normalizer_blobs(&net.normalizer, &mut blobs);
    let mut meta = HashMap::new();
    meta.insert("format".into(), FORMAT.into());
    meta.insert("format_version".into(), FORMAT_VERSION.to_string());
    let cfg =
        serde_json::to_string(net.config()).map_err(|e| ck_err(path, format!("config: {e}")))?;
    meta.insert("network_config".into(), cfg);
    meta.insert(
        "extra".into(),
        serde_json::to_string(extra).map_err(|e| ck_err(path, format!("extra: {e}")))?,
    );
    if let Some(opt) = opt {
        let (m, v) = opt.moments();
        for (i, name) in names.iter().enumerate() {
            if let (Some(mi), Some(vi)) = (m.get(i), v.get(i)) {
                let shape = blobs[name].shape.clone();
                blobs.insert(
                    format!("optim.m.{name}"),
                    Blob {
                        dtype: Dtype::F32,
                        shape: shape.clone(),
                        bytes: f32_bytes(mi),
                    },
                );
                blobs.insert(
                    format!("optim.v.{name}"),
                    Blob {
                        dtype: Dtype::F32,
                        shape,
                        bytes: f32_bytes(vi),
                    },
                );
            }
        }
        let om = OptimizerMeta {
            config: opt.config.clone(),
            step: opt.steps(),
            skipped: opt.skipped(),
        };
        meta.insert(
            "optimizer".into(),
            serde_json::to_string(&om).map_err(|e| ck_err(path, format!("optimizer: {e}")))?,
        );
    }
    write_safetensors(path, &blobs, meta)
}

/// Loads a checkpoint written by [`save_checkpoint`], checking everything it reads.
///
/// Nothing is allocated from the stored config until it has passed
/// [`NetworkConfig::validate`] (its documented size limits) and every tensor the network
/// needs has been found in the file with the right dtype and shape. The file's tensors are
/// backed by its bytes, so a forged header cannot make the load allocate more than a small
/// multiple of the file's size (weights, gradients, AdamW moments).
pub fn load_checkpoint(path: &Path) -> Result<LoadedCheckpoint> {
    let (bytes, meta) = read_safetensors(path, FORMAT)?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| ck_err(path, format!("truncated or corrupted: {e}")))?;
    let cfg_json = meta
        .get("network_config")
        .ok_or_else(|| ck_err(path, "missing network_config metadata"))?;
    let cfg: NetworkConfig =
        serde_json::from_str(cfg_json).map_err(|e| ck_err(path, format!("network_config: {e}")))?;
    cfg.validate()
        .map_err(|e| ck_err(path, format!("stored network config is invalid: {e}")))?;
    check_stored_shapes(path, &st, &cfg, meta.contains_key("optimizer"))?;
    let mut net = Network::new(cfg, 0)
        .map_err(|e| ck_err(path, format!("stored network config is invalid: {e}")))?;
    let mut expected = 0usize;
    let mut err = None;
    let mut names = Vec::new();
    net.visit_params_mut(&mut |p| {
        expected += 1;
        names.push((p.name.clone(), p.value.shape().to_vec()));
        if err.is_none() {
            match read_f32(path, &st, &p.name, p.value.shape()) {
                Ok(v) => p.value.data_mut().copy_from_slice(&v),
                Err(e) => err = Some(e),
            }
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    read_normalizer(path, &st, &mut net.normalizer)?;
    let optimizer = match meta.get("optimizer") {
        None => None,
        Some(j) => {
            let om: OptimizerMeta = serde_json::from_str(j)
                .map_err(|e| ck_err(path, format!("optimizer metadata: {e}")))?;
            let mut opt = AdamW::new(om.config)
                .map_err(|e| ck_err(path, format!("optimizer config: {e}")))?;
            let has_moments = st.names().iter().any(|n| n.starts_with("optim.m."));
            let (mut m, mut v) = (Vec::new(), Vec::new());
            if has_moments {
                for (name, shape) in &names {
                    m.push(read_f32(path, &st, &format!("optim.m.{name}"), shape)?);
                    v.push(read_f32(path, &st, &format!("optim.v.{name}"), shape)?);
                }
                expected += 2 * names.len();
            }
            opt.restore(&net, om.step, om.skipped, m, v)
                .map_err(|e| ck_err(path, e.to_string()))?;
            Some(opt)
        }
    };
    if st.len() != expected + 3 {
        return Err(ck_err(
            path,
            format!(
                "holds {} tensors, this network needs {}; it was written for a different network",
                st.len(),
                expected + 3
            ),
        ));
    }
    let extra = match meta.get("extra") {
        Some(j) => {
            serde_json::from_str(j).map_err(|e| ck_err(path, format!("extra metadata: {e}")))?
        }
        None => BTreeMap::new(),
    };
    Ok(LoadedCheckpoint {
        network: net,
        optimizer,
        extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn write_atomic_replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second, longer").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second, longer");
        assert_eq!(entries(dir.path()), ["model.safetensors"]);
    }

    /// The directory is opened (for its fsync) before anything is written, so a bad directory
    /// is reported as itself, not as a temporary file the caller never named.
    #[test]
    fn write_atomic_reports_a_bad_directory_by_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        match write_atomic(&missing.join("x.safetensors"), b"data") {
            Err(CoreError::Io { path, .. }) => assert_eq!(Path::new(&path), missing),
            other => panic!("expected an IO error naming the directory, got {other:?}"),
        }
        let file = dir.path().join("plain-file");
        fs::write(&file, b"not a directory").unwrap();
        match write_atomic(&file.join("x.safetensors"), b"data") {
            Err(CoreError::Io { path, .. }) => assert_eq!(Path::new(&path), file),
            other => panic!("expected an IO error naming the non-directory, got {other:?}"),
        }
        assert_eq!(
            entries(dir.path()),
            ["plain-file"],
            "nothing else was created"
        );
    }
}
