//! The connection, its channels and what is declared on them: opened on
//! first use and again after a drop (with backoff), named for operators;
//! queues and delay queues declared once per connection; publishing with
//! confirms, retried on a fresh connection; one push consumer per set of
//! queues a receiver takes from.

use crate::{
    backend, delay_bucket, split_receipt, Consumer, Link, Publish, RabbitConfig, RabbitQueue,
    DELIVERIES_HEADER, RECONNECT_TRIES,
};
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stepgraph_engine::queue::{Queue, QueueError};
use tokio::sync::mpsc;

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

    pub(crate) fn name(&self, queue: &str) -> String {
        format!("{}{queue}", self.config.prefix)
    }

    /// The live connection, reopened (with backoff) when it was lost.
    pub(crate) async fn link(&self) -> Result<Arc<Link>, QueueError> {
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

    pub(crate) async fn open(&self) -> Result<Link, QueueError> {
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

    pub(crate) fn arguments(&self, extra: &[(&str, AMQPValue)]) -> FieldTable {
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
    pub(crate) async fn declare(
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

    pub(crate) async fn declare_main(
        &self,
        link: &Link,
        queue: &str,
    ) -> Result<String, QueueError> {
        let name = self.name(queue);
        self.declare(&link.publish, link.generation, &name, self.arguments(&[]))
            .await?;
        Ok(name)
    }

    /// The queue a message sits in for `ms` before it moves to `target`.
    pub(crate) async fn declare_delay(
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
    pub(crate) async fn retrying<T, F>(
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
    pub(crate) async fn publish(
        &self,
        queue: &str,
        messages: &[Publish],
    ) -> Result<(), QueueError> {
        self.retrying("publishing", queue, || self.try_publish(queue, messages))
            .await
    }

    pub(crate) async fn try_publish(
        &self,
        queue: &str,
        messages: &[Publish],
    ) -> Result<(), QueueError> {
        let link = self.link().await?;
        let target = self.declare_main(&link, queue).await?;
        let mut confirms = Vec::with_capacity(messages.len());
        for m in messages {
            let routing = if m.delay.is_zero() {
                target.clone()
            } else {
                self.declare_delay(&link, &target, delay_bucket(m.delay))
                    .await?
            };
            let mut properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into());
            let mut headers = FieldTable::default();
            if let Some(reason) = &m.reason {
                headers.insert(
                    "x-stepgraph-reason".into(),
                    AMQPValue::LongString(LongString::from(reason.clone())),
                );
            }
            if m.deliveries > 0 {
                headers.insert(DELIVERIES_HEADER.into(), AMQPValue::LongUInt(m.deliveries));
            }
            if !headers.inner().is_empty() {
                properties = properties.with_headers(headers);
            }
            let confirm = link
                .publish
                .basic_publish(
                    ShortString::from(String::new()),
                    ShortString::from(routing),
                    BasicPublishOptions::default(),
                    &m.payload,
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

    pub(crate) async fn try_depth(&self, queue: &str) -> Result<u64, QueueError> {
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

    /// The consumer of `queues` (one channel, a basic.consume per queue,
    /// their deliveries merged), (re)created on the current connection.
    pub(crate) async fn consumer(
        &self,
        queues: &[String],
        prefetch: u16,
    ) -> Result<Arc<Consumer>, QueueError> {
        let link = self.link().await?;
        let key = queues.join("\n");
        if let Some(c) = self.consumers.lock().get(&key) {
            if c.generation == link.generation && c.channel.status().connected() {
                return Ok(c.clone());
            }
        }
        let channel = link
            .connection
            .create_channel()
            .await
            .map_err(|e| backend("channel", e))?;
        // Global: the prefetch bounds the channel's unacknowledged
        // deliveries over all its queues, not each queue's.
        let global = BasicQosOptions { global: true };
        channel
            .basic_qos(prefetch.max(1), global)
            .await
            .map_err(|e| backend("basic.qos", e))?;
        let (tx, rx) = mpsc::unbounded_channel();
        for (index, queue) in queues.iter().enumerate() {
            if let Err(e) = self
                .consume_into(&link, &channel, index, queue, tx.clone())
                .await
            {
                // The consumers made already would hold deliveries nobody
                // reads: closing the channel gives them back to their queues.
                let _ = channel
                    .close(200, "stepgraph: consumer not made".into())
                    .await;
                return Err(e);
            }
        }
        let consumer = Arc::new(Consumer {
            queues: queues.to_vec(),
            channel,
            generation: link.generation,
            deliveries: tokio::sync::Mutex::new(rx),
            prefetch: Mutex::new(prefetch.max(1)),
            in_hand: Mutex::new(HashMap::new()),
        });
        let mut consumers = self.consumers.lock();
        // By the set (to find it again) and by each queue (to ack there).
        consumers.insert(key, consumer.clone());
        for q in queues {
            consumers.insert(q.clone(), consumer.clone());
        }
        Ok(consumer)
    }

    /// A basic.consume of `queue` on `channel`, whose deliveries go to `tx`
    /// marked with `index`.
    async fn consume_into(
        &self,
        link: &Link,
        channel: &Channel,
        index: usize,
        queue: &str,
        tx: mpsc::UnboundedSender<(usize, lapin::message::Delivery)>,
    ) -> Result<(), QueueError> {
        let name = self.declare_main(link, queue).await?;
        let mut stream = channel
            .basic_consume(
                ShortString::from(name.clone()),
                ShortString::from(format!(
                    "stepgraph-{}-{}-{index}",
                    std::process::id(),
                    link.generation
                )),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| backend(&format!("basic.consume on {name}"), e))?;
        tokio::spawn(async move {
            while let Some(delivery) = stream.next().await {
                match delivery {
                    Ok(d) => {
                        if tx.send((index, d)).is_err() {
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
        Ok(())
    }

    /// Forgets a consumer that stopped: a new one is made next time.
    pub(crate) fn forget_consumer(&self, queues: &[String]) {
        let mut consumers = self.consumers.lock();
        consumers.remove(&queues.join("\n"));
        for q in queues {
            consumers.remove(q);
        }
    }

    /// The consumer that issued `receipt`, if it is still the live one.
    pub(crate) fn issuer(&self, queue: &str, receipt: u64) -> Option<(Arc<Consumer>, u64)> {
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
        let held = consumer
            .in_hand
            .lock()
            .get(&tag)
            .cloned()
            .unwrap_or_default();
        let dead = Publish {
            reason: Some(reason.to_string()),
            deliveries: held.delivery_count,
            ..Publish::new(held.payload, Duration::ZERO)
        };
        self.publish(&format!("{queue}.dead"), &[dead]).await?;
        self.ack(queue, &[receipt]).await
    }
}
