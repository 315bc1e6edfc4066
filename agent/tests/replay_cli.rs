//! `autodidact replay` as a user runs it: the real binary against files written through the
//! real replay API (and, for old or foreign files, forged by hand with SQLite).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use autodidact_replay::*;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_autodidact"))
}

fn replay(db: &Path, args: &[&str]) -> Output {
    bin()
        .arg("replay")
        .arg(db)
        .args(args)
        .output()
        .expect("the binary runs")
}

/// Runs a command that must succeed; returns its stdout.
fn ok(db: &Path, args: &[&str]) -> String {
    let out = replay(db, args);
    assert!(
        out.status.success(),
        "replay {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Runs a command that must fail; returns its stderr.
fn fails(db: &Path, args: &[&str]) -> String {
    let out = replay(db, args);
    assert!(
        !out.status.success(),
        "replay {args:?} should fail, printed {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// What the generator wrote, to compare exports with.
#[derive(Debug, Clone, PartialEq)]
struct Ep {
    id: i64,
    run: i64,
    model: Option<i64>,
    ret: f64,
    steps: Vec<(Vec<f32>, i64, f32)>,
    terminated: bool,
}

fn cart_spec() -> RunSpec {
    RunSpec {
        env_id: "CartPole-v1".into(),
        obs_dims: vec![4],
        obs_dtype: Dtype::F32,
        action_space: ActionSpace::Discrete { n: 2 },
        config: serde_json::json!({}),
        code_version: "test".into(),
    }
}

fn obs(ep: usize, t: usize) -> Vec<f32> {
    vec![
        ep as f32,
        t as f32 * 0.1,
        -0.3 + ep as f32 * 0.01,
        1.0 / (t as f32 + 3.0),
    ]
}

/// Run 1 (CartPole, f32 [4], discrete): 30 episodes of length 3 + i/3, model v1 for the
/// first 15 and v2 after, return = length. Run 2 (Pendulum, f16 [3], continuous 1): 5
/// episodes of 4 steps with reward -1, no model. Models v1, v2 (champion), v3 (rejected);
/// v1 and v2 carry expert usage. Reflections: promotion, drift, lessons (with regions).
fn make_db(dir: &Path, expert_stats: bool) -> (PathBuf, Vec<Ep>) {
    let path = dir.join("replay.sqlite");
    let store = ReplayStore::open(&path, StoreOptions::default()).unwrap();
    let cart = store.create_run(&cart_spec()).unwrap();
    let pend = store
        .create_run(&RunSpec {
            env_id: "Pendulum-v1".into(),
            obs_dims: vec![3],
            obs_dtype: Dtype::F16,
            action_space: ActionSpace::Continuous { dim: 1 },
            config: serde_json::json!({}),
            code_version: "test".into(),
        })
        .unwrap();
    let usage = |u: &[f64]| {
        if expert_stats {
            serde_json::json!({"return": 10.0, "expert_usage": u})
        } else {
            serde_json::json!({"return": 10.0})
        }
    };
    let mut parent = None;
    for (i, u) in [
        [0.7, 0.2, 0.1, 0.0],
        [0.25, 0.25, 0.3, 0.2],
        [0.0, 0.0, 0.5, 0.5],
    ]
    .iter()
    .enumerate()
    {
        let m = store
            .register_model(&NewModel {
                parent,
                checkpoint_path: format!("ckpt/{i}"),
                checksum: "00".into(),
                metrics: usage(u),
            })
            .unwrap();
        parent = Some(m.version);
    }
    store.promote(1).unwrap();
    store.promote(2).unwrap();
    store.reject(3).unwrap();
    for (kind, mv, data, sentence) in [
        (
            "promotion",
            Some(2),
            serde_json::json!({"gain": 4.5}),
            "v2 beat v1 by 4.5 return over 20 episodes",
        ),
        (
            "drift",
            None,
            serde_json::json!({"kl": 0.3, "steps": 40, "signal": "observations"}),
            "observations drifted",
        ),
        (
            "lessons",
            Some(2),
            if expert_stats {
                serde_json::json!({"experts_by_region": {
                    "regions": ["pole left", "pole right"],
                    "usage": [[0.6, 0.1, 0.2, 0.1], [0.1, 0.5, 0.2, 0.2]]}})
            } else {
                serde_json::json!({"note": "none"})
            },
            "expert 0 handles the pole leaning left",
        ),
    ] {
        store
            .add_reflection(&NewReflection {
                kind: kind.into(),
                model_version: mv,
                data,
                sentence: sentence.into(),
            })
            .unwrap();
    }
    let h = store.start_writer(WriterOptions::default()).unwrap();
    let w = h.writer();
    let mut eps = Vec::new();
    for i in 0..30usize {
        let model = Some(if i < 15 { 1 } else { 2 });
        let len = 3 + i / 3;
        let mut ew = w.begin_episode(&cart, model);
        let mut steps = Vec::new();
        for t in 0..len {
            let o = obs(i, t);
            let a = ((i + t) % 2) as i64;
            ew.push(&o, ActionRef::Discrete(a), 1.0, Some(0.5)).unwrap();
            steps.push((o, a, 1.0));
        }
        let terminated = i % 4 != 0;
        let end = if terminated {
            EpisodeEnd::Terminated
        } else {
            EpisodeEnd::Truncated
        };
        ew.finish(&obs(i, len), end).unwrap();
        eps.push(Ep {
            id: i as i64 + 1,
            run: cart.id,
            model,
            ret: len as f64,
            steps,
            terminated,
        });
    }
    for i in 0..5usize {
        let mut ew = w.begin_episode(&pend, None);
        for t in 0..4 {
            ew.push(
                &[0.5, t as f32, i as f32],
                ActionRef::Continuous(&[0.25 * t as f32]),
                -1.0,
                None,
            )
            .unwrap();
        }
        ew.finish(&[0.0, 0.0, 0.0], EpisodeEnd::Truncated).unwrap();
    }
    h.close().unwrap();
    drop(store);
    (path, eps)
}

fn png_stats(path: &Path) -> (u32, u32, usize, f64) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let bytes = &buf[..info.buffer_size()];
    let channels = info.color_type.samples();
    let mut colours = std::collections::HashSet::new();
    let mut non_white = 0usize;
    for px in bytes.chunks_exact(channels) {
        colours.insert(px.to_vec());
        if px[..3] != [255, 255, 255] {
            non_white += 1;
        }
    }
    let pixels = (info.width * info.height) as f64;
    (
        info.width,
        info.height,
        colours.len(),
        non_white as f64 / pixels,
    )
}

fn bytes_of(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn summary_reports_counts_models_reflections_and_returns() {
    let dir = tempfile::tempdir().unwrap();
    let (db, eps) = make_db(dir.path(), true);
    let text = ok(&db, &["summary"]);
    let transitions: usize = eps.iter().map(|e| e.steps.len()).sum::<usize>() + 5 * 4;
    for want in [
        "runs          2".to_string(),
        "episodes      35 stored (35 ever written)".to_string(),
        format!("transitions   {transitions} stored ({transitions} ever written)"),
        "models        3 versions: champion v2, 1 candidate(s), 1 rejected".to_string(),
        "reflections   3 (".to_string(),
        "best return   12.00 (run 1)".to_string(),
        "CartPole-v1".to_string(),
        "Pendulum-v1".to_string(),
        "discrete(2)".to_string(),
        "box(1)".to_string(),
    ] {
        assert!(text.contains(&want), "summary lacks `{want}`:\n{text}");
    }
    let v: serde_json::Value = serde_json::from_str(&ok(&db, &["summary", "--json"])).unwrap();
    assert_eq!(v["episodes_kept"], 35);
    assert_eq!(v["transitions_kept"], transitions);
    assert_eq!(v["models"]["champion"], 2);
    assert_eq!(v["models"]["rejected"], 1);
    assert_eq!(v["reflections"]["promotion"], 1);
    assert_eq!(v["runs"][0]["best_return"], 12.0);
    assert_eq!(v["recent_returns"].as_array().unwrap().len(), 20);
    assert!(v["file_bytes"].as_u64().unwrap() > 0);
    assert!(v["first_time"].as_f64().unwrap() <= v["last_time"].as_f64().unwrap());
}

#[test]
fn episodes_filter_sort_and_read_back_as_csv_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let (db, eps) = make_db(dir.path(), true);
    let table = ok(
        &db,
        &[
            "episodes", "--run", "1", "--model", "2", "--sort", "return", "--desc", "--limit", "3",
        ],
    );
    let ids: Vec<i64> = table
        .lines()
        .skip(2)
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    // Returns 12, 12, 12 for episodes 28..=30; ties broken by id, descending.
    assert_eq!(ids, vec![30, 29, 28], "{table}");
    assert!(table.contains("v2") && table.contains("12.00"), "{table}");

    let csv = ok(&db, &["episodes", "--run", "1", "--csv"]);
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "id,run_id,model_version,length,episode_return,terminated,truncated,started_at,\
         ended_at,env_step"
    );
    let mut step = 0;
    let rows: Vec<Vec<String>> = lines
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    assert_eq!(rows.len(), eps.len());
    for (r, e) in rows.iter().zip(&eps) {
        step += e.steps.len() as i64;
        assert_eq!(r[0].parse::<i64>().unwrap(), e.id);
        assert_eq!(r[1].parse::<i64>().unwrap(), e.run);
        assert_eq!(r[2], e.model.unwrap().to_string());
        assert_eq!(r[3].parse::<usize>().unwrap(), e.steps.len());
        assert_eq!(r[4].parse::<f64>().unwrap(), e.ret);
        assert_eq!(r[5] == "1", e.terminated);
        assert_eq!(r[9].parse::<i64>().unwrap(), step);
    }

    let json = ok(
        &db,
        &[
            "episodes",
            "--json",
            "--min-return",
            "10",
            "--max-step",
            "200",
        ],
    );
    let got: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut step = 0;
    let want: Vec<i64> = eps
        .iter()
        .filter_map(|e| {
            step += e.steps.len() as i64;
            (e.ret >= 10.0 && step <= 200).then_some(e.id)
        })
        .collect();
    assert!(!want.is_empty());
    assert_eq!(
        got.iter()
            .map(|v| v["id"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        want
    );
    assert!(
        got.iter()
            .all(|v| v["episode_return"].as_f64().unwrap() >= 10.0)
    );

    let none = ok(&db, &["episodes", "--min-return", "1000"]);
    assert!(none.contains("no episodes match"), "{none}");
}

#[test]
fn curve_renders_png_and_svg_with_markers_and_a_sparkline() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = make_db(dir.path(), true);
    let png_path = dir.path().join("curve.png");
    let svg_path = dir.path().join("curve.svg");
    let text = ok(
        &db,
        &[
            "curve",
            "--smooth",
            "3",
            "--out",
            png_path.to_str().unwrap(),
            "--out",
            svg_path.to_str().unwrap(),
        ],
    );
    assert!(text.contains("run 1 (CartPole-v1): 30 episodes"), "{text}");
    assert!(text.contains("run 2 (Pendulum-v1): 5 episodes"), "{text}");
    assert!(text.contains("new model versions: v2 at step"), "{text}");
    assert!(
        text.contains("changes noticed and recalls: drift (observations) at step 40"),
        "{text}"
    );
    assert!(text.chars().any(|c| ('▁'..='█').contains(&c)), "{text}");
    let (w, h, colours, ink) = png_stats(&png_path);
    assert_eq!((w, h), (1000, 600));
    assert!(colours > 10, "only {colours} colours: blank?");
    assert!(ink > 0.01 && ink < 0.9, "ink fraction {ink}");
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(
        svg.starts_with("<svg") || svg.starts_with("<?xml"),
        "not SVG"
    );
    assert!(svg.contains("environment steps"), "axis label missing");
    assert!(svg.contains("<polyline"), "no line drawn");
    assert!(svg.contains("\nv2\n</text>"), "no promotion marker label");
    assert!(svg.contains("drift (observations)"), "no change mark");

    let err = fails(
        &db,
        &["curve", "--out", dir.path().join("x.gif").to_str().unwrap()],
    );
    assert!(err.contains(".png or .svg"), "{err}");
}

#[test]
fn experts_tables_and_heatmap_or_a_clear_note_when_absent() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = make_db(dir.path(), true);
    let png_path = dir.path().join("experts.png");
    let text = ok(&db, &["experts", "--out", png_path.to_str().unwrap()]);
    let v1 = text.lines().find(|l| l.starts_with("v1 ")).unwrap();
    assert_eq!(
        v1.split_whitespace().collect::<Vec<_>>(),
        ["v1", "candidate", "70.0%", "20.0%", "10.0%", "0.0%"]
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("v3 ") && l.contains("rejected"))
    );
    let left = text.lines().find(|l| l.starts_with("pole left")).unwrap();
    assert!(left.contains("60.0%"), "{left}");
    let (w, h, colours, ink) = png_stats(&png_path);
    assert_eq!((w, h), (1000, 700));
    assert!(colours > 10 && ink > 0.05, "{colours} colours, ink {ink}");
    let json: serde_json::Value = serde_json::from_str(&ok(&db, &["experts", "--json"])).unwrap();
    assert_eq!(json["by_version"][1]["usage"][2], 0.3);
    assert_eq!(json["by_region"]["regions"][1], "pole right");

    let bare = tempfile::tempdir().unwrap();
    let (db2, _) = make_db(bare.path(), false);
    let text = ok(&db2, &["experts"]);
    assert!(
        text.contains("this file has no expert statistics"),
        "{text}"
    );
}

#[test]
fn reflections_read_and_filter_by_kind() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = make_db(dir.path(), true);
    let all = ok(&db, &["reflections"]);
    assert_eq!(all.lines().count(), 3, "{all}");
    assert!(
        all.lines()
            .next()
            .unwrap()
            .contains("[promotion v2] v2 beat v1")
    );
    let drift = ok(&db, &["reflections", "--kind", "drift", "--data"]);
    assert_eq!(drift.lines().count(), 2, "{drift}");
    assert!(drift.contains("observations drifted") && drift.contains("\"kl\":0.3"));
    let newest = ok(&db, &["reflections", "--limit", "1", "--json"]);
    let v: serde_json::Value = serde_json::from_str(newest.trim()).unwrap();
    assert_eq!(v["kind"], "lessons");
}

