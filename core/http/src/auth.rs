//! Bearer tokens with scopes. The configuration holds each token's name,
//! scope and SHA-256 hash, never the token: a token is 256 random bits
//! (`stepgraph tokens new`), so a fast hash is as safe as a slow one and
//! costs nothing per request. The hash of the presented token is compared
//! with each configured one in constant time (`subtle`).
//!
//! Scopes nest: `read` (get, list, wait, stats, templates, workers),
//! `write` (also create and cancel), `admin` (also retry and resolve).
//! Without tokens the API is open; `serve` allows that only on a loopback
//! address unless told `insecure`.
//!
//! The dashboard logs in once and keeps the token in an HttpOnly,
//! SameSite=Strict cookie ([`SESSION_COOKIE`]); a request that carries
//! only the cookie and changes something must also send the CSRF value
//! derived from that token ([`csrf_for`]) in [`CSRF_HEADER`], which a page
//! of another site can neither read nor compute.

use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl std::str::FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Scope, String> {
        match s {
            "read" => Ok(Scope::Read),
            "write" => Ok(Scope::Write),
            "admin" => Ok(Scope::Admin),
            other => Err(format!("unknown scope {other:?} (read, write or admin)")),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        })
    }
}

/// A configured token: who it is, what it may do, its hash.
#[derive(Clone)]
pub struct Token {
    pub name: String,
    pub scope: Scope,
    hash: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

const HASH_PREFIX: &str = "sha256:";

/// The form a token's hash takes in the configuration: `sha256:<hex>`.
pub fn hash(token: &str) -> String {
    format!(
        "{HASH_PREFIX}{}",
        hex::encode(Sha256::digest(token.as_bytes()))
    )
}

/// A new random token (32 bytes from the operating system, hex) and its hash.
pub fn new_token() -> Result<(String, String), String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness from the system: {e}"))?;
    let token = format!("sg_{}", hex::encode(bytes));
    let h = hash(&token);
    Ok((token, h))
}

impl Token {
    /// A configured token; an error names it and what is wrong.
    pub fn new(name: &str, scope: &str, hash: &str) -> Result<Token, String> {
        let bad = |why: String| format!("token {name:?}: {why}");
        if name.is_empty() {
            return Err("a token needs a name".into());
        }
        let scope = scope.parse().map_err(bad)?;
        let hex = hash.strip_prefix(HASH_PREFIX).ok_or_else(|| {
            bad(format!(
                "hash must be {HASH_PREFIX}<64 hex digits> (see `stepgraph tokens new`)"
            ))
        })?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex, &mut bytes)
            .map_err(|e| bad(format!("hash is not 64 hex digits: {e}")))?;
        Ok(Token {
            name: name.to_string(),
            scope,
            hash: bytes,
        })
    }
}

/// The cookie the dashboard keeps its token in.
pub const SESSION_COOKIE: &str = "stepgraph_session";
/// The header a cookie-authenticated change carries the CSRF value in.
pub const CSRF_HEADER: &str = "x-stepgraph-csrf";

/// The CSRF value of a session: derived from its token, so the server keeps
/// nothing per session and every `serve` of a cluster agrees.
pub fn csrf_for(token: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"stepgraph csrf\0");
    h.update(token.as_bytes());
    hex::encode(h.finalize())
}

/// The session cookie's token in a `Cookie` header, if there is one.
pub fn session_token(cookie_header: Option<&str>) -> Option<String> {
    cookie_header?
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, v)| {
            form_urlencoded::parse(format!("v={v}").as_bytes())
                .map(|(_, v)| v.into_owned())
                .next()
                .unwrap_or_default()
        })
        .filter(|t| !t.is_empty())
}

/// Who made a request (the token's name), for the audit rows of repairs,
/// and what it may do.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub scope: Scope,
}

/// The API's tokens; none means open.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    tokens: Vec<Token>,
    /// `/health` and `/metrics` answer without a token.
    pub open_probes: bool,
}

impl Auth {
    pub fn new(tokens: Vec<Token>, open_probes: bool) -> Auth {
        Auth {
            tokens,
            open_probes,
        }
    }

    pub fn is_open(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The token presented, if configured; compared in constant time with
    /// every configured hash (all of them, whichever matches).
    fn find(&self, presented: &str) -> Option<&Token> {
        let digest = Sha256::digest(presented.as_bytes());
        let mut found = None;
        for t in &self.tokens {
            if bool::from(t.hash.ct_eq(digest.as_slice())) {
                found = Some(t);
            }
        }
        found
    }

    /// The caller, if the request's token may do what `need` names.
    pub fn check(&self, authorization: Option<&str>, need: Scope) -> Result<Caller, ApiError> {
        if self.is_open() {
            return Ok(Caller::anonymous());
        }
        let unauthorized = |why: &str| ApiError(StatusCode::UNAUTHORIZED, why.to_string());
        let presented = authorization
            .ok_or_else(|| unauthorized("missing token: send Authorization: Bearer <token>"))?
            .strip_prefix("Bearer ")
            .ok_or_else(|| unauthorized("the Authorization header must be Bearer <token>"))?
            .trim();
        self.check_token(presented, need)
    }

    /// The caller a token (from the header or the session cookie) is, if it
    /// may do what `need` names.
    pub fn check_token(&self, presented: &str, need: Scope) -> Result<Caller, ApiError> {
        if self.is_open() {
            return Ok(Caller::anonymous());
        }
        let token = self
            .find(presented)
            .ok_or_else(|| ApiError(StatusCode::UNAUTHORIZED, "unknown token".into()))?;
        if token.scope < need {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                format!(
                    "token {:?} has scope {}; this needs {need}",
                    token.name, token.scope
                ),
            ));
        }
        Ok(Caller {
            name: token.name.clone(),
            scope: token.scope,
        })
    }
}

