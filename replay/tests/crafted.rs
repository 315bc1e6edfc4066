//! Crafted replay files: shapes, blobs and checkpoint paths written by someone else, straight
//! through SQLite. Every reader refuses them with a typed error, never a panic, an abort on
//! allocation or a header sized from absurd dimensions.

mod common;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use autodidact_replay::*;
use common::*;
use rusqlite::Connection;

/// A healthy file: one CartPole run with two episodes, and one continuous-action run with one.
fn fixture(dir: &Path) -> PathBuf {
    let path = dir.join("r.sqlite");
    let store = ReplayStore::open(&path, StoreOptions::default()).unwrap();
    let run = store.create_run(&cartpole_spec()).unwrap();
    let cont = store
        .create_run(&RunSpec {
            action_space: ActionSpace::Continuous { dim: 2 },
            ..cartpole_spec()
        })
        .unwrap();
    let h = store.start_writer(WriterOptions::default()).unwrap();
    write_episode(&h.writer(), &run, 0, 3, EpisodeEnd::Terminated);
    write_episode(&h.writer(), &run, 1, 3, EpisodeEnd::Truncated);
    let mut ep = h.writer().begin_episode(&cont, None);
    ep.push(&obs(2, 0), ActionRef::Continuous(&[0.5, -0.5]), 1.0, None)
        .unwrap();
    ep.finish(&obs(2, 1), EpisodeEnd::Terminated).unwrap();
    h.close().unwrap();
    drop(store);
    path
}

fn edit(path: &Path, sql: &str) {
    Connection::open(path).unwrap().execute_batch(sql).unwrap();
}

/// Every way in: the writable store, the read-only store and the inspector.
fn assert_all_refuse(path: &Path, what: &str) {
    match ReplayStore::open(path, StoreOptions::default()) {
        Err(ReplayError::Corrupt { table: "runs", .. }) => {}
        Err(e) => panic!("{what}: ReplayStore::open gave {e}"),
        Ok(_) => panic!("{what}: ReplayStore::open accepted it"),
    }
    match ReplayStore::open_read_only(path) {
        Err(ReplayError::Corrupt { table: "runs", .. }) => {}
        Err(e) => panic!("{what}: open_read_only gave {e}"),
        Ok(_) => panic!("{what}: open_read_only accepted it"),
    }
    match Inspector::open(path) {
        Err(ReplayError::Corrupt { table: "runs", .. }) => {}
        Err(e) => panic!("{what}: Inspector::open gave {e}"),
        Ok(_) => panic!("{what}: Inspector::open accepted it"),
    }
}

#[test]
fn crafted_observation_shapes_are_refused_with_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let healthy = fixture(dir.path());
    let thousands = format!("[{}]", vec!["1"; 3000].join(","));
    let twos = format!("[{}]", vec!["2"; 70].join(","));
    let long = format!("[{}4]", " ".repeat(10_000_000));
    let cases: Vec<(&str, String)> = vec![
        ("product of 1.6e19", "'[4000000000, 4000000000]'".into()),
        (
            "product overflowing u64",
            "'[4294967296, 4294967296, 4294967296]'".into(),
        ),
        ("negative", "'[-1]'".into()),
        ("negative in a product", "'[-4, -4]'".into()),
        ("zero", "'[0]'".into()),
        ("empty", "'[]'".into()),
        ("beyond u64", "'[99999999999999999999999]'".into()),
        ("fraction", "'[1.5]'".into()),
        (
            "just over the limit",
            format!("'[{}]'", MAX_OBS_ELEMENTS + 1),
        ),
        ("thousands of dimensions", format!("'{thousands}'")),
        ("many small dimensions", format!("'{twos}'")),
        ("not JSON", "'four'".into()),
        ("an object", "'{\"a\": 1}'".into()),
        ("a blob", "x'5b345d'".into()),
        ("ten megabytes of text", format!("'{long}'")),
    ];
    for (what, value) in cases {
        let path = dir.path().join("crafted.sqlite");
        std::fs::copy(&healthy, &path).unwrap();
        edit(
            &path,
            &format!("UPDATE runs SET obs_dims = {value} WHERE id = 1"),
        );
        assert_all_refuse(&path, what);
    }
}

#[test]
fn crafted_action_spaces_are_refused_with_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let healthy = fixture(dir.path());
    let cases = [
        (
            "huge continuous dim",
            "{\"continuous\":{\"dim\":18446744073709551615}}",
        ),
        (
            "continuous dim over the limit",
            "{\"continuous\":{\"dim\":65537}}",
        ),
        ("negative continuous dim", "{\"continuous\":{\"dim\":-1}}"),
        ("zero continuous dim", "{\"continuous\":{\"dim\":0}}"),
        ("zero actions", "{\"discrete\":{\"n\":0}}"),
        ("negative actions", "{\"discrete\":{\"n\":-5}}"),
        ("unknown kind", "{\"tuple\":[]}"),
        ("not JSON", "discrete"),
    ];
    for (what, value) in cases {
        let path = dir.path().join("crafted.sqlite");
        std::fs::copy(&healthy, &path).unwrap();
        edit(
            &path,
            &format!("UPDATE runs SET action_space = '{value}' WHERE id = 2"),
        );
        assert_all_refuse(&path, what);
    }
}