#[test]
fn export_transitions_and_episodes_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let (db, eps) = make_db(dir.path(), true);
    let want: Vec<(i64, usize, Vec<f32>, i64, f32)> = eps
        .iter()
        .flat_map(|e| {
            e.steps
                .iter()
                .enumerate()
                .map(|(t, s)| (e.id, t, s.0.clone(), s.1, s.2))
        })
        .collect();

    let csv_path = dir.path().join("t.csv");
    ok(
        &db,
        &[
            "export",
            "transitions",
            "--run",
            "1",
            "--out",
            csv_path.to_str().unwrap(),
        ],
    );
    let csv = std::fs::read_to_string(&csv_path).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "id,run_id,episode_id,step,obs_0,obs_1,obs_2,obs_3,action,reward,terminated,\
         truncated,behaviour,priority"
    );
    let got: Vec<(i64, usize, Vec<f32>, i64, f32)> = lines
        .map(|l| {
            let c: Vec<&str> = l.split(',').collect();
            assert_eq!(c[12], "0.5");
            assert_eq!(c[13], "");
            (
                c[2].parse().unwrap(),
                c[3].parse().unwrap(),
                c[4..8].iter().map(|x| x.parse().unwrap()).collect(),
                c[8].parse().unwrap(),
                c[9].parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, want);

    let jl_path = dir.path().join("t.jsonl");
    ok(
        &db,
        &[
            "export",
            "transitions",
            "--run",
            "1",
            "--out",
            jl_path.to_str().unwrap(),
        ],
    );
    let got: Vec<(i64, usize, Vec<f32>, i64, f32)> = std::fs::read_to_string(&jl_path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["episode_id"].as_i64().unwrap(),
                v["step"].as_u64().unwrap() as usize,
                v["obs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect(),
                v["action"].as_i64().unwrap(),
                v["reward"].as_f64().unwrap() as f32,
            )
        })
        .collect();
    assert_eq!(got, want);

    // Continuous actions and f16 observations decode too.
    let pend = dir.path().join("p.jsonl");
    ok(
        &db,
        &[
            "export",
            "transitions",
            "--run",
            "2",
            "--out",
            pend.to_str().unwrap(),
        ],
    );
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&pend)
            .unwrap()
            .lines()
            .nth(1)
            .unwrap(),
    )
    .unwrap();
    let floats = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    assert_eq!(floats(&first["obs"]), vec![0.5, 1.0, 0.0]);
    assert_eq!(floats(&first["action"]), vec![0.25]);

    // Runs with different shapes cannot share a table: a clear error, no file left behind.
    let mixed = dir.path().join("mixed.csv");
    let err = fails(
        &db,
        &["export", "transitions", "--out", mixed.to_str().unwrap()],
    );
    assert!(err.contains("--run"), "{err}");
    assert!(!mixed.exists());
    assert!(!dir.path().join("mixed.csv.partial").exists());

    let ep_path = dir.path().join("e.csv");
    ok(
        &db,
        &["export", "episodes", "--out", ep_path.to_str().unwrap()],
    );
    let ep_csv = std::fs::read_to_string(&ep_path).unwrap();
    assert_eq!(ep_csv.lines().count(), 1 + 35);
    let row30: Vec<&str> = ep_csv.lines().nth(30).unwrap().split(',').collect();
    assert_eq!((row30[0], row30[3], row30[4]), ("30", "12", "12"));
}

