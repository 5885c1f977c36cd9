//! What the PostgreSQL store and queue share: the pool, the embedded
//! migrations, and one LISTEN connection that wakes waiters on queue sends
//! and on tasks reaching a terminal state.

use crate::queue::{PgQueue, Queue, QueueError, RabbitConfig, RabbitQueue};
use crate::store::{PgStore, Store, StoreError};
use parking_lot::Mutex;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use uuid::Uuid;

const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../migrations/0001_init.sql")),
    (2, include_str!("../migrations/0002_lean_apply.sql")),
    (3, include_str!("../migrations/0003_leases.sql")),
    (4, include_str!("../migrations/0004_cached_reads.sql")),
    (5, include_str!("../migrations/0005_group_commit.sql")),
    (6, include_str!("../migrations/0006_receive_in_order.sql")),
    (7, include_str!("../migrations/0007_lean_creation.sql")),
    (8, include_str!("../migrations/0008_start_step_json.sql")),
    (9, include_str!("../migrations/0009_receive_started.sql")),
];

/// Any stable number: serializes concurrent `migrate` runs.
const MIGRATION_LOCK: i64 = 0x5354_4550_4752_4150;

/// Whether an error means the connection died (server restart, terminated
/// backend): the statement may be retried on another connection. Every
/// statement the store and queue run is safe to repeat.
pub(crate) fn is_disconnect(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("57P") || c.starts_with("08")),
        _ => false,
    }
}

/// Runs a statement, again on another connection when the
/// connection it got turned out to be dead (each dead pooled connection
/// fails once, so this allows for the whole pool having died).
pub(crate) const RECONNECT_TRIES: u32 = 12;

macro_rules! retrying {
    ($self:ident, $pool:ident => $body:expr) => {{
        let mut tries = 0;
        loop {
            let $pool = $self.pool();
            match $body.await {
                Err(e) if tries < $crate::pg::RECONNECT_TRIES && $crate::pg::is_disconnect(&e) => {
                    tracing::debug!(error = %e, "connection lost; retrying the statement");
                    tries += 1;
                }
                other => break other,
            }
        }
    }};
}
pub(crate) use retrying;

pub(crate) fn backend_error(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e {
        if db.code().as_deref() == Some("SG409") {
            return StoreError::Conflict(db.message().to_string());
        }
    }
    StoreError::Backend(e.to_string())
}

/// Applies the embedded migrations that are not applied yet.
pub async fn migrate(pool: &PgPool) -> Result<Vec<i32>, StoreError> {
    let mut tx = pool.begin().await.map_err(backend_error)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(backend_error)?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS sg_schema_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&mut *tx)
    .await
    .map_err(backend_error)?;
    let done: Vec<i32> = sqlx::query_scalar("SELECT version FROM sg_schema_migrations")
        .fetch_all(&mut *tx)
        .await
        .map_err(backend_error)?;
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        sqlx::raw_sql(sql)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::Backend(format!("migration {version}: {e}")))?;
        sqlx::query("INSERT INTO sg_schema_migrations (version) VALUES ($1)")
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(backend_error)?;
        applied.push(*version);
    }
    tx.commit().await.map_err(backend_error)?;
    Ok(applied)
}

/// Wakes waiters: per queue on a send, per task when it ends. A lost
/// connection wakes everyone, since notifications may have been missed.
#[derive(Default)]
pub(crate) struct Notifier {
    queues: Mutex<HashMap<String, Arc<QueueWake>>>,
    tasks: Mutex<HashMap<Uuid, Weak<Notify>>>,
    /// Statements (each one round trip) the store and queue have run.
    statements: AtomicU64,
}

