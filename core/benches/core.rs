//! Core benchmark: MoE training steps and forward latency against PyTorch on the same machine,
//! and the machine's GEMM throughput with the GEMM crate we use (and its alternative).
//!
//! Run: `cargo bench -p autodidact-core --bench core` (add `-- --no-peer` to skip PyTorch,
//! `-- --quick` for fewer iterations, `-- --no-wait` not to wait for a quiet machine). The PyTorch peer is `../shared/anchors/torch_moe_bench.py`,
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

fn bench_gemm(n: usize, iters: usize, which: &str) -> Stats {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let a = random(&mut rng, n * n);
    let b = random(&mut rng, n * n);
    let mut c = vec![0.0f32; n * n];
    let mut run = || match which {
        "gemm" => matmul(n, n, n, &a, false, &b, false, &mut c, false, Par::Rayon)
            .expect("square operands"),
        _ => unsafe {
            // SAFETY: a, b and c are n×n, dense and row-major.
            matrixmultiply::sgemm(
                n,
                n,
                n,
                1.0,
                a.as_ptr(),
                n as isize,
                1,
                b.as_ptr(),
                n as isize,
                1,
                0.0,
                c.as_mut_ptr(),
                n as isize,
                1,
            )
        },
    };
    run();
    let mut gf = Vec::new();
    for _ in 0..iters {
        let t0 = Instant::now();
        run();
        gf.push(2.0 * (n * n * n) as f64 / t0.elapsed().as_secs_f64() / 1e9);
    }
    stats(gf)
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
    let no_peer = args.iter().any(|a| a == "--no-peer");
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
    println!("\n| GEMM 2048³ f32 | GFLOP/s med [min,max] |");
    println!("|---|---|");
    for (which, label, name) in [
        (
            "ours",
            "kernels::matmul, 2 threads (matrixmultiply kernel, row-split on rayon)",
            "gemm/2048",
        ),
        (
            "gemm-crate",
            "gemm crate with its own rayon split, 2 threads",
            "gemm/2048/gemm-crate",
        ),
        ("seq", "kernels::matmul, 1 thread", "gemm/2048/1thread"),
    ] {
        wait_quiet();
        let s = bench_gemm(2048, if quick { 3 } else { 10 }, which);
        println!("| {label} | {:.1} [{:.1}, {:.1}] |", s.median, s.min, s.max);
        push(name.to_string(), "GFLOP/s", false, &s, None);
    }
    let out = json!({
        "area": "core",
        "command": "cargo bench -p autodidact-core --bench core",
        "machine": {"cpu": cpu_model(), "threads": rayon::current_num_threads()},
        "results": results,
    });
    let path = dir.join("core.json");
    std::fs::write(&path, serde_json::to_string_pretty(&out).expect("json"))
        .expect("write core.json");
    println!("\nwrote {}", path.display());
}
