//! PostgreSQL queue: rows in `sg_queue`, claimed with FOR UPDATE SKIP LOCKED
//! and a visibility timeout, deleted on ack. Receivers sleep until a NOTIFY
//! for their queue (or the next delayed message is due); a slow poll covers
//! notifications lost while reconnecting. A claim that drained the queue
//! is not repeated before the next NOTIFY or the next message is due.
//! Claims of step messages read the steps' starts with them (see
//! [`ClaimedStarts`]). Poison messages move to `sg_dead_letters`.

use crate::errors::retrying;
use crate::notify::{ClaimedStarts, Notifier};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use sqlx::postgres::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use stepgraph_engine::queue::{is_worker_queue, Delivery, Outgoing, Queue, QueueError};
use stepgraph_engine::StepMessage;
use tokio::time::Instant;

#[derive(Clone, Copy)]
struct Drained {
    generation: u64,
    next: Option<DateTime<Utc>>,
    at: Instant,
}

impl Drained {
    /// Nothing sent since, nothing due yet, and not time for the safety poll.
    fn still(&self, generation: u64, poll: Duration) -> bool {
        self.generation == generation
            && self.next.is_none_or(|n| n > Utc::now())
            && self.at.elapsed() < poll
    }
}

pub struct PgQueue {
    pool: PgPool,
    notifier: Arc<Notifier>,
    /// Per queue, after a claim that left nothing to claim: the wake-up
    /// count at its start, when the next message becomes visible, and when
    /// it ran (the safety poll claims again after `FallbackPolls::queue` regardless).
    drained: Mutex<HashMap<String, Drained>>,
    starts: Arc<ClaimedStarts>,
}

fn err(e: sqlx::Error) -> QueueError {
    QueueError::Backend(e.to_string())
}

impl PgQueue {
    /// The pool, counting the statement about to run on it.
    fn pool(&self) -> &PgPool {
        self.notifier.count_statement();
        &self.pool
    }

    pub(crate) fn new(pool: PgPool, notifier: Arc<Notifier>, starts: Arc<ClaimedStarts>) -> Self {
        PgQueue {
            pool,
            notifier,
            drained: Mutex::default(),
            starts,
        }
    }

    /// Claims up to `max` messages from `queues`; with fewer, when the next
    /// one becomes visible (None: there is no other). A claim from worker
    /// queues reads the steps' starts too, and keeps them for the store.
    async fn claim(
        &self,
        queues: &[String],
        max: usize,
        visibility: Duration,
    ) -> Result<(Vec<Delivery>, Option<DateTime<Utc>>), QueueError> {
        // `started` comes as text and is decoded row by row: a row that
        // cannot be decoded (a poison message) fails its own processing
        // later, not the claim of every message claimed with it.
        let sql = if queues.iter().any(|q| is_worker_queue(q)) {
            "SELECT id, queue, payload, delivery_count, next_visible, started::text FROM sg_receive_any_started($1, $2, $3)"
        } else {
            "SELECT id, queue, payload, delivery_count, next_visible, NULL::text FROM sg_receive_any($1, $2, $3)"
        };
        #[allow(clippy::type_complexity)]
        let rows: Vec<(
            Option<i64>,
            Option<String>,
            Option<Vec<u8>>,
            Option<i32>,
            Option<DateTime<Utc>>,
            Option<String>,
        )> = retrying!(self, pool => sqlx::query_as(sql)
        .bind(queues)
        .bind(max as i32)
        .bind(visibility.as_millis() as i64)
        .fetch_all(pool))
        .map_err(err)?;
        let mut next = None;
        let mut out = Vec::new();
        for (id, queue, payload, count, next_visible, started) in rows {
            match (id, queue, payload) {
                (Some(id), Some(queue), Some(payload)) => {
                    if let Some(started) = started {
                        self.keep_start(&payload, &started);
                    }
                    out.push(Delivery {
                        queue,
                        receipt: id as u64,
                        payload,
                        delivery_count: count.unwrap_or(1) as u32,
                    })
                }
                _ => next = next_visible,
            }
        }
        out.sort_by_key(|d| d.receipt);
        Ok((out, next))
    }
}

impl PgQueue {
    /// Keeps a claimed step's start for the store; one that cannot be
    /// decoded is left for the worker's own read to fail on.
    fn keep_start(&self, payload: &[u8], started: &str) {
        let (Ok(m), Ok(started)) = (
            serde_json::from_slice::<StepMessage>(payload),
            serde_json::from_str::<serde_json::Value>(started),
        ) else {
            return;
        };
        self.starts.put(m.step_id, m.attempt, started);
    }
}

