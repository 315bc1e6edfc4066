//! Envs served by an outside peer over the JSON-lines protocol, through a child process's
//! stdin/stdout (`exec:`) or a TCP socket (`tcp:`).
//!
//! Faults are expected, so each has a fixed, documented outcome (also in `PROTOCOL.md`):
//!
//! | fault | outcome |
//! |---|---|
//! | peer exits, drops the socket, or a `step` (writing the request and reading the answer) does not complete within `call_timeout` | the peer is killed/disconnected, the step returns `truncated = true` with the last observation and `info.peer_fault`; the next `reset` restarts the peer with exponential backoff |
//! | the same during `reset` | restart with backoff and retry, at most `max_restarts` times, then `EnvError::RestartsExhausted` |
//! | malformed JSON, NaN/Inf (or a reward beyond `f32`), wrong shape, unknown or unexpected message | `EnvError::Protocol`; the stream can no longer be trusted, so the peer is dropped and the next `reset` restarts it |
//! | peer answers `error` | `EnvError::Peer`; the session stays up (a failed `reset` still ends the episode) |
//! | restarts fail `max_restarts` times in a row | `EnvError::RestartsExhausted`; the env stays usable: the next `reset` tries again, with the backoff still growing |
//!
//! So after any error from `step`, a caller can end the episode and call `reset`: it either
//! serves a fresh episode or fails with a typed error, within the bounds in `PROTOCOL.md`.
//! | action outside the action space | `EnvError::InvalidAction` before anything is sent |
//!
//! Every fault is counted in [`RemoteStats`]. No call can hang the runtime: our ends of pipes
//! and sockets are non-blocking and every read and write waits in `poll(2)` with the call's
//! deadline (a peer that answers but never reads fills the pipe; the write then times out);
//! connecting tries all resolved addresses within one deadline; name resolution, which has
//! no deadline of its own, runs on a short-lived helper thread that is abandoned on timeout.
//! No helper thread sits between the runtime and the peer.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::env::{Env, Info, Observation, Step};
use crate::error::{EnvError, ProtocolError, Result};
use crate::protocol::{self, DEFAULT_MAX_LINE, PROTOCOL_VERSION, Request, Response};
use crate::space::{Action, Space};

/// Where the peer lives.
#[derive(Clone, Debug, PartialEq)]
pub enum Transport {
    /// A child process spoken to over its stdin/stdout; stderr is inherited. It runs in a
    /// process group of its own, which is killed (`SIGKILL`) whenever the runtime is done with
    /// the peer: close, drop, a fault, a restart. Being its own group, it does not get the
    /// terminal's Ctrl-C; the runtime decides when it ends (a peer should also exit at the end
    /// of its stdin, which is what it sees if the runtime dies).
    Exec {
        /// Program to run (looked up in `PATH`).
        program: String,
        /// Its arguments.
        args: Vec<String>,
    },
    /// A TCP peer at `host:port`.
    Tcp {
        /// Address to connect to.
        addr: String,
    },
}

impl Transport {
    /// An `Exec` transport from a command line (split on whitespace, with `'…'`, `"…"` and
    /// backslash escapes; no shell is involved).
    pub fn exec(command_line: &str) -> Result<Self> {
        let mut words = split_command_line(command_line)?;
        if words.is_empty() {
            return Err(EnvError::Config("empty command line".into()));
        }
        let program = words.remove(0);
        Ok(Transport::Exec {
            program,
            args: words,
        })
    }

    /// For logs: long arguments (an embedded script) are shown by their size only.
    fn describe(&self) -> String {
        match self {
            Transport::Exec { program, args } => {
                let args: Vec<String> = args
                    .iter()
                    .map(|a| {
                        if a.len() > 80 {
                            format!("<{} bytes>", a.len())
                        } else {
                            a.clone()
                        }
                    })
                    .collect();
                format!("exec:{program} {}", args.join(" "))
            }
            Transport::Tcp { addr } => format!("tcp:{addr}"),
        }
    }
}

