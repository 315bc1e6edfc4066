//! Writing, reading back, sampling, retention and the registry, on real files.

mod common;

use std::collections::HashMap;

use autodidact_replay::*;
use common::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

fn small_writer() -> WriterOptions {
    WriterOptions {
        channel_capacity: 8,
        max_batch_transitions: 64,
        ..WriterOptions::default()
    }
}

#[test]
fn episodes_round_trip_and_become_sampleable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replay.sqlite");
    let store = ReplayStore::open(&path, StoreOptions::default()).unwrap();
    let run = store.create_run(&cartpole_spec()).unwrap();
    let handle = store.start_writer(small_writer()).unwrap();
    let w = handle.writer();
    for tag in 0..20 {
        let end = if tag % 3 == 0 {
            EpisodeEnd::Truncated
        } else {
            EpisodeEnd::Terminated
        };
        write_episode(&w, &run, tag, 5 + tag as usize, end);
    }
    w.flush().unwrap();
    assert_eq!(store.sampler().len(), (0..20).map(|t| 5 + t).sum::<usize>());

    let snap = store.snapshot().unwrap();
    let eps = snap.episodes(Some(run.id)).unwrap();
    assert_eq!(eps.len(), 20);
    for (tag, ep) in eps.iter().enumerate() {
        let len = 5 + tag;
        assert_eq!(ep.length as usize, len);
        assert_eq!(ep.truncated, tag % 3 == 0);
        assert_eq!(ep.terminated, tag % 3 != 0);
        assert_eq!(ep.model_version, Some(1));
        assert_eq!(ep.episode_return, (len * (len + 1) / 2) as f64);
        assert_eq!(ep.final_obs, obs(tag as i64, len).to_vec());
        let rows = snap.transitions(ep.id).unwrap();
        assert_eq!(rows.len(), len);
        for (t, row) in rows.iter().enumerate() {
            assert_eq!(row.step as usize, t);
            assert_eq!(row.obs, obs(tag as i64, t).to_vec());
            assert_eq!(row.action, Action::Discrete((t % 2) as i64));
            assert_eq!(row.reward, (t + 1) as f32);
            assert_eq!(row.behaviour, Some(-0.5));
            let last = t + 1 == len;
            assert_eq!(row.terminated, last && ep.terminated);
            assert_eq!(row.truncated, last && ep.truncated);
        }
    }
    let summary = snap.summary().unwrap();
    assert_eq!(summary.schema_version, SCHEMA_VERSION);
    assert_eq!(summary.episodes_kept(), 20);
    assert_eq!(summary.transitions_kept() as usize, store.sampler().len());
    assert_eq!(summary.runs[0].episodes_total, 20);
    drop(snap);
    let stats = handle.close().unwrap();
    assert_eq!(stats.episodes, 20);
    check_whole_episodes(&path);
}

