//! Core benchmark: MoE training steps and forward latency against PyTorch on the same machine,
//! and GEMM throughput of `kernels::matmul` against the two GEMM crates it dispatches to.
//!
//! Run: `cargo bench -p autodidact-core --bench core` (add `-- --no-peer` to skip PyTorch,
//! `-- --quick` for fewer iterations, `-- --no-wait` not to wait for a quiet machine,
//! `-- --only gemm` for the GEMM tables alone, which updates only the GEMM entries of
//! `core.json`). The PyTorch peer is `../shared/anchors/torch_moe_bench.py`,
//! run with the Python in `$AUTODIDACT_PEER_PYTHON` or `~/.venvs/anchors/bin/python` if that
//! has torch. Prints a table and writes `target/autodidact-bench/core.json`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use autodidact_core::kernels::{Par, matmul};
use autodidact_core::loss::mse;
use autodidact_core::{AdamW, AdamWConfig, MoeConfig, MoeLayer, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

const SHAPES: [(usize, usize, usize, usize); 4] = [
    (256, 64, 256, 8),
    (1024, 128, 512, 8),
    (4096, 256, 1024, 16),
    (8192, 512, 2048, 8),
];

struct Stats {
    median: f64,
    min: f64,
    max: f64,
    runs: usize,
}

fn stats(mut v: Vec<f64>) -> Stats {
    v.sort_by(|a, b| a.total_cmp(b));
    Stats {
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
        runs: v.len(),
    }
}

/// Busy jiffies of the whole machine, to wait for other processes to settle before measuring.
fn machine_busy() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = s
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    Some((total - v.get(3)? - v.get(4)?, total))
}

