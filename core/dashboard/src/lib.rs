//! The web dashboard `stepgraph serve` shows at `/`: an overview, the task
//! list, each task with its DAG, timeline and audit trail, the templates
//! and the workers. The pages are one static shell and a bundled script
//! that reads the JSON API (`/v1/...`) the way any client does, so the
//! dashboard can do nothing the API refuses; what is served here is the
//! login that keeps the token in a cookie (`session`), the live updates
//! (`live`, server-sent events) and the embedded assets (`assets`).

use axum::routing::{get, post};
use axum::Router;
use stepgraph_http::ApiState;

mod assets;
mod live;
mod session;

/// The dashboard's routes, to merge with the API's router.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/", get(assets::shell))
        .route("/tasks", get(assets::shell))
        .route("/tasks/{id}", get(assets::shell))
        .route("/templates", get(assets::shell))
        .route("/templates/{namespace}/{name}", get(assets::shell))
        .route("/workers", get(assets::shell))
        .route("/assets/{file}", get(assets::asset))
        .route("/login", get(assets::login_page).post(session::login))
        .route("/logout", post(session::logout))
        .route("/ui/session", get(session::describe))
        .route("/ui/events/tasks", get(live::tasks))
        .route("/ui/events/tasks/{id}", get(live::task))
        .with_state(state)
}
