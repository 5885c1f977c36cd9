//! What the PostgreSQL store and queue share: the pool and the notifier.

use crate::errors::backend_error;
use crate::notify::{listen, ClaimedStarts, FallbackPolls, Notifier};
use crate::{PgQueue, PgStore};
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::sync::Arc;
use std::time::Duration;
use stepgraph_engine::{StoreError, TemplateRegistry};

/// A PostgreSQL database holding both the state and the queue.
pub struct PgBackend {
    pool: PgPool,
    notifier: Arc<Notifier>,
    starts: Arc<ClaimedStarts>,
}

/// How a [`PgBackend`] connects and how long it trusts NOTIFY.
#[derive(Clone, Copy, Debug)]
pub struct PgOptions {
    pub max_connections: u32,
    pub polls: FallbackPolls,
}

impl PgBackend {
    /// [`PgBackend::connect_with`] a pool of `max_connections` and the default polls.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Arc<PgBackend>, StoreError> {
        let polls = FallbackPolls::default();
        Self::connect_with(
            url,
            PgOptions {
                max_connections,
                polls,
            },
        )
        .await
    }

    /// Connects (the pool reconnects by itself after a restart) and starts listening.
    pub async fn connect_with(url: &str, o: PgOptions) -> Result<Arc<PgBackend>, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(o.max_connections.max(2))
            .acquire_timeout(Duration::from_secs(10))
            // A ping per acquire would double the round trips; a dead connection
            // fails its query instead, and the caller retries.
            .test_before_acquire(false)
            .connect(url)
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot connect to {}: {e}", redact(url)))
            })?;
        let notifier = Arc::new(Notifier::new(o.polls));
        tokio::spawn(listen(Arc::downgrade(&notifier), pool.clone()));
        Ok(Arc::new(PgBackend {
            pool,
            notifier,
            starts: Default::default(),
        }))
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn migrate(&self) -> Result<Vec<i32>, StoreError> {
        crate::migrate::migrate(&self.pool).await
    }

    /// The store; with `queue_in_db` it sends and acks the outbox of each
    /// state change in the same transaction (use it with [`PgBackend::queue`]).
    pub fn store(&self, queue_in_db: bool) -> PgStore {
        PgStore::new(
            self.pool.clone(),
            self.notifier.clone(),
            queue_in_db,
            self.starts.clone(),
        )
    }

    pub fn queue(&self) -> PgQueue {
        PgQueue::new(
            self.pool.clone(),
            self.notifier.clone(),
            self.starts.clone(),
        )
    }

    /// Records every loaded template (versioned) in the database.
    pub async fn store_templates(&self, templates: &TemplateRegistry) -> Result<(), StoreError> {
        for t in templates.all() {
            let body =
                serde_json::to_value(t.as_ref()).map_err(|e| StoreError::Backend(e.to_string()))?;
            sqlx::query(
                "WITH ns AS (INSERT INTO sg_namespaces (name) VALUES ($1) ON CONFLICT DO NOTHING)
                 INSERT INTO sg_templates (namespace, name, version, body) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (namespace, name, version) DO UPDATE SET body = EXCLUDED.body",
            )
            .bind(&t.namespace)
            .bind(&t.name)
            .bind(&t.version)
            .bind(body)
            .execute(&self.pool)
            .await
            .map_err(backend_error)?;
        }
        Ok(())
    }

    /// Statements (one round trip each) the store and queue have run so far.
    pub fn statements(&self) -> u64 {
        self.notifier.statements()
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(backend_error)?;
        Ok(())
    }
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
