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

use super::{Delivery, Outgoing, Queue, QueueError};
use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Delay buckets (ms): a delay is rounded up to the next one.
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

/// One queue's consumer: its channel and the deliveries pushed to it.
struct Consumer {
    channel: Channel,
    generation: u64,
    deliveries: tokio::sync::Mutex<mpsc::UnboundedReceiver<lapin::message::Delivery>>,
    prefetch: Mutex<u16>,
    /// Claimed and not yet acknowledged: tag -> payload (for delayed releases and dead letters).
    in_hand: Mutex<HashMap<u64, Vec<u8>>>,
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

impl RabbitQueue {
    /// Connects (retrying with backoff) so that a bad URL fails here, clearly.
    pub async fn connect(config: RabbitConfig) -> Result<RabbitQueue, QueueError> {
        let queue = RabbitQueue {
            config,
            link: tokio::sync::Mutex::new(None),
            generations: AtomicU64::new(0),
            consumers: Mutex::new(HashMap::new()),
            declared: Mutex::new(HashSet::new()),
        };
        queue.link().await?;
        Ok(queue)
    }

    fn name(&self, queue: &str) -> String {
        format!("{}{queue}", self.config.prefix)
    }

    /// The live connection, reopened (with backoff) when it was lost.
    async fn link(&self) -> Result<Arc<Link>, QueueError> {
        let mut guard = self.link.lock().await;
        if let Some(link) = guard.as_ref() {
            if link.connection.status().connected() && link.publish.status().connected() {
                return Ok(link.clone());
            }
            tracing::warn!("RabbitMQ connection lost; reconnecting");
        }
        let mut wait = Duration::from_millis(50);
        let mut last = None;
        for _ in 0..RECONNECT_TRIES {
            match self.open().await {
                Ok(link) => {
                    let link = Arc::new(link);
                    *guard = Some(link.clone());
                    return Ok(link);
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        }
        Err(last.unwrap_or_else(|| backend("connect", "no attempt made")))
    }

    async fn open(&self) -> Result<Link, QueueError> {
        // Named so that an operator can tell whose connection it is
        // (`rabbitmqctl list_connections client_properties`, the management UI).
        let name = format!(
            "stepgraph {} pid {}",
            self.config.prefix,
            std::process::id()
        );
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let connection = Connection::connect(&self.config.url, properties)
            .await
            .map_err(|e| backend(&format!("cannot connect to {}", self.config.url), e))?;
        let publish = connection
            .create_channel()
            .await
            .map_err(|e| backend("channel", e))?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| backend("confirm.select", e))?;
        let generation = self.generations.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Link {
            connection,
            publish,
            generation,
        })
    }

    fn arguments(&self, extra: &[(&str, AMQPValue)]) -> FieldTable {
        let mut args = FieldTable::default();
        if let Some(expires) = self.config.expires {
            args.insert(
                "x-expires".into(),
                AMQPValue::LongLongInt(expires.as_millis() as i64),
            );
        }
        for (k, v) in extra {
            args.insert((*k).into(), v.clone());
        }
        args
    }

