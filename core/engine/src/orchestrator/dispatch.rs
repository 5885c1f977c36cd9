//! Where the steps a commit makes ready go: to their handlers' worker queues,
//! or, for a worker that orchestrates its own results and has free slots,
//! leased to it in the same commit (eager dispatch).

use crate::model::*;
use crate::queue::{encode_all, handler_queue, Claim, Outbox, QueueError, Slot, Slots};
use crate::store::{Snapshot, TaskLock};
use crate::template::TaskTemplate;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;

/// The step messages for the workers, as an outbox: each to its handler's
/// queue in the task's namespace (or the one the template names), which
/// only workers that have the handler consume.
pub(super) fn dispatch(
    template: &TaskTemplate,
    messages: &[StepMessage],
) -> Result<Outbox, QueueError> {
    let mut outbox = Outbox::default();
    for m in messages {
        outbox.send(
            &handler_queue(template.queue_of(&m.handler), &m.handler),
            encode_all(std::slice::from_ref(m), Duration::ZERO)?,
        );
    }
    Ok(outbox)
}

/// A step message put in an outbox's claims, and the slot taken for it.
pub(super) type Taken = (StepMessage, OwnedSemaphorePermit);

/// Like [`dispatch`], but the messages for `eager`'s queues go into the
/// outbox's claims while it has free slots; returns the slots taken, with
/// the message each is for, in the order of the claims.
pub(super) fn dispatch_eager(
    template: &TaskTemplate,
    messages: Vec<StepMessage>,
    eager: Option<&Eager>,
) -> Result<(Outbox, Vec<Taken>), QueueError> {
    let Some(eager) = eager else {
        return Ok((dispatch(template, &messages)?, Vec::new()));
    };
    let mut outbox = Outbox {
        claim_for: eager.visibility,
        ..Outbox::default()
    };
    let mut taken = Vec::new();
    for m in messages {
        let queue = handler_queue(template.queue_of(&m.handler), &m.handler);
        let encoded = encode_all(std::slice::from_ref(&m), Duration::ZERO)?;
        let permit = eager
            .queues
            .contains(&queue)
            .then(|| eager.handoff.take().or_else(|| eager.slots.try_take()))
            .flatten();
        match permit {
            Some(permit) => {
                outbox
                    .claims
                    .extend(encoded.into_iter().map(|message| Claim {
                        queue: queue.clone(),
                        step_id: m.step_id,
                        message,
                    }));
                taken.push((m, permit));
            }
            None => {
                outbox.send(&queue, encoded);
            }
        }
    }
    Ok((outbox, taken))
}

/// The steps a commit claimed, each with what its handler needs; the first
/// also gets the task's graph as of the commit, to commit its outcome
/// against (the others read it afresh: the first will have changed it).
pub(super) fn claimed_steps(
    graph: TaskGraph,
    mut lock: Option<TaskLock>,
    taken: Vec<Taken>,
) -> Vec<Claimed> {
    let mut out = Vec::with_capacity(taken.len());
    for (message, permit) in taken {
        let Some(idx) = graph.steps.iter().position(|s| s.id == message.step_id) else {
            // Cannot happen (the message was made from this graph); its
            // lease runs out and another worker gets it.
            tracing::error!(step = %message.step_name, "a claimed step is not in its task's graph");
            continue;
        };
        let work = graph.work(idx);
        let snapshot = lock.take().map(|lock| {
            Box::new(Snapshot {
                graph: graph.clone(),
                lock,
            })
        });
        out.push(Claimed {
            message,
            work,
            snapshot,
            permit,
        });
    }
    out
}

/// Eager dispatch: a worker that orchestrates its own results takes the
/// steps its commit makes ready for its queues, as long as it has free
/// slots, instead of sending them through the queue to be claimed back.
/// The same commit leases them to it for `visibility`: when a worker dies,
/// the orchestrators' sweep sends the messages of the steps whose leases ran
/// out (see [`Store::stranded`]), as a queue redelivers after its
/// visibility timeout.
#[derive(Clone)]
pub struct Eager {
    /// The handler queues the worker consumes (see [`handler_queue`]).
    pub queues: std::sync::Arc<std::collections::HashSet<String>>,
    pub slots: Slots,
    pub visibility: Duration,
    /// The slot of the step whose commit this is: the first step it makes
    /// ready for these queues takes it before any free one.
    pub handoff: Slot,
}

impl Eager {
    /// For the commit of a step that runs in `slot`.
    pub fn handing_off(&self, slot: Slot) -> Eager {
        Eager {
            handoff: slot,
            ..self.clone()
        }
    }
}

/// A step leased by eager dispatch: what its handler needs, and the slot it holds.
pub struct Claimed {
    pub message: StepMessage,
    pub work: StepWork,
    pub snapshot: Option<Box<Snapshot>>,
    pub permit: OwnedSemaphorePermit,
}
