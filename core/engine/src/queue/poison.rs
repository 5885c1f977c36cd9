//! Poison messages: a message whose processing fails the same way on every
//! delivery must not come back forever, nor hold up the messages behind it.
//! After `max_deliveries` failed deliveries it goes to the queue's dead
//! letters with the reason, and its task is ended in Error naming the cause
//! ([`Store::fail_task`]), so the stranded-step sweep never sends it again.
//! A failure that may pass by itself (the database or broker unreachable, a
//! compare-and-swap lost to another process) does not count.

use super::{Delivery, Queue, QueueError};
use crate::model::TaskId;
use crate::store::{Store, StoreError};
use serde_json::json;
use std::time::Duration;

/// Deliveries that failed the same way before a message is dead-lettered.
pub const DEFAULT_MAX_DELIVERIES: u32 = 5;

/// Why processing a message failed, as a consumer sees it.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl ProcessError {
    /// Whether the next delivery may well succeed without anything changing.
    pub fn is_transient(&self) -> bool {
        match self {
            ProcessError::Store(e) => e.is_transient(),
            ProcessError::Queue(QueueError::Backend(_)) => true,
            ProcessError::Queue(QueueError::Encode(_)) => false,
        }
    }
}

/// The message `delivery` of `queue`, whose processing failed with `error`:
/// released to come back after `delay`, or, on its `max_deliveries`th
/// failed delivery (transient failures aside), dead-lettered and its task
/// (`task`, when the message could be decoded) ended in Error.
#[allow(clippy::too_many_arguments)]
pub async fn failed(
    store: &dyn Store,
    queue: &dyn Queue,
    name: &str,
    delivery: &Delivery,
    task: Option<(TaskId, Option<&str>)>,
    error: &ProcessError,
    max_deliveries: u32,
    delay: Duration,
) {
    if error.is_transient() || delivery.delivery_count < max_deliveries.max(1) {
        tracing::warn!(queue = name, deliveries = delivery.delivery_count, %error, "processing a message failed; it comes back shortly");
        if let Err(e) = queue.release(name, delivery.receipt, delay).await {
            tracing::warn!(queue = name, error = %e, "release failed; the message comes back after its visibility timeout");
        }
        return;
    }
    let reason = format!(
        "failed on each of {} deliveries: {error}",
        delivery.delivery_count
    );
    // The task ends first: should that fail, the message comes back and
    // is tried again; once it has ended, a copy of the message that
    // survives is dropped as stale.
    if let Some((task_id, step)) = task {
        let mut task_error = json!({ "message": reason, "code": "poison_message" });
        if let Some(step) = step {
            task_error["step"] = json!(step);
        }
        let why = format!("a message of this task was dead-lettered: {reason}");
        match store.fail_task(task_id, task_error, &why).await {
            Ok(true) => {
                tracing::error!(task = %task_id, %reason, "task failed: its message is dead-lettered")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(task = %task_id, error = %e, "ending the task of a poison message failed; the message comes back");
                let _ = queue.release(name, delivery.receipt, delay).await;
                return;
            }
        }
    }
    tracing::error!(queue = name, %reason, "message moved to the dead letters");
    match queue.dead_letter(name, delivery.receipt, &reason).await {
        Ok(()) => crate::metrics::dead_lettered(name),
        Err(e) => {
            tracing::warn!(queue = name, error = %e, "dead-lettering failed; the message comes back")
        }
    }
}
