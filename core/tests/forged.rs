//! Forged checkpoint and snapshot files: a valid safetensors file whose stored network config
//! (or tensor shapes) lies must be a typed error, found before anything is sized from the lie.
//!
//! This test binary installs an allocator that records the largest single allocation request
//! made by the thread under test, and refuses requests above a cap (16 MiB; the honest files
//! here are a few KiB). Loading a forged file must stay under it: a load that sized a buffer
//! from the forged config would ask for gigabytes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use autodidact_core::precision::{ActingNet, Precision};
use autodidact_core::{
    BlockConfig, CoreError, HeadConfig, MoeConfig, Network, NetworkConfig, Snapshot,
    load_checkpoint, save_checkpoint,
};
use safetensors::SafeTensors;
use serde_json::Value;

const CAP: usize = 16 << 20;

thread_local! {
    static LIMIT: Cell<usize> = const { Cell::new(usize::MAX) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

struct Capped;

impl Capped {
    /// Records `size` for the current thread; false if it is above the thread's limit.
    fn admit(size: usize) -> bool {
        LARGEST.try_with(|l| l.set(l.get().max(size))).ok();
        LIMIT.try_with(|c| size <= c.get()).unwrap_or(true)
    }
}

// SAFETY: every call is forwarded to `System` unchanged, or refused with a null pointer, which
// the `GlobalAlloc` contract allows.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !Self::admit(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !Self::admit(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !Self::admit(new_size) {
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Capped = Capped;

/// Runs `f` with this thread's allocations capped at [`CAP`]; returns its result and the
/// largest single request it made.
fn capped<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    LIMIT.with(|c| c.set(CAP));
    let out = f();
    LIMIT.with(|c| c.set(usize::MAX));
    (out, LARGEST.with(Cell::get))
}

fn small_net() -> Network {
    let cfg = NetworkConfig::moe(
        4,
        8,
        2,
        &MoeConfig::new(8, 16, 4, 2),
        HeadConfig::DuelingQ { n_actions: 3 },
    );
    Network::new(cfg, 7).unwrap()
}

/// Rewrites the safetensors file at `src` into `dst` with the same tensors and the metadata
/// changed by `edit` (the stored config as JSON); the checksum covers only the tensors, so it
/// stays valid, exactly as an attacker's file would.
fn forge(src: &Path, dst: &Path, edit: impl FnOnce(&mut Value)) {
    let bytes = std::fs::read(src).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta: HashMap<String, String> = meta.metadata().clone().unwrap();
    let mut cfg: Value = serde_json::from_str(&meta["network_config"]).unwrap();
    edit(&mut cfg);
    meta.insert("network_config".into(), cfg.to_string());
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let out = safetensors::serialize(st.tensors(), Some(meta)).unwrap();
    std::fs::write(dst, out).unwrap();
}

/// An edit of the stored config.
type Edit = Box<dyn Fn(&mut Value)>;

/// The config edits every forged file is tried with, and a word the error must contain.
fn forgeries() -> Vec<(&'static str, Edit)> {
    vec![
        (
            "obs_dim",
            Box::new(|c| c["obs_dim"] = 4_000_000_000u64.into()),
        ),
        ("d_model", Box::new(|c| c["d_model"] = (1u64 << 40).into())),
        (
            "d_hidden",
            Box::new(|c| c["blocks"][0]["d_hidden"] = (1u64 << 30).into()),
        ),
        (
            "n_experts",
            Box::new(|c| c["blocks"][1]["n_experts"] = 1_000_000_000u64.into()),
        ),
        (
            "n_actions",
            Box::new(|c| c["head"]["n_actions"] = u64::MAX.into()),
        ),
        (
            "n_actions",
            Box::new(|c| {
                c["head"] = serde_json::json!({"kind": "policy_value", "n_actions": u64::MAX})
            }),
        ),
        (
            "blocks",
            Box::new(|c| {
                let b = c["blocks"][0].clone();
                c["blocks"] = Value::Array(vec![b; 10_000]);
            }),
        ),
        // Every dimension within its limit, the whole far beyond 2^31 parameters.
        (
            "parameters",
            Box::new(|c| {
                c["d_model"] = (1u64 << 20).into();
                c["blocks"] = serde_json::json!([{"kind": "dense", "d_hidden": 1u64 << 20}]);
            }),
        ),
        // A plausible network (134 M parameters, half a GiB) that the file's tensors do not
        // match: refused by the shape check, before the network is built.
        (
            "shape",
            Box::new(|c| {
                c["d_model"] = 2048u64.into();
                c["blocks"] = Value::Array(vec![
                    serde_json::json!({"kind": "dense", "d_hidden": 4096});
                    8
                ]);
            }),
        ),
    ]
}

fn assert_refused<T: std::fmt::Debug>(
    what: &str,
    needle: &str,
    run: impl FnOnce() -> autodidact_core::Result<T>,
) {
    let (r, largest) = capped(run);
    match r {
        Err(CoreError::Checkpoint { reason, .. }) => assert!(
            reason.contains(needle),
            "{what}: reason `{reason}` lacks `{needle}`"
        ),
        other => panic!("{what}: expected a checkpoint error about `{needle}`, got {other:?}"),
    }
    assert!(
        largest <= CAP,
        "{what} ({needle}): the load asked for {largest} bytes at once before refusing"
    );
}

#[test]
fn forged_checkpoint_configs_are_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let honest = dir.path().join("honest.safetensors");
    let forged = dir.path().join("forged.safetensors");
    let net = small_net();
    save_checkpoint(&honest, &net, None, &BTreeMap::new()).unwrap();
    // The forging itself keeps an honest file loadable.
    forge(&honest, &forged, |_| {});
    let (ok, _) = capped(|| load_checkpoint(&forged));
    assert_eq!(ok.unwrap().network.config(), net.config());

    for (needle, edit) in forgeries() {
        forge(&honest, &forged, edit);
        assert_refused("checkpoint", needle, || load_checkpoint(&forged));
    }

    // Truncated anywhere: a typed error, within the cap.
    let bytes = std::fs::read(&honest).unwrap();
    for cut in [9, bytes.len() / 3, bytes.len() - 1] {
        std::fs::write(&forged, &bytes[..cut]).unwrap();
        assert_refused("truncated checkpoint", "", || load_checkpoint(&forged));
    }
}