/// Splits a command line into words, honouring quotes and backslashes.
pub fn split_command_line(s: &str) -> Result<Vec<String>> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"') | None, '\\') => {
                let next = chars
                    .next()
                    .ok_or_else(|| EnvError::Config("command line ends in a backslash".into()))?;
                cur.push(next);
                in_word = true;
            }
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err(EnvError::Config(format!("unterminated quote in `{s}`")));
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// Timeouts and restart policy of a [`RemoteEnv`].
#[derive(Clone, Debug)]
pub struct RemoteConfig {
    /// Limit for one `reset`/`step`/`close` call: writing the request and reading its answer,
    /// together.
    pub call_timeout: Duration,
    /// Limit for opening a session, all together: resolving the host name, connecting (every
    /// resolved address within the same limit) or spawning, writing `hello` and reading its
    /// answer. Generous by default because Python peers import slowly.
    pub connect_timeout: Duration,
    /// Restart attempts per `reset` before it gives up with `RestartsExhausted` (a later
    /// `reset` tries again). Zero: a dropped peer is never restarted.
    pub max_restarts: u32,
    /// Wait before the first restart attempt; doubles per consecutive failure.
    pub backoff_initial: Duration,
    /// Cap on the wait between attempts.
    pub backoff_max: Duration,
    /// Longest accepted line, in bytes.
    pub max_line: usize,
    /// Busy-poll for an answer this long before sleeping in `poll(2)`. A step round trip is
    /// two process wake-ups; spinning through a fast peer's reply removes one of them, which
    /// can be much of the bridge's overhead on an idle machine. Off (zero) by default: on a
    /// shared, oversubscribed machine it measured ~15% slower, even adaptively.
    pub spin: Duration,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(30),
            max_restarts: 5,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            max_line: DEFAULT_MAX_LINE,
            spin: Duration::ZERO,
        }
    }
}

/// Counters of faults and recoveries, for dashboards and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteStats {
    /// Successful restarts (or reconnects) of the peer.
    pub restarts: u64,
    /// Peer exits / disconnects / IO failures noticed.
    pub disconnects: u64,
    /// Calls that ran out of time.
    pub timeouts: u64,
    /// Protocol violations by the peer.
    pub protocol_errors: u64,
    /// `error` answers from the peer.
    pub peer_errors: u64,
    /// Episodes ended as truncated because of a fault.
    pub truncated_by_fault: u64,
    /// Restart attempts that failed (each failure is also counted under its own kind above;
    /// a peer that came back with other spaces counts as a protocol error).
    pub failed_restarts: u64,
    /// `reset`s that gave up with [`EnvError::RestartsExhausted`]. The env is not dead after
    /// one: the next `reset` tries again.
    pub restarts_exhausted: u64,
}

/// `t + d`, saturating: a configured `Duration::MAX` means "wait for ever", not a panic.
fn after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .unwrap_or_else(|| t + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// The two ends of a connection. Our ends are non-blocking, so every read and write waits in
/// `poll(2)` with a deadline instead of in the kernel without one.
enum Stream {
    /// A child's stdin (closed, `None`, to ask the peer to exit) and stdout.
    Pipes {
        stdin: Option<ChildStdin>,
        stdout: ChildStdout,
    },
    /// One socket for both directions.
    Tcp(TcpStream),
}

struct Conn {
    child: Option<Child>,
    stream: Stream,
    read_fd: RawFd,
    write_fd: RawFd,
    buf: Vec<u8>,
    start: usize,
    scratch: Box<[u8]>,
    spin: AdaptiveSpin,
}

/// Spins only while spinning pays off: if the last answer did not arrive within the spin
/// window, the next waits sleep at once (retrying the spin every `RETRY` calls). On a busy,
/// oversubscribed machine a spinner would steal the very core its peer needs.
#[derive(Default)]
struct AdaptiveSpin {
    off: bool,
    calls_since_off: u32,
}

impl AdaptiveSpin {
    const RETRY: u32 = 64;

    fn window(&mut self, spin: Duration) -> Duration {
        if !self.off {
            return spin;
        }
        self.calls_since_off += 1;
        if self.calls_since_off >= Self::RETRY {
            self.calls_since_off = 0;
            spin
        } else {
            Duration::ZERO
        }
    }

    fn record(&mut self, waited: Duration, spin: Duration) {
        self.off = waited > spin;
    }
}

/// Sets `O_NONBLOCK` on our end of a pipe. The child's ends are separate open file
/// descriptions, so the peer still sees ordinary blocking pipes.
fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on an fd we own (kept open by the caller's ChildStdin/ChildStdout); F_GETFL
    // and F_SETFL take and return plain integers.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Waits until `fd` reports any of `events` (or an error/hang-up, which the following read or
/// write turns into a typed error), busy-polling until `spin_until`. False once `deadline`
/// passes.
fn poll_fd(
    fd: RawFd,
    events: libc::c_short,
    deadline: Instant,
    spin_until: Instant,
) -> std::io::Result<bool> {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        let ms = if now < spin_until {
            0
        } else {
            (deadline - now)
                .as_micros()
                .div_ceil(1000)
                .min(i32::MAX as u128) as i32
        };
        let mut pfd = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid pollfd for the duration of the call and nfds is 1; the fd
        // is owned by the connection, which outlives this call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc > 0 {
            return Ok(true);
        }
        if ms == 0 {
            // Yield rather than burn: on an idle machine this returns at once, on a busy one
            // it hands the core to whoever is runnable, often the peer itself.
            // SAFETY: sched_yield has no arguments and no memory effects.
            unsafe { libc::sched_yield() };
        }
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
    }
}