#[test]
fn missing_foreign_damaged_and_newer_files_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.sqlite");
    let err = fails(&missing, &["summary"]);
    assert!(
        err.contains("no such file") && err.contains("replay file"),
        "{err}"
    );
    assert!(
        !missing.exists(),
        "a read-only open must not create the file"
    );

    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "hello, not a database at all").unwrap();
    let err = fails(&text, &["summary"]);
    assert!(err.contains("not an SQLite database"), "{err}");

    let foreign = dir.path().join("foreign.sqlite");
    rusqlite::Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE songs (title TEXT); INSERT INTO songs VALUES ('x');")
        .unwrap();
    let err = fails(&foreign, &["episodes"]);
    assert!(err.contains("not an autodidact replay store"), "{err}");

    let newer = dir.path().join("newer.sqlite");
    rusqlite::Connection::open(&newer)
        .unwrap()
        .execute_batch(
            "PRAGMA application_id = 1094994244; PRAGMA user_version = 99; CREATE TABLE t (x);",
        )
        .unwrap();
    let err = fails(&newer, &["summary"]);
    assert!(err.contains("newer"), "{err}");

    // Keep the 100-byte header, scramble everything after it.
    let (db, _) = make_db(dir.path(), true);
    let mut b = bytes_of(&db);
    let mut x = 0x9e37_79b9u32;
    for byte in b.iter_mut().skip(100) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *byte = x as u8;
    }
    let damaged = dir.path().join("damaged.sqlite");
    std::fs::write(&damaged, &b).unwrap();
    let err = fails(&damaged, &["summary"]);
    assert!(
        err.contains("damaged") || err.contains("malformed"),
        "unclear error for a damaged file: {err}"
    );
}