    /// Declares a queue once per connection.
    async fn declare(
        &self,
        channel: &Channel,
        generation: u64,
        name: &str,
        args: FieldTable,
    ) -> Result<(), QueueError> {
        let key = (generation, name.to_string());
        if self.declared.lock().contains(&key) {
            return Ok(());
        }
        channel
            .queue_declare(
                ShortString::from(name.to_string()),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await
            .map_err(|e| backend(&format!("declaring queue {name}"), e))?;
        self.declared.lock().insert(key);
        Ok(())
    }

    async fn declare_main(&self, link: &Link, queue: &str) -> Result<String, QueueError> {
        let name = self.name(queue);
        self.declare(&link.publish, link.generation, &name, self.arguments(&[]))
            .await?;
        Ok(name)
    }

    /// The queue a message sits in for `ms` before it moves to `target`.
    async fn declare_delay(
        &self,
        link: &Link,
        target: &str,
        ms: u64,
    ) -> Result<String, QueueError> {
        let name = format!("{target}.delay.{ms}");
        let mut args = self.arguments(&[
            ("x-message-ttl", AMQPValue::LongLongInt(ms as i64)),
            (
                "x-dead-letter-exchange",
                AMQPValue::LongString(LongString::from(String::new())),
            ),
            (
                "x-dead-letter-routing-key",
                AMQPValue::LongString(LongString::from(target.to_string())),
            ),
        ]);
        if self.config.expires.is_none() {
            // An unused delay queue goes away on its own.
            args.insert(
                "x-expires".into(),
                AMQPValue::LongLongInt((ms + 60_000) as i64),
            );
        }
        self.declare(&link.publish, link.generation, &name, args)
            .await?;
        Ok(name)
    }

    /// `op` on the live connection, tried again (up to three times in all)
    /// when it fails: the connection may have dropped after `link` handed
    /// it out, and the next attempt reopens it.
    async fn retrying<T, F>(
        &self,
        what: &str,
        queue: &str,
        op: impl Fn() -> F,
    ) -> Result<T, QueueError>
    where
        F: std::future::Future<Output = Result<T, QueueError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if attempt < 3 => {
                    tracing::warn!(queue, error = %e, "{what} failed; retrying on a fresh connection");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Publishes and waits for every confirm.
    async fn publish(
        &self,
        queue: &str,
        messages: &[(Vec<u8>, Duration, Option<String>)],
    ) -> Result<(), QueueError> {
        self.retrying("publishing", queue, || self.try_publish(queue, messages))
            .await
    }

    async fn try_publish(
        &self,
        queue: &str,
        messages: &[(Vec<u8>, Duration, Option<String>)],
    ) -> Result<(), QueueError> {
        let link = self.link().await?;
        let target = self.declare_main(&link, queue).await?;
        let mut confirms = Vec::with_capacity(messages.len());
        for (payload, delay, reason) in messages {
            let routing = if delay.is_zero() {
                target.clone()
            } else {
                self.declare_delay(&link, &target, delay_bucket(*delay))
                    .await?
            };
            let mut properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into());
            if let Some(reason) = reason {
                let mut headers = FieldTable::default();
                headers.insert(
                    "x-stepgraph-reason".into(),
                    AMQPValue::LongString(LongString::from(reason.clone())),
                );
                properties = properties.with_headers(headers);
            }
            let confirm = link
                .publish
                .basic_publish(
                    ShortString::from(String::new()),
                    ShortString::from(routing),
                    BasicPublishOptions::default(),
                    payload,
                    properties,
                )
                .await
                .map_err(|e| backend("basic.publish", e))?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            let confirmation = confirm.await.map_err(|e| backend("publisher confirm", e))?;
            if confirmation.is_nack() {
                return Err(backend("publish", "RabbitMQ refused (nack) a message"));
            }
        }
        Ok(())
    }

    async fn try_depth(&self, queue: &str) -> Result<u64, QueueError> {
        let link = self.link().await?;
        let name = self.declare_main(&link, queue).await?;
        let declared = link
            .publish
            .queue_declare(
                ShortString::from(name),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| backend("queue.declare (passive)", e))?;
        Ok(declared.message_count() as u64)
    }

    /// The consumer of `queue`, (re)created on the current connection.
    async fn consumer(&self, queue: &str, prefetch: u16) -> Result<Arc<Consumer>, QueueError> {
        let link = self.link().await?;
        if let Some(c) = self.consumers.lock().get(queue) {
            if c.generation == link.generation && c.channel.status().connected() {
                return Ok(c.clone());
            }
        }
        let name = self.declare_main(&link, queue).await?;
        let channel = link
            .connection
            .create_channel()
            .await
            .map_err(|e| backend("channel", e))?;
        channel
            .basic_qos(prefetch.max(1), BasicQosOptions::default())
            .await
            .map_err(|e| backend("basic.qos", e))?;
        let mut stream = channel
            .basic_consume(
                ShortString::from(name.clone()),
                ShortString::from(format!(
                    "stepgraph-{}-{}",
                    std::process::id(),
                    link.generation
                )),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| backend(&format!("basic.consume on {name}"), e))?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(delivery) = stream.next().await {
                match delivery {
                    Ok(d) => {
                        if tx.send(d).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(queue = %name, error = %e, "RabbitMQ consumer stopped");
                        return;
                    }
                }
            }
        });
        let consumer = Arc::new(Consumer {
            channel,
            generation: link.generation,
            deliveries: tokio::sync::Mutex::new(rx),
            prefetch: Mutex::new(prefetch.max(1)),
            in_hand: Mutex::new(HashMap::new()),
        });
        self.consumers
            .lock()
            .insert(queue.to_string(), consumer.clone());
        Ok(consumer)
    }

