//! `/healthz`, `/status` and `/metrics` over HTTP/1.1 (axum on the daemon's tokio runtime).
//!
//! `/healthz` answers to anyone who can reach the socket (load balancers and supervisors
//! probe it); `/status` and `/metrics` require `Authorization: Bearer <token>` when a token
//! is configured, and a token is required for any address beyond loopback.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::Shared;

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
        // Compare in time independent of where the first difference is.
        got.len() == token.len()
            && got
                .bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
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

/// Serves until `shutdown` resolves.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    token: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = App {
        shared,
        token: token.map(Arc::from),
    };
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(app);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