#[test]
fn no_command_changes_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = make_db(dir.path(), true);
    let before = bytes_of(&db);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let o = |name: &str| out.join(name).to_str().unwrap().to_string();
    let commands: Vec<Vec<String>> = vec![
        vec!["summary".into()],
        vec!["summary".into(), "--json".into()],
        vec!["episodes".into(), "--csv".into()],
        vec![
            "curve".into(),
            "--out".into(),
            o("c.png"),
            "--out".into(),
            o("c.svg"),
        ],
        vec!["experts".into(), "--out".into(), o("e.svg")],
        vec!["reflections".into()],
        vec![
            "export".into(),
            "transitions".into(),
            "--run".into(),
            "1".into(),
            "--out".into(),
            o("t.csv"),
        ],
        vec![
            "export".into(),
            "episodes".into(),
            "--out".into(),
            o("e.jsonl"),
        ],
    ];
    for c in &commands {
        let args: Vec<&str> = c.iter().map(String::as_str).collect();
        ok(&db, &args);
        assert_eq!(bytes_of(&db), before, "`replay {c:?}` changed the file");
    }
    // A reader of a WAL file may leave the shared-memory index next to it, but never a log
    // with content: it has nothing to write.
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    if wal.exists() {
        assert_eq!(
            std::fs::metadata(&wal).unwrap().len(),
            0,
            "a reader wrote to the log"
        );
    }
}