#[test]
fn forged_checkpoint_tensor_shapes_are_refused() {
    // The config is honest; one tensor's declared shape is not (same bytes, reshaped).
    let dir = tempfile::tempdir().unwrap();
    let honest = dir.path().join("honest.safetensors");
    let forged = dir.path().join("forged.safetensors");
    save_checkpoint(&honest, &small_net(), None, &BTreeMap::new()).unwrap();
    let bytes = std::fs::read(&honest).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let tensors: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            let shape = if name == "input.w" {
                vec![t.shape()[1], t.shape()[0]] // [4, 8] stored as [8, 4]
            } else {
                t.shape().to_vec()
            };
            let view = safetensors::tensor::TensorView::new(t.dtype(), shape, t.data()).unwrap();
            (name, view)
        })
        .collect();
    std::fs::write(
        &forged,
        safetensors::serialize(tensors, Some(meta)).unwrap(),
    )
    .unwrap();
    assert_refused("reshaped tensor", "shape", || load_checkpoint(&forged));
}

#[test]
fn forged_snapshot_configs_are_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let honest = dir.path().join("honest.snapshot");
    let forged = dir.path().join("forged.snapshot");
    let snap = Snapshot::from_network(&small_net(), Precision::Bf16).unwrap();
    snap.save(&honest).unwrap();
    forge(&honest, &forged, |_| {});
    let (ok, _) = capped(|| Snapshot::load(&forged));
    assert_eq!(ok.unwrap().config(), snap.config());

    for (needle, edit) in forgeries() {
        forge(&honest, &forged, edit);
        assert_refused("snapshot", needle, || Snapshot::load(&forged));
        assert_refused("acting net", needle, || {
            ActingNet::<half::bf16>::load(&forged)
        });
    }
}

#[test]
fn network_config_limits_are_typed_errors() {
    let base = NetworkConfig::moe(
        4,
        8,
        1,
        &MoeConfig::new(8, 16, 4, 2),
        HeadConfig::Linear { out_dim: 2 },
    );
    let too_large = |c: NetworkConfig| {
        let (r, largest) = capped(|| Network::new(c.clone(), 0).map(|_| ()));
        assert!(matches!(r, Err(CoreError::TooLarge { .. })), "{c:?}: {r:?}");
        assert!(largest <= CAP, "{c:?}: asked for {largest} bytes");
    };
    too_large(NetworkConfig {
        obs_dim: 4_000_000_000,
        ..base.clone()
    });
    too_large(NetworkConfig {
        head: HeadConfig::PolicyValue {
            n_actions: usize::MAX,
        },
        ..base.clone()
    });
    too_large(NetworkConfig {
        blocks: vec![BlockConfig::Dense { d_hidden: 4 }; 257],
        ..base.clone()
    });
    too_large(NetworkConfig {
        d_model: 1 << 20,
        blocks: vec![BlockConfig::Dense { d_hidden: 1 << 20 }],
        ..base.clone()
    });
    // The parameter count is the network's, computed without building it.
    for cfg in [
        base.clone(),
        NetworkConfig {
            blocks: vec![BlockConfig::Dense { d_hidden: 5 }],
            head: HeadConfig::PolicyValue { n_actions: 3 },
            ..base.clone()
        },
        NetworkConfig {
            head: HeadConfig::DuelingQ { n_actions: 6 },
            ..base
        },
    ] {
        use autodidact_core::Module;
        let net = Network::new(cfg.clone(), 0).unwrap();
        assert_eq!(cfg.num_params().unwrap(), net.num_params(), "{cfg:?}");
    }
}