#[test]
fn half_precision_and_continuous_actions_are_stored_compactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replay.sqlite");
    let store = ReplayStore::open(&path, StoreOptions::default()).unwrap();
    for (dtype, width) in [(Dtype::F16, 2usize), (Dtype::Bf16, 2), (Dtype::F32, 4)] {
        let spec = RunSpec {
            env_id: "Pendulum-v1".into(),
            obs_dims: vec![2, 3],
            obs_dtype: dtype,
            action_space: ActionSpace::Continuous { dim: 2 },
            config: serde_json::json!({}),
            code_version: "test".into(),
        };
        let run = store.create_run(&spec).unwrap();
        let handle = store.start_writer(small_writer()).unwrap();
        let w = handle.writer();
        let o: Vec<f32> = vec![0.1, -1.7, 3.25159, 1000.5, 1e-3, -2.0];
        let mut ep = w.begin_episode(&run, None);
        ep.push(&o, ActionRef::Continuous(&[0.25, -0.75]), 1.5, None)
            .unwrap();
        assert!(matches!(
            ep.push(&o[..5], ActionRef::Continuous(&[0.0, 0.0]), 0.0, None),
            Err(ReplayError::Shape(_))
        ));
        assert!(matches!(
            ep.push(&o, ActionRef::Discrete(1), 0.0, None),
            Err(ReplayError::Shape(_))
        ));
        ep.finish(&o, EpisodeEnd::Truncated).unwrap();
        handle.close().unwrap();

        let snap = store.snapshot().unwrap();
        let ep = snap.episodes(Some(run.id)).unwrap().remove(0);
        assert_eq!(ep.payload_bytes as usize, 2 * 6 * width + 2 * 4);
        let row = snap.transitions(ep.id).unwrap().remove(0);
        assert_eq!(row.action, Action::Continuous(vec![0.25, -0.75]));
        assert_eq!(row.behaviour, None);
        let mut expected = o.clone();
        dtype.quantize(&mut expected);
        assert_eq!(row.obs, expected);
        if dtype != Dtype::F32 {
            assert_ne!(row.obs, o, "{dtype:?} must round");
        }
        let conn = rusqlite::Connection::open(&path).unwrap();
        let len: i64 = conn
            .query_row(
                "SELECT length(obs) FROM transitions WHERE id = ?1",
                [row.id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(len as usize, 6 * width);
    }
}

/// n-step targets computed by the sampler against the definition, through the whole store.
#[test]
fn nstep_targets_through_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = ReplayStore::open(dir.path().join("r.sqlite"), StoreOptions::default()).unwrap();
    let run = store.create_run(&cartpole_spec()).unwrap();
    let handle = store.start_writer(small_writer()).unwrap();
    let w = handle.writer();
    // Episode 0 terminates after 4 steps, episode 1 is truncated after 4 steps.
    write_episode(&w, &run, 0, 4, EpisodeEnd::Terminated);
    write_episode(&w, &run, 1, 4, EpisodeEnd::Truncated);
    w.flush().unwrap();
    let snap = store.snapshot().unwrap();
    let mut where_is = HashMap::new();
    for (tag, ep) in snap.episodes(None).unwrap().iter().enumerate() {
        for row in snap.transitions(ep.id).unwrap() {
            where_is.insert(row.id, (tag, row.step as usize));
        }
    }
    drop(snap);
    let sampler = store.sampler();
    let mut rng = StdRng::seed_from_u64(7);
    let mut batch = SampleBatch::with_capacity(32);
    let gamma = 0.5f32;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..50 {
        sampler
            .sample_uniform(&mut rng, 32, NStep { n: 3, gamma }, &mut batch)
            .unwrap();
        for i in 0..batch.len {
            let (tag, t) = where_is[&batch.ids[i]];
            seen.insert((tag, t));
            // rewards are t+1; k = min(3, 4 - t)
            let k = 3.min(4 - t);
            let g: f32 = (0..k)
                .map(|j| gamma.powi(j as i32) * (t + j + 1) as f32)
                .sum();
            assert_eq!(batch.rewards[i], g, "tag {tag} step {t}");
            assert_eq!(&batch.obs[4 * i..4 * i + 4], &obs(tag as i64, t));
            assert_eq!(&batch.next_obs[4 * i..4 * i + 4], &obs(tag as i64, t + k));
            let expected_discount = if t + k == 4 && tag == 0 {
                0.0
            } else {
                gamma.powi(k as i32)
            };
            assert_eq!(batch.discounts[i], expected_discount, "tag {tag} step {t}");
            assert_eq!(batch.actions[i], (t % 2) as i64);
            assert_eq!(batch.weights[i], 1.0);
            assert_eq!(batch.behaviour[i], -0.5);
        }
    }
    assert_eq!(seen.len(), 8, "every transition drawn at least once");
}

