//! A worker's Prometheus endpoint (`worker.metrics_listen`): `GET /metrics`
//! answers what its inline orchestration counted and timed, the same
//! families `serve` shows for its own (steps and tasks by outcome,
//! retries, durations, per template and handler) and its handlers'
//! circuit-breaker transitions. One HTTP/1.1 connection
//! per scrape, over hyper; anything but `/metrics` is a 404.

use crate::breaker::Breakers;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use stepgraph_engine::{Orchestrator, Shutdown};

pub(crate) async fn serve(
    addr: SocketAddr,
    orchestrator: Arc<Orchestrator>,
    breakers: Arc<Breakers>,
    mut shutdown: Shutdown,
) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot serve /metrics (worker.metrics_listen)");
            return;
        }
    };
    tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "serving /metrics");
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.wait() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a /metrics connection failed");
                    continue;
                }
            },
        };
        let (orchestrator, breakers) = (orchestrator.clone(), breakers.clone());
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let page = (request.uri().path() == "/metrics").then(|| {
                        let mut page = orchestrator.metrics().render();
                        breakers.render(&mut page);
                        page
                    });
                    async move { Ok::<_, std::convert::Infallible>(answer(page)) }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The page, or a 404 for any other path.
fn answer(page: Option<String>) -> Response<Full<Bytes>> {
    let (status, kind, body) = match page {
        Some(page) => (StatusCode::OK, "text/plain; version=0.0.4", page),
        None => (
            StatusCode::NOT_FOUND,
            "application/json",
            r#"{"error":"no such endpoint: only /metrics"}"#.to_string(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", kind)
        .body(Full::new(Bytes::from(body)))
        .expect("a response of a status, a header and a body")
}
