//! Migration from an older schema, and refusal of files that are not ours or too new.

mod common;

use autodidact_replay::*;
use common::*;
use rusqlite::Connection;

/// Schema version 1 exactly as it shipped, written by hand so that this test keeps checking
/// the upgrade of real old files even if the library's copy of the DDL were edited.
const V1_BY_HAND: &str = r#"
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
"#;

fn f32_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A v1 file with one run, two episodes (3 and 2 steps) and a metadata row.
fn make_v1(path: &std::path::Path) {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(V1_BY_HAND).unwrap();
    conn.execute(
        "INSERT INTO runs VALUES (1, 'CartPole-v1', '[4]', 'f32', '{\"discrete\":{\"n\":2}}', \
         '{}', 'old', 1.0)",
        [],
    )
    .unwrap();
    for (ep, len) in [(1i64, 3usize), (2, 2)] {
        conn.execute(
            "INSERT INTO episodes VALUES (?1, 1, NULL, ?2, ?3, 1, 0, 1.0, 2.0, ?4, 0)",
            rusqlite::params![ep, len as i64, len as f64, f32_blob(&obs(ep, len))],
        )
        .unwrap();
        for t in 0..len {
            conn.execute(
                "INSERT INTO transitions (episode_id, step, obs, action_int, reward, \
                 terminated, truncated, priority) VALUES (?1, ?2, ?3, 1, 1.0, ?4, 0, ?5)",
                rusqlite::params![
                    ep,
                    t as i64,
                    f32_blob(&obs(ep, t)),
                    t + 1 == len,
                    if t == 0 { Some(3.0) } else { None }
                ],
            )
            .unwrap();
        }
    }
    conn.execute("INSERT INTO metadata VALUES ('origin', 'v1 by hand')", [])
        .unwrap();
}

#[test]
fn version_1_file_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.sqlite");
    make_v1(&path);

    // A reader may not migrate: it must refuse rather than misread.
    assert!(matches!(
        ReplayStore::open_read_only(&path),
        Err(ReplayError::NeedsMigration {
            found: 1,
            expected: 2
        })
    ));

    let store = ReplayStore::open(&path, StoreOptions::default()).unwrap();
    assert_eq!(store.schema_version().unwrap(), 2);
    // Old data is intact and readable through the new API.
    assert_eq!(
        store.metadata("origin").unwrap().as_deref(),
        Some("v1 by hand")
    );
    let run = store.run(1).unwrap();
    assert_eq!(run.spec.action_space, ActionSpace::Discrete { n: 2 });
    let snap = store.snapshot().unwrap();
    let rows = snap.transitions(1).unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[2].obs, obs(1, 2).to_vec());
    // The aggregates added by v2 were backfilled from the old rows.
    let summary = snap.summary().unwrap();
    assert_eq!(summary.runs.len(), 1);
    assert_eq!(summary.runs[0].episodes_kept, 2);
    assert_eq!(summary.runs[0].transitions_kept, 5);
    assert_eq!(summary.runs[0].return_sum_kept, 5.0);
    drop(snap);
    // The mirror was rebuilt from the old file, with its stored priority.
    let sampler = store.sampler();
    assert_eq!(sampler.len(), 5);
    assert_eq!(sampler.priority(rows[0].id), Some(3.0));
    // Tables new in v2 work, and writing continues after the old rows.
    store
        .add_reflection(&NewReflection {
            kind: "migration".into(),
            model_version: None,
            data: serde_json::json!({"from": 1}),
            sentence: "Upgraded from schema 1.".into(),
        })
        .unwrap();
    let h = store.start_writer(WriterOptions::default()).unwrap();
    write_episode(&h.writer(), &run, 3, 4, EpisodeEnd::Terminated);
    h.close().unwrap();
    assert_eq!(store.summary().unwrap().runs[0].episodes_total, 3);
    assert_eq!(sampler.len(), 9);
    drop(store);
    check_whole_episodes(&path);
    // And now a reader accepts it.
    let reader = ReplayStore::open_read_only(&path).unwrap();
    assert_eq!(reader.summary().unwrap().transitions_kept(), 9);
}

#[test]
fn newer_schema_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.sqlite");
    drop(ReplayStore::open(&path, StoreOptions::default()).unwrap());
    Connection::open(&path)
        .unwrap()
        .execute_batch("PRAGMA user_version = 3; CREATE TABLE from_the_future (x);")
        .unwrap();
    let before = std::fs::read(&path).unwrap();
    assert!(matches!(
        ReplayStore::open(&path, StoreOptions::default()),
        Err(ReplayError::TooNew {
            found: 3,
            supported: 2
        })
    ));
    assert!(matches!(
        ReplayStore::open_read_only(&path),
        Err(ReplayError::TooNew { found: 3, .. })
    ));
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "a refused file must not change"
    );
}

#[test]
fn foreign_sqlite_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Somebody else's database with a table and no application id.
    let path = dir.path().join("foreign.sqlite");
    Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO users VALUES (1, 'x');")
        .unwrap();
    let before = std::fs::read(&path).unwrap();
    let err = ReplayStore::open(&path, StoreOptions::default()).unwrap_err();
    assert!(matches!(err, ReplayError::ForeignDatabase { .. }), "{err}");
    assert!(matches!(
        ReplayStore::open_read_only(&path),
        Err(ReplayError::ForeignDatabase { .. })
    ));
    assert_eq!(std::fs::read(&path).unwrap(), before);
    // Another application's id, even with a plausible user_version.
    let path2 = dir.path().join("other-app.sqlite");
    Connection::open(&path2)
        .unwrap()
        .execute_batch("PRAGMA application_id = 1234; PRAGMA user_version = 2; CREATE TABLE t (x);")
        .unwrap();
    assert!(matches!(
        ReplayStore::open(&path2, StoreOptions::default()),
        Err(ReplayError::ForeignDatabase { .. })
    ));
}

#[test]
fn non_sqlite_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(
        &path,
        b"this is not a database, just some text that is long enough",
    )
    .unwrap();
    assert!(matches!(
        ReplayStore::open(&path, StoreOptions::default()),
        Err(ReplayError::NotADatabase { .. })
    ));
    assert!(matches!(
        ReplayStore::open_read_only(&path),
        Err(ReplayError::NotADatabase { .. })
    ));
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"this is not a database, just some text that is long enough"
    );
}

#[test]
fn new_file_has_wal_incremental_vacuum_and_marker() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.sqlite");
    let store = ReplayStore::open(&path, StoreOptions::default()).unwrap();
    let conn = Connection::open(&path).unwrap();
    let q = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(q("PRAGMA application_id"), APPLICATION_ID as i64);
    assert_eq!(q("PRAGMA user_version"), SCHEMA_VERSION);
    assert_eq!(q("PRAGMA auto_vacuum"), 2, "INCREMENTAL");
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    for index in [
        "episodes_run",
        "transitions_episode_step",
        "episodes_model",
        "reflections_kind",
    ] {
        let n = q(&format!(
            "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = '{index}'"
        ));
        assert_eq!(n, 1, "{index}");
    }
    drop(store);
    // Reopening an up-to-date file changes nothing.
    let store = ReplayStore::open(&path, StoreOptions::default()).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
}