/// Schema version 1 exactly as it shipped (as in replay/tests/schema.rs), with one run and
/// two episodes.
fn make_v1(path: &Path) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        r#"
PRAGMA application_id = 1094994244;
CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, env_id TEXT NOT NULL,
  obs_dims TEXT NOT NULL, obs_dtype TEXT NOT NULL CHECK (obs_dtype IN ('f32','f16','bf16')),
  action_space TEXT NOT NULL, config TEXT NOT NULL, code_version TEXT NOT NULL,
  started_at REAL NOT NULL);
CREATE TABLE models (version INTEGER PRIMARY KEY AUTOINCREMENT,
  parent INTEGER REFERENCES models(version), created_at REAL NOT NULL,
  checkpoint_path TEXT NOT NULL, checksum TEXT NOT NULL, metrics TEXT NOT NULL DEFAULT '{}',
  status TEXT NOT NULL CHECK (status IN ('candidate','champion','rejected')));
CREATE UNIQUE INDEX models_one_champion ON models(status) WHERE status = 'champion';
CREATE TABLE episodes (id INTEGER PRIMARY KEY AUTOINCREMENT,
  run_id INTEGER NOT NULL REFERENCES runs(id), model_version INTEGER,
  length INTEGER NOT NULL, episode_return REAL NOT NULL, terminated INTEGER NOT NULL,
  truncated INTEGER NOT NULL, started_at REAL NOT NULL, ended_at REAL NOT NULL,
  final_obs BLOB NOT NULL, payload_bytes INTEGER NOT NULL);
