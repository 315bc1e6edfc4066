//! Replay benchmarks: ingest throughput against the raw SQLite ceiling, prioritized sampling
//! throughput, and bytes on disk per transition. Prints a table and writes
//! `<target>/autodidact-bench/replay.json` (format: `shared/BENCH_FORMAT.md`).
//!
//! Run: `cargo bench -p autodidact-replay --bench replay`

use std::path::{Path, PathBuf};
use std::time::Instant;

use autodidact_replay::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rusqlite::{Connection, params};

const RUNS: usize = 5;
const EPISODE_LEN: usize = 50;

struct Figure {
    name: String,
    unit: &'static str,
    lower_is_better: bool,
    samples: Vec<f64>,
    peer: Option<(&'static str, f64)>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// CPU time of the calling thread, in seconds. On a machine shared with other builds the wall
/// clock measures the neighbours as much as the code; this measures the code.
fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return f64::NAN;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn spec(obs_len: usize) -> RunSpec {
    RunSpec {
        env_id: if obs_len == 4 {
            "CartPole-v1".into()
        } else {
            "Synthetic-1KiB".into()
        },
        obs_dims: vec![obs_len],
        obs_dtype: Dtype::F32,
        action_space: ActionSpace::Discrete { n: 2 },
        config: serde_json::json!({}),
        code_version: "bench".into(),
    }
}

fn observation(obs_len: usize, t: usize) -> Vec<f32> {
    (0..obs_len)
        .map(|i| (i as f32 * 0.01 + t as f32 * 0.1).sin())
        .collect()
}

/// Transitions/s through the full path: EpisodeWriter -> channel -> writer thread ->
/// batched transaction -> mirror.
fn ingest_store(
    path: &Path,
    obs_len: usize,
    transitions: usize,
    mirror: usize,
) -> (f64, ReplayStore) {
    let store = ReplayStore::open(
        path,
        StoreOptions {
            mirror: MirrorOptions {
                capacity: mirror,
                alpha: 0.6,
            },
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let run = store.create_run(&spec(obs_len)).unwrap();
    let obs: Vec<Vec<f32>> = (0..=EPISODE_LEN).map(|t| observation(obs_len, t)).collect();
    let h = store.start_writer(WriterOptions::default()).unwrap();
    let w = h.writer();
    let start = Instant::now();
    for e in 0..transitions / EPISODE_LEN {
        let mut ep = w.begin_episode(&run, Some(1));
        for (t, o) in obs.iter().take(EPISODE_LEN).enumerate() {
            ep.push(o, ActionRef::Discrete((t + e) as i64 % 2), 1.0, Some(0.5))
                .unwrap();
        }
        ep.finish(&obs[EPISODE_LEN], EpisodeEnd::Terminated)
            .unwrap();
    }
    h.close().unwrap();
    let secs = start.elapsed().as_secs_f64();
    (transitions as f64 / secs, store)
}

/// The ceiling: the same schema and pragmas, a bare prepared-statement insert loop on one
/// thread, one transaction per 8192 transitions (the writer's default batch), no channel, no
/// aggregates, no mirror.
fn ingest_raw(path: &Path, obs_len: usize, transitions: usize) -> f64 {
    drop(ReplayStore::open(path, StoreOptions::default()).unwrap());
    let mut conn = Connection::open(path).unwrap();
    conn.execute_batch(
        "PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL; PRAGMA cache_size = -16384;",
    )
    .unwrap();
    conn.execute(
        "INSERT INTO runs (env_id, obs_dims, obs_dtype, action_space, config, code_version, started_at) \
         VALUES ('raw', '[4]', 'f32', '{}', '{}', 'raw', 0)",
        [],
    )
    .unwrap();
    let run_id = conn.last_insert_rowid();
    let obs: Vec<Vec<u8>> = (0..=EPISODE_LEN)
        .map(|t| {
            observation(obs_len, t)
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect()
        })
        .collect();
    let start = Instant::now();
    let episodes = transitions / EPISODE_LEN;
    let per_tx = 8192 / EPISODE_LEN;
    let mut e = 0;
    while e < episodes {
        let tx = conn.transaction().unwrap();
        {
            let mut ins_ep = tx
                .prepare_cached(
                    "INSERT INTO episodes (run_id, model_version, length, episode_return, terminated, \
                     truncated, started_at, ended_at, final_obs, payload_bytes) \
                     VALUES (?1, 1, ?2, ?3, 1, 0, 0, 0, ?4, 0)",
                )
                .unwrap();
            let mut ins = tx
                .prepare_cached(
                    "INSERT INTO transitions (episode_id, step, obs, action_int, action_vec, reward, \
                     terminated, truncated, behaviour) VALUES (?1, ?2, ?3, ?4, NULL, ?5, ?6, 0, ?7)",
                )
                .unwrap();
            for _ in 0..per_tx.min(episodes - e) {
                ins_ep
                    .execute(params![run_id, EPISODE_LEN as i64, 50.0, &obs[EPISODE_LEN]])
                    .unwrap();
                let ep_id = tx.last_insert_rowid();
                for (t, o) in obs.iter().take(EPISODE_LEN).enumerate() {
                    ins.execute(params![
                        ep_id,
                        t as i64,
                        o,
                        ((t + e) % 2) as i64,
                        1.0,
                        t + 1 == EPISODE_LEN,
                        0.5
                    ])
                    .unwrap();
                }
                e += 1;
            }
        }
        tx.commit().unwrap();
    }
    transitions as f64 / start.elapsed().as_secs_f64()
}

fn file_bytes(path: &Path) -> u64 {
    let mut total = 0;
    for suffix in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{suffix}", path.display()));
        if suffix != "-shm" {
            total += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        }
    }
    total
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target"),
    }
}

fn cpu_name() -> String {
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

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let mut figures = Vec::new();

    // AUTODIDACT_REPLAY_BENCH_SAMPLE_ONLY=1 skips the ingest comparison (and writes no JSON),
    // for quick iterations on the sampler.
    let sample_only = std::env::var_os("AUTODIDACT_REPLAY_BENCH_SAMPLE_ONLY").is_some();
    let ingest_cases: &[(&str, usize, usize)] = if sample_only {
        &[]
    } else {
        &[
            ("ingest/cartpole", 4, 200_000),
            ("ingest/1kib", 256, 50_000),
        ]
    };
    for &(name, obs_len, transitions) in ingest_cases {
        let mut ours = Vec::new();
        let mut raw = Vec::new();
        for r in 0..RUNS {
            // Alternate so that background load hits both sides alike.
            let p = dir.path().join(format!("{}-{r}-raw.sqlite", obs_len));
            raw.push(ingest_raw(&p, obs_len, transitions));
            let p = dir.path().join(format!("{}-{r}.sqlite", obs_len));
            ours.push(ingest_store(&p, obs_len, transitions, transitions).0);
        }
        figures.push(Figure {
            name: name.into(),
            unit: "transitions/s",
            lower_is_better: false,
            samples: ours,
            peer: Some(("raw-sqlite", median(&raw))),
        });
    }

    // Disk use and sampling both use one CartPole store of 1M transitions.
    let n: usize = std::env::var("AUTODIDACT_REPLAY_BENCH_WINDOW")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let path = dir.path().join("big.sqlite");
    let (_, store) = ingest_store(&path, 4, n, n);
    drop(store);
    let disk = file_bytes(&path) as f64 / n as f64;
    figures.push(Figure {
        name: "disk/cartpole".into(),
        unit: "bytes/transition",
        lower_is_better: true,
        samples: vec![disk],
        peer: None,
    });

    // The official figure uses a 1M-transition window (a DQN-sized buffer, mostly out of
    // cache); the 100k one shows the same code when the window fits the caches better.
    for (window, suffix) in [(n, ""), (n / 10, "@100k")] {
        let t0 = Instant::now();
        let store = ReplayStore::open(
            &path,
            StoreOptions {
                mirror: MirrorOptions {
                    capacity: window,
                    alpha: 0.6,
                },
                ..StoreOptions::default()
            },
        )
        .unwrap();
        let rebuild_s = t0.elapsed().as_secs_f64();
        let sampler = store.sampler();
        assert_eq!(sampler.len(), window);
        let mut rng = StdRng::seed_from_u64(1);
        let mut batch = SampleBatch::with_capacity(256);
        let nstep = NStep { n: 3, gamma: 0.99 };
        // Spread priorities so the tree is not uniform.
        for _ in 0..2000 {
            sampler
                .sample_uniform(&mut rng, 256, nstep, &mut batch)
                .unwrap();
            let p: Vec<f32> = batch.ids.iter().map(|id| 0.1 + (id % 97) as f32).collect();
            sampler.update_priorities(&batch.ids, &p).unwrap();
        }
        let mut sample = Vec::new();
        let mut sample_cpu = Vec::new();
        let mut with_update = Vec::new();
        let batches = 20_000;
        let mut prios = vec![1.0f32; 256];
        for _ in 0..RUNS {
            let start = Instant::now();
            let cpu = thread_cpu_s();
            for _ in 0..batches {
                sampler
                    .sample_prioritized(&mut rng, 256, nstep, 0.4, &mut batch)
                    .unwrap();
            }
            sample_cpu.push(batches as f64 / (thread_cpu_s() - cpu));
            sample.push(batches as f64 / start.elapsed().as_secs_f64());
            let start = Instant::now();
            for _ in 0..batches / 4 {
                sampler
                    .sample_prioritized(&mut rng, 256, nstep, 0.4, &mut batch)
                    .unwrap();
                for (p, id) in prios.iter_mut().zip(&batch.ids) {
                    *p = 0.5 + (id % 13) as f32;
                }
                sampler.update_priorities(&batch.ids, &prios).unwrap();
            }
            with_update.push((batches / 4) as f64 / start.elapsed().as_secs_f64());
        }
        for (name, unit, samples) in [
            ("sample_prioritized/256", "batches/s", sample),
            ("sample_prioritized_cpu/256", "batches/cpu-s", sample_cpu),
            ("sample_prioritized_update/256", "batches/s", with_update),
        ] {
            figures.push(Figure {
                name: format!("{name}{suffix}"),
                unit,
                lower_is_better: false,
                samples,
                peer: None,
            });
        }
        figures.push(Figure {
            name: format!("rebuild{}", if suffix.is_empty() { "@1m" } else { suffix }),
            unit: "s",
            lower_is_better: true,
            samples: vec![rebuild_s],
            peer: None,
        });
    }

    println!(
        "{:<32} {:>14} {:>14} {:>14} {:>16}  unit",
        "name", "median", "min", "max", "peer (median)"
    );
    for f in &figures {
        let min = f.samples.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = f.samples.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let peer = match f.peer {
            Some((p, m)) => format!("{p} {m:.0} ({:.0}%)", 100.0 * median(&f.samples) / m),
            None => String::new(),
        };
        println!(
            "{:<32} {:>14.1} {:>14.1} {:>14.1} {:>16}  {}",
            f.name,
            median(&f.samples),
            min,
            max,
            peer,
            f.unit
        );
    }

    if sample_only {
        return;
    }
    let results: Vec<serde_json::Value> = figures
        .iter()
        .map(|f| {
            let mut v = serde_json::json!({
                "name": f.name,
                "unit": f.unit,
                "lower_is_better": f.lower_is_better,
                "median": median(&f.samples),
                "min": f.samples.iter().cloned().fold(f64::INFINITY, f64::min),
                "max": f.samples.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                "runs": f.samples.len(),
            });
            if let Some((peer, m)) = f.peer {
                v["peer"] = peer.into();
                v["peer_median"] = m.into();
            }
            v
        })
        .collect();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let doc = serde_json::json!({
        "area": "replay",
        "command": "cargo bench -p autodidact-replay --bench replay",
        "machine": {"cpu": cpu_name(), "threads": threads},
        "results": results,
    });
    let out = target_dir().join("autodidact-bench");
    std::fs::create_dir_all(&out).unwrap();
    let file = out.join("replay.json");
    std::fs::write(&file, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    println!("wrote {}", file.display());
}
