//! Helpers shared by the integration tests.
#![allow(dead_code)]

use autodidact_replay::*;
use rusqlite::Connection;
use std::path::Path;

pub fn cartpole_spec() -> RunSpec {
    RunSpec {
        env_id: "CartPole-v1".into(),
        obs_dims: vec![4],
        obs_dtype: Dtype::F32,
        action_space: ActionSpace::Discrete { n: 2 },
        config: serde_json::json!({"lr": 0.001}),
        code_version: "test".into(),
    }
}

/// Observation of step `t` of the episode tagged `tag`: distinct per (tag, t), so a sampled
/// row can be traced back.
pub fn obs(tag: i64, t: usize) -> [f32; 4] {
    [tag as f32, t as f32, 0.5, -0.25]
}

/// Writes an episode of `len` steps with rewards `1, 2, 3, ...` and actions `t % 2`.
pub fn write_episode(w: &Writer, run: &Run, tag: i64, len: usize, end: EpisodeEnd) {
    let mut ep = w.begin_episode(run, Some(1));
    for t in 0..len {
        ep.push(
            &obs(tag, t),
            ActionRef::Discrete((t % 2) as i64),
            (t + 1) as f32,
            Some(-0.5),
        )
        .unwrap();
    }
    ep.finish(&obs(tag, len), end).unwrap();
}

/// Every episode row has exactly `length` transitions with steps 0..length-1, the flags sit
/// on the last step only, and the kept counters agree with the rows. Returns the number of
/// episodes.
pub fn check_whole_episodes(path: &Path) -> i64 {
    let conn = Connection::open(path).unwrap();
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    if version == 0 {
        // Killed while creating: migrations are transactional, so the file must be empty
        // (the next open initialises it).
        let objects: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .unwrap();
        assert_eq!(objects, 0, "half-created schema");
        return 0;
    }
    let fk: i64 = conn
        .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(fk, 0, "foreign key violations");
    let bad: i64 = conn
        .query_row(
            "SELECT count(*) FROM episodes e WHERE e.length != \
               (SELECT count(*) FROM transitions t WHERE t.episode_id = e.id) \
             OR coalesce((SELECT min(step) FROM transitions t WHERE t.episode_id = e.id), -1) != 0 \
             OR coalesce((SELECT max(step) FROM transitions t WHERE t.episode_id = e.id), -1) \
                != e.length - 1 \
             OR (SELECT count(*) FROM transitions t WHERE t.episode_id = e.id \
                 AND (t.terminated + t.truncated) > 0 AND t.step != e.length - 1) > 0",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(bad, 0, "episodes that are not whole");
    let orphans: i64 = conn
        .query_row(
            "SELECT count(*) FROM transitions WHERE episode_id NOT IN (SELECT id FROM episodes)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(orphans, 0, "transitions without an episode");
    if version < 2 {
        // Killed between the v1 and v2 migrations: no run_stats yet.
        return conn
            .query_row("SELECT count(*) FROM episodes", [], |r| r.get(0))
            .unwrap();
    }
    let (kept_t, kept_e): (i64, i64) = conn
        .query_row(
            "SELECT coalesce(sum(transitions_kept), 0), coalesce(sum(episodes_kept), 0) \
             FROM run_stats",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let (rows_t, rows_e): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT count(*) FROM transitions), (SELECT count(*) FROM episodes)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((kept_t, kept_e), (rows_t, rows_e), "run_stats out of step");
    rows_e
}