#[test]
fn the_limits_are_inclusive_and_enforced_when_creating_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = ReplayStore::open(dir.path().join("r.sqlite"), StoreOptions::default()).unwrap();
    let at_limit = RunSpec {
        obs_dims: vec![1024, 1024],
        action_space: ActionSpace::Continuous {
            dim: MAX_ACTION_DIM,
        },
        ..cartpole_spec()
    };
    assert_eq!(at_limit.obs_len(), MAX_OBS_ELEMENTS);
    store.create_run(&at_limit).unwrap();
    store
        .create_run(&RunSpec {
            obs_dims: vec![1; MAX_OBS_RANK],
            ..cartpole_spec()
        })
        .unwrap();
    let refused = [
        vec![1024, 1025],
        vec![1; MAX_OBS_RANK + 1],
        vec![usize::MAX, usize::MAX],
        vec![],
        vec![3, 0],
    ];
    for dims in refused {
        let spec = RunSpec {
            obs_dims: dims.clone(),
            ..cartpole_spec()
        };
        assert!(
            matches!(
                store.create_run(&spec),
                Err(ReplayError::InvalidArgument(_))
            ),
            "{dims:?}"
        );
        // Saturates rather than overflowing.
        let _ = spec.obs_len();
    }
    let spec = RunSpec {
        action_space: ActionSpace::Continuous {
            dim: MAX_ACTION_DIM + 1,
        },
        ..cartpole_spec()
    };
    assert!(matches!(
        store.create_run(&spec),
        Err(ReplayError::InvalidArgument(_))
    ));
    assert_eq!(
        RunSpec {
            obs_dims: vec![usize::MAX, 2],
            ..cartpole_spec()
        }
        .obs_len(),
        usize::MAX
    );
    // The runs it accepted read back.
    drop(store);
    let ins = Inspector::open(dir.path().join("r.sqlite")).unwrap();
    assert_eq!(ins.view().unwrap().runs().unwrap().len(), 2);
}

/// Blobs whose length does not match the run's shape are reported, not decoded.
#[test]
fn blobs_that_disagree_with_the_shape_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let healthy = fixture(dir.path());
    let cases = [
        (
            "long observation",
            "UPDATE transitions SET obs = zeroblob(1000000) WHERE id = 2",
        ),
        (
            "short observation",
            "UPDATE transitions SET obs = x'0000' WHERE id = 2",
        ),
        (
            "long final observation",
            "UPDATE episodes SET final_obs = zeroblob(64) WHERE id = 1",
        ),
        (
            "long action",
            "UPDATE transitions SET action_vec = zeroblob(4000) WHERE id = 7",
        ),
        (
            "short action",
            "UPDATE transitions SET action_vec = x'00000000' WHERE id = 7",
        ),
    ];
    for (what, sql) in cases {
        let path = dir.path().join("crafted.sqlite");
        std::fs::copy(&healthy, &path).unwrap();
        edit(&path, sql);
        let store = ReplayStore::open_read_only(&path).unwrap();
        let snap = store.snapshot().unwrap();
        let mut errors = Vec::new();
        errors.push(snap.episodes(None).err());
        for ep in 1..=3 {
            errors.push(snap.transitions(ep).err());
        }
        let errors: Vec<ReplayError> = errors.into_iter().flatten().collect();
        assert_eq!(errors.len(), 1, "{what}: {errors:?}");
        assert!(
            matches!(errors[0], ReplayError::Corrupt { .. }),
            "{what}: {}",
            errors[0]
        );
        drop(snap);
        drop(store);
        if what.contains("final") {
            // The inspector's transitions export does not read final observations.
            continue;
        }
        let ins = Inspector::open(&path).unwrap();
        let view = ins.view().unwrap();
        let e = view
            .for_each_transition(&TransitionFilter::default(), |_| {
                Ok(ControlFlow::Continue(()))
            })
            .unwrap_err();
        assert!(matches!(e, ReplayError::Corrupt { .. }), "{what}: {e}");
    }
}

#[test]
fn checkpoint_paths_must_be_plain_relative_paths() {
    for ok in [
        "m1.safetensors",
        "checkpoints/v3.safetensors",
        "a/b/c",
        "dir/",
        "name..with..dots",
    ] {
        assert_eq!(check_checkpoint_path(ok).unwrap(), Path::new(ok), "{ok}");
    }
    for bad in [
        "",
        "/etc/passwd",
        "../outside",
        "checkpoints/../../outside",
        "a/..",
        "./m1",
        "a/./b/../c",
        "a\0b",
        "//server/share",
    ] {
        assert!(
            matches!(
                check_checkpoint_path(bad),
                Err(ReplayError::UnsafeCheckpointPath { .. })
            ),
            "{bad:?} accepted"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.sqlite");
    let store = ReplayStore::open(&path, StoreOptions::default()).unwrap();
    let new = |p: &str| NewModel {
        parent: None,
        checkpoint_path: p.into(),
        checksum: "c".into(),
        metrics: serde_json::json!({}),
    };
    let good = store
        .register_model(&new("checkpoints/m1.safetensors"))
        .unwrap();
    for bad in [
        "/tmp/x.safetensors",
        "../x.safetensors",
        "checkpoints/../../x",
    ] {
        let e = store.register_model(&new(bad)).unwrap_err();
        assert!(
            matches!(e, ReplayError::UnsafeCheckpointPath { .. }),
            "{bad}: {e}"
        );
    }
    assert_eq!(
        store.models().unwrap().len(),
        1,
        "a refused model was stored"
    );
    assert!(good.checkpoint_relative_path().is_ok());
    drop(store);

    // A file written elsewhere may still hold such a path: it reads back, and the check
    // tells the caller not to use it.
    edit(
        &path,
        "UPDATE models SET checkpoint_path = '../../home/user/.ssh/id_ed25519' WHERE version = 1",
    );
    let store = ReplayStore::open(&path, StoreOptions::default()).unwrap();
    let m = store.model(1).unwrap();
    assert!(matches!(
        m.checkpoint_relative_path(),
        Err(ReplayError::UnsafeCheckpointPath { .. })
    ));
}
