//! A distributed deployment's backends: the state in PostgreSQL and the
//! steps over PostgreSQL's own queue or (with the `rabbitmq` feature)
//! RabbitMQ. Every process that connects (`serve`, `worker`, a language
//! worker, the benches) picks its store and queue here, and every worker
//! of such a deployment is made by [`connect_worker`].

use crate::handler::HandlerRegistry;
use crate::runtime::Worker;
use crate::settings::{Settings, SettingsError};
use std::sync::Arc;
use stepgraph_engine::queue::Credits;
use stepgraph_engine::{Orchestrator, Queue, QueueError, Store, StoreError, TemplateRegistry};
use stepgraph_postgres::PgBackend;
#[cfg(feature = "rabbitmq")]
pub use stepgraph_rabbitmq::{RabbitConfig, RabbitQueue};

/// How steps travel in a PostgreSQL deployment.
#[derive(Debug, Clone)]
pub enum Transport {
    /// The queue tables in the same database.
    Postgres,
    #[cfg(feature = "rabbitmq")]
    RabbitMq(RabbitConfig),
}

impl Transport {
    /// `postgres`, `rabbitmq` (with `amqp_url`), or an AMQP URL itself.
    pub fn parse(queue: &str, amqp_url: Option<&str>) -> Result<Transport, String> {
        match queue {
            "postgres" => Ok(Transport::Postgres),
            "rabbitmq" => match amqp_url {
                Some(url) => Transport::rabbitmq(url),
                None => Err(
                    "queue \"rabbitmq\" needs an AMQP URL (amqp_url, or STEPGRAPH_AMQP_URL)"
                        .to_string(),
                ),
            },
            url if url.starts_with("amqp://") || url.starts_with("amqps://") => {
                Transport::rabbitmq(url)
            }
            other => Err(format!(
                "unknown queue backend {other:?} (postgres, rabbitmq, or an amqp:// URL)"
            )),
        }
    }

    #[cfg(feature = "rabbitmq")]
    fn rabbitmq(url: &str) -> Result<Transport, String> {
        Ok(Transport::RabbitMq(RabbitConfig::new(url)))
    }

    #[cfg(not(feature = "rabbitmq"))]
    fn rabbitmq(_url: &str) -> Result<Transport, String> {
        Err("this build has no RabbitMQ transport (built without the `rabbitmq` feature)".into())
    }

    /// The store and queue of a deployment whose state is in `pg` and whose
    /// messages travel this way. With the queue in the database a state
    /// change and its messages are one commit; with RabbitMQ the messages
    /// are published (confirmed) once the state is durable.
    pub async fn backends(
        &self,
        pg: &PgBackend,
    ) -> Result<(Arc<dyn Store>, Arc<dyn Queue>), QueueError> {
        Ok(match self {
            Transport::Postgres => (Arc::new(pg.store(true)), Arc::new(pg.queue())),
            #[cfg(feature = "rabbitmq")]
            Transport::RabbitMq(config) => (
                Arc::new(pg.store(false)),
                Arc::new(RabbitQueue::connect(config.clone()).await?),
            ),
        })
    }
}

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

/// Connects to the database `settings` names (pool of `max_connections`)
/// and applies the migrations that are not applied yet.
pub async fn connect(settings: &Settings) -> Result<Arc<PgBackend>, ConnectError> {
    let pg = PgBackend::connect(settings.database_url()?, settings.max_connections).await?;
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
