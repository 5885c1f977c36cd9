//! Live updates as server-sent events: a list page or a task is read again
//! every interval and sent (`event: update`) only when it changed, so an
//! open page follows the tasks without reloading and an idle one costs one
//! read per interval. A task removed meanwhile ends its stream with
//! `event: gone`. Every stream ends when the server shuts down.

use crate::session::caller;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream};
use serde::Serialize;
use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;
use stepgraph_http::{task_filter, task_page, task_view, ApiError, ApiState};
use uuid::Uuid;

/// How often an open list is read again.
const LIST_EVERY: Duration = Duration::from_millis(1000);
/// How often an open task is read again.
const TASK_EVERY: Duration = Duration::from_millis(500);

/// What one read gives: a document to send, the end of the stream with a
/// reason, or a passing failure (sent as `event: problem`, tried again).
enum Read {
    Doc(String),
    Gone(String),
    Problem(String),
}

fn read<T: Serialize>(r: Result<T, ApiError>) -> Read {
    match r {
        Ok(doc) => Read::Doc(serde_json::to_string(&doc).unwrap_or_default()),
        Err(ApiError(StatusCode::NOT_FOUND, why)) => Read::Gone(why),
        Err(ApiError(_, why)) => Read::Problem(why),
    }
}

fn error_json(why: &str) -> String {
    serde_json::json!({ "error": why }).to_string()
}

/// The stream of `read`'s documents, each sent when it differs from the
/// last one sent.
fn follow<F, Fut>(
    s: ApiState,
    every: Duration,
    read: F,
) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: Fn(ApiState) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Read> + Send,
{
    // None once the stream has ended; else the last document sent and
    // whether to wait an interval before reading.
    stream::unfold(Some((s, String::new(), false)), move |state| {
        let read = read.clone();
        async move {
            let (s, last, mut wait) = state?;
            loop {
                if wait {
                    tokio::select! {
                        _ = s.shut_down() => return None,
                        _ = tokio::time::sleep(every) => {}
                    }
                }
                wait = true;
                let event = match read(s.clone()).await {
                    Read::Doc(doc) if doc == last => continue,
                    Read::Doc(doc) => {
                        let e = Event::default().event("update").data(&doc);
                        return Some((Ok(e), Some((s, doc, true))));
                    }
                    Read::Gone(why) => {
                        let e = Event::default().event("gone").data(error_json(&why));
                        return Some((Ok(e), None));
                    }
                    Read::Problem(why) => Event::default().event("problem").data(error_json(&why)),
                };
                return Some((Ok(event), Some((s, last, true))));
            }
        }
    })
}

pub(crate) async fn tasks(
    State(s): State<ApiState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if let Err(e) = caller(&s, &headers) {
        return e.into_response();
    }
    let filter = match task_filter(query.as_deref()) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let events = follow(s, LIST_EVERY, move |s| {
        let filter = filter.clone();
        async move { read(task_page(&s, &filter).await) }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

pub(crate) async fn task(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = caller(&s, &headers) {
        return e.into_response();
    }
    let Ok(id) = Uuid::parse_str(&id) else {
        return ApiError(StatusCode::BAD_REQUEST, format!("not a task id: {id:?}")).into_response();
    };
    let events = follow(s, TASK_EVERY, move |s| async move {
        read(task_view(&s, id).await)
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
