//! The CLI's client of the HTTP API (`stepgraph tasks ...`, `stepgraph
//! workers`): one HTTP/1.1 request per call over hyper's client connection,
//! with the bearer token when one is given. Plain `http://` only: put TLS in
//! front of `serve` (a proxy) and reach it through it, or over a tunnel.

use anyhow::{anyhow, bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;

pub struct ApiClient {
    /// `host:port`.
    authority: String,
    token: Option<String>,
}

/// An answer that is not a success: the status and the server's message.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: u16,
    pub message: String,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the server answered {}: {}", self.status, self.message)
    }
}

impl std::error::Error for ApiFailure {}

impl ApiClient {
    pub fn new(server: &str, token: Option<String>) -> Result<ApiClient> {
        let rest = match server.split_once("://") {
            Some(("http", rest)) => rest,
            Some(("https", _)) => bail!(
                "{server}: this CLI speaks plain http; reach a TLS-fronted serve through its proxy's http side or a tunnel"
            ),
            Some((scheme, _)) => bail!("{server}: unknown scheme {scheme:?} (http://host:port)"),
            None => server,
        };
        let authority = rest.trim_end_matches('/').to_string();
        if authority.is_empty() || authority.contains('/') {
            bail!("{server}: expected http://host:port");
        }
        Ok(ApiClient {
            authority,
            token: token.filter(|t| !t.is_empty()),
        })
    }

    /// `method path` with `body`; the JSON answer of a 2xx, else an
    /// [`ApiFailure`] with the server's `error`.
    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .with_context(|| format!("cannot reach stepgraph serve at {}", self.authority))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake")?;
        tokio::spawn(connection);
        let payload = body.map(Value::to_string).unwrap_or_default();
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.authority)
            .header("content-type", "application/json");
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request.body(Full::new(Bytes::from(payload)))?;
        let response = sender
            .send_request(request)
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        let value: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        if !(200..300).contains(&status) {
            let message = value["error"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string());
            return Err(anyhow!(ApiFailure { status, message }));
        }
        Ok(value)
    }
}