#[test]
fn prioritized_sampling_follows_priorities_and_they_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.sqlite");
    let opts = StoreOptions {
        mirror: MirrorOptions {
            capacity: 1000,
            alpha: 1.0,
        },
        ..StoreOptions::default()
    };
    let store = ReplayStore::open(&path, opts.clone()).unwrap();
    let run = store.create_run(&cartpole_spec()).unwrap();
    let handle = store.start_writer(small_writer()).unwrap();
    let w = handle.writer();
    for tag in 0..10 {
        write_episode(&w, &run, tag, 10, EpisodeEnd::Terminated);
    }
    w.flush().unwrap();
    let sampler = store.sampler();
    assert_eq!(sampler.len(), 100);
    let mut rng = StdRng::seed_from_u64(1);
    let mut batch = SampleBatch::with_capacity(64);
    sampler
        .sample_uniform(&mut rng, 100, NStep::one(0.99), &mut batch)
        .unwrap();
    let mut ids = batch.ids.clone();
    ids.sort();
    ids.dedup();
    // One transition gets as much priority as the 99 others together.
    let hot = ids[0];
    let snap_ids: Vec<i64> = {
        let snap = store.snapshot().unwrap();
        snap.episodes(None)
            .unwrap()
            .iter()
            .flat_map(|e| snap.transitions(e.id).unwrap().into_iter().map(|r| r.id))
            .collect()
    };
    let prios: Vec<f32> = snap_ids
        .iter()
        .map(|&id| if id == hot { 99.0 } else { 1.0 })
        .collect();
    assert_eq!(sampler.update_priorities(&snap_ids, &prios).unwrap(), 100);
    assert!(matches!(
        sampler.update_priorities(&[hot], &[0.0]),
        Err(ReplayError::InvalidArgument(_))
    ));
    assert_eq!(sampler.update_priorities(&[-5], &[2.0]).unwrap(), 0);
    let mut hot_count = 0usize;
    let rows = 64;
    let batches = 100;
    for _ in 0..batches {
        sampler
            .sample_prioritized(&mut rng, rows, NStep::one(0.99), 0.5, &mut batch)
            .unwrap();
        let max_w = batch.weights.iter().cloned().fold(0.0f32, f32::max);
        assert_eq!(max_w, 1.0);
        let before = hot_count;
        for i in 0..rows {
            if batch.ids[i] == hot {
                hot_count += 1;
                // The hot one is the most probable, so it has the smallest weight.
                assert!(batch.weights[i] < 0.2, "weight {}", batch.weights[i]);
            }
        }
        // P(hot) = 99 / 198 = 1/2, and stratified sampling (one draw per 1/64 of the mass)
        // puts 32 draws in it, give or take the two segments its range only partly covers.
        let in_batch = hot_count - before;
        assert!(
            (31..=33).contains(&in_batch),
            "hot drawn {in_batch} times of {rows}"
        );
    }
    assert!(hot_count.abs_diff(rows * batches / 2) <= 100, "{hot_count}");

    // Priorities reach the file with the next batch and are used after a restart.
    write_episode(&w, &run, 10, 3, EpisodeEnd::Terminated);
    handle.close().unwrap();
    drop(store);
    let store = ReplayStore::open(&path, opts).unwrap();
    let sampler = store.sampler();
    assert_eq!(sampler.len(), 103);
    assert_eq!(sampler.priority(hot), Some(99.0));
    assert_eq!(sampler.priority(snap_ids[1]), Some(1.0));
    // The new episode entered at the then-maximum priority.
    assert_eq!(sampler.max_priority(), 99.0);
    check_whole_episodes(&path);
}

