//! The HTTP API served by `stepgraph serve`: create, inspect, wait for,
//! find and cancel tasks (`tasks`, `find`); an operator's repairs
//! (`repair`); cron schedules (`schedules`); templates, stats, health and Prometheus metrics (`status`,
//! `find`); the OpenAPI document of all of it (`openapi`). Errors are JSON `{"error": message}` with the status that fits
//! (`error`).

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use axum::Router;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;
use stepgraph_engine::queue::Queue;
use stepgraph_engine::{Orchestrator, Shutdown, Store};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

mod auth;
mod error;
mod find;
mod openapi;
mod repair;
mod schedules;
mod server;
mod status;
mod tasks;

pub use auth::{
    csrf_for, hash as token_hash, new_token, session_token, Auth, Caller, Scope, Token,
    CSRF_HEADER, SESSION_COOKIE,
};
pub use error::ApiError;
pub use find::{filter as task_filter, page as task_page, TaskPage};
pub use openapi::{document as openapi_document, document_json as openapi_json};
pub use server::Limits;
pub use stepgraph_engine::TaskView;
pub use tasks::view as task_view;

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
    /// Ends the streams that would otherwise hold a connection open past
    /// the server's shutdown (the dashboard's live updates).
    pub(crate) shutdown: Option<Shutdown>,
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
            shutdown: None,
        }
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// Streams end when `shutdown` fires.
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    /// Resolves when the server shuts down (never, without a shutdown).
    pub async fn shut_down(&self) {
        match self.shutdown.clone() {
            Some(mut s) => s.wait().await,
            None => std::future::pending().await,
        }
    }

    /// Requests must carry a token `auth` knows, with the scope they need.
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = Arc::new(auth);
        self
    }
}

/// Every route, each with the `#[utoipa::path]` that documents it: the
/// router and the OpenAPI document are made from this one list.
pub(crate) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(tasks::create_task, find::list_tasks))
        .routes(routes!(tasks::get_task))
        .routes(routes!(tasks::wait_task))
        .routes(routes!(tasks::cancel_task))
        .routes(routes!(repair::retry_task))
        .routes(routes!(repair::retry_step))
        .routes(routes!(repair::resolve_step))
        .routes(routes!(schedules::list, schedules::create))
        .routes(routes!(schedules::get, schedules::delete))
        .routes(routes!(schedules::pause))
        .routes(routes!(schedules::resume))
        .routes(routes!(find::stats))
        .routes(routes!(status::templates))
        .routes(routes!(status::workers))
        .routes(routes!(status::health))
        .routes(routes!(status::metrics))
        .routes(routes!(openapi::serve_document))
}

pub fn router(state: ApiState) -> Router {
    let (router, _) = routes().split_for_parts();
    router
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError(
                StatusCode::METHOD_NOT_ALLOWED,
                "this endpoint does not take that method (see /v1/openapi.json)".into(),
            )
        })
        .layer(middleware::from_fn_with_state(
            state.auth.clone(),
            auth::authenticate,
        ))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// Serves `app` (the API's [`router`], and what else is merged with it)
/// until shutdown, within `limits`; requests in flight finish first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: Shutdown,
    limits: Limits,
) -> std::io::Result<()> {
    server::run(listener, app, shutdown, limits).await
}