    /// The consumer that issued `receipt`, if it is still the live one.
    fn issuer(&self, queue: &str, receipt: u64) -> Option<(Arc<Consumer>, u64)> {
        let (generation, tag) = split_receipt(receipt);
        let consumer = self.consumers.lock().get(queue).cloned()?;
        (consumer.generation == generation).then_some((consumer, tag))
    }

    /// Poison: moves a claimed message to `<queue>.dead`, with `reason`.
    pub async fn dead_letter_message(
        &self,
        queue: &str,
        receipt: u64,
        reason: &str,
    ) -> Result<(), QueueError> {
        let Some((consumer, tag)) = self.issuer(queue, receipt) else {
            return Ok(());
        };
        let payload = consumer
            .in_hand
            .lock()
            .get(&tag)
            .cloned()
            .unwrap_or_default();
        self.publish(
            &format!("{queue}.dead"),
            &[(payload, Duration::ZERO, Some(reason.to_string()))],
        )
        .await?;
        self.ack(queue, &[receipt]).await
    }
}

#[async_trait]
impl Queue for RabbitQueue {
    async fn send(&self, queue: &str, messages: Vec<Outgoing>) -> Result<(), QueueError> {
        let messages: Vec<_> = messages
            .into_iter()
            .map(|m| (m.payload, m.delay, None))
            .collect();
        self.publish(queue, &messages).await
    }

    async fn receive(
        &self,
        queue: &str,
        max: usize,
        _visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let prefetch = max.clamp(1, u16::MAX as usize) as u16;
        let consumer = self.consumer(queue, prefetch).await?;
        {
            // The prefetch follows the free handler slots upwards.
            let mut current = consumer.prefetch.lock();
            if prefetch > *current {
                *current = prefetch;
                let channel = consumer.channel.clone();
                tokio::spawn(async move {
                    let _ = channel
                        .basic_qos(prefetch, BasicQosOptions::default())
                        .await;
                });
            }
        }
        let mut rx = consumer.deliveries.lock().await;
        let first = match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(d)) => d,
            Ok(None) => {
                // The consumer stopped (connection or channel lost): a new one next time.
                self.consumers.lock().remove(queue);
                return Err(backend(
                    "consumer",
                    format!("the consumer of {queue} stopped"),
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
            .map(|d| {
                in_hand.insert(d.delivery_tag, d.data.clone());
                Delivery {
                    receipt: receipt(consumer.generation, d.delivery_tag),
                    payload: d.data,
                    delivery_count: if d.redelivered { 2 } else { 1 },
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
        // Back after `delay`: a copy through the delay queue, then the ack.
        let payload = consumer
            .in_hand
            .lock()
            .get(&tag)
            .cloned()
            .unwrap_or_default();
        self.publish(queue, &[(payload, delay, None)]).await?;
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
