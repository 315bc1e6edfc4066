//! How fast `autodidact replay <db> summary` answers on a file of 10 million transitions.
//!
//! Builds the file once through the real writer (CartPole-sized observations, 50-step
//! episodes, so 200 000 episodes, a handful of models and reflections) under
//! `<target>/autodidact-bench/`, reuses it on later runs, then times the binary end to end
//! (process start, open, one snapshot, print) and the library call alone. Prints a table and
//! writes `<target>/autodidact-bench/analysis.json` (format: `shared/BENCH_FORMAT.md`).
//!
//! Run: `cargo bench -p autodidact --bench replay_summary`

mod common;
use common::{cpu_name, median, target_dir, write_results};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use autodidact_replay::*;

const TRANSITIONS: usize = 10_000_000;
const EPISODE_LEN: usize = 50;
const RUNS: usize = 7;

/// Whether `path` already holds the finished benchmark file (an interrupted build does not).
fn ready(path: &Path) -> bool {
    Inspector::open(path)
        .and_then(|i| i.view()?.overview(0))
        .map(|o| o.transitions_kept() as usize == TRANSITIONS && o.models == 10)
        .unwrap_or(false)
}

fn build(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let t0 = Instant::now();
    let store = ReplayStore::open(
        path,
        StoreOptions {
            mirror: MirrorOptions {
                capacity: 10_000,
                ..MirrorOptions::default()
            },
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let run = store
        .create_run(&RunSpec {
            env_id: "CartPole-v1".into(),
            obs_dims: vec![4],
            obs_dtype: Dtype::F32,
            action_space: ActionSpace::Discrete { n: 2 },
            config: serde_json::json!({}),
            code_version: "bench".into(),
        })
        .unwrap();
    let handle = store.start_writer(WriterOptions::default()).unwrap();
    let w = handle.writer();
    let episodes = TRANSITIONS / EPISODE_LEN;
    let mut obs = [0f32; 4];
    for e in 0..episodes {
        let mut ep = w.begin_episode(&run, Some(1 + (e * 10 / episodes) as i64));
        for t in 0..EPISODE_LEN {
            obs[0] = (e as f32 * 0.001).sin();
            obs[1] = t as f32 * 0.02;
            ep.push(&obs, ActionRef::Discrete((t % 2) as i64), 1.0, None)
                .unwrap();
        }
        ep.finish(&obs, EpisodeEnd::Terminated).unwrap();
        if e % 20_000 == 0 {
            eprint!("\rbuilding: {e}/{episodes} episodes");
        }
    }
    handle.close().unwrap();
    let mut parent = None;
    for v in 0..10 {
        let m = store
            .register_model(&NewModel {
                parent,
                checkpoint_path: format!("ckpt/{v}"),
                checksum: "0".into(),
                metrics: serde_json::json!({"expert_usage": [0.25, 0.25, 0.25, 0.25]}),
            })
            .unwrap();
        store.promote(m.version).unwrap();
        store
            .add_reflection(&NewReflection {
                kind: "promotion".into(),
                model_version: Some(m.version),
                data: serde_json::json!({}),
                sentence: format!("v{} promoted", m.version),
            })
            .unwrap();
        parent = Some(m.version);
    }
    drop(store);
    eprintln!(
        "\rbuilt {} in {:.0} s",
        path.display(),
        t0.elapsed().as_secs_f64()
    );
}

fn main() {
    let dir = target_dir().join("autodidact-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("analysis_10m.sqlite");
    if !ready(&db) {
        build(&db);
    }
    let size = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);

    let bin = env!("CARGO_BIN_EXE_autodidact");
    let mut cli_ms = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        let out = Command::new(bin)
            .arg("replay")
            .arg(&db)
            .arg("summary")
            .output()
            .unwrap();
        cli_ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut lib_ms = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        let o = Inspector::open(&db)
            .unwrap()
            .view()
            .unwrap()
            .overview(20)
            .unwrap();
        lib_ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(o.transitions_kept() as usize, TRANSITIONS);
    }

    println!(
        "file: {} ({:.0} MiB, {TRANSITIONS} transitions, {} episodes)",
        db.display(),
        size as f64 / (1 << 20) as f64,
        TRANSITIONS / EPISODE_LEN
    );
    println!(
        "{:<34} {:>9} {:>9} {:>9}",
        "name", "median ms", "min ms", "max ms"
    );
    let fold = |v: &[f64], f: fn(f64, f64) -> f64, init| v.iter().copied().fold(init, f);
    let mut results = Vec::new();
    for (name, v) in [
        ("summary/10m_transitions", &cli_ms),
        ("summary_library/10m_transitions", &lib_ms),
    ] {
        let (med, min, max) = (
            median(v),
            fold(v, f64::min, f64::INFINITY),
            fold(v, f64::max, 0.0),
        );
        println!("{name:<34} {med:>9.1} {min:>9.1} {max:>9.1}");
        results.push(serde_json::json!({
            "name": name, "unit": "ms", "lower_is_better": true,
            "median": med, "min": min, "max": max, "runs": v.len(),
        }));
    }
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let doc = serde_json::json!({
        "area": "analysis",
        "command": "cargo bench -p autodidact --bench replay_summary",
        "machine": {"cpu": cpu_name(), "threads": threads},
        "results": results,
    });
    write_results("analysis.json", &doc);
}