#[test]
fn mirror_window_keeps_newest_whole_episodes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.sqlite");
    let opts = StoreOptions {
        mirror: MirrorOptions {
            capacity: 25,
            alpha: 0.6,
        },
        ..StoreOptions::default()
    };
    let store = ReplayStore::open(&path, opts.clone()).unwrap();
    let run = store.create_run(&cartpole_spec()).unwrap();
    let handle = store.start_writer(small_writer()).unwrap();
    let w = handle.writer();
    for tag in 0..10 {
        write_episode(&w, &run, tag, 10, EpisodeEnd::Terminated);
    }
    write_episode(&w, &run, 99, 30, EpisodeEnd::Terminated); // longer than the window
    handle.close().unwrap();
    let sampler = store.sampler();
    // The 30-step episode cannot fit; the window holds the two newest 10-step episodes.
    assert_eq!(sampler.len(), 20);
    assert_eq!(sampler.skipped_episodes(), 1);
    let mut rng = StdRng::seed_from_u64(3);
    let mut batch = SampleBatch::with_capacity(200);
    sampler
        .sample_uniform(&mut rng, 200, NStep::one(0.9), &mut batch)
        .unwrap();
    for i in 0..batch.len {
        let tag = batch.obs[4 * i] as i64;
        assert!(tag == 8 || tag == 9, "tag {tag} is outside the window");
    }
    drop(store);
    // Rebuild takes the newest episodes that fit, skipping the one that never fits.
    let store = ReplayStore::open(&path, opts).unwrap();
    let sampler = store.sampler();
    assert_eq!(sampler.len(), 20);
    sampler
        .sample_uniform(&mut rng, 200, NStep::one(0.9), &mut batch)
        .unwrap();
    let mut tags: Vec<i64> = (0..batch.len).map(|i| batch.obs[4 * i] as i64).collect();
    tags.sort();
    tags.dedup();
    assert_eq!(tags, [8, 9]);
    check_whole_episodes(&path);
}

#[test]
fn fifo_retention_evicts_whole_old_episodes_and_reclaims_space() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.sqlite");
    let opts = StoreOptions {
        retention: Retention {
            max_transitions: Some(100),
            max_bytes: None,
            policy: EvictionPolicy::Fifo,
        },
        ..StoreOptions::default()
    };
    let store = ReplayStore::open(&path, opts).unwrap();
    let spec = RunSpec {
        obs_dims: vec![256],
        ..cartpole_spec()
    };
    let run = store.create_run(&spec).unwrap();
    let handle = store.start_writer(small_writer()).unwrap();
    let w = handle.writer();
    let o = vec![0.5f32; 256];
    let mut first_ids = Vec::new();
    for tag in 0..60 {
        let mut ep = w.begin_episode(&run, None);
        for t in 0..10 {
            ep.push(&o, ActionRef::Discrete(0), tag as f32 + t as f32, None)
                .unwrap();
        }
        ep.finish(&o, EpisodeEnd::Terminated).unwrap();
        if tag == 0 {
            w.flush().unwrap();
            let snap = store.snapshot().unwrap();
            let ep = &snap.episodes(None).unwrap()[0];
            first_ids = snap
                .transitions(ep.id)
                .unwrap()
                .iter()
                .map(|r| r.id)
                .collect();
        }
    }
    w.flush().unwrap();
    let summary = store.summary().unwrap();
    assert_eq!(summary.transitions_kept(), 100);
    assert_eq!(summary.episodes_kept(), 10);
    assert_eq!(summary.runs[0].episodes_total, 60);
    assert_eq!(summary.runs[0].transitions_total, 600);
    let eps = store.snapshot().unwrap().episodes(None).unwrap();
    // The newest ten remain (returns identify them).
    let returns: Vec<f64> = eps.iter().map(|e| e.episode_return).collect();
    let expected: Vec<f64> = (50..60).map(|tag| (10 * tag + 45) as f64).collect();
    assert_eq!(returns, expected);
    let sampler = store.sampler();
    assert_eq!(sampler.len(), 100);
    assert_eq!(
        sampler.update_priorities(&first_ids, &[5.0; 10]).unwrap(),
        0
    );
    assert!(handle.stats().evicted_episodes >= 50);
    handle.close().unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let free: i64 = conn
        .query_row("PRAGMA freelist_count", [], |r| r.get(0))
        .unwrap();
    let pages: i64 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    // 600 KiB of observations went through; 100 KiB remain. Without reclaim the file would
    // keep ~150 pages of 4 KiB.
    assert!(free <= 4, "{free} free pages left after incremental vacuum");
    assert!(pages < 80, "file still has {pages} pages");
    drop(conn);
    check_whole_episodes(&path);
}

