//! What a worker tells Prometheus: its `/metrics` endpoint (with
//! `metrics_listen`), and how long each step it took from a queue waited
//! there. Both need inline orchestration, whose metrics they are.

use super::Worker;
use std::time::Duration;
use stepgraph_engine::{Shutdown, StepMessage, StepWork};

impl Worker {
    pub(super) fn serve_metrics(&self, shutdown: &Shutdown) {
        if let (Some(addr), Some(orchestrator)) = (self.config.metrics_listen, &self.inline) {
            tokio::spawn(crate::metrics_http::serve(
                addr,
                orchestrator.clone(),
                self.handlers.breakers().clone(),
                shutdown.clone(),
            ));
        }
    }

    /// From when the step became ready (`ready_at_us`) to now, its start.
    pub(super) fn observe_queue_wait(&self, msg: &StepMessage, work: &StepWork) {
        if let (Some(ready), Some(inline)) = (msg.ready_at_us, &self.inline) {
            let waited_us = chrono::Utc::now().timestamp_micros() - ready;
            let waited = Duration::from_micros(waited_us.max(0) as u64);
            let template = format!("{}/{}", work.namespace, work.task_name);
            inline
                .metrics()
                .observe_queue_wait(&template, &msg.handler, waited);
        }
    }
}
