//! `/healthz`, `/status` and `/metrics` over HTTP/1.1 (axum routes served by hyper on the
//! daemon's tokio runtime).
//!
//! `/healthz` answers to anyone who can reach the socket (load balancers and supervisors
//! probe it); `/status` and `/metrics` require `Authorization: Bearer <token>` when a token
//! is configured, and a token is required for any address beyond loopback.
//!
//! The endpoint shares the process with the replay file and the checkpoints, so no client
//! may use up what they need:
//! - at most `http.max_connections` connections are served at once; one more is accepted and
//!   closed at once, so the endpoint holds at most that many descriptors plus the listener
//!   and the one being refused;
//! - a request head must arrive within `http.header_read_timeout_s` (hyper's header-read
//!   timer, which also runs while a kept-alive connection waits for its next request) and
//!   may take at most [`MAX_HEAD_BYTES`];
//! - a connection on which no byte moves for `http.idle_timeout_s` is closed;
//! - a body larger than `http.max_body_bytes` gets 413.
//!
//! On a loopback bind only `Host` values naming loopback are served (421 otherwise), so a web
//! page whose name was re-pointed at 127.0.0.1 (DNS rebinding) cannot read the endpoint
//! through a browser. Every request is logged (method, path, status, latency, peer), never
//! its headers.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tower::ServiceExt;
use tower_http::limit::RequestBodyLimitLayer;

use super::Shared;
use super::config::HttpSection;
use crate::error::{AgentError, Result};

/// The largest request head (request line and headers) hyper buffers for one connection, in
/// bytes; a longer one ends the connection. Bounds the memory of each connection.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Pause after an accept error that is not about the connection itself (out of descriptors,
/// out of buffers): retrying at once would spin while nothing has freed.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(500);

/// At most one warning about refused connections per this interval: a flood of connections
/// must not become a flood of log lines.
const REFUSAL_WARN_EVERY: Duration = Duration::from_secs(10);

/// Once the endpoint stops, a connection still in progress gets this long to finish.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// Paths longer than this are cut in the request log.
const LOGGED_PATH_CHARS: usize = 200;

/// Fails when `http.max_connections` could take more than half the process's open-file limit:
/// the replay file, checkpoints and environment pipes need the rest.
pub(crate) fn check_fd_budget(cfg: &HttpSection) -> Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) only writes into the struct we pass, which we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0
        || lim.rlim_cur == libc::RLIM_INFINITY
    {
        return Ok(());
    }
    let wanted = u64::try_from(cfg.max_connections).unwrap_or(u64::MAX);
    if wanted > lim.rlim_cur / 2 {
        return Err(AgentError::Config(format!(
            "http.max_connections: {wanted} connections could take more than half of the \
             open-file limit ({}), which the replay file and checkpoints need; lower it or \
             raise the limit (ulimit -n)",
            lim.rlim_cur
        )));
    }
    Ok(())
}

#[derive(Clone)]
struct App {
    shared: Arc<Shared>,
    token: Option<Arc<str>>,
}

impl App {
    fn authorised(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let Some(got) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        // Time independent of where the first difference is (only the length may show).
        got.as_bytes().ct_eq(token.as_bytes()).into()
    }
}

fn unauthorised() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "this endpoint needs `Authorization: Bearer <token>` (http.token)\n",
    )
        .into_response()
}

async fn healthz(State(app): State<App>) -> Response {
    match app.shared.unhealthy() {
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {why}\n"),
        )
            .into_response(),
        None => (StatusCode::OK, "ok\n").into_response(),
    }
}

