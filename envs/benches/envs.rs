//! Env throughput: native CartPole (single and ×8 vectorised) and Gymnasium CartPole through
//! the bridge, against a plain Python Gymnasium loop measured in the same run by
//! `../shared/anchors/gym_speed.py`. Prints a table and writes
//! `<target>/autodidact-bench/envs.json` (format: `../shared/BENCH_FORMAT.md`).
//!
//! Run: `cargo bench -p autodidact-envs --bench envs`
//! Env vars: `AUTODIDACT_ANCHORS` (anchor scripts dir), `AUTODIDACT_BENCH_PEER_TIMEOUT` (s).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use autodidact_envs::{Action, Env, VecEnv, make};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

struct Figure {
    name: &'static str,
    runs: Vec<f64>,
    peer: Option<(&'static str, f64)>,
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn single(env: &mut dyn Env, steps: usize, seed: u64) -> f64 {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    env.reset(Some(seed)).expect("reset");
    let t0 = Instant::now();
    for _ in 0..steps {
        // Random actions drawn inside the loop, like the peer's `action_space.sample()`.
        let s = env
            .step(&Action::Discrete(rng.random_range(0..2)))
            .expect("step");
        if s.done() {
            env.reset(None).expect("reset");
        }
    }
    steps as f64 / t0.elapsed().as_secs_f64()
}

fn vec8(steps: usize, seed: u64) -> f64 {
    let mut v = VecEnv::make("CartPole-v1", 8).expect("vec env");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    v.reset(Some(seed)).expect("reset");
    let calls = steps / 8;
    let t0 = Instant::now();
    for _ in 0..calls {
        let actions: Vec<Action> = (0..8)
            .map(|_| Action::Discrete(rng.random_range(0..2)))
            .collect();
        v.step(&actions).expect("step");
    }
    (calls * 8) as f64 / t0.elapsed().as_secs_f64()
}

/// `gym:CartPole-v1`, or with explicit busy-poll settings when `AUTODIDACT_BENCH_RUST_SPIN_US`
/// / `AUTODIDACT_BENCH_PY_SPIN_US` are set (for tuning the defaults on a given machine).
fn bridge_env() -> autodidact_envs::Result<Box<dyn Env>> {
    let rust = std::env::var("AUTODIDACT_BENCH_RUST_SPIN_US")
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    let py = std::env::var("AUTODIDACT_BENCH_PY_SPIN_US").ok();
    if rust.is_none() && py.is_none() {
        return make("gym:CartPole-v1");
    }
    let mut t = autodidact_envs::bridge::gym_transport("CartPole-v1")?;
    if let (autodidact_envs::Transport::Exec { args, .. }, Some(py)) = (&mut t, py) {
        args.extend(["--spin-us".to_string(), py]);
    }
    let mut cfg = autodidact_envs::RemoteConfig::default();
    if let Some(us) = rust {
        cfg.spin = Duration::from_micros(us);
    }
    Ok(Box::new(autodidact_envs::RemoteEnv::connect(t, cfg)?))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        })
}

