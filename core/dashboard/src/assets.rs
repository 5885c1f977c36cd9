//! The pages and the assets built into the binary: one shell for every
//! view (the script draws the view its address names), the login page,
//! and the bundled script and style (build.rs).

use crate::session::caller;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use sha2::{Digest, Sha256};
use std::sync::OnceLock;
use stepgraph_http::{ApiError, ApiState};

const SHELL: &str = include_str!("../pages/index.html");
const LOGIN: &str = include_str!("../pages/login.html");
const APP_JS: &str = include_str!(concat!(env!("OUT_DIR"), "/app.js"));
const APP_CSS: &str = include_str!(concat!(env!("OUT_DIR"), "/app.css"));
const LOGIN_JS: &str = include_str!(concat!(env!("OUT_DIR"), "/login.js"));

/// Scripts only from here, no inline script, no framing (clickjacking);
/// inline style attributes are allowed (the timeline's bars are sized so).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn page(html: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "same-origin"),
        ],
        html,
    )
        .into_response()
}

/// Every view's page; without a session, the login page first.
pub(crate) async fn shell(State(s): State<ApiState>, uri: Uri, headers: HeaderMap) -> Response {
    if caller(&s, &headers).is_err() {
        let next = uri.path_and_query().map_or("/", |p| p.as_str());
        let q = serde_urlencoded::to_string([("next", next)]).unwrap_or_default();
        return Redirect::to(&format!("/login?{q}")).into_response();
    }
    page(SHELL)
}

pub(crate) async fn login_page() -> Response {
    page(LOGIN)
}

/// A strong validator of each asset, made once.
fn etag(body: &str) -> String {
    format!(
        "\"{}\"",
        &hex::encode(Sha256::digest(body.as_bytes()))[..20]
    )
}

pub(crate) async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    static TAGS: OnceLock<[String; 3]> = OnceLock::new();
    let tags = TAGS.get_or_init(|| [etag(APP_JS), etag(APP_CSS), etag(LOGIN_JS)]);
    let (body, kind, tag) = match file.as_str() {
        "app.js" => (APP_JS, "text/javascript; charset=utf-8", &tags[0]),
        "app.css" => (APP_CSS, "text/css; charset=utf-8", &tags[1]),
        "login.js" => (LOGIN_JS, "text/javascript; charset=utf-8", &tags[2]),
        _ => return ApiError(StatusCode::NOT_FOUND, format!("no asset {file:?}")).into_response(),
    };
    let etag = HeaderValue::from_str(tag).expect("hex is a header value");
    // Revalidated on every load (the shell names the assets without a
    // version), answered 304 when unchanged.
    let common = [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::ETAG, etag),
    ];
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == tag.as_bytes())
    {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        common,
        [
            (header::CONTENT_TYPE, kind),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}