#[test]
fn lowest_priority_retention_keeps_valuable_episodes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.sqlite");
    let opts = StoreOptions {
        retention: Retention {
            max_transitions: None,
            max_bytes: Some(20 * (11 * 16)), // 20 episodes of 10 steps, f32 x4, + final obs
            policy: EvictionPolicy::LowestPriority,
        },
        ..StoreOptions::default()
    };
    let store = ReplayStore::open(&path, opts).unwrap();
    let run = store.create_run(&cartpole_spec()).unwrap();
    let handle = store.start_writer(small_writer()).unwrap();
    let w = handle.writer();
    for tag in 0..20 {
        write_episode(&w, &run, tag, 10, EpisodeEnd::Terminated);
    }
    w.flush().unwrap();
    assert_eq!(store.summary().unwrap().episodes_kept(), 20);
    // Old episodes 0..5 become valuable; 5..20 dull.
    let sampler = store.sampler();
    let snap = store.snapshot().unwrap();
    for (tag, ep) in snap.episodes(None).unwrap().iter().enumerate() {
        let ids: Vec<i64> = snap
            .transitions(ep.id)
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        let p = if tag < 5 { 50.0 } else { 0.1 };
        sampler
            .update_priorities(&ids, &vec![p; ids.len()])
            .unwrap();
    }
    drop(snap);
    for tag in 20..30 {
        write_episode(&w, &run, tag, 10, EpisodeEnd::Terminated);
    }
    w.flush().unwrap();
    let tags: Vec<i64> = store
        .snapshot()
        .unwrap()
        .episodes(None)
        .unwrap()
        .iter()
        .map(|e| e.final_obs[0] as i64)
        .collect();
    assert_eq!(tags.len(), 20);
    for tag in 0..5 {
        assert!(
            tags.contains(&tag),
            "valuable episode {tag} evicted: {tags:?}"
        );
    }
    for tag in 20..30 {
        assert!(tags.contains(&tag), "new episode {tag} evicted: {tags:?}");
    }
    assert_eq!(store.sampler().len(), 200);
    handle.close().unwrap();
    check_whole_episodes(&path);
}

#[test]
fn model_registry_keeps_one_champion() {
    let dir = tempfile::tempdir().unwrap();
    let store = ReplayStore::open(dir.path().join("r.sqlite"), StoreOptions::default()).unwrap();
    assert_eq!(store.champion().unwrap(), None);
    assert_eq!(store.latest_model().unwrap(), None);
    let new = |parent, path: &str| NewModel {
        parent,
        checkpoint_path: path.into(),
        checksum: format!("sha256:{path}"),
        metrics: serde_json::json!({"return": 20.5}),
    };
    let m1 = store.register_model(&new(None, "m1.safetensors")).unwrap();
    assert_eq!(m1.status, ModelStatus::Candidate);
    assert!(matches!(
        store.register_model(&new(Some(42), "orphan")),
        Err(ReplayError::NotFound { id: 42, .. })
    ));
    let m2 = store.register_model(&new(Some(m1.version), "m2")).unwrap();
    let m3 = store.register_model(&new(Some(m2.version), "m3")).unwrap();
    assert!(m1.version < m2.version && m2.version < m3.version);
    assert_eq!(store.model(m2.version).unwrap(), m2);
    store.promote(m1.version).unwrap();
    assert_eq!(store.champion().unwrap().unwrap().version, m1.version);
    store.promote(m2.version).unwrap();
    assert_eq!(store.champion().unwrap().unwrap().version, m2.version);
    assert_eq!(
        store.model(m1.version).unwrap().status,
        ModelStatus::Candidate
    );
    assert!(matches!(
        store.reject(m2.version),
        Err(ReplayError::ModelStatus { .. })
    ));
    store.reject(m3.version).unwrap();
    assert!(matches!(
        store.promote(m3.version),
        Err(ReplayError::ModelStatus { .. })
    ));
    assert!(matches!(
        store.promote(77),
        Err(ReplayError::NotFound { id: 77, .. })
    ));
    assert_eq!(store.latest_model().unwrap().unwrap().version, m3.version);
    assert_eq!(
        store.latest_model().unwrap().unwrap().status,
        ModelStatus::Rejected
    );
    let statuses: Vec<ModelStatus> = store.models().unwrap().iter().map(|m| m.status).collect();
    assert_eq!(
        statuses,
        [
            ModelStatus::Candidate,
            ModelStatus::Champion,
            ModelStatus::Rejected
        ]
    );
    // The schema itself refuses a second champion, whoever writes.
    let conn = rusqlite::Connection::open(store.path()).unwrap();
    assert!(
        conn.execute(
            "UPDATE models SET status = 'champion' WHERE version = ?1",
            [m1.version]
        )
        .is_err()
    );
    let summary = store.summary().unwrap();
    assert_eq!((summary.models, summary.champion), (3, Some(m2.version)));
}