fn wait_quiet() {
    if std::env::args().any(|a| a == "--no-wait") {
        return;
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(120) {
        let Some((b0, t0)) = machine_busy() else {
            return;
        };
        std::thread::sleep(Duration::from_millis(1000));
        let Some((b1, t1)) = machine_busy() else {
            return;
        };
        let busy_cores = (b1 - b0) as f64 / (t1 - t0).max(1) as f64 * num_cpus() as f64;
        if busy_cores < 0.3 {
            return;
        }
        eprintln!("waiting for a quiet machine ({busy_cores:.2} cores busy)…");
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// FLOPs of one step, counted as the PyTorch anchor counts them: forward 2·m·n·k per matmul,
/// backward twice that, with m the tokens each expert actually received.
fn step_flops(routed: &[usize], t: usize, d: usize, h: usize, e: usize) -> f64 {
    let expert_fwd: f64 = routed.iter().map(|&n| (2 * n * d * h * 2) as f64).sum();
    3.0 * (expert_fwd + (2 * t * d * e) as f64)
}

fn bench_step(t: usize, d: usize, h: usize, e: usize, iters: usize) -> (Stats, Stats) {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let cfg = MoeConfig {
        z_loss_coef: 0.0,
        aux_loss_coef: 0.01,
        ..MoeConfig::new(d, h, e, 2)
    };
    let mut layer = MoeLayer::new("moe", cfg, &mut rng).expect("valid config");
    let mut opt = AdamW::new(AdamWConfig::new(1e-3)).expect("valid optimizer");
    let x = Tensor::from_vec(random(&mut rng, t * d), &[t, d]).expect("shape");
    let target = Tensor::from_vec(random(&mut rng, t * d), &[t, d]).expect("shape");
    let (mut y, mut g, mut dx) = (Tensor::default(), Tensor::default(), Tensor::default());
    let mut step = || {
        layer.forward(&x, &mut y, true).expect("forward");
        let loss = mse(&y, &target, &mut g).expect("loss") + layer.weighted_aux_loss();
        layer.backward(&x, &g, &mut dx).expect("backward");
        opt.step(&mut layer, loss);
        step_flops(&layer.stats().routed, t, d, h, e)
    };
    for _ in 0..3 {
        step();
    }
    let (mut ms, mut gf) = (Vec::new(), Vec::new());
    for _ in 0..iters {
        let t0 = Instant::now();
        let flops = step();
        let dt = t0.elapsed().as_secs_f64();
        ms.push(dt * 1e3);
        gf.push(flops / dt / 1e9);
    }
    (stats(ms), stats(gf))
}

fn bench_forward(batch: usize, calls: usize) -> Stats {
    let (t, d, h, e) = SHAPES[0];
    let _ = t;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut layer =
        MoeLayer::new("moe", MoeConfig::new(d, h, e, 2), &mut rng).expect("valid config");
    let x = Tensor::from_vec(random(&mut rng, batch * d), &[batch, d]).expect("shape");
    let mut y = Tensor::default();
    for _ in 0..200 {
        layer.forward(&x, &mut y, false).expect("forward");
    }
    let mut us = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t0 = Instant::now();
        layer.forward(&x, &mut y, false).expect("forward");
        us.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    stats(us)
}

/// What one GEMM row measures.
#[derive(Clone, Copy, Debug)]
enum Gemm {
    /// `kernels::matmul` with `Par::Rayon`, as `Linear` and the MoE call it for large products:
    /// rows of C split on the current rayon pool, each block by the kernel `gemm_block` picks.
    Ours,
    /// `kernels::matmul` with `Par::Seq`: one `gemm_block` call on the calling thread.
    OursSeq,
    /// The `gemm` crate called directly, `Parallelism::Rayon(threads)` (`None` for 1).
    Crate(usize),
    /// `matrixmultiply::sgemm` called directly (single-threaded: no `threading` feature).
    Matrixmultiply,
}

/// `C[m×n] = A[m×k]·B[k×n]`, all dense row-major, once.
#[allow(clippy::too_many_arguments)]
fn gemm_once(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32], which: Gemm) {
    let (ni, ki) = (n as isize, k as isize);
    match which {
        Gemm::Ours => {
            matmul(m, n, k, a, false, b, false, c, false, Par::Rayon).expect("dense operands")
        }
        Gemm::OursSeq => {
            matmul(m, n, k, a, false, b, false, c, false, Par::Seq).expect("dense operands")
        }
        // SAFETY (both arms): a, b and c are dense row-major m×k, k×n and m×n.
        Gemm::Crate(t) => unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                ni,
                false,
                a.as_ptr(),
                1,
                ki,
                b.as_ptr(),
                1,
                ni,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                if t > 1 {
                    gemm::Parallelism::Rayon(t)
                } else {
                    gemm::Parallelism::None
                },
            )
        },
        Gemm::Matrixmultiply => unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                a.as_ptr(),
                ki,
                1,
                b.as_ptr(),
                ni,
                1,
                0.0,
                c.as_mut_ptr(),
                ni,
                1,
            )
        },
    }
}

/// One row of the GEMM table.
struct GemmRow {
    m: usize,
    n: usize,
    k: usize,
    /// Threads of the rayon pool the row runs in (1: the calling thread, no pool).
    threads: usize,
    which: Gemm,
    label: String,
    name: String,
}

/// Times the rows of one product shape interleaved: each round runs every row once, in an
/// order that rotates from round to round, so load from other processes on a shared machine
/// falls on all rows alike instead of on whichever ran during a busy minute. Each sample
/// repeats the product until it is about 2^27 multiply-adds, so small products are not
/// timer noise. Every row's first result is spot-checked against a dot product, so a row
/// that computed something else cannot report a figure.
fn bench_gemm_group(rows: &[GemmRow], rounds: usize) -> Vec<Stats> {
    let (m, n, k) = (rows[0].m, rows[0].n, rows[0].k);
    assert!(rows.iter().all(|r| (r.m, r.n, r.k) == (m, n, k)));
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let a = random(&mut rng, m * k);
    let b = random(&mut rng, k * n);
    let mut cs = vec![vec![0.0f32; m * n]; rows.len()];
    let pools: Vec<Option<rayon::ThreadPool>> = rows
        .iter()
        .map(|r| {
            (r.threads > 1).then(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(r.threads)
                    .build()
                    .expect("rayon pool")
            })
        })
        .collect();
    let reps = ((1usize << 27) / (m * n * k)).max(1);
    let run = |i: usize, c: &mut [f32], reps: usize| {
        let mut go = || {
            for _ in 0..reps {
                gemm_once(m, n, k, &a, &b, c, rows[i].which);
            }
        };
        match &pools[i] {
            Some(p) => p.install(go),
            None => go(),
        }
    };
    for (i, c) in cs.iter_mut().enumerate() {
        run(i, c, 1);
        for (r, col) in [(0, 0), (m - 1, n - 1), (m / 2, n / 3), (m / 3, n - 1)] {
            let want: f64 = (0..k)
                .map(|p| f64::from(a[r * k + p]) * f64::from(b[p * n + col]))
                .sum();
            let got = f64::from(c[r * n + col]);
            assert!(
                (got - want).abs() < 1e-4 * k as f64,
                "{}: C[{r},{col}] = {got}, expected {want}",
                rows[i].label
            );
        }
    }
    let mut gf = vec![Vec::with_capacity(rounds); rows.len()];
    for round in 0..rounds {
        for j in 0..rows.len() {
            let i = (round + j) % rows.len();
            let t0 = Instant::now();
            run(i, &mut cs[i], reps);
            let dt = t0.elapsed().as_secs_f64();
            gf[i].push(2.0 * (m * n * k * reps) as f64 / dt / 1e9);
        }
    }
    gf.into_iter().map(stats).collect()
}

