//! The daemon's HTTP endpoint against bad clients: idle and slow connections, oversize bodies,
//! wrong tokens and foreign `Host` names. Real daemons (a child process where its descriptors
//! are counted, in-process otherwise) on 127.0.0.1, real TCP clients.

mod common;

use common::exchange;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use autodidact::daemon::{Daemon, DaemonConfig, DaemonOptions};

/// One GET with the given `Host` and optional token.
fn get(addr: &str, path: &str, host: &str, token: Option<&str>) -> (u16, String) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{auth}\r\n");
    exchange(addr, req.as_bytes()).unwrap()
}

/// An in-process daemon serving HTTP on 127.0.0.1 with a free port. Its actors stop after a
/// few steps, so it costs little CPU while the test talks to it.
fn small_daemon(dir: &Path, edit: impl FnOnce(&mut DaemonConfig)) -> (Daemon, String) {
    let mut cfg = DaemonConfig::default();
    cfg.daemon.envs = vec!["cartpole".into()];
    cfg.daemon.max_steps = 200;
    cfg.reflection.every_s = 0.0;
    cfg.http.enabled = true;
    cfg.http.bind = "127.0.0.1:0".into();
    edit(&mut cfg);
    let daemon = Daemon::start(DaemonOptions {
        config: cfg,
        run_dir: dir.join("run"),
        env_factory: None,
    })
    .unwrap();
    let addr = daemon.http_addr().unwrap().to_string();
    (daemon, addr)
}

#[test]
fn an_oversize_body_gets_413() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, addr) = small_daemon(dir.path(), |c| c.http.max_body_bytes = 1024);
    let with_body = |n: usize| {
        let mut req = format!(
            "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Length: {n}\r\n\r\n"
        )
        .into_bytes();
        req.extend(std::iter::repeat_n(b'x', n));
        exchange(&addr, &req).unwrap()
    };
    assert_eq!(with_body(1024).0, 200, "a body within the cap passes");
    let (code, body) = with_body(1025);
    assert_eq!(code, 413, "{body}");
    // A declared length far beyond the cap is refused before any of the body is sent.
    let req = format!(
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Length: 10000000000\r\n\r\n"
    );
    assert_eq!(exchange(&addr, req.as_bytes()).unwrap().0, 413);
    daemon.shutdown().unwrap();
}

#[test]
fn only_the_right_token_reads_status_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let token = "correct-horse-battery-staple";
    let (daemon, addr) = small_daemon(dir.path(), |c| c.http.token = token.into());
    for path in ["/status", "/metrics"] {
        assert_eq!(
            get(&addr, path, &addr, None).0,
            401,
            "{path} without a token"
        );
        for wrong in [
            "correct-horse-battery-stapld",
            "correct-horse",
            "correct-horse-battery-staple-and-more",
            "",
        ] {
            assert_eq!(
                get(&addr, path, &addr, Some(wrong)).0,
                401,
                "{path} {wrong}"
            );
        }
        let (code, body) = get(&addr, path, &addr, Some(token));
        assert_eq!(code, 200, "{path}: {body}");
    }
    assert_eq!(get(&addr, "/healthz", &addr, None).0, 200);
    daemon.shutdown().unwrap();
}

#[test]
fn a_foreign_host_is_refused_on_a_loopback_bind() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, addr) = small_daemon(dir.path(), |_| {});
    let port = addr.rsplit_once(':').unwrap().1;
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let (code, body) = get(&addr, "/healthz", &host, None);
        assert_eq!((code, body.as_str()), (200, "ok\n"), "Host: {host}");
        assert_eq!(get(&addr, "/status", &host, None).0, 200, "Host: {host}");
    }
    for host in [
        format!("evil.example:{port}"),
        "evil.example".to_string(),
        format!("localhost.evil.example:{port}"),
        "localhost:1".to_string(),
    ] {
        let (code, body) = get(&addr, "/status", &host, None);
        assert_eq!(code, 421, "Host: {host}: {body}");
        assert!(body.contains("DNS-rebinding"), "{body}");
    }
    // The authority of an absolute-form request counts as much as the Host header, and a
    // request naming no host at all is refused too.
    let absolute = format!(
        "GET http://evil.example:{port}/status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(exchange(&addr, absolute.as_bytes()).unwrap().0, 421);
    assert_eq!(
        exchange(&addr, b"GET /status HTTP/1.0\r\n\r\n").unwrap().0,
        421
    );
    daemon.shutdown().unwrap();
}

/// The daemon binary as a child process with a low open-file limit, killed when dropped.
struct DaemonChild {
    child: Child,
    run_dir: PathBuf,
    log: PathBuf,
}