impl Caller {
    /// Whoever calls an open API: may do anything.
    fn anonymous() -> Caller {
        Caller {
            name: "anonymous".into(),
            scope: Scope::Admin,
        }
    }
}

/// What a request needs: None for the OpenAPI document, and for the probes
/// when they are open; `admin`
/// for repairs, `write` for any other change, `read` for the rest.
fn needs(auth: &Auth, method: &Method, path: &str) -> Option<Scope> {
    if path == crate::openapi::PATH || (matches!(path, "/health" | "/metrics") && auth.open_probes)
    {
        return None;
    }
    Some(if method == Method::GET || method == Method::HEAD {
        Scope::Read
    } else if path.ends_with("/retry") || path.ends_with("/resolve") {
        Scope::Admin
    } else {
        Scope::Write
    })
}

/// The middleware: refuses what the token may not do (401, 403), and hands
/// the caller to the handlers.
pub(crate) async fn authenticate(
    State(auth): State<Arc<Auth>>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(need) = needs(&auth, request.method(), request.uri().path()) {
        let headers = request.headers();
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let authorization = text(header::AUTHORIZATION.as_str());
        let caller = match session_token(text(header::COOKIE.as_str())) {
            Some(token) if authorization.is_none() && !auth.is_open() => {
                let caller = auth.check_token(&token, need)?;
                let safe = matches!(*request.method(), Method::GET | Method::HEAD);
                let csrf = text(CSRF_HEADER).unwrap_or_default();
                if !safe && !bool::from(csrf.as_bytes().ct_eq(csrf_for(&token).as_bytes())) {
                    return Err(ApiError(
                        StatusCode::FORBIDDEN,
                        format!(
                            "a change made with the dashboard's session cookie must carry its \
                             {CSRF_HEADER} header (the page's own requests do)"
                        ),
                    ));
                }
                caller
            }
            _ => auth.check(authorization, need)?,
        };
        request.extensions_mut().insert(caller);
    }
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        let tokens = ["r", "w", "a"]
            .iter()
            .zip(["read", "write", "admin"])
            .map(|(name, scope)| Token::new(name, scope, &hash(&format!("secret-{name}"))).unwrap())
            .collect();
        Auth::new(tokens, true)
    }

    #[test]
    fn scopes_nest_and_each_refusal_says_why() {
        let a = auth();
        let bearer = |n: &str| format!("Bearer secret-{n}");
        assert_eq!(a.check(Some(&bearer("a")), Scope::Admin).unwrap().name, "a");
        assert_eq!(a.check(Some(&bearer("w")), Scope::Read).unwrap().name, "w");
        let e = a.check(Some(&bearer("w")), Scope::Admin).unwrap_err();
        assert_eq!(e.0, StatusCode::FORBIDDEN);
        assert!(
            e.1.contains("scope write") && e.1.contains("needs admin"),
            "{}",
            e.1
        );
        assert_eq!(
            a.check(None, Scope::Read).unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            a.check(Some("Bearer nope"), Scope::Read).unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            a.check(Some("secret-a"), Scope::Read).unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let t = session_token(Some("a=1; stepgraph_session=sg_ab%2Bc; b=2"));
        assert_eq!(t.as_deref(), Some("sg_ab+c"));
        assert_eq!(session_token(Some("a=1")), None);
        assert_eq!(session_token(Some("stepgraph_session=")), None);
        assert_eq!(session_token(None), None);
        assert_ne!(csrf_for("a"), csrf_for("b"));
        assert_eq!(csrf_for("a").len(), 64);
    }

    #[test]
    fn bad_configuration_names_the_token() {
        let e = Token::new("ops", "root", &hash("x")).unwrap_err();
        assert!(e.contains("\"ops\"") && e.contains("root"), "{e}");
        let e = Token::new("ops", "read", "plain-token").unwrap_err();
        assert!(e.contains("sha256:"), "{e}");
        let e = Token::new("ops", "read", "sha256:abc").unwrap_err();
        assert!(e.contains("64 hex digits"), "{e}");
    }

    #[test]
    fn new_tokens_are_random_and_hash_as_configured() {
        let (t1, h1) = new_token().unwrap();
        let (t2, _) = new_token().unwrap();
        assert_ne!(t1, t2);
        assert_eq!(hash(&t1), h1);
        assert!(Token::new("x", "read", &h1).is_ok());
    }

    #[test]
    fn routes_need_the_scope_of_what_they_do() {
        let a = auth();
        assert_eq!(needs(&a, &Method::GET, "/v1/tasks"), Some(Scope::Read));
        assert_eq!(needs(&a, &Method::POST, "/v1/tasks"), Some(Scope::Write));
        assert_eq!(
            needs(&a, &Method::POST, "/v1/tasks/x/cancel"),
            Some(Scope::Write)
        );
        assert_eq!(
            needs(&a, &Method::POST, "/v1/tasks/x/retry"),
            Some(Scope::Admin)
        );
        assert_eq!(
            needs(&a, &Method::POST, "/v1/tasks/x/steps/s/resolve"),
            Some(Scope::Admin)
        );
        assert_eq!(needs(&a, &Method::GET, "/metrics"), None);
        let closed = Auth::new(Vec::new(), false);
        assert_eq!(needs(&closed, &Method::GET, "/health"), Some(Scope::Read));
        assert_eq!(needs(&closed, &Method::GET, "/v1/openapi.json"), None);
    }
}
