//! Joining a distributed deployment: the database its settings name,
//! migrated, and every worker of such a deployment, made by
//! [`connect_worker`].

use crate::handler::HandlerRegistry;
use crate::runtime::Worker;
use crate::settings::{Settings, SettingsError};
use std::sync::Arc;
use stepgraph_engine::queue::Credits;
use stepgraph_engine::{Orchestrator, QueueError, StoreError, TemplateRegistry};
use stepgraph_postgres::PgBackend;

/// Why a process could not join its deployment.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The database refused the connection or the migrations.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The queue's broker refused the connection.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Connects to the database `settings` names ([`Settings::postgres`])
/// and applies the migrations that are not applied yet.
pub async fn connect(settings: &Settings) -> Result<Arc<PgBackend>, ConnectError> {
    let pg = PgBackend::connect_with(settings.database_url()?, settings.postgres()).await?;
    pg.migrate().await?;
    Ok(pg)
}

/// A worker of the deployment `settings` describes: connected and migrated,
/// its steps over the configured transport, serving `settings.worker.namespaces`
/// (every namespace of `templates` when empty). With
/// `worker.inline_orchestration` (the default) it records each outcome and
/// orchestrates its task in one commit, with the templates; with `credits`
/// it claims only what a foreign host's language side asks for.
/// `stepgraph worker` and the Python, Ruby and TypeScript workers are all
/// made here.
pub async fn connect_worker(
    settings: &Settings,
    templates: TemplateRegistry,
    handlers: HandlerRegistry,
    credits: Option<Credits>,
) -> Result<Worker, ConnectError> {
    let transport = settings.transport()?;
    let pg = connect(settings).await?;
    let (store, queue) = transport.backends(&pg).await?;
    let mut config = settings.worker();
    if config.namespaces.is_empty() {
        config.namespaces = templates.namespaces();
    }
    // Another worker may serve them: a warning, not an error.
    let missing = handlers.missing_for(&templates, Some(&config.namespaces));
    if !missing.is_empty() {
        tracing::warn!(
            handlers = %missing.join("; "),
            "no handler is registered here for these template steps of this worker's queues; another worker must serve them"
        );
    }
    let mut worker = Worker::new(store.clone(), queue.clone(), Arc::new(handlers), config);
    if settings.worker.inline_orchestration {
        let orchestrator =
            Orchestrator::new(store, queue, Arc::new(templates), settings.orchestrator());
        worker = worker.with_inline_orchestration(Arc::new(orchestrator));
    }
    if let Some(credits) = credits {
        worker = worker.with_credits(credits);
    }
    Ok(worker)
}
