//! The gym bridge never runs or imports a file someone else could plant: not a predictable
//! name in the temp directory (where the embedded copy used to be written and reused), not a
//! module in the working directory. Its own binary: it changes the working directory.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use autodidact_envs::bridge::{BRIDGE_ENV_VAR, GYM_BRIDGE_SOURCE, gym_transport, write_embedded};
use autodidact_envs::{RemoteEnv, Transport};
use common::{fast_config, have_python};

/// Where earlier versions wrote, and reused if present, the embedded bridge.
fn old_predictable_path() -> PathBuf {
    let hash = GYM_BRIDGE_SOURCE
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    std::env::temp_dir().join(format!("autodidact-gym-bridge-{hash:016x}.py"))
}

/// A script that leaves `marker` behind if it is ever run or imported.
fn trap(marker: &Path) -> String {
    format!("open({:?}, 'w').write('ran')\n", marker.to_str().unwrap())
}

/// Removes the planted file even if an assertion fails.
struct Unplant(Option<PathBuf>);

impl Drop for Unplant {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[test]
fn planted_files_are_never_executed() {
    if !have_python("planted_files_are_never_executed") {
        return;
    }
    assert!(
        std::env::var_os(BRIDGE_ENV_VAR).is_none(),
        "unset {BRIDGE_ENV_VAR} to run this test"
    );
    let scratch = tempfile::tempdir().unwrap();
    let marker = scratch.path().join("planted-code-ran");

    // The old predictable name, planted by "another user" (best effort: it may belong to
    // someone else, in which case we could not have planted it either).
    let old = old_predictable_path();
    let _unplant = std::fs::write(&old, trap(&marker))
        .ok()
        .map(|()| Unplant(Some(old.clone())));

    // Modules planted in the working directory, which `python3 -c` would put on sys.path.
    let cwd = scratch.path().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    for module in ["argparse", "json", "os", "select", "socket", "time"] {
        std::fs::write(cwd.join(format!("{module}.py")), trap(&marker)).unwrap();
    }
    std::env::set_current_dir(&cwd).unwrap();

    let t = gym_transport("CartPole-v1").unwrap();
    let Transport::Exec { args, .. } = &t else {
        panic!("gym: is an exec transport");
    };
    let old_s = old.to_string_lossy();
    assert!(
        args.iter().all(|a| !a.contains(old_s.as_ref())),
        "the bridge is not run from the temp directory"
    );
    // Run it for real: with or without gymnasium installed, the bridge starts and imports
    // its modules; whether the session opens does not matter here.
    let _ = RemoteEnv::connect(t, fast_config());
    assert!(
        !marker.exists(),
        "a planted file was executed by the gym bridge"
    );

    // A file copy, when asked for, is fresh, complete, and in a directory only we can enter.
    let path = write_embedded().unwrap();
    assert_ne!(path, old);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), GYM_BRIDGE_SOURCE);
    let dir = path.parent().unwrap();
    let meta = std::fs::metadata(dir).unwrap();
    assert_eq!(meta.mode() & 0o077, 0, "private directory");
    // SAFETY: getuid has no preconditions.
    assert_eq!(meta.uid(), unsafe { libc::getuid() });
    let again = write_embedded().unwrap();
    std::fs::remove_dir_all(again.parent().unwrap()).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
    assert_ne!(again, path, "never reused");
}
