//! Launching `python/gym_bridge.py`, which serves any Gymnasium env over the protocol.
//!
//! The script is embedded in the binary and run from the command line (`python3 -c`, see
//! [`BOOTSTRAP`]), so no file in a shared directory (such as a predictable name in `/tmp`
//! another user could plant) is ever executed or imported; `AUTODIDACT_GYM_BRIDGE` names a
//! script to run instead.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{EnvError, Result};
use crate::remote::{RemoteConfig, Transport};

/// The bridge script, embedded so an installed binary works without the source tree.
pub const GYM_BRIDGE_SOURCE: &str = include_str!("../python/gym_bridge.py");

/// Environment variable naming the bridge script to use instead of the built-in one.
pub const BRIDGE_ENV_VAR: &str = "AUTODIDACT_GYM_BRIDGE";

/// Environment variable naming the Python interpreter (default `python3`).
pub const PYTHON_ENV_VAR: &str = "AUTODIDACT_PYTHON";

/// The bridge script the user chose with [`BRIDGE_ENV_VAR`], if any.
pub fn bridge_override() -> Result<Option<PathBuf>> {
    let Some(p) = std::env::var_os(BRIDGE_ENV_VAR) else {
        return Ok(None);
    };
    let p = PathBuf::from(p);
    if !p.is_file() {
        return Err(EnvError::Config(format!(
            "{BRIDGE_ENV_VAR}={} is not a file",
            p.display()
        )));
    }
    Ok(Some(p))
}

// Passed as one argument to `python3 -c`; Linux caps a single argument at 128 KiB.
const _: () = assert!(GYM_BRIDGE_SOURCE.len() < 100_000);

/// The `python3 -c` program that runs the embedded bridge: it first drops the working
/// directory from `sys.path`, where `-c` puts it (a `json.py` planted in the runtime's working
/// directory would otherwise be imported), then runs the source passed as the next argument
/// as `__main__`.
pub const BOOTSTRAP: &str = "import sys\n\
if sys.path and sys.path[0] == '':\n    del sys.path[0]\n\
source = sys.argv.pop(1)\n\
exec(compile(source, '<gym_bridge.py>', 'exec'), {'__name__': '__main__'})\n";

/// Writes the embedded bridge to a fresh private directory and returns the script's path,
/// for users who want the bridge as a file (e.g. to serve over TCP without the source tree).
///
/// The directory is new for every call, created by us with mode 0700 (`mkdtemp`), and the
/// file is created exclusively, so nothing another user planted in the temp directory is
/// ever reused. The caller owns the directory (the script's parent) and should remove it.
/// `gym:` IDs do not use this: they pass the embedded source to `python3 -c`, with no file.
pub fn write_embedded() -> Result<PathBuf> {
    let dir = tempfile::Builder::new()
        .prefix("autodidact-gym-bridge-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .map_err(|e| EnvError::io("create a private directory for the gym bridge", e))?;
    let path = dir.path().join("gym_bridge.py");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| EnvError::io(format!("create {}", path.display()), e))?;
    f.write_all(GYM_BRIDGE_SOURCE.as_bytes())
        .map_err(|e| EnvError::io(format!("write {}", path.display()), e))?;
    // Written completely: from now on the directory outlives this handle.
    let _ = dir.keep();
    Ok(path)
}

/// The interpreter to run Python peers with.
pub fn python() -> String {
    std::env::var(PYTHON_ENV_VAR).unwrap_or_else(|_| "python3".into())
}

/// The transport that serves Gymnasium's `gym_id` through the bridge.
pub fn gym_transport(gym_id: &str) -> Result<Transport> {
    if gym_id.is_empty() {
        return Err(EnvError::Config(
            "`gym:` needs a Gymnasium id, e.g. gym:CartPole-v1".into(),
        ));
    }
    // Without an explicit script, the embedded source runs from the command line: there is
    // no file for anyone to plant or swap, and no dependence on the source tree.
    let mut args = match bridge_override()? {
        Some(p) => vec![p.to_string_lossy().into_owned()],
        None => vec!["-c".into(), BOOTSTRAP.into(), GYM_BRIDGE_SOURCE.into()],
    };
    args.extend(["--env".into(), gym_id.into()]);
    let spin = bridge_spin();
    if !spin.is_zero() {
        args.extend(["--spin-us".into(), spin.as_micros().to_string()]);
    }
    Ok(Transport::Exec {
        program: python(),
        args,
    })
}

/// Busy-poll window of both ends of the Gymnasium bridge: 2 ms on a machine with two or more
/// cores, none on one core.
///
/// A bridged step is a round trip through two pipes; a blocking wait costs a process wake-up
/// on each side (18 µs per round trip measured on a 2-vCPU VM, against 21 µs for the
/// CartPole step itself). With a core each, spinning through the peer's reply removes most of
/// that (13.6 k → 21.0 k steps/s measured). Both ends back off by themselves when answers take
/// longer than the window, so a slow environment or a busy machine does not burn a core.
pub fn bridge_spin() -> Duration {
    match std::thread::available_parallelism() {
        Ok(n) if n.get() >= 2 => Duration::from_millis(2),
        _ => Duration::ZERO,
    }
}

/// The adapter settings `gym:` IDs use: the defaults plus [`bridge_spin`].
pub fn gym_config() -> RemoteConfig {
    RemoteConfig {
        spin: bridge_spin(),
        ..RemoteConfig::default()
    }
}
