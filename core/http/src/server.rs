//! The accept loop of `serve`: HTTP/1.1 through hyper directly, because
//! slow or idle clients must not hold the server (axum's own `serve` sets no
//! header timeout). A request's headers must arrive within `header_timeout`
//! (the same bound closes a keep-alive connection left idle), and at most
//! `max_connections` are open at once: beyond them a new connection is
//! closed at once, named in the log. Graceful shutdown: no new connection is
//! taken, idle ones close, requests in flight finish.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use stepgraph_engine::Shutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// What one client may cost the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(5),
            max_connections: 10_000,
        }
    }
}

pub(crate) async fn run(
    listener: TcpListener,
    app: Router,
    mut shutdown: Shutdown,
    limits: Limits,
) -> std::io::Result<()> {
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut refused = 0u64;
    loop {
        let stream = tokio::select! {
            _ = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, say: wait a little instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = open.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    limit = limits.max_connections,
                    refused,
                    "connection closed at once: as many are open as http_max_connections allows"
                );
            }
            drop(stream);
            continue;
        };
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
