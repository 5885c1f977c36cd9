//! The HTTP API served by `stepgraph serve`: create, inspect, wait for,
//! find and cancel tasks (`tasks`, `find`); an operator's repairs
//! (`repair`); templates, stats, health and Prometheus metrics (`status`,
//! `find`). Errors are JSON `{"error": message}` with the status that fits
//! (`error`).

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::{get, post};
use axum::Router;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;
use stepgraph_engine::queue::Queue;
use stepgraph_engine::{Orchestrator, Shutdown, Store};

mod auth;
mod error;
mod find;
mod repair;
mod server;
mod status;
mod tasks;

pub use auth::{hash as token_hash, new_token, Auth, Caller, Scope, Token};
pub use error::ApiError;
pub use server::Limits;

/// Request bodies above this are refused with 413.
pub const BODY_LIMIT: usize = 1024 * 1024;
/// The longest a wait request may hold the connection; a longer
/// `timeout_ms` is cut to it.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(300);

#[derive(Clone)]
pub struct ApiState {
    pub orchestrator: Arc<Orchestrator>,
    pub store: Arc<dyn Store>,
    pub queue: Arc<dyn Queue>,
    /// `wait` requests holding their connection now (a gauge in `/metrics`).
    pub(crate) waiting: Arc<AtomicUsize>,
    /// Who may do what (none: open).
    pub(crate) auth: Arc<Auth>,
}

impl ApiState {
    pub fn new(
        orchestrator: Arc<Orchestrator>,
        store: Arc<dyn Store>,
        queue: Arc<dyn Queue>,
    ) -> Self {
        ApiState {
            orchestrator,
            store,
            queue,
            waiting: Arc::default(),
            auth: Arc::default(),
        }
    }

    /// Requests must carry a token `auth` knows, with the scope they need.
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = Arc::new(auth);
        self
    }
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/tasks", post(tasks::create_task).get(find::list_tasks))
        .route("/v1/tasks/{id}", get(tasks::get_task))
        .route("/v1/tasks/{id}/wait", get(tasks::wait_task))
        .route("/v1/tasks/{id}/cancel", post(tasks::cancel_task))
        .route("/v1/tasks/{id}/retry", post(repair::retry_task))
        .route(
            "/v1/tasks/{id}/steps/{step}/retry",
            post(repair::retry_step),
        )
        .route(
            "/v1/tasks/{id}/steps/{step}/resolve",
            post(repair::resolve_step),
        )
        .route("/v1/stats", get(find::stats))
        .route("/v1/templates", get(status::templates))
        .route("/v1/workers", get(status::workers))
        .route("/health", get(status::health))
        .route("/metrics", get(status::metrics))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .layer(middleware::from_fn_with_state(
            state.auth.clone(),
            auth::authenticate,
        ))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// Serves until shutdown, within `limits`; requests in flight finish first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: Shutdown,
    limits: Limits,
) -> std::io::Result<()> {
    server::run(listener, router(state), shutdown, limits).await
}