CREATE INDEX episodes_run ON episodes(run_id);
CREATE TABLE transitions (id INTEGER PRIMARY KEY AUTOINCREMENT,
  episode_id INTEGER NOT NULL REFERENCES episodes(id) ON DELETE CASCADE,
  step INTEGER NOT NULL, obs BLOB NOT NULL, action_int INTEGER, action_vec BLOB,
  reward REAL NOT NULL, terminated INTEGER NOT NULL, truncated INTEGER NOT NULL,
  behaviour REAL, priority REAL);
CREATE UNIQUE INDEX transitions_episode_step ON transitions(episode_id, step);
CREATE TABLE metadata (key TEXT PRIMARY KEY, value TEXT NOT NULL);
PRAGMA user_version = 1;
INSERT INTO runs VALUES (1, 'CartPole-v1', '[2]', 'f32', '{"discrete":{"n":2}}', '{}', 'old', 1.0);
INSERT INTO models VALUES (1, NULL, 1.5, 'a', 'x', '{}', 'champion');
INSERT INTO episodes VALUES (1, 1, 1, 2, 7.5, 1, 0, 1.0, 2.0, x'0000000000000000', 24);
INSERT INTO transitions VALUES (1, 1, 0, x'0000803f00000040', 1, NULL, 3.0, 0, 0, NULL, NULL);
INSERT INTO transitions VALUES (2, 1, 1, x'0000404000008040', 0, NULL, 4.5, 1, 0, NULL, NULL);
INSERT INTO episodes VALUES (2, 1, 1, 1, 1.0, 0, 1, 3.0, 4.0, x'0000000000000000', 16);
INSERT INTO transitions VALUES (3, 2, 0, x'0000a0400000c040', 1, NULL, 1.0, 0, 1, NULL, NULL);
"#,
    )
    .unwrap();
}