async fn status(State(app): State<App>, headers: HeaderMap) -> Response {
    if !app.authorised(&headers) {
        return unauthorised();
    }
    let shared = app.shared.clone();
    match tokio::task::spawn_blocking(move || shared.status()).await {
        Ok(Ok(s)) => match serde_json::to_string_pretty(&s) {
            Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        },
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn metrics(State(app): State<App>, headers: HeaderMap) -> Response {
    if !app.authorised(&headers) {
        return unauthorised();
    }
    let shared = app.shared.clone();
    match tokio::task::spawn_blocking(move || shared.status()).await {
        Ok(Ok(s)) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            s.prometheus(),
        )
            .into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// The peer of a connection, attached to each of its requests for the log.
#[derive(Clone, Copy)]
struct Peer(SocketAddr);

/// What the front of every request needs to know about the listening socket.
struct Front {
    /// `Some(port)` when bound to a loopback address: then `Host` is checked.
    loopback_port: Option<u16>,
    /// The bound address, which a client may also name literally.
    bound_ip: IpAddr,
}

impl Front {
    /// Whether `authority` (`host[:port]`) names this loopback endpoint.
    fn names_us(&self, authority: &str, port: u16) -> bool {
        let a = authority.to_ascii_lowercase();
        let (host, rest) = match a.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((ip, rest)) => (format!("[{ip}]"), rest.to_string()),
                None => return false,
            },
            None => match a.split_once(':') {
                Some((h, p)) => (h.to_string(), format!(":{p}")),
                None => (a.clone(), String::new()),
            },
        };
        let port_ok = rest.is_empty() || rest == format!(":{port}");
        let bound = match self.bound_ip {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        let host_ok = matches!(host.as_str(), "localhost" | "127.0.0.1" | "[::1]") || host == bound;
        port_ok && host_ok
    }

    /// The refusal of a request whose `Host` (or absolute-form authority) does not name this
    /// loopback endpoint; `None` when it may pass.
    fn refusal(&self, req: &Request) -> Option<Response> {
        let port = self.loopback_port?;
        let mut named = 0usize;
        let mut all_ours = true;
        if let Some(a) = req.uri().authority() {
            named += 1;
            all_ours &= self.names_us(a.as_str(), port);
        }
        for v in req.headers().get_all(header::HOST) {
            named += 1;
            all_ours &= v.to_str().is_ok_and(|v| self.names_us(v, port));
        }
        if named > 0 && all_ours {
            return None;
        }
        Some(
            (
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "this endpoint listens on loopback and answers only to Host 127.0.0.1:{port}, \
                     localhost:{port} or [::1]:{port} (another name may be a DNS-rebinding \
                     attempt)\n"
                ),
            )
                .into_response(),
        )
    }
}

/// The outermost layer: refuses foreign `Host`s on loopback binds and logs every request.
async fn front(State(front): State<Arc<Front>>, req: Request, next: Next) -> Response {
    let t0 = Instant::now();
    let method = req.method().clone();
    let path: String = req.uri().path().chars().take(LOGGED_PATH_CHARS).collect();
    let peer = req
        .extensions()
        .get::<Peer>()
        .map_or_else(String::new, |p| p.0.to_string());
    let response = match front.refusal(&req) {
        Some(refused) => refused,
        None => next.run(req).await,
    };
    let (status, latency_ms) = (response.status().as_u16(), t0.elapsed().as_secs_f64() * 1e3);
    // A supervisor probes /healthz every few seconds for days: a healthy answer is a debug
    // line, so the log keeps what a person would read.
    if path == "/healthz" && status == 200 {
        tracing::debug!(%method, path, status, latency_ms, peer, "http request");
    } else {
        tracing::info!(%method, path, status, latency_ms, peer, "http request");
    }
    response
}

/// When a byte last moved on a connection.
struct Activity {
    born: Instant,
    /// Milliseconds after `born`.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            born: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.born + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A socket that records when a byte last moved, for the idle timeout.
struct Watched {
    io: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Serves one connection until it ends, idles out, or the endpoint stops; the permit is its
/// place under `http.max_connections`.
async fn connection(
    http: hyper::server::conn::http1::Builder,
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    idle: Duration,
    mut stop: watch::Receiver<()>,
    _permit: OwnedSemaphorePermit,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        io: stream,
        activity: activity.clone(),
    });
    let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(Peer(peer));
        router.clone().oneshot(req)
    });
    let conn = http.serve_connection(io, service);
    tokio::pin!(conn);
    let mut stopped: Option<Instant> = None;
    loop {
        let deadline = match stopped {
            Some(t) => (activity.last() + idle).min(t + STOP_GRACE),
            None => activity.last() + idle,
        };
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "http connection ended");
                }
                return;
            }
            () = tokio::time::sleep_until(deadline) => {
                let now = Instant::now();
                if activity.last() + idle <= now {
                    tracing::debug!(%peer, "closing an http connection idle for {idle:?}");
                    return;
                }
                if stopped.is_some_and(|t| t + STOP_GRACE <= now) {
                    return;
                }
            }
            _ = stop.changed(), if stopped.is_none() => {
                // Idle connections close now; a request in progress is answered first.
                stopped = Some(Instant::now());
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Whether an accept error concerns only the connection being accepted (so the next accept
/// may succeed at once).
fn connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset | Interrupted
    )
}