/// Resolves `addr` with `resolve` on a helper thread, waiting at most until `deadline`.
///
/// `getaddrinfo` has no deadline of its own (a slow DNS server can hold it for many seconds
/// per attempt), and cannot be cancelled: on timeout the helper thread is left behind and
/// ends by itself whenever the resolver returns; its answer is discarded.
fn resolve_with<F>(
    addr: &str,
    deadline: Instant,
    timeout: Duration,
    resolve: F,
) -> Result<Vec<SocketAddr>>
where
    F: FnOnce(&str) -> std::io::Result<Vec<SocketAddr>> + Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    let owned = addr.to_string();
    std::thread::Builder::new()
        .name("envs-resolve".into())
        .spawn(move || {
            // The receiver may be gone (timed out); nothing to do then.
            let _ = tx.send(resolve(&owned));
        })
        .map_err(|e| EnvError::io("spawn the name resolver thread", e))?;
    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(Ok(addrs)) => Ok(addrs),
        Ok(Err(e)) => Err(EnvError::io(format!("resolve `{addr}`"), e)),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(EnvError::Timeout {
            op: format!("resolve {addr}"),
            timeout,
        }),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(EnvError::io(
            format!("resolve `{addr}`"),
            std::io::Error::other("resolver thread ended without an answer"),
        )),
    }
}

/// Resolves `addr` (`host:port`) before `deadline`; a literal IP address needs no resolver.
fn resolve(addr: &str, deadline: Instant, timeout: Duration) -> Result<Vec<SocketAddr>> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    resolve_with(addr, deadline, timeout, |a| {
        a.to_socket_addrs().map(Iterator::collect)
    })
}

/// Tries `addrs` in order until one connects, all within one `deadline` (not one timeout
/// per address: a name with many unreachable addresses must not multiply the wait).
fn connect_any(
    addrs: &[SocketAddr],
    deadline: Instant,
    timeout: Duration,
    addr: &str,
) -> Result<TcpStream> {
    let mut last = None;
    for a in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(a, left) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    if Instant::now() >= deadline {
        return Err(EnvError::Timeout {
            op: format!("connect to {addr}"),
            timeout,
        });
    }
    Err(EnvError::io(
        format!("connect to `{addr}`"),
        last.unwrap_or_else(|| std::io::Error::new(ErrorKind::NotFound, "no address")),
    ))
}

