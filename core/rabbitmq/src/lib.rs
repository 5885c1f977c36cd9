//! The [`Queue`] over RabbitMQ (lapin): durable queues, persistent messages,
//! publisher confirms (a send returns once RabbitMQ has them), push
//! consumers (basic.consume) with manual acks and a prefetch that follows
//! the free handler slots, nack/requeue on release.
//!
//! - Delays (retry backoff, timers) go through per-delay queues whose
//!   messages expire into the target queue (dead-lettering), the delay
//!   rounded up so a message never comes early.
//! - A dropped connection or channel is reopened with backoff on the next
//!   call; consumers are recreated. What was delivered and not acknowledged
//!   comes back from RabbitMQ; a receipt from before the drop is ignored on
//!   ack and release (its message is already back in the queue). Publishing
//!   and counting are retried on a fresh connection. PostgreSQL's state
//!   guards against running a step twice.
//! - Connections are named `stepgraph <prefix> pid <pid>` (RabbitMQ's
//!   `connection_name` client property) so an operator can tell them apart.
//! - Poison messages go to `<queue>.dead` with the reason in a header.
//!
//! RabbitMQ has no visibility timeout: a claimed message comes back when its
//! consumer's channel closes (the process died or lost its connection), or
//! after RabbitMQ's `consumer_timeout`.

mod connection;

use async_trait::async_trait;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicQosOptions};
use lapin::{Channel, Connection};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use stepgraph_engine::queue::{Delivery, Outgoing, Queue, QueueError};
use tokio::sync::mpsc;

/// Delay buckets (ms): a delay is rounded up to the next one.
/// A release delayed at most this long is waited out while the message is
/// held, not sent through a delay queue (see `release`).
const HELD_RELEASE: Duration = Duration::from_secs(1);

const DELAY_BUCKETS_MS: &[u64] = &[
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 300_000, 900_000,
    3_600_000,
];
const RECONNECT_TRIES: u32 = 12;

#[derive(Debug, Clone)]
pub struct RabbitConfig {
    /// `amqp://user:pass@host:port/vhost`.
    pub url: String,
    /// Prepended to every queue name (`stepgraph.` by default).
    pub prefix: String,
    /// Queues unused this long are deleted by RabbitMQ (`x-expires`); for tests.
    pub expires: Option<Duration>,
}

impl RabbitConfig {
    pub fn new(url: &str) -> RabbitConfig {
        RabbitConfig {
            url: url.to_string(),
            prefix: "stepgraph.".into(),
            expires: None,
        }
    }
}

struct Link {
    connection: Connection,
    /// Publishing, in confirm mode.
    publish: Channel,
    generation: u64,
}

/// The consumer of a set of queues: its channel and the deliveries pushed
/// to it, each with the index of its queue in `queues`.
struct Consumer {
    queues: Vec<String>,
    channel: Channel,
    generation: u64,
    deliveries: tokio::sync::Mutex<mpsc::UnboundedReceiver<(usize, lapin::message::Delivery)>>,
    prefetch: Mutex<u16>,
    /// Claimed and not yet acknowledged: tag -> the message (for delayed releases and dead letters).
    in_hand: Mutex<HashMap<u64, InHand>>,
}

pub struct RabbitQueue {
    config: RabbitConfig,
    link: tokio::sync::Mutex<Option<Arc<Link>>>,
    generations: AtomicU64,
    consumers: Mutex<HashMap<String, Arc<Consumer>>>,
    declared: Mutex<HashSet<(u64, String)>>,
}

fn backend(context: &str, e: impl std::fmt::Display) -> QueueError {
    QueueError::Backend(format!("RabbitMQ {context}: {e}"))
}

/// A claimed message as it was delivered.
#[derive(Clone, Default)]
struct InHand {
    payload: Vec<u8>,
    delivery_count: u32,
}

/// A message to publish, with what its headers carry.
pub(crate) struct Publish {
    pub payload: Vec<u8>,
    pub delay: Duration,
    /// Why it is dead-lettered (`x-stepgraph-reason`).
    pub reason: Option<String>,
    /// Deliveries it has had (`x-stepgraph-deliveries`): RabbitMQ's own
    /// redelivered flag says only "more than one", and a copy sent back
    /// through a delay queue is a new message to it.
    pub deliveries: u32,
}

impl Publish {
    fn new(payload: Vec<u8>, delay: Duration) -> Publish {
        Publish {
            payload,
            delay,
            reason: None,
            deliveries: 0,
        }
    }
}

/// The header that counts a message's earlier deliveries.
pub(crate) const DELIVERIES_HEADER: &str = "x-stepgraph-deliveries";

/// Deliveries before this one, from the header (0 when absent).
fn earlier_deliveries(d: &lapin::message::Delivery) -> u32 {
    use lapin::types::AMQPValue;
    let value = d
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(DELIVERIES_HEADER).cloned());
    match value {
        Some(AMQPValue::LongUInt(n)) => n,
        Some(AMQPValue::LongLongInt(n)) => n.clamp(0, u32::MAX as i64) as u32,
        Some(AMQPValue::LongInt(n)) => n.max(0) as u32,
        _ => 0,
    }
}

/// A receipt: the channel generation in the high 16 bits, the delivery tag below.
fn receipt(generation: u64, tag: u64) -> u64 {
    (generation << 48) | (tag & ((1 << 48) - 1))
}

fn split_receipt(receipt: u64) -> (u64, u64) {
    (receipt >> 48, receipt & ((1 << 48) - 1))
}