#[test]
fn a_version_1_file_is_read_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.sqlite");
    make_v1(&db);
    let before = bytes_of(&db);
    let text = ok(&db, &["summary"]);
    assert!(text.contains("schema v1"), "{text}");
    assert!(text.contains("episodes      2 stored"), "{text}");
    assert!(text.contains("transitions   3 stored"), "{text}");
    assert!(text.contains("champion v1"), "{text}");
    assert!(text.contains("best return   7.50"), "{text}");
    let csv = ok(
        &db,
        &["export", "transitions", "--out", "-", "--format", "csv"],
    );
    assert_eq!(csv.lines().nth(3).unwrap(), "3,1,2,0,5,6,1,1,0,1,,");
    assert!(ok(&db, &["reflections"]).contains("no reflections"));
    assert_eq!(bytes_of(&db), before, "the old file must not be migrated");
}

#[test]
fn a_concurrent_writer_does_not_break_summary_or_export() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("live.sqlite");
    let store = ReplayStore::open(&db, StoreOptions::default()).unwrap();
    let run = store.create_run(&cart_spec()).unwrap();
    let handle = store
        .start_writer(WriterOptions {
            max_batch_latency: std::time::Duration::from_millis(2),
            ..WriterOptions::default()
        })
        .unwrap();
    let writer = handle.writer();
    // Something to export before the readers start.
    for i in 0..200 {
        let mut ew = writer.begin_episode(&run, Some(1));
        for t in 0..(5 + i % 7) {
            ew.push(&obs(i, t), ActionRef::Discrete(0), 1.0, None)
                .unwrap();
        }
        ew.finish(&obs(i, 0), EpisodeEnd::Terminated).unwrap();
    }
    writer.flush().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let bg = {
        let stop = stop.clone();
        let run = run.clone();
        std::thread::spawn(move || {
            let mut i = 200;
            while !stop.load(Ordering::Relaxed) {
                let mut ew = writer.begin_episode(&run, Some(1));
                for t in 0..(5 + i % 7) {
                    ew.push(&obs(i, t), ActionRef::Discrete(1), 1.0, None)
                        .unwrap();
                }
                ew.finish(&obs(i, 0), EpisodeEnd::Terminated).unwrap();
                i += 1;
                if i % 20 == 0 {
                    writer.flush().unwrap();
                }
            }
            writer.flush().unwrap();
            i
        })
    };
    let mut last_seen = 0;
    for round in 0..4 {
        let s: serde_json::Value = serde_json::from_str(&ok(&db, &["summary", "--json"])).unwrap();
        let n = s["episodes_kept"].as_i64().unwrap();
        assert!(
            n >= last_seen && n >= 200,
            "episodes went from {last_seen} to {n}"
        );
        last_seen = n;
        let out = dir.path().join(format!("live{round}.csv"));
        ok(
            &db,
            &[
                "export",
                "transitions",
                "--out",
                out.to_str().unwrap(),
                "--quiet",
            ],
        );
        // Whole episodes only: steps 0..len with the end flag on the last, per episode.
        let mut by_ep: BTreeMap<i64, Vec<(i64, bool)>> = BTreeMap::new();
        for l in std::fs::read_to_string(&out).unwrap().lines().skip(1) {
            let c: Vec<&str> = l.split(',').collect();
            by_ep
                .entry(c[2].parse().unwrap())
                .or_default()
                .push((c[3].parse().unwrap(), c[10] == "1"));
        }
        assert!(by_ep.len() >= 200);
        for (ep, steps) in &by_ep {
            let len = steps.len();
            let whole = steps
                .iter()
                .enumerate()
                .all(|(t, &(s, end))| s == t as i64 && end == (t + 1 == len));
            assert!(whole, "episode {ep} exported partially: {steps:?}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let written = bg.join().unwrap();
    assert!(written > 200);
    handle.close().unwrap();
}