#[test]
fn reflections_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let store = ReplayStore::open(dir.path().join("r.sqlite"), StoreOptions::default()).unwrap();
    for i in 0..5 {
        store
            .add_reflection(&NewReflection {
                kind: if i % 2 == 0 {
                    "drift".into()
                } else {
                    "promotion".into()
                },
                model_version: Some(i),
                data: serde_json::json!({"i": i}),
                sentence: format!("Reflection number {i}."),
            })
            .unwrap();
    }
    let drift = store.reflections(Some("drift"), 10).unwrap();
    assert_eq!(
        drift
            .iter()
            .map(|r| r.data["i"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [4, 2, 0]
    );
    assert_eq!(drift[0].sentence, "Reflection number 4.");
    assert_eq!(store.reflections(None, 2).unwrap().len(), 2);
    assert_eq!(store.reflections(Some("none"), 10).unwrap().len(), 0);
    assert_eq!(store.metadata("k").unwrap(), None);
    store.set_metadata("k", "v1").unwrap();
    store.set_metadata("k", "v2").unwrap();
    assert_eq!(store.metadata("k").unwrap().as_deref(), Some("v2"));
    assert_eq!(store.summary().unwrap().reflections, 5);
}

#[test]
fn one_writer_per_store_and_shape_checks() {
    let dir = tempfile::tempdir().unwrap();
    let store = ReplayStore::open(dir.path().join("r.sqlite"), StoreOptions::default()).unwrap();
    let run = store.create_run(&cartpole_spec()).unwrap();
    let h = store.start_writer(WriterOptions::default()).unwrap();
    assert!(matches!(
        store.start_writer(WriterOptions::default()),
        Err(ReplayError::WriterAlreadyRunning)
    ));
    let w = h.writer();
    let ep = w.begin_episode(&run, None);
    assert!(matches!(
        ep.finish(&obs(0, 0), EpisodeEnd::Terminated),
        Err(ReplayError::InvalidArgument(_))
    ));
    let mut ep = w.begin_episode(&run, None);
    ep.push(&obs(0, 0), ActionRef::Discrete(1), 1.0, None)
        .unwrap();
    assert!(matches!(
        ep.finish(&[1.0, 2.0], EpisodeEnd::Terminated),
        Err(ReplayError::Shape(_))
    ));
    h.close().unwrap();
    // After close, the old sender reports a stopped writer, and a new writer may start.
    assert!(matches!(
        w.flush(),
        Err(ReplayError::WriterStopped { cause: None })
    ));
    let h2 = store.start_writer(WriterOptions::default()).unwrap();
    write_episode(&h2.writer(), &run, 0, 3, EpisodeEnd::Terminated);
    assert_eq!(h2.close().unwrap().episodes, 1);
    assert!(matches!(
        store.create_run(&RunSpec {
            obs_dims: vec![0],
            ..cartpole_spec()
        }),
        Err(ReplayError::InvalidArgument(_))
    ));
}