fn delay_bucket(delay: Duration) -> u64 {
    let ms = delay.as_millis() as u64;
    DELAY_BUCKETS_MS
        .iter()
        .copied()
        .find(|b| *b >= ms)
        .unwrap_or(ms)
}

#[async_trait]
impl Queue for RabbitQueue {
    async fn send(&self, queue: &str, messages: Vec<Outgoing>) -> Result<(), QueueError> {
        let messages: Vec<_> = messages
            .into_iter()
            .map(|m| Publish::new(m.payload, m.delay))
            .collect();
        self.publish(queue, &messages).await
    }

    async fn receive_any(
        &self,
        queues: &[String],
        max: usize,
        _visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        if queues.is_empty() {
            tokio::time::sleep(wait).await;
            return Ok(Vec::new());
        }
        let prefetch = max.clamp(1, u16::MAX as usize) as u16;
        let consumer = self.consumer(queues, prefetch).await?;
        {
            // The prefetch follows the free handler slots upwards.
            let mut current = consumer.prefetch.lock();
            if prefetch > *current {
                *current = prefetch;
                let channel = consumer.channel.clone();
                tokio::spawn(async move {
                    let global = BasicQosOptions { global: true };
                    let _ = channel.basic_qos(prefetch, global).await;
                });
            }
        }
        let mut rx = consumer.deliveries.lock().await;
        let first = match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(d)) => d,
            Ok(None) => {
                // The consumer stopped (connection or channel lost): a new one next time.
                self.forget_consumer(queues);
                return Err(backend(
                    "consumer",
                    format!("the consumer of {} stopped", queues.join(", ")),
                ));
            }
            Err(_) => return Ok(Vec::new()),
        };
        let mut out = vec![first];
        while out.len() < max {
            match rx.try_recv() {
                Ok(d) => out.push(d),
                Err(_) => break,
            }
        }
        let mut in_hand = consumer.in_hand.lock();
        Ok(out
            .into_iter()
            .map(|(index, d)| {
                let delivery_count = earlier_deliveries(&d) + 1 + u32::from(d.redelivered);
                let kept = InHand {
                    payload: d.data.clone(),
                    delivery_count,
                };
                in_hand.insert(d.delivery_tag, kept);
                Delivery {
                    queue: consumer.queues[index].clone(),
                    receipt: receipt(consumer.generation, d.delivery_tag),
                    payload: d.data,
                    delivery_count,
                }
            })
            .collect())
    }

    async fn ack(&self, queue: &str, receipts: &[u64]) -> Result<(), QueueError> {
        for r in receipts {
            // From before a reconnect: RabbitMQ has put that message back already.
            let Some((consumer, tag)) = self.issuer(queue, *r) else {
                continue;
            };
            consumer.in_hand.lock().remove(&tag);
            if let Err(e) = consumer
                .channel
                .basic_ack(tag, BasicAckOptions::default())
                .await
            {
                tracing::warn!(queue, error = %e, "ack failed; RabbitMQ will redeliver the message");
            }
        }
        Ok(())
    }

    async fn release(&self, queue: &str, receipt: u64, delay: Duration) -> Result<(), QueueError> {
        let Some((consumer, tag)) = self.issuer(queue, receipt) else {
            return Ok(());
        };
        if delay.is_zero() {
            consumer.in_hand.lock().remove(&tag);
            let requeue = BasicNackOptions {
                requeue: true,
                ..Default::default()
            };
            if let Err(e) = consumer.channel.basic_nack(tag, requeue).await {
                // The channel is gone, so RabbitMQ has put the message back: released.
                tracing::warn!(queue, error = %e, "nack failed; RabbitMQ requeues the message itself");
            }
            return Ok(());
        }
        // Back after `delay`: a copy that carries the count of its
        // deliveries, then the ack. A short delay is waited out here, the
        // message held, and the copy goes to the back of the queue: RabbitMQ's
        // delay queues (TTL, then dead-lettering) were seen to keep expired
        // messages for tens of seconds on an idle broker, which a release
        // meant to take a moment cannot afford. Longer ones go through them.
        let held = consumer
            .in_hand
            .lock()
            .get(&tag)
            .cloned()
            .unwrap_or_default();
        let delay = if delay <= HELD_RELEASE {
            tokio::time::sleep(delay).await;
            Duration::ZERO
        } else {
            delay
        };
        let copy = Publish {
            deliveries: held.delivery_count,
            ..Publish::new(held.payload, delay)
        };
        self.publish(queue, &[copy]).await?;
        self.ack(queue, &[receipt]).await
    }

    async fn depth(&self, queue: &str) -> Result<u64, QueueError> {
        self.retrying("counting messages", queue, || self.try_depth(queue))
            .await
    }

    async fn dead_letter(&self, queue: &str, receipt: u64, reason: &str) -> Result<(), QueueError> {
        self.dead_letter_message(queue, receipt, reason).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_round_up_never_down() {
        assert_eq!(delay_bucket(Duration::from_millis(1)), 5);
        assert_eq!(delay_bucket(Duration::from_millis(100)), 100);
        assert_eq!(delay_bucket(Duration::from_millis(101)), 250);
        assert_eq!(delay_bucket(Duration::from_secs(7200)), 7_200_000);
    }

    #[test]
    fn receipts_carry_the_generation() {
        let r = receipt(3, 12345);
        assert_eq!(split_receipt(r), (3, 12345));
    }
}
