//! A worker in the registry: who it is, told once at start, then a
//! heartbeat until it stops (see `Store::register_worker`).

use super::Worker;
use std::sync::Arc;
use stepgraph_engine::queue::Slots;
use stepgraph_engine::store::WorkerInfo;
use stepgraph_engine::Shutdown;

impl Worker {
    /// What this worker tells the registry about itself.
    fn info(&self, id: uuid::Uuid) -> WorkerInfo {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| "unknown".into());
        let concurrency = match &self.slots {
            Slots::Concurrency(_) => self.config.concurrency,
            // Granted by the language side as its handlers free up.
            Slots::Credits(c) => c.permits.available_permits().max(self.config.concurrency),
        };
        WorkerInfo {
            id,
            host,
            pid: std::process::id(),
            language: self.config.language.clone(),
            namespaces: self.config.namespaces.clone(),
            handlers: self
                .handlers
                .names()
                .into_iter()
                .map(str::to_string)
                .collect(),
            concurrency,
            heartbeat_ms: self.config.heartbeat.as_millis() as u64,
            started_at: chrono::Utc::now(),
        }
    }

    /// Registers this worker, then heartbeats until shutdown. A registry
    /// that cannot be reached is tried again at the next beat; the steps
    /// run meanwhile.
    pub(super) async fn heartbeat(self: Arc<Self>, id: uuid::Uuid, mut shutdown: Shutdown) {
        let info = self.info(id);
        let mut registered = false;
        loop {
            let told = match registered {
                false => self.store.register_worker(&info).await,
                true => {
                    let circuits = self.handlers.breakers().not_closed();
                    self.store.heartbeat(id, false, &circuits).await
                }
            };
            match told {
                Ok(()) => registered = true,
                Err(e) => tracing::warn!(error = %e, "the worker registry cannot be reached"),
            }
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(self.config.heartbeat) => {}
            }
        }
    }
}
