//! Helpers shared by the agent's integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// True if `python3` can import `module`. Otherwise the test is skipped with a printed reason,
/// unless `AUTODIDACT_REQUIRE_PYTHON=1` (CI sets it): then a missing tool is a failure, so a
/// green CI run never hides a test that did not run.
pub fn python_with(test: &str, module: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let why = format!("python3 with the `{module}` module is not available");
        if std::env::var("AUTODIDACT_REQUIRE_PYTHON").is_ok_and(|v| v == "1") {
            panic!("{test}: {why}, and AUTODIDACT_REQUIRE_PYTHON=1 forbids skipping");
        }
        eprintln!("SKIPPED {test}: {why} (pip install gymnasium for the bridge tests)");
    }
    ok
}

/// The fault-injecting protocol peer of the envs crate's tests.
pub fn faulty_peer() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../envs/tests/peers/faulty_peer.py")
        .display()
        .to_string()
}

/// The complete example world in plain Python.
pub fn walker_example() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../envs/examples/python_env.py")
        .display()
        .to_string()
}