impl DaemonChild {
    fn start(dir: &Path, nofile: u64, set: &[&str]) -> DaemonChild {
        let run_dir = dir.join("run");
        let log = dir.join("daemon.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_autodidact"));
        cmd.args(["daemon", "--run-dir"])
            .arg(&run_dir)
            .args(["--env", "cartpole", "--http", "127.0.0.1:0"])
            .args(["--log-format", "json"])
            .args(set.iter().flat_map(|kv| ["--set", kv]))
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        // SAFETY: setrlimit(2) is async-signal-safe and touches only the child's own limit.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: nofile,
                    rlim_max: nofile,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        DaemonChild {
            child: cmd.spawn().unwrap(),
            run_dir,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The HTTP address once the daemon is up.
    fn addr(&mut self) -> String {
        let t0 = Instant::now();
        loop {
            if let Ok(a) = std::fs::read_to_string(self.run_dir.join("http.addr")) {
                if a.ends_with('\n') {
                    return a.trim().to_string();
                }
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("the daemon exited early ({st}): {}", self.log());
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "no http.addr");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Descriptors the daemon holds open.
    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }

    /// Waits (with a deadline against a hang) for the exit code.
    fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            assert!(
                t0.elapsed() < limit,
                "the daemon did not exit: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for DaemonChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the server has closed `s` (EOF or reset), checking for up to `limit`.
fn closed_by_server(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            // An answer (a timeout's 408) may come before the close.
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn idle_and_slow_connections_cannot_exhaust_the_daemon() {
    const CAP: usize = 16;
    const IDLE_CLIENTS: usize = 300;
    let token = "s3cret-token-never-logged";
    let dir = tempfile::tempdir().unwrap();
    // 256 descriptors: 300 connections accepted without a cap would run the daemon out.
    let mut d = DaemonChild::start(
        dir.path(),
        256,
        &[
            "http.max_connections=16",
            "http.header_read_timeout_s=1",
            "http.idle_timeout_s=30",
            &format!("http.token={token}"),
            "dqn.learning_starts=500",
            "daemon.candidate_every=200",
            "gate.episodes=3",
        ],
    );
    let addr = d.addr();
    assert_eq!(get(&addr, "/healthz", &addr, None).0, 200);

    // A slow client trickling a request head one byte at a time keeps its connection busy,
    // so only the header-read timeout (1 s; the idle timeout is 30 s) can close it.
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let head = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ");
    slow.write_all(head.as_bytes()).unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 512];
    let closed = loop {
        if slow.write_all(b"a").is_err() {
            break true;
        }
        match slow.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break true,
        }
        if t0.elapsed() > Duration::from_secs(15) {
            break false;
        }
    };
    assert!(closed, "a trickled request head was not cut off");
    eprintln!("a trickled head was cut off after {:?}", t0.elapsed());

    // A flood of idle connections, many more than the cap.
    let baseline = d.open_fds();
    let mut idle: Vec<TcpStream> = (0..IDLE_CLIENTS)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    let mut peak = 0;
    for _ in 0..15 {
        std::thread::sleep(Duration::from_millis(100));
        peak = peak.max(d.open_fds());
    }
    eprintln!("open descriptors: {baseline} before the flood, at most {peak} during it");
    assert!(
        peak <= baseline + CAP + 8,
        "{peak} descriptors open with {IDLE_CLIENTS} idle clients, {baseline} before"
    );
    // Each idle client is either refused at once or cut off by the header-read timeout.
    for (i, s) in idle.iter_mut().enumerate() {
        assert!(
            closed_by_server(s, Duration::from_secs(10)),
            "idle connection {i} is still open"
        );
    }
    drop(idle);

    // The daemon lives on and serves fresh clients.
    let t0 = Instant::now();
    loop {
        match exchange(
            &addr,
            format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        ) {
            Ok((200, _)) => break,
            r => assert!(
                t0.elapsed() < Duration::from_secs(30),
                "no /healthz after the flood: {r:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, body) = get(&addr, "/status", &addr, Some(token));
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(status["steps"].as_u64().unwrap() > 0, "{status:#}");
    assert!(d.child.try_wait().unwrap().is_none(), "{}", d.log());

    // Every request is in the log, with its method, path, status and latency, and the token
    // is not.
    let log = d.log();
    assert!(!log.contains(token), "the token was logged");
    let logged = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .any(|l| {
            let f = &l["fields"];
            f["message"] == "http request"
                && f["method"] == "GET"
                && f["path"] == "/status"
                && f["status"] == 200
                && f["latency_ms"].is_number()
        });
    assert!(logged, "no request line for /status: {log}");
}

#[test]
fn a_connection_cap_beyond_the_descriptor_budget_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = DaemonChild::start(dir.path(), 128, &["http.max_connections=100"]);
    let code = d.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(1));
    let log = d.log();
    assert!(
        log.contains("http.max_connections") && log.contains("open-file limit (128)"),
        "{log}"
    );
}

#[test]
fn a_client_that_stops_reading_its_answers_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    // The header-read timeout cannot fire here (it is long, and the requests are whole): only
    // the idle timeout can end this connection.
    let (daemon, addr) = small_daemon(dir.path(), |c| {
        c.http.idle_timeout_s = 1.0;
        c.http.header_read_timeout_s = 600.0;
    });
    // Pipelined requests whose answers are never read: once the socket buffers are full the
    // daemon can neither write nor (so) read, and no byte moves.
    let mut s = TcpStream::connect(&addr).unwrap();
    let batch = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").repeat(1000);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let e = loop {
            if let Err(e) = s.write_all(batch.as_bytes()) {
                break e;
            }
        };
        let _ = tx.send(e.kind());
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(kind) => assert!(
            matches!(kind, ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
            "{kind:?}"
        ),
        Err(_) => panic!("a connection that moved no byte for 30 s is still open"),
    }
    assert_eq!(get(&addr, "/healthz", &addr, None).0, 200);
    daemon.shutdown().unwrap();
}
