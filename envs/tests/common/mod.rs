//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::process::Command;
use std::time::Duration;

use autodidact_envs::RemoteConfig;

/// Path of a file under the crate.
pub fn crate_path(rel: &str) -> String {
    format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"))
}

fn python_ok(code: &str) -> bool {
    Command::new("python3")
        .args(["-c", code])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Environment variable that turns a skip for a missing python3/gymnasium into a failure (CI
/// sets it, so a broken CI image cannot pass by skipping).
pub const REQUIRE_PYTHON_VAR: &str = "AUTODIDACT_REQUIRE_PYTHON";

fn skip(test: &str, why: &str) {
    if std::env::var(REQUIRE_PYTHON_VAR).is_ok_and(|v| v == "1") {
        panic!("{test}: {why}, and {REQUIRE_PYTHON_VAR}=1 forbids skipping");
    }
    eprintln!("SKIPPED: {test}: {why}");
}

/// True if `python3` runs; prints the skip reason otherwise (or panics, see
/// [`REQUIRE_PYTHON_VAR`]).
pub fn have_python(test: &str) -> bool {
    let ok = python_ok("import sys");
    if !ok {
        skip(test, "python3 is not available on PATH");
    }
    ok
}

/// True if `python3` can import gymnasium; prints the skip reason otherwise.
pub fn have_gymnasium(test: &str) -> bool {
    if !have_python(test) {
        return false;
    }
    let ok = python_ok("import gymnasium, numpy");
    if !ok {
        skip(
            test,
            "python3 cannot import gymnasium/numpy (pip install gymnasium)",
        );
    }
    ok
}

/// Short limits so fault tests finish quickly; the values are limits, not expectations.
pub fn fast_config() -> RemoteConfig {
    RemoteConfig {
        call_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_secs(20),
        max_restarts: 3,
        backoff_initial: Duration::from_millis(5),
        backoff_max: Duration::from_millis(50),
        ..RemoteConfig::default()
    }
}