impl Conn {
    /// Starts or connects to the peer; resolving and connecting end by `deadline`.
    fn open(transport: &Transport, deadline: Instant, timeout: Duration) -> Result<Self> {
        let (child, stream) = match transport {
            Transport::Exec { program, args } => {
                let mut child = Command::new(program)
                    .args(args)
                    // Its own process group, so that killing the peer kills whatever it
                    // started too (see `kill_group_and_reap`).
                    .process_group(0)
                    .env("PYTHONUNBUFFERED", "1")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .map_err(|e| EnvError::io(format!("spawn `{program}`"), e))?;
                let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                    kill_group_and_reap(&mut child);
                    return Err(EnvError::Config("child pipes unavailable".into()));
                };
                let stream = Stream::Pipes {
                    stdin: Some(stdin),
                    stdout,
                };
                (Some(child), stream)
            }
            Transport::Tcp { addr } => {
                let addrs = resolve(addr, deadline, timeout)?;
                let stream = connect_any(&addrs, deadline, timeout, addr)?;
                // One small message per step each way: Nagle would add latency.
                stream
                    .set_nodelay(true)
                    .map_err(|e| EnvError::io("set TCP_NODELAY", e))?;
                stream
                    .set_nonblocking(true)
                    .map_err(|e| EnvError::io("set the socket non-blocking", e))?;
                (None, Stream::Tcp(stream))
            }
        };
        let (read_fd, write_fd) = match &stream {
            Stream::Pipes { stdin, stdout } => (
                stdout.as_raw_fd(),
                stdin.as_ref().map_or(-1, AsRawFd::as_raw_fd),
            ),
            Stream::Tcp(s) => (s.as_raw_fd(), s.as_raw_fd()),
        };
        let conn = Self {
            child,
            stream,
            read_fd,
            write_fd,
            buf: Vec::with_capacity(4096),
            start: 0,
            scratch: vec![0; 65536].into_boxed_slice(),
            spin: AdaptiveSpin::default(),
        };
        if let Stream::Pipes { .. } = conn.stream {
            // On failure `conn` is dropped, which kills the child.
            for fd in [read_fd, write_fd] {
                set_nonblocking(fd).map_err(|e| EnvError::io("set a pipe non-blocking", e))?;
            }
        }
        Ok(conn)
    }

    /// Writes all of `bytes`, waiting for the peer to drain its end at most until `deadline`.
    fn send(&mut self, bytes: &[u8], deadline: Instant, timeout: Duration, op: &str) -> Result<()> {
        let mut off = 0;
        while off < bytes.len() {
            let rest = &bytes[off..];
            let r = match &mut self.stream {
                Stream::Pipes { stdin: Some(w), .. } => w.write(rest),
                Stream::Pipes { stdin: None, .. } => Err(ErrorKind::BrokenPipe.into()),
                Stream::Tcp(s) => s.write(rest),
            };
            match r {
                Ok(0) => return Err(EnvError::Disconnected { op: op.into() }),
                Ok(n) => off += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if !poll_fd(self.write_fd, libc::POLLOUT, deadline, deadline)
                        .map_err(|e| EnvError::io("poll", e))?
                    {
                        return Err(EnvError::Timeout {
                            op: op.into(),
                            timeout,
                        });
                    }
                }
                Err(e) => {
                    return Err(match e.kind() {
                        ErrorKind::BrokenPipe
                        | ErrorKind::ConnectionReset
                        | ErrorKind::ConnectionAborted => EnvError::Disconnected { op: op.into() },
                        _ => EnvError::io(format!("write `{op}`"), e),
                    });
                }
            }
        }
        Ok(())
    }

    /// Waits until the peer's end is readable or `deadline` passes. Returns false on timeout.
    fn wait_readable(&mut self, deadline: Instant, spin: Duration) -> std::io::Result<bool> {
        let started = Instant::now();
        let window = self.spin.window(spin);
        let r = poll_fd(self.read_fd, libc::POLLIN, deadline, after(started, window));
        if window > Duration::ZERO || self.spin.off {
            self.spin.record(started.elapsed(), spin);
        }
        r
    }

    fn recv(
        &mut self,
        deadline: Instant,
        cfg: &RemoteConfig,
        timeout: Duration,
        op: &str,
    ) -> Result<Response> {
        let max_line = cfg.max_line;
        loop {
            if let Some(pos) = self.buf[self.start..].iter().position(|&b| b == b'\n') {
                let line_end = self.start + pos;
                let r = protocol::decode_response(&self.buf[self.start..line_end]);
                self.start = line_end + 1;
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                }
                return r.map_err(EnvError::Protocol);
            }
            if self.buf.len() - self.start > max_line {
                return Err(ProtocolError::TooLong { limit: max_line }.into());
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            if !self
                .wait_readable(deadline, cfg.spin)
                .map_err(|e| EnvError::io("poll", e))?
            {
                return Err(EnvError::Timeout {
                    op: op.into(),
                    timeout,
                });
            }
            let r = match &mut self.stream {
                Stream::Pipes { stdout, .. } => stdout.read(&mut self.scratch[..]),
                Stream::Tcp(s) => s.read(&mut self.scratch[..]),
            };
            match r {
                Ok(0) => return Err(EnvError::Disconnected { op: op.into() }),
                Ok(n) => self.buf.extend_from_slice(&self.scratch[..n]),
                // A wake-up without data (or a signal): wait again, under the same deadline.
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                    return Err(EnvError::Disconnected { op: op.into() });
                }
                Err(e) => return Err(EnvError::io(format!("read answer to `{op}`"), e)),
            }
        }
    }

    /// Closes the peer's stdin (a well-behaved peer exits on that) and waits up to `grace` for
    /// it to exit. The child is not reaped here: `Drop` kills its process group and reaps it.
    fn shutdown(&mut self, grace: Duration) {
        if let Stream::Pipes { stdin, .. } = &mut self.stream {
            *stdin = None;
            self.write_fd = -1;
        }
        if let Some(child) = self.child.as_ref() {
            let deadline = after(Instant::now(), grace);
            while Instant::now() < deadline && !has_exited(child) {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

/// Whether `child` has exited, without reaping it: while it is a zombie its pid (which is
/// also its process group's id) cannot be given to another process.
fn has_exited(child: &Child) -> bool {
    let pid: libc::id_t = child.id();
    // SAFETY: an all-zero siginfo_t is a valid value of this plain C struct.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid writes only into `info`, which lives across the call; WNOWAIT leaves the
    // child waitable, so `Child::wait` still reaps it later.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // An error (no such child) means there is nothing left to wait for.
    // SAFETY: after a successful waitid with WEXITED, si_pid is the field that is set (0 when
    // no child has changed state yet).
    rc != 0 || unsafe { info.si_pid() } != 0
}

/// Kills an `exec:` peer's whole process group (the peer leads it: spawned with
/// `process_group(0)`), so helper processes it started die with it, then reaps the peer.
/// Called before the peer is reaped, so the group id cannot belong to anyone else yet.
/// Processes that left the group (`setsid`, daemons) are not reached.
fn kill_group_and_reap(child: &mut Child) {
    if let Ok(pgid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: killpg only sends a signal, to a group we created and have not reaped.
        unsafe { libc::killpg(pgid, libc::SIGKILL) };
    }
    // Harmless if the group kill already took it; covers a failed killpg.
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A peer that is not needed any more (or misbehaved) must not linger, leave
            // helpers behind, or become a zombie.
            kill_group_and_reap(&mut child);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Episode {
    NeedsReset,
    Running,
}

/// An env whose world lives in another process, reached over a [`Transport`].
pub struct RemoteEnv {
    transport: Transport,
    cfg: RemoteConfig,
    conn: Option<Conn>,
    obs_space: Space,
    act_space: Space,
    name: Option<String>,
    stats: RemoteStats,
    episode: Episode,
    last_obs: Observation,
    consecutive_failures: u32,
    out: Vec<u8>,
}

impl std::fmt::Debug for RemoteEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteEnv")
            .field("transport", &self.transport)
            .field("name", &self.name)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// What a peer declares in its `hello`: observation space, action space, name.
type PeerSpaces = (Space, Space, Option<String>);

/// Starts or connects to the peer and performs the handshake, all within `connect_timeout`.
fn open_and_handshake(transport: &Transport, cfg: &RemoteConfig) -> Result<(Conn, PeerSpaces)> {
    let deadline = after(Instant::now(), cfg.connect_timeout);
    let mut conn = Conn::open(transport, deadline, cfg.connect_timeout)?;
    let spaces = handshake(&mut conn, cfg, deadline)?;
    Ok((conn, spaces))
}

fn handshake(conn: &mut Conn, cfg: &RemoteConfig, deadline: Instant) -> Result<PeerSpaces> {
    let mut out = Vec::new();
    protocol::encode_request(
        &Request::Hello {
            protocol: PROTOCOL_VERSION,
        },
        &mut out,
    );
    conn.send(&out, deadline, cfg.connect_timeout, "hello")?;
    match conn.recv(deadline, cfg, cfg.connect_timeout, "hello")? {
        Response::Hello {
            protocol,
            observation_space,
            action_space,
            name,
        } => {
            if protocol != PROTOCOL_VERSION {
                return Err(ProtocolError::Version {
                    ours: PROTOCOL_VERSION,
                    theirs: protocol,
                }
                .into());
            }
            Ok((observation_space, action_space, name))
        }
        Response::Error { message } => Err(EnvError::Peer(message)),
        other => Err(ProtocolError::Unexpected {
            expected: "hello".into(),
            got: other.kind().into(),
        }
        .into()),
    }
}

fn is_transport_fault(e: &EnvError) -> bool {
    matches!(
        e,
        EnvError::Timeout { .. } | EnvError::Disconnected { .. } | EnvError::Io { .. }
    )
}

impl RemoteEnv {
    /// Starts (or connects to) the peer and performs the handshake.
    pub fn connect(transport: Transport, cfg: RemoteConfig) -> Result<Self> {
        let (conn, (obs_space, act_space, name)) = open_and_handshake(&transport, &cfg)?;
        Ok(Self {
            transport,
            cfg,
            conn: Some(conn),
            obs_space,
            act_space,
            name,
            stats: RemoteStats::default(),
            episode: Episode::NeedsReset,
            last_obs: Vec::new(),
            consecutive_failures: 0,
            out: Vec::with_capacity(256),
        })
    }

    /// Fault and recovery counters so far.
    pub fn stats(&self) -> &RemoteStats {
        &self.stats
    }

    /// The name the peer gave in its handshake.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// OS process id of the child, for `exec:` peers that are running.
    pub fn child_pid(&self) -> Option<u32> {
        self.conn
            .as_ref()
            .and_then(|c| c.child.as_ref())
            .map(Child::id)
    }

    fn count(&mut self, e: &EnvError) {
        match e {
            EnvError::Timeout { .. } => self.stats.timeouts += 1,
            EnvError::Disconnected { .. } | EnvError::Io { .. } => self.stats.disconnects += 1,
            EnvError::Protocol(_) => self.stats.protocol_errors += 1,
            EnvError::Peer(_) => self.stats.peer_errors += 1,
            _ => {}
        }
    }

    fn drop_conn(&mut self, e: &EnvError) {
        tracing::warn!(peer = %self.transport.describe(), error = %e, "dropping env peer");
        self.conn = None;
        self.episode = Episode::NeedsReset;
    }

    /// Starts the peer again after a fault: up to `max_restarts` attempts, each after a
    /// backoff wait that doubles with every consecutive failure (also across calls, so a
    /// peer that stays down is not hammered), capped at `backoff_max`.
    fn restart(&mut self) -> Result<()> {
        let mut last = String::from("no attempt made (max_restarts = 0)");
        for attempt in 1..=self.cfg.max_restarts {
            let factor = 1u32 << self.consecutive_failures.min(16);
            let wait = self
                .cfg
                .backoff_initial
                .saturating_mul(factor)
                .min(self.cfg.backoff_max);
            std::thread::sleep(wait);
            match open_and_handshake(&self.transport, &self.cfg) {
                Ok((conn, (obs, act, _))) if obs == self.obs_space && act == self.act_space => {
                    tracing::info!(peer = %self.transport.describe(), attempt, "env peer restarted");
                    self.conn = Some(conn);
                    self.stats.restarts += 1;
                    return Ok(());
                }
                Ok(_) => {
                    last = "peer came back with different spaces".into();
                    self.stats.protocol_errors += 1;
                }
                Err(e) => {
                    self.count(&e);
                    last = e.to_string();
                }
            }
            self.stats.failed_restarts += 1;
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        }
        self.stats.restarts_exhausted += 1;
        tracing::warn!(peer = %self.transport.describe(), error = %last, "env peer could not be restarted");
        Err(EnvError::RestartsExhausted {
            attempts: self.cfg.max_restarts,
            last,
        })
    }

    fn call(&mut self, req: &Request, op: &str) -> Result<Response> {
        let conn = self.conn.as_mut().ok_or(EnvError::NeedsReset)?;
        self.out.clear();
        protocol::encode_request(req, &mut self.out);
        // One deadline for writing the request and reading its answer.
        let deadline = after(Instant::now(), self.cfg.call_timeout);
        conn.send(&self.out, deadline, self.cfg.call_timeout, op)?;
        conn.recv(deadline, &self.cfg, self.cfg.call_timeout, op)
    }

    fn protocol_fault(&mut self, e: EnvError) -> EnvError {
        self.count(&e);
        self.drop_conn(&e);
        e
    }
}

impl Env for RemoteEnv {
    fn observation_space(&self) -> &Space {
        &self.obs_space
    }
    fn action_space(&self) -> &Space {
        &self.act_space
    }

    fn reset(&mut self, seed: Option<u64>) -> Result<(Observation, Info)> {
        // Whatever happens below, the episode in progress is over: a failed reset must not let
        // `step` continue it.
        self.episode = Episode::NeedsReset;
        let mut faults = 0u32;
        loop {
            if self.conn.is_none() {
                self.restart()?;
            }
            match self.call(&Request::Reset { seed }, "reset") {
                Ok(Response::Reset { obs, info }) => {
                    if let Err(e) = self.obs_space.check_observation(&obs, "obs") {
                        return Err(self.protocol_fault(e.into()));
                    }
                    self.episode = Episode::Running;
                    self.consecutive_failures = 0;
                    self.last_obs.clone_from(&obs);
                    return Ok((obs, info));
                }
                Ok(Response::Error { message }) => {
                    self.stats.peer_errors += 1;
                    return Err(EnvError::Peer(message));
                }
                Ok(other) => {
                    let e = ProtocolError::Unexpected {
                        expected: "reset".into(),
                        got: other.kind().into(),
                    };
                    return Err(self.protocol_fault(e.into()));
                }
                Err(e) if is_transport_fault(&e) => {
                    self.count(&e);
                    self.drop_conn(&e);
                    self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                    faults += 1;
                    if faults > self.cfg.max_restarts {
                        self.stats.restarts_exhausted += 1;
                        return Err(EnvError::RestartsExhausted {
                            attempts: faults,
                            last: e.to_string(),
                        });
                    }
                }
                Err(e) => return Err(self.protocol_fault(e)),
            }
        }
    }

    fn step(&mut self, action: &Action) -> Result<Step> {
        if self.episode != Episode::Running {
            return Err(EnvError::NeedsReset);
        }
        self.act_space.validate(action)?;
        match self.call(
            &Request::Step {
                action: action.clone(),
            },
            "step",
        ) {
            Ok(Response::Step(s)) => {
                if let Err(e) = self.obs_space.check_observation(&s.obs, "obs") {
                    return Err(self.protocol_fault(e.into()));
                }
                // The protocol carries an f64, but every consumer stores rewards as f32: one
                // that overflows f32 (1e300) is as unusable as a NaN, and is treated alike.
                if !(s.reward as f32).is_finite() {
                    let e = ProtocolError::NonFinite {
                        field: "reward".into(),
                    };
                    return Err(self.protocol_fault(e.into()));
                }
                self.last_obs.clone_from(&s.obs);
                Ok(s)
            }
            Ok(Response::Error { message }) => {
                self.stats.peer_errors += 1;
                Err(EnvError::Peer(message))
            }
            Ok(other) => {
                let e = ProtocolError::Unexpected {
                    expected: "step".into(),
                    got: other.kind().into(),
                };
                Err(self.protocol_fault(e.into()))
            }
            Err(e) if is_transport_fault(&e) => {
                self.count(&e);
                self.drop_conn(&e);
                self.stats.truncated_by_fault += 1;
                let mut info = Info::new();
                let kind = if matches!(e, EnvError::Timeout { .. }) {
                    "timeout"
                } else {
                    "disconnected"
                };
                info.insert("peer_fault".into(), json!(kind));
                info.insert("error".into(), json!(e.to_string()));
                Ok(Step {
                    obs: self.last_obs.clone(),
                    reward: 0.0,
                    terminated: false,
                    truncated: true,
                    info,
                })
            }
            Err(e) => Err(self.protocol_fault(e)),
        }
    }

    fn close(&mut self) -> Result<()> {
        self.episode = Episode::NeedsReset;
        if self.conn.is_none() {
            return Ok(());
        }
        let grace = self.cfg.call_timeout.min(Duration::from_secs(1));
        let r = self.call(&Request::Close, "close");
        if let Some(mut conn) = self.conn.take() {
            conn.shutdown(grace);
        }
        match r {
            Ok(Response::Closed) => Ok(()),
            // A peer that simply exits on `close` is fine too.
            Err(EnvError::Disconnected { .. }) => Ok(()),
            Ok(Response::Error { message }) => Err(EnvError::Peer(message)),
            Ok(other) => Err(ProtocolError::Unexpected {
                expected: "closed".into(),
                got: other.kind().into(),
            }
            .into()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_split_like_a_shell_would() {
        assert_eq!(
            split_command_line(r#"python3 'my env.py' --name "a b" c\ d"#).unwrap(),
            vec!["python3", "my env.py", "--name", "a b", "c d"]
        );
        assert!(split_command_line("python3 'oops").is_err());
        assert!(split_command_line("").unwrap().is_empty());
    }

    /// A listener on 127.0.0.1 whose accept queue is full: the kernel drops further SYNs, so
    /// a connect to it waits until its timeout, like an unreachable host.
    fn black_hole() -> (std::net::TcpListener, Vec<TcpStream>, SocketAddr) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // SAFETY: listen(2) on a socket we own, to shrink its backlog to the minimum.
        assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 0) }, 0);
        let addr = l.local_addr().unwrap();
        let mut fill = Vec::new();
        // Fill the queue: these connections are never accepted.
        while let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            fill.push(s);
            assert!(fill.len() < 64, "the accept queue never filled");
        }
        (l, fill, addr)
    }

    #[test]
    fn connect_timeout_bounds_all_addresses_together() {
        let (_l, _fill, addr) = black_hole();
        // 200 unreachable addresses at 50 ms each would take 10 s one by one; the whole
        // attempt must end at the one deadline instead (asserted with a hang-detecting margin).
        let addrs = vec![addr; 200];
        let timeout = Duration::from_millis(50);
        let t0 = Instant::now();
        let r = connect_any(&addrs, after(t0, timeout), timeout, "black hole");
        let took = t0.elapsed();
        assert!(
            matches!(r, Err(EnvError::Timeout { .. })),
            "expected a timeout, got {r:?}"
        );
        assert!(
            took < Duration::from_secs(5),
            "connecting took {took:?}: the deadline is per address"
        );
    }

    #[test]
    fn resolution_ends_at_the_deadline_even_if_the_resolver_hangs() {
        let (tx, rx) = mpsc::channel::<()>();
        let timeout = Duration::from_millis(50);
        let (done_tx, done_rx) = mpsc::channel();
        std::thread::spawn(move || {
            // A resolver that answers only when the test lets it (never, unless it hangs).
            let r = resolve_with(
                "stuck.invalid:1",
                after(Instant::now(), timeout),
                timeout,
                move |_| {
                    let _ = rx.recv();
                    Ok(Vec::new())
                },
            );
            let _ = done_tx.send(matches!(r, Err(EnvError::Timeout { .. })));
        });
        let timed_out = done_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("resolution waited for a hung resolver");
        drop(tx);
        assert!(timed_out, "a hung resolver is a Timeout error");
    }

    #[test]
    fn literal_addresses_and_resolver_errors() {
        let far = after(Instant::now(), Duration::from_secs(60));
        let t = Duration::from_secs(60);
        assert_eq!(
            resolve("127.0.0.1:9", far, t).unwrap(),
            vec!["127.0.0.1:9".parse::<SocketAddr>().unwrap()]
        );
        assert!(matches!(
            resolve("no port here", far, t),
            Err(EnvError::Io { .. })
        ));
    }
}