/// The GEMM rows, grouped by shape (rows of a group are timed interleaved): the 2048³ table
/// (what BENCHMARKS.md quotes), then one expert's fc1 product for each MoE step shape, on one
/// thread as the MoE layer runs it (one expert per task), with both crates, to check the
/// `kernels::LARGE_GEMM_WORK` crossover between them.
fn gemm_groups() -> Vec<Vec<GemmRow>> {
    let row =
        |(m, n, k): (usize, usize, usize), threads, which, label: String, name: &str| GemmRow {
            m,
            n,
            k,
            threads,
            which,
            label,
            name: name.to_string(),
        };
    let sq = (2048, 2048, 2048);
    let mut groups = vec![vec![
        row(
            sq,
            2,
            Gemm::Ours,
            "2048³, `kernels::matmul` Par::Rayon, 2 threads".into(),
            "gemm/2048",
        ),
        row(
            sq,
            2,
            Gemm::Crate(2),
            "2048³, `gemm` crate, Parallelism::Rayon(2)".into(),
            "gemm/2048/gemm-crate",
        ),
        row(
            sq,
            1,
            Gemm::OursSeq,
            "2048³, `kernels::matmul` Par::Seq, 1 thread".into(),
            "gemm/2048/1thread",
        ),
        row(
            sq,
            1,
            Gemm::Crate(1),
            "2048³, `gemm` crate, 1 thread".into(),
            "gemm/2048/gemm-crate-1thread",
        ),
    ]];
    // (rows, d, h) of one expert's fc1 in each MoE step shape of SHAPES, with the T·k/E
    // tokens an expert receives under even routing.
    for (t, d, h, e) in SHAPES {
        let (m, k, n) = (t * 2 / e, d, h);
        let work = (m * n * k).ilog2();
        groups.push(
            [
                (Gemm::Crate(1), "gemm-crate"),
                (Gemm::Matrixmultiply, "matrixmultiply"),
            ]
            .into_iter()
            .map(|(which, tag)| {
                row(
                    (m, n, k),
                    1,
                    which,
                    format!("{m}×{k}·{k}×{n} (2^{work}), {tag}, 1 thread"),
                    &format!("gemm/{m}x{k}x{n}/{tag}"),
                )
            })
            .collect(),
        );
    }
    groups
}

fn workspace_target() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

