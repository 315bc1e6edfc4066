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

/// One GET over a fresh connection: `(status code, body)`.
pub fn http_get(addr: &str, path: &str, token: Option<&str>) -> std::io::Result<(u16, String)> {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\r\n");
    exchange(addr, req.as_bytes())
}

/// Sends `raw` as is on a fresh connection and reads the answer: `(status code, body)`;
/// code 0 when the server closed without answering.
pub fn exchange(addr: &str, raw: &[u8]) -> std::io::Result<(u16, String)> {
    use std::io::{ErrorKind, Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))?;
    s.write_all(raw)?;
    let mut bytes = Vec::new();
    match s.read_to_end(&mut bytes) {
        Ok(_) => {}
        // A server that answers before reading the whole body resets the connection when it
        // closes with bytes unread; the answer may still have arrived first.
        Err(e) if e.kind() == ErrorKind::ConnectionReset && !bytes.is_empty() => {}
        Err(e) => return Err(e),
    }
    let raw = String::from_utf8_lossy(&bytes);
    let code = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map_or("", |x| x.1).to_string();
    Ok((code, body))
}