impl Notifier {
    pub(crate) fn count_statement(&self) {
        self.statements.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn queue(&self, name: &str) -> Arc<QueueWake> {
        self.queues
            .lock()
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    pub(crate) fn task(&self, id: Uuid) -> Arc<Notify> {
        let mut tasks = self.tasks.lock();
        if let Some(n) = tasks.get(&id).and_then(Weak::upgrade) {
            return n;
        }
        tasks.retain(|_, w| w.strong_count() > 0);
        let n = Arc::new(Notify::new());
        tasks.insert(id, Arc::downgrade(&n));
        n
    }

    fn wake_all(&self) {
        for n in self.queues.lock().values() {
            n.wake();
        }
        for n in self.tasks.lock().values().filter_map(Weak::upgrade) {
            n.notify_waiters();
        }
    }

    fn dispatch(&self, channel: &str, payload: &str) {
        if channel == "stepgraph_queue" {
            if let Some(q) = self.queues.lock().get(payload) {
                q.wake();
            }
        } else if let Some(t) = payload
            .parse::<Uuid>()
            .ok()
            .and_then(|t| self.tasks.lock().get(&t).and_then(Weak::upgrade))
        {
            t.notify_waiters();
        }
    }
}

/// Step starts read with the claims of their messages (`sg_receive_started`),
/// kept for the worker's [`crate::Store::start_step`] that follows each
/// claim: the queue and the store of one backend share it, and the start
/// then costs no round trip of its own. Each is taken once; what is never
/// taken (a message released unprocessed) is dropped once a minute old.
#[derive(Default)]
pub(crate) struct ClaimedStarts {
    starts: Mutex<HashMap<(Uuid, u32), (Instant, serde_json::Value)>>,
}

impl ClaimedStarts {
    const KEEP: Duration = Duration::from_secs(60);

    pub(crate) fn put(&self, step_id: Uuid, attempt: u32, start: serde_json::Value) {
        let mut starts = self.starts.lock();
        if starts.len() >= 256 {
            starts.retain(|_, (at, _)| at.elapsed() < Self::KEEP);
        }
        starts.insert((step_id, attempt), (Instant::now(), start));
    }

    pub(crate) fn take(&self, step_id: Uuid, attempt: u32) -> Option<serde_json::Value> {
        self.starts
            .lock()
            .remove(&(step_id, attempt))
            .map(|(_, start)| start)
    }
}

/// Wakes a queue's receivers, counting the wake-ups: a receiver that found
/// the queue drained at one count need not look again until the next.
#[derive(Default)]
pub(crate) struct QueueWake {
    pub(crate) notify: Notify,
    generation: AtomicU64,
}

impl QueueWake {
    fn wake(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Wake-ups so far.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
}

/// Runs while anything still holds the notifier (a store or a queue).
async fn listen(notifier: Weak<Notifier>, pool: PgPool) {
    let alive = || notifier.upgrade();
    while alive().is_some() {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN connection failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if let Err(e) = listener
            .listen_all(["stepgraph_queue", "stepgraph_task"])
            .await
        {
            tracing::warn!(error = %e, "LISTEN failed; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        // Anything sent before LISTEN took effect was not announced.
        match alive() {
            Some(n) => n.wake_all(),
            None => return,
        }
        loop {
            let received = tokio::time::timeout(Duration::from_secs(10), listener.try_recv()).await;
            let Some(n) = alive() else { return };
            match received {
                Err(_) => continue,
                Ok(Ok(Some(msg))) => n.dispatch(msg.channel(), msg.payload()),
                // The connection dropped; it reconnects on the next call.
                Ok(Ok(None)) => n.wake_all(),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                    n.wake_all();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
            }
        }
    }
}

/// A PostgreSQL database holding both the state and the queue.
pub struct PgBackend {
    pool: PgPool,
    notifier: Arc<Notifier>,
    starts: Arc<ClaimedStarts>,
}

impl PgBackend {
    /// Connects (the pool reconnects by itself after a restart) and starts listening.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Arc<PgBackend>, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(Duration::from_secs(10))
            // A ping per acquire would double the round trips; a dead connection
            // fails its query instead, and the caller retries.
            .test_before_acquire(false)
            .connect(url)
            .await
            .map_err(|e| StoreError::Backend(format!("cannot connect to {}: {e}", redact(url))))?;
        let notifier = Arc::new(Notifier::default());
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
        migrate(&self.pool).await
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

    /// The store and queue of a deployment whose state is in this database
    /// and whose messages travel over `transport`. With the queue in this
    /// database a state change and its messages are one commit; with
    /// RabbitMQ the messages are published (confirmed) once the state is durable.
    pub async fn backends(
        &self,
        transport: &Transport,
    ) -> Result<(Arc<dyn Store>, Arc<dyn Queue>), QueueError> {
        Ok(match transport {
            Transport::Postgres => (Arc::new(self.store(true)), Arc::new(self.queue())),
            Transport::RabbitMq(config) => (
                Arc::new(self.store(false)),
                Arc::new(RabbitQueue::connect(config.clone()).await?),
            ),
        })
    }

    /// Records every loaded template (versioned) in the database.
    pub async fn store_templates(
        &self,
        templates: &crate::TemplateRegistry,
    ) -> Result<(), StoreError> {
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
        self.notifier.statements.load(Ordering::Relaxed)
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

/// How steps travel in a PostgreSQL deployment.
#[derive(Debug, Clone)]
pub enum Transport {
    /// The queue tables in the same database.
    Postgres,
    RabbitMq(RabbitConfig),
}

impl Transport {
    /// `postgres`, `rabbitmq` (with `amqp_url`), or an AMQP URL itself.
    pub fn parse(queue: &str, amqp_url: Option<&str>) -> Result<Transport, String> {
        match queue {
            "postgres" => Ok(Transport::Postgres),
            "rabbitmq" => amqp_url
                .map(|url| Transport::RabbitMq(RabbitConfig::new(url)))
                .ok_or_else(|| {
                    "queue \"rabbitmq\" needs an AMQP URL (amqp_url, or STEPGRAPH_AMQP_URL)"
                        .to_string()
                }),
            url if url.starts_with("amqp://") || url.starts_with("amqps://") => {
                Ok(Transport::RabbitMq(RabbitConfig::new(url)))
            }
            other => Err(format!(
                "unknown queue backend {other:?} (postgres, rabbitmq, or an amqp:// URL)"
            )),
        }
    }
}
