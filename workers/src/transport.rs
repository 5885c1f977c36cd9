//! How a distributed deployment's steps travel: its state is in PostgreSQL,
//! its steps go over PostgreSQL's own queue or (with the `rabbitmq`
//! feature) RabbitMQ. Every process that connects (`serve`, `worker`, a
//! language worker, the benches) picks its store and queue here.

use std::sync::Arc;
use stepgraph_engine::{Queue, QueueError, Store};
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