/// Runs the anchor script with a time limit; returns its JSON, or why there is none.
fn run_peer(out: &Path) -> Result<Value, String> {
    let dir = std::env::var_os("AUTODIDACT_ANCHORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/anchors"));
    let script = dir.join("gym_speed.py");
    if !script.is_file() {
        return Err(format!("{} not found", script.display()));
    }
    let limit = std::env::var("AUTODIDACT_BENCH_PEER_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(180u64);
    let mut child = Command::new("python3")
        .arg(&script)
        .args(["--steps", "50000", "--trials", "3", "--out"])
        .arg(out)
        .spawn()
        .map_err(|e| format!("python3: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(limit);
    loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(st) if st.success() => break,
            Some(st) => return Err(format!("gym_speed.py exited with {st}")),
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("gym_speed.py took longer than {limit} s"));
            }
            None => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    let text = std::fs::read_to_string(out).map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

/// The same loops as gym_speed.py's `single_make` and `sync_vector_8` variants, without its
/// wait for a quiet machine; used only when gym_speed.py cannot finish in time.
const INLINE_PEER: &str = r#"
import json, sys, time
import gymnasium as gym
def single(seed, steps=50000):
    env = gym.make("CartPole-v1"); env.reset(seed=seed); env.action_space.seed(seed)
    t0 = time.perf_counter()
    for _ in range(steps):
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc: env.reset()
    return steps / (time.perf_counter() - t0)
def vec(seed, steps=50000):
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1") for _ in range(8)])
    envs.reset(seed=seed); envs.action_space.seed(seed)
    calls = steps // 8; t0 = time.perf_counter()
    for _ in range(calls): envs.step(envs.action_space.sample())
    return calls * 8 / (time.perf_counter() - t0)
med = lambda xs: sorted(xs)[len(xs) // 2]
r = {"single_make": {"env_steps_per_s": {"median": med([single(s) for s in range(3)])}},
     "sync_vector_8": {"env_steps_per_s": {"median": med([vec(s) for s in range(3)])}}}
json.dump({"source": "inline", "results": r}, open(sys.argv[1], "w"))
"#;

fn run_inline_peer(out: &Path) -> Result<Value, String> {
    let st = Command::new("python3")
        .args(["-c", INLINE_PEER])
        .arg(out)
        .status()
        .map_err(|e| format!("python3: {e}"))?;
    if !st.success() {
        return Err(format!("inline peer loop exited with {st}"));
    }
    let text = std::fs::read_to_string(out).map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo test --benches` runs bench binaries with no `--bench`; do nothing then.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let out_dir = target_dir().join("autodidact-bench");
    std::fs::create_dir_all(&out_dir).expect("create bench dir");
    let runs = 7;

    let only_bridge = std::env::var_os("AUTODIDACT_BENCH_ONLY_BRIDGE").is_some();
    let runs = if only_bridge { 0 } else { runs };
    let mut native = make("CartPole-v1").expect("native cartpole");
    single(native.as_mut(), 200_000, 99); // warm-up
    let cartpole: Vec<f64> = (0..runs)
        .map(|i| single(native.as_mut(), 2_000_000, i))
        .collect();
    let cartpole_vec8: Vec<f64> = (0..runs).map(|i| vec8(2_000_000, i)).collect();

    let (bridge, bridge_note) = match bridge_env() {
        Ok(mut b) => {
            single(b.as_mut(), 2_000, 99);
            let r: Vec<f64> = (0..5).map(|i| single(b.as_mut(), 20_000, i)).collect();
            let _ = b.close();
            (r, None)
        }
        Err(e) => (Vec::new(), Some(format!("bridge unavailable: {e}"))),
    };

    let peer_out = out_dir.join("peer-gym_speed.json");
    let peer = if only_bridge {
        Err("skipped".to_string())
    } else {
        run_peer(&peer_out)
    };
    let peer = peer.or_else(|e| {
        if only_bridge {
            return Err(e);
        }
        println!("note: {e}; measuring the same Python loops inline instead");
        run_inline_peer(&out_dir.join("peer-inline.json"))
    });
    let peer_source = match &peer {
        Ok(p) if p.get("source").is_some() => "inline loop (gym_speed.py did not finish)",
        Ok(_) => "../shared/anchors/gym_speed.py",
        Err(_) => "none",
    };
    let peer_fig = |variant: &str| -> Option<f64> {
        peer.as_ref()
            .ok()?
            .get("results")?
            .get(variant)?
            .get("env_steps_per_s")?
            .get("median")?
            .as_f64()
    };
    let peer_noisy = peer
        .as_ref()
        .ok()
        .and_then(|p| p.get("results"))
        .and_then(Value::as_object)
        .map(|r| {
            r.values()
                .any(|v| v.get("noisy") == Some(&Value::Bool(true)))
        });

    let single_make = peer_fig("single_make").map(|m| ("python-gymnasium", m));
    let figures = vec![
        Figure {
            name: "cartpole/steps_per_s",
            runs: cartpole,
            peer: single_make,
        },
        Figure {
            name: "cartpole_vec8/steps_per_s",
            runs: cartpole_vec8,
            peer: peer_fig("sync_vector_8").map(|m| ("python-gymnasium-sync-vector-8", m)),
        },
        Figure {
            name: "bridge_cartpole/steps_per_s",
            runs: bridge,
            peer: single_make,
        },
    ];

    println!("| name | steps/s median [min, max] | runs | peer | peer median | ratio |");
    println!("|---|---|---|---|---|---|");
    let mut results = Vec::new();
    for f in &figures {
        if f.runs.is_empty() {
            continue;
        }
        let med = median(&f.runs);
        let min = f.runs.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = f.runs.iter().cloned().fold(0.0, f64::max);
        let (pn, pm) = f.peer.map_or(("-".to_string(), "-".to_string()), |(n, m)| {
            (n.to_string(), format!("{m:.0}"))
        });
        let ratio = f
            .peer
            .map_or("-".to_string(), |(_, m)| format!("{:.2}x", med / m));
        println!(
            "| {} | {med:.0} [{min:.0}, {max:.0}] | {} | {pn} | {pm} | {ratio} |",
            f.name,
            f.runs.len()
        );
        let mut r = json!({"name": f.name, "unit": "steps/s", "lower_is_better": false,
            "median": med, "min": min, "max": max, "runs": f.runs.len()});
        if let Some((n, m)) = f.peer {
            r["peer"] = json!(n);
            r["peer_median"] = json!(m);
        }
        results.push(r);
    }
    if let Some(n) = bridge_note {
        println!("note: {n}");
    }
    match &peer {
        Err(e) => println!("note: no peer figures: {e}"),
        Ok(_) if peer_noisy == Some(true) => {
            println!("note: the peer marked some of its runs noisy (shared machine)")
        }
        Ok(_) => {}
    }
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let doc = json!({
        "area": "envs",
        "command": "cargo bench -p autodidact-envs --bench envs",
        "machine": {"cpu": cpu_model(), "threads": threads},
        "results": results,
        "peer_source": peer_source,
        "note": "provisional: measured on a machine shared with other builds",
    });
    let path = out_dir.join("envs.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&doc).expect("json") + "\n",
    )
    .expect("write envs.json");
    println!("wrote {}", path.display());
}