/// Serves until `shutdown` resolves, then lets the connections in progress finish.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    token: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let cfg = shared.cfg.http.clone();
    let local = listener.local_addr()?;
    let front_state = Arc::new(Front {
        loopback_port: local.ip().is_loopback().then_some(local.port()),
        bound_ip: local.ip(),
    });
    let app = App {
        shared,
        token: token.map(Arc::from),
    };
    let max_body = usize::try_from(cfg.max_body_bytes).unwrap_or(usize::MAX);
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(app)
        .layer(RequestBodyLimitLayer::new(max_body))
        .layer(middleware::from_fn_with_state(front_state, front));

    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs_f64(cfg.header_read_timeout_s))
        .keep_alive(true)
        .max_buf_size(MAX_HEAD_BYTES);
    let idle = Duration::from_secs_f64(cfg.idle_timeout_s);
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    let (stop_tx, stop_rx) = watch::channel(());
    tokio::pin!(shutdown);
    let (mut refused, mut last_warning) = (0u64, None::<Instant>);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(c) => c,
            Err(e) if connection_error(&e) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "http: cannot accept a connection; pausing");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                }
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Closing at once frees the descriptor now; a client that waited in the backlog
            // instead would be answered long after it gave up.
            drop(stream);
            refused = refused.saturating_add(1);
            if last_warning.is_none_or(|t| t.elapsed() >= REFUSAL_WARN_EVERY) {
                last_warning = Some(Instant::now());
                tracing::warn!(
                    max_connections = cfg.max_connections,
                    refused,
                    "http: connection limit reached; refusing new connections \
                     (http.max_connections)"
                );
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            http.clone(),
            stream,
            peer,
            router.clone(),
            idle,
            stop_rx.clone(),
            permit,
        ));
    }
    drop(listener);
    drop(stop_rx);
    let _ = stop_tx.send(());
    // Every connection holds one permit until it has finished.
    let all = u32::try_from(cfg.max_connections).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_with_our_port_pass_and_others_do_not() {
        let f = Front {
            loopback_port: Some(8123),
            bound_ip: "127.0.0.1".parse().unwrap(),
        };
        for ok in [
            "127.0.0.1:8123",
            "localhost:8123",
            "LocalHost:8123",
            "[::1]:8123",
            "localhost",
            "127.0.0.1",
        ] {
            assert!(f.names_us(ok, 8123), "{ok}");
        }
        for bad in [
            "evil.example:8123",
            "evil.example",
            "localhost:8124",
            "127.0.0.1:80",
            "localhost.evil.example:8123",
            "127.0.0.2:8123",
            "[::1",
            "[::2]:8123",
            "user@localhost:8123",
            "localhost:8123:8123",
            "",
        ] {
            assert!(!f.names_us(bad, 8123), "{bad}");
        }
        let v6 = Front {
            loopback_port: Some(1),
            bound_ip: "::1".parse().unwrap(),
        };
        assert!(v6.names_us("[::1]:1", 1));
    }
}