fn peer_python() -> Option<PathBuf> {
    let cands = [
        std::env::var_os("AUTODIDACT_PEER_PYTHON").map(PathBuf::from),
        std::env::var_os("HOME").map(|h| Path::new(&h).join(".venvs/anchors/bin/python")),
    ];
    cands.into_iter().flatten().find(|p| {
        Command::new(p)
            .args(["-c", "import torch"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Runs the PyTorch anchor; returns its JSON, or None with the reason printed.
fn run_peer(out: &Path, quick: bool) -> Option<Value> {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/anchors/torch_moe_bench.py");
    if !script.exists() {
        eprintln!("peer skipped: {} not found", script.display());
        return None;
    }
    let Some(py) = peer_python() else {
        eprintln!(
            "peer skipped: no Python with torch (set AUTODIDACT_PEER_PYTHON or see ../shared/anchors/README.md)"
        );
        return None;
    };
    eprintln!("running the PyTorch peer ({})…", py.display());
    let mut cmd = Command::new(py);
    cmd.arg(&script).args(["--threads", "2", "--out"]).arg(out);
    if quick {
        cmd.args(["--iters", "5"]);
    }
    let status = cmd.status().ok()?;
    if !status.success() {
        eprintln!("peer failed: {status}");
        return None;
    }
    serde_json::from_str(&std::fs::read_to_string(out).ok()?).ok()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Where a step's time goes: forward, backward and optimizer, per shape.
fn breakdown() {
    for &(t, d, h, e) in &SHAPES {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let cfg = MoeConfig {
            z_loss_coef: 0.0,
            ..MoeConfig::new(d, h, e, 2)
        };
        let mut layer = MoeLayer::new("moe", cfg, &mut rng).expect("valid config");
        let mut opt = AdamW::new(AdamWConfig::new(1e-3)).expect("valid optimizer");
        let x = Tensor::from_vec(random(&mut rng, t * d), &[t, d]).expect("shape");
        let target = Tensor::from_vec(random(&mut rng, t * d), &[t, d]).expect("shape");
        let (mut y, mut g, mut dx) = (Tensor::default(), Tensor::default(), Tensor::default());
        let mut tot = [0.0f64; 3];
        let n = if t >= 8192 { 3 } else { 10 };
        for i in 0..n + 1 {
            let t0 = Instant::now();
            layer.forward(&x, &mut y, true).expect("forward");
            let loss = mse(&y, &target, &mut g).expect("loss");
            let t1 = Instant::now();
            layer.backward(&x, &g, &mut dx).expect("backward");
            let t2 = Instant::now();
            opt.step(&mut layer, loss);
            let t3 = Instant::now();
            if i > 0 {
                tot[0] += (t1 - t0).as_secs_f64();
                tot[1] += (t2 - t1).as_secs_f64();
                tot[2] += (t3 - t2).as_secs_f64();
            }
        }
        let ms = |v: f64| v / n as f64 * 1e3;
        println!(
            "{t}x{d}x{h}x{e}: forward {:.2} ms, backward {:.2} ms, adamw {:.2} ms",
            ms(tot[0]),
            ms(tot[1]),
            ms(tot[2])
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--breakdown") {
        breakdown();
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str);
    if let Some(o) = only.filter(|o| *o != "gemm") {
        eprintln!("--only {o}: the only section that runs alone is `gemm`");
        std::process::exit(2);
    }
    let gemm_only = only == Some("gemm");
    let no_peer = gemm_only || args.iter().any(|a| a == "--no-peer");
    let dir = workspace_target().join("autodidact-bench");
    std::fs::create_dir_all(&dir).expect("create target/autodidact-bench");
    let peer = if no_peer {
        None
    } else {
        run_peer(&dir.join("peer-torch_moe.json"), quick)
    };
    let peer_name = peer
        .as_ref()
        .and_then(|p| p["env"]["torch"].as_str())
        .map(|v| format!("pytorch-{}", v.split('+').next().unwrap_or(v)));
    let peer_train = |i: usize| {
        peer.as_ref()
            .and_then(|p| p["train"][i]["ms_per_step"]["median"].as_f64())
    };
    let peer_gflops = |i: usize| {
        peer.as_ref()
            .and_then(|p| p["train"][i]["gflops"]["median"].as_f64())
    };
    let peer_infer = |i: usize| {
        peer.as_ref()
            .and_then(|p| p["inference"][i]["us_per_call"]["median"].as_f64())
    };

    let mut results = Vec::new();
    let mut push = |name: String, unit: &str, lower: bool, s: &Stats, peer_median: Option<f64>| {
        let mut r = json!({"name": name, "unit": unit, "lower_is_better": lower, "median": s.median, "min": s.min, "max": s.max, "runs": s.runs});
        if let (Some(pm), Some(pn)) = (peer_median, &peer_name) {
            r["peer"] = json!(pn);
            r["peer_median"] = json!(pm);
        }
        results.push(r);
    };

    if !gemm_only {
        moe_tables(quick, &peer_train, &peer_gflops, &peer_infer, &mut push);
    }
    println!("\n| GEMM f32 (C = A·B, row-major) | GFLOP/s med [min,max] |");
    println!("|---|---|");
    for group in gemm_groups() {
        wait_quiet();
        let rounds = if quick { 3 } else { 15 };
        for (r, s) in group.iter().zip(bench_gemm_group(&group, rounds)) {
            println!(
                "| {} | {:.1} [{:.1}, {:.1}] |",
                r.label, s.median, s.min, s.max
            );
            push(r.name.clone(), "GFLOP/s", false, &s, None);
        }
    }
    let path = dir.join("core.json");
    if gemm_only {
        // Keep the other sections' entries from the last full run; replace the GEMM ones.
        let old: Option<Value> = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok());
        let kept = old
            .as_ref()
            .and_then(|o| o["results"].as_array())
            .into_iter()
            .flatten()
            .filter(|r| !r["name"].as_str().is_some_and(|n| n.starts_with("gemm/")))
            .cloned()
            .collect::<Vec<_>>();
        results.splice(0..0, kept);
    }
    let out = json!({
        "area": "core",
        "command": if gemm_only {
            "cargo bench -p autodidact-core --bench core -- --only gemm"
        } else {
            "cargo bench -p autodidact-core --bench core"
        },
        "machine": {"cpu": cpu_model(), "threads": rayon::current_num_threads()},
        "results": results,
    });
    std::fs::write(&path, serde_json::to_string_pretty(&out).expect("json"))
        .expect("write core.json");
    println!("\nwrote {}", path.display());
}

type PeerLookup<'a> = &'a dyn Fn(usize) -> Option<f64>;
type Push<'a> = &'a mut dyn FnMut(String, &str, bool, &Stats, Option<f64>);

/// The MoE step and forward tables.
fn moe_tables(
    quick: bool,
    peer_train: PeerLookup<'_>,
    peer_gflops: PeerLookup<'_>,
    peer_infer: PeerLookup<'_>,
    push: Push<'_>,
) {
    println!(
        "| shape (T,d,h,E) k=2 | ms/step med [min,max] | GFLOP/s | PyTorch ms | ratio (torch/ours) |"
    );
    println!("|---|---|---|---|---|");
    for (i, &(t, d, h, e)) in SHAPES.iter().enumerate() {
        wait_quiet();
        let iters = match (quick, i) {
            (true, _) => 5,
            (false, 3) => 10,
            _ => 20,
        };
        let (ms, gf) = bench_step(t, d, h, e, iters);
        let pm = peer_train(i);
        println!(
            "| {t},{d},{h},{e} | {:.2} [{:.2}, {:.2}] | {:.1} | {} | {} |",
            ms.median,
            ms.min,
            ms.max,
            gf.median,
            pm.map_or("-".into(), |v| format!("{v:.2}")),
            pm.map_or("-".into(), |v| format!("{:.2}×", v / ms.median))
        );
        push(format!("moe_step/{t}x{d}x{h}x{e}"), "ms", true, &ms, pm);
        push(
            format!("moe_step_gflops/{t}x{d}x{h}x{e}"),
            "GFLOP/s",
            false,
            &gf,
            peer_gflops(i),
        );
    }
    println!("\n| forward (256,64,256,8) | µs/call med [min,max] | PyTorch µs |");
    println!("|---|---|---|");
    for (i, batch) in [1usize, 32].into_iter().enumerate() {
        wait_quiet();
        let s = bench_forward(batch, if quick { 2000 } else { 20000 });
        let pm = peer_infer(i);
        println!(
            "| batch {batch} | {:.2} [{:.2}, {:.2}] | {} |",
            s.median,
            s.min,
            s.max,
            pm.map_or("-".into(), |v| format!("{v:.1}"))
        );
        push(format!("moe_forward/batch{batch}"), "µs", true, &s, pm);
    }
}
