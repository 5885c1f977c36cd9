//! Logging in to the dashboard: the token given once in the login form is
//! kept in a cookie the page's script cannot read (HttpOnly), that no other
//! site's request carries (SameSite=Strict) and that travels only over
//! HTTPS or to a loopback address (Secure; browsers treat loopback as
//! secure). The API's middleware accepts that cookie in place of the
//! Authorization header, and asks a change to carry the session's CSRF
//! value too (see stepgraph-http's auth).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use stepgraph_http::{csrf_for, session_token, ApiError, ApiState, Caller, Scope, SESSION_COOKIE};

/// How long a login lasts.
const SESSION_SECONDS: u32 = 12 * 3600;

/// The caller a request's cookie (or Authorization header) names; an open
/// API's caller is anonymous with every scope.
pub(crate) fn caller(s: &ApiState, headers: &HeaderMap) -> Result<(Caller, String), ApiError> {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let auth = s.auth();
    if auth.is_open() {
        return Ok((auth.check(None, Scope::Read)?, String::new()));
    }
    if let Some(token) = session_token(text(header::COOKIE)) {
        return Ok((auth.check_token(&token, Scope::Read)?, token));
    }
    let bearer = text(header::AUTHORIZATION);
    let token = bearer
        .and_then(|b| b.strip_prefix("Bearer "))
        .unwrap_or_default()
        .trim()
        .to_string();
    Ok((auth.check(bearer, Scope::Read)?, token))
}

/// What the page's script needs to know of its session.
#[derive(Serialize)]
struct Session {
    name: String,
    scope: String,
    /// Sent back in X-Stepgraph-CSRF with every change.
    csrf: String,
    /// No tokens are configured: the API is open.
    open: bool,
}

pub(crate) async fn describe(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    match caller(&s, &headers) {
        Ok((c, token)) => Json(Session {
            name: c.name,
            scope: c.scope.to_string(),
            csrf: if token.is_empty() {
                String::new()
            } else {
                csrf_for(&token)
            },
            open: s.auth().is_open(),
        })
        .into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    next: String,
}

/// Where to go after logging in: a path of this site only (never another
/// site, which `//host` or a scheme would name).
fn local_path(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/"
    }
}

fn back_to_login(why: &str, next: &str) -> Response {
    let q = serde_urlencoded::to_string([("failed", why), ("next", next)]).unwrap_or_default();
    Redirect::to(&format!("/login?{q}")).into_response()
}

/// Whether the request reached us over HTTPS (a TLS proxy says so) or on a
/// loopback address: where a Secure cookie is kept by the browser.
fn secure_context(headers: &HeaderMap) -> bool {
    let value = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    if value("x-forwarded-proto").eq_ignore_ascii_case("https") {
        return true;
    }
    let host = value("host");
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub(crate) async fn login(State(s): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(form) = serde_urlencoded::from_bytes::<LoginForm>(&body) else {
        return back_to_login("missing", "/");
    };
    let next = local_path(&form.next);
    let token = form.token.trim();
    if s.auth().is_open() {
        return Redirect::to(next).into_response();
    }
    if token.is_empty() {
        return back_to_login("missing", next);
    }
    if let Err(ApiError(status, why)) = s.auth().check_token(token, Scope::Read) {
        tracing::info!(%status, why, "dashboard login refused");
        return back_to_login("unknown", next);
    }
    if !secure_context(&headers) {
        return back_to_login("https", next);
    }
    let value: String = form_urlencoded::byte_serialize(token.as_bytes()).collect();
    let cookie = format!(
        "{SESSION_COOKIE}={value}; Path=/; Max-Age={SESSION_SECONDS}; HttpOnly; SameSite=Strict; Secure"
    );
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, next.to_string()),
        ],
    )
        .into_response()
}

pub(crate) async fn logout() -> Response {
    let cookie = format!("{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict; Secure");
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, "/login".to_string()),
        ],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_login() {
        assert_eq!(local_path("/tasks?state=error"), "/tasks?state=error");
        assert_eq!(local_path("//evil.example/"), "/");
        assert_eq!(local_path("https://evil.example/"), "/");
        assert_eq!(local_path("/\\evil.example"), "/");
        assert_eq!(local_path(""), "/");
    }

    #[test]
    fn secure_cookies_need_https_or_loopback() {
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, v.parse().unwrap());
            }
            secure_context(&h)
        };
        assert!(with(&[("host", "127.0.0.1:8080")]));
        assert!(with(&[("host", "localhost:8080")]));
        assert!(with(&[("host", "[::1]:8080")]));
        assert!(!with(&[("host", "10.0.0.5:8080")]));
        assert!(with(&[
            ("host", "ops.example"),
            ("x-forwarded-proto", "https")
        ]));
    }
}