#[async_trait]
impl Queue for PgQueue {
    async fn send(&self, queue: &str, messages: Vec<Outgoing>) -> Result<(), QueueError> {
        if messages.is_empty() {
            return Ok(());
        }
        let queues = vec![queue.to_string(); messages.len()];
        let delays: Vec<i64> = messages
            .iter()
            .map(|m| m.delay.as_millis() as i64)
            .collect();
        let payloads: Vec<Vec<u8>> = messages.into_iter().map(|m| m.payload).collect();
        retrying!(self, pool => sqlx::query("SELECT sg_send($1, $2, $3)")
            .bind(&queues)
            .bind(&payloads)
            .bind(&delays)
            .execute(pool))
        .map_err(err)?;
        Ok(())
    }

    async fn receive_any(
        &self,
        queues: &[String],
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let deadline = Instant::now() + wait;
        let wakes: Vec<_> = queues.iter().map(|q| self.notifier.queue(q)).collect();
        let key = queues.join("\n");
        loop {
            let mut notified: Vec<_> = wakes
                .iter()
                .map(|w| Box::pin(w.notify.notified()))
                .collect();
            for n in &mut notified {
                n.as_mut().enable();
            }
            // Any queue's wake-up changes the sum.
            let generation = wakes.iter().map(|w| w.generation()).sum();
            let known = self.drained.lock().get(&key).copied();
            let next = match known {
                Some(d) if d.still(generation, self.notifier.polls.queue) => d.next,
                _ => {
                    let at = Instant::now();
                    let (got, next) = self.claim(queues, max, visibility).await?;
                    let mut drained = self.drained.lock();
                    if got.len() < max {
                        let d = Drained {
                            generation,
                            next,
                            at,
                        };
                        drained.insert(key.clone(), d);
                    } else {
                        drained.remove(&key);
                    }
                    drop(drained);
                    if !got.is_empty() {
                        return Ok(got);
                    }
                    next
                }
            };
            if Instant::now() >= deadline {
                return Ok(Vec::new());
            }
            let mut wake_at = deadline.min(Instant::now() + self.notifier.polls.queue);
            if let Some(next) = next {
                // A visible message we could not claim is being claimed by
                // another consumer right now: look again shortly, not at once.
                let due = (next - Utc::now())
                    .to_std()
                    .unwrap_or_default()
                    .max(Duration::from_millis(1));
                wake_at = wake_at.min(Instant::now() + due);
            }
            if notified.is_empty() {
                tokio::time::sleep_until(wake_at).await;
                continue;
            }
            tokio::select! {
                _ = futures::future::select_all(notified) => {}
                _ = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    async fn ack(&self, queue: &str, receipts: &[u64]) -> Result<(), QueueError> {
        let ids: Vec<i64> = receipts.iter().map(|r| *r as i64).collect();
        retrying!(self, pool => sqlx::query("DELETE FROM sg_queue WHERE queue = $1 AND id = ANY($2)")
            .bind(queue)
            .bind(&ids)
            .execute(pool))
            .map_err(err)?;
        Ok(())
    }

    async fn release(&self, queue: &str, receipt: u64, delay: Duration) -> Result<(), QueueError> {
        retrying!(self, pool => sqlx::query(
            "UPDATE sg_queue SET visible_at = clock_timestamp() + make_interval(secs => $3 / 1000.0)
              WHERE queue = $1 AND id = $2",
        )
        .bind(queue)
        .bind(receipt as i64)
        .bind(delay.as_millis() as i64)
        .execute(pool))
        .map_err(err)?;
        retrying!(self, pool => sqlx::query("SELECT pg_notify('stepgraph_queue', $1)")
            .bind(queue)
            .execute(pool))
        .map_err(err)?;
        Ok(())
    }

    /// Into `sg_dead_letters`, with the reason, in one statement.
    async fn dead_letter(&self, queue: &str, receipt: u64, reason: &str) -> Result<(), QueueError> {
        retrying!(self, pool => sqlx::query("SELECT sg_dead_letter($1, $2, $3)")
            .bind(queue)
            .bind(receipt as i64)
            .bind(reason)
            .execute(pool))
        .map_err(err)?;
        Ok(())
    }

    async fn depth(&self, queue: &str) -> Result<u64, QueueError> {
        let n: i64 = retrying!(self, pool => sqlx::query_scalar("SELECT count(*) FROM sg_queue WHERE queue = $1")
            .bind(queue)
            .fetch_one(pool))
            .map_err(err)?;
        Ok(n as u64)
    }
}
