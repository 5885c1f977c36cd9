//! The orchestration decisions, as pure functions over a [`TaskTxn`]: which
//! steps to create (decisions, batches), which are ready, what a result means
//! for its step, and where the task goes next.

use crate::model::*;
use crate::state::{IllegalTransition, StepState, TaskState};
use crate::template::{StepTemplate, StepType, TaskTemplate};
use crate::txn::TaskTxn;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::collections::HashMap;

/// Where a template step stands in one task.
#[derive(Debug, Clone, PartialEq)]
enum Status {
    /// Created (batch workers: every instance, possibly none).
    Created(Vec<StepId>),
    /// Will never be created: a branch not chosen, or downstream of one.
    Excluded,
    /// Waits for a decision or batch outcome upstream.
    Unsettled,
}

fn instantiate(
    task: &Task,
    st: &StepTemplate,
    name: String,
    cursor: Option<Value>,
    now: DateTime<Utc>,
) -> Step {
    Step {
        id: new_id(),
        task_id: task.id,
        name,
        template_step: st.name.clone(),
        step_type: st.step_type,
        handler: st.handler.callable.clone(),
        config: st.handler.config.clone(),
        state: StepState::Pending,
        attempts: 0,
        max_attempts: st.retry.effective_max_attempts(),
        timeout_seconds: st.timeout_seconds,
        batch_size: st.batch.as_ref().map(|b| b.batch_size),
        backoff_until: None,
        cursor,
        outcome: None,
        created_at: now,
    }
}

/// Creates every step the template and the outcomes so far call for.
/// Idempotent: running it again on the result creates nothing.
pub fn expand(txn: &mut TaskTxn, template: &TaskTemplate) -> usize {
    let mut created = 0;
    let mut by_template: HashMap<String, Vec<StepId>> = HashMap::new();
    for s in &txn.graph().steps {
        by_template
            .entry(s.template_step.clone())
            .or_default()
            .push(s.id);
    }
    let mut status: HashMap<&str, Status> = HashMap::new();
    for st in template.steps_in_order() {
        let done = |txn: &TaskTxn, id: StepId| {
            let s = txn.step(txn.step_index(id).expect("known step"));
            s.state.satisfies_dependents().then_some(s.outcome.clone())
        };
        let existing = by_template.get(&st.name).cloned().unwrap_or_default();
        if st.step_type == StepType::BatchWorker {
            let parent = template.batch_parent_of(&st.name).expect("validated");
            let s = match status.get(parent.name.as_str()) {
                Some(Status::Created(ids)) => match done(txn, ids[0]) {
                    _ if !existing.is_empty() => Status::Created(existing),
                    Some(Some(StepOutcome::Batch { batch })) => {
                        let mut parents = vec![ids[0]];
                        let mut blocked = false;
                        for d in st.dependencies.iter().filter(|d| **d != parent.name) {
                            match status.get(d.as_str()) {
                                Some(Status::Created(p)) => parents.extend(p),
                                _ => blocked = true,
                            }
                        }
                        if blocked {
                            Status::Unsettled
                        } else {
                            let mut ids = Vec::new();
                            for c in &batch.cursors {
                                let name = format!("{}_{:03}", st.name, c.batch_no);
                                let cursor = serde_json::to_value(c).ok();
                                let step = instantiate(txn.task(), st, name, cursor, txn.now);
                                ids.push(step.id);
                                txn.add_step(step, &parents);
                                created += 1;
                            }
                            Status::Created(ids)
                        }
                    }
                    // Resolved without a batch outcome: no workers.
                    Some(_) => Status::Created(Vec::new()),
                    None => Status::Unsettled,
                },
                Some(Status::Excluded) => Status::Excluded,
                _ => Status::Unsettled,
            };
            status.insert(&st.name, s);
            continue;
        }
        if !existing.is_empty() {
            status.insert(&st.name, Status::Created(existing));
            continue;
        }
        let mut parents: Vec<StepId> = Vec::new();
        let (mut unsettled, mut excluded) = (false, false);
        for d in &st.dependencies {
            let dep_is_decision = template
                .step(d)
                .is_some_and(|t| t.step_type == StepType::Decision);
            match status.get(d.as_str()) {
                Some(Status::Created(ids))
                    if dep_is_decision && st.step_type != StepType::DeferredConvergence =>
                {
                    match done(txn, ids[0]) {
                        Some(Some(StepOutcome::Decision { branches }))
                            if branches.contains(&st.name) =>
                        {
                            parents.push(ids[0])
                        }
                        Some(_) => excluded = true,
                        None => unsettled = true,
                    }
                }
                Some(Status::Created(ids)) => parents.extend(ids),
                Some(Status::Excluded) => excluded = true,
                _ => unsettled = true,
            }
        }
        let s = if st.step_type == StepType::DeferredConvergence {
            if unsettled {
                Status::Unsettled
            } else {
                Status::Created(Vec::new())
            }
        } else if excluded {
            Status::Excluded
        } else if unsettled {
            Status::Unsettled
        } else {
            Status::Created(Vec::new())
        };
        let s = match s {
            Status::Created(_) => {
                let step = instantiate(txn.task(), st, st.name.clone(), None, txn.now);
                let id = step.id;
                txn.add_step(step, &parents);
                created += 1;
                Status::Created(vec![id])
            }
            other => other,
        };
        status.insert(&st.name, s);
    }
    created
}

/// What the steps of a task allow next.
#[derive(Debug, Default, PartialEq)]
pub struct Readiness {
    /// Indexes of the steps that can be enqueued now.
    pub ready: Vec<usize>,
    pub in_flight: usize,
    /// The first step that failed for good.
    pub failed: Option<usize>,
    /// The earliest backoff still running.
    pub next_retry: Option<DateTime<Utc>>,
    pub all_done: bool,
}

pub fn readiness(graph: &TaskGraph, now: DateTime<Utc>) -> Readiness {
    let index: HashMap<StepId, usize> = graph
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id, i))
        .collect();
    let mut blocked = vec![false; graph.steps.len()];
    for e in &graph.edges {
        if let (Some(&p), Some(&c)) = (index.get(&e.from), index.get(&e.to)) {
            if !graph.steps[p].state.satisfies_dependents() {
                blocked[c] = true;
            }
        }
    }
    let mut r = Readiness {
        all_done: true,
        ..Default::default()
    };
    for (i, s) in graph.steps.iter().enumerate() {
        if !s.state.satisfies_dependents() {
            r.all_done = false;
        }
        match s.state {
            StepState::Pending if !blocked[i] => r.ready.push(i),
            StepState::WaitingForRetry if !blocked[i] => match s.backoff_until {
                Some(until) if until > now => {
                    r.next_retry = Some(r.next_retry.map_or(until, |n| n.min(until)));
                }
                _ => r.ready.push(i),
            },
            StepState::Error if r.failed.is_none() => r.failed = Some(i),
            s if s.is_in_flight() => r.in_flight += 1,
            _ => {}
        }
    }
    r
}

/// Turns output that does not fit the step into a permanent failure naming it.
fn check_outcome(template: &TaskTemplate, step: &Step, outcome: StepOutcome) -> StepOutcome {
    let invalid = |msg: String| StepOutcome::Failure {
        error: StepError::permanent(format!("step `{}`: {msg}", step.name))
            .with_code("invalid_output"),
    };
    match (&outcome, step.step_type) {
        (StepOutcome::Failure { .. }, _) => outcome,
        (StepOutcome::Decision { branches }, StepType::Decision) => {
            let valid = template.branches_of(&step.template_step);
            match branches.iter().find(|b| !valid.contains(&b.as_str())) {
                Some(bad) => invalid(format!(
                    "decision chose unknown branch `{bad}`; branches are: {}",
                    valid.join(", ")
                )),
                None => outcome,
            }
        }
        (_, StepType::Decision) => {
            invalid("a decision step must return a decision (branch names)".into())
        }
        (StepOutcome::Batch { batch }, StepType::Batchable) => {
            if batch.worker_count as usize != batch.cursors.len() {
                invalid(format!(
                    "batch outcome says worker_count {} but has {} cursors",
                    batch.worker_count,
                    batch.cursors.len()
                ))
            } else {
                outcome
            }
        }
        (_, StepType::Batchable) => invalid("a batchable step must return a batch outcome".into()),
        (StepOutcome::Decision { .. }, _) => {
            invalid("returned a decision but is not a decision step".into())
        }
        (StepOutcome::Batch { .. }, _) => {
            invalid("returned a batch outcome but is not a batchable step".into())
        }
        (StepOutcome::Success { .. }, _) => outcome,
    }
}

/// Applies the submitted outcome of a step in EnqueuedForOrchestration:
/// Complete, WaitingForRetry (returns when to wake up), or Error.
pub fn apply_result(
    txn: &mut TaskTxn,
    template: &TaskTemplate,
    idx: usize,
) -> Result<Option<DateTime<Utc>>, IllegalTransition> {
    let step = txn.step(idx).clone();
    let outcome = step
        .outcome
        .clone()
        .unwrap_or_else(|| StepOutcome::Failure {
            error: StepError::retryable("no outcome was recorded"),
        });
    let outcome = check_outcome(template, &step, outcome);
    let StepOutcome::Failure { error } = &outcome else {
        txn.step_to(idx, StepState::Complete, json!({}), |s| {
            s.outcome = Some(outcome)
        })?;
        return Ok(None);
    };
    let retry = template
        .step(&step.template_step)
        .map(|t| t.retry.clone())
        .unwrap_or_default();
    let retryable = error.kind == ErrorKind::Retryable && retry.retryable;
    if retryable && step.attempts < step.max_attempts {
        let delay = match error.retry_after_ms {
            Some(ms) => std::time::Duration::from_millis(ms),
            None => retry.backoff_after(step.attempts),
        };
        let until = txn.now + chrono::Duration::from_std(delay).unwrap_or_default();
        let meta = json!({ "error": error.message, "backoff_ms": delay.as_millis() as u64 });
        txn.step_to(idx, StepState::WaitingForRetry, meta, |s| {
            s.backoff_until = Some(until);
            s.outcome = Some(outcome.clone());
        })?;
        Ok(Some(until))
    } else {
        let reason = if retryable {
            "attempts exhausted"
        } else {
            "permanent error"
        };
        let meta = json!({ "error": error.message, "reason": reason });
        txn.step_to(idx, StepState::Error, meta, |s| {
            s.outcome = Some(outcome.clone())
        })?;
        Ok(None)
    }
}

/// Why the orchestrator looks at a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Init,
    Result,
    Wake,
}

/// Creates due steps, decides the task's next state, and marks ready steps
/// Enqueued. Returns the dispatch messages to send once the txn is committed.
pub fn evaluate(
    txn: &mut TaskTxn,
    template: &TaskTemplate,
    trigger: Trigger,
) -> Result<Vec<StepMessage>, IllegalTransition> {
    if txn.task().state.is_terminal() {
        return Ok(Vec::new());
    }
    let created = expand(txn, template);
    let r = readiness(txn.graph(), txn.now);
    let target = if r.failed.is_some() {
        if r.in_flight > 0 {
            TaskState::BlockedByFailures
        } else {
            TaskState::Error
        }
    } else if r.all_done {
        TaskState::Complete
    } else if !r.ready.is_empty() {
        TaskState::EnqueuingSteps
    } else if r.in_flight > 0 {
        TaskState::StepsInProcess
    } else if r.next_retry.is_some() {
        TaskState::WaitingForRetry
    } else {
        TaskState::Error
    };
    let current = txn.task().state;
    if trigger == Trigger::Wake && created == 0 && target == current {
        return Ok(Vec::new());
    }
    // A running task that stays running (enqueuing more steps or not) went
    // StepsInProcess -> EvaluatingResults -> ... -> StepsInProcess inside one
    // atomic commit: nobody could observe the states between, so they are
    // not recorded. Every change of the task's state is.
    let stays_running = current == TaskState::StepsInProcess
        && matches!(
            target,
            TaskState::EnqueuingSteps | TaskState::StepsInProcess
        );
    // A repair moved the task to EvaluatingResults itself (with who and why).
    if !matches!(
        current,
        TaskState::Initializing | TaskState::EvaluatingResults
    ) && !stays_running
    {
        txn.task_to(TaskState::EvaluatingResults, json!({}))?;
    }
    let mut messages = Vec::new();
    let traceparent = txn
        .task()
        .trace
        .as_ref()
        .and_then(|t| t.parent())
        .map(|p| p.to_string());
    match target {
        TaskState::EnqueuingSteps => {
            if !stays_running {
                txn.task_to(TaskState::EnqueuingSteps, json!({ "ready": r.ready.len() }))?;
            }
            for idx in r.ready {
                txn.step_to(idx, StepState::Enqueued, json!({}), |s| {
                    s.attempts += 1;
                    s.backoff_until = None;
                })?;
                let s = txn.step(idx);
                messages.push(StepMessage {
                    task_id: s.task_id,
                    step_id: s.id,
                    attempt: s.attempts,
                    step_name: s.name.clone(),
                    handler: s.handler.clone(),
                    ready_at_us: Some(txn.now.timestamp_micros()),
                    traceparent: traceparent.clone(),
                });
            }
            if !stays_running {
                txn.task_to(TaskState::StepsInProcess, json!({}))?;
            }
        }
        TaskState::StepsInProcess if stays_running => {}
        TaskState::Complete => {
            let result = task_result(txn.graph());
            txn.finish_task(TaskState::Complete, json!({}), Some(result), None)?;
        }
        TaskState::Error => {
            let (error, reason) = match r.failed {
                Some(i) => {
                    let s = txn.step(i);
                    let reason = format!("the task failed: step `{}` failed", s.name);
                    (json!({ "step": s.name, "error": s.error() }), reason)
                }
                None => (
                    json!({ "message": "no step can make progress" }),
                    "the task failed: no step could make progress".to_string(),
                ),
            };
            // The steps that will never run now end too, saying why.
            let stranded: Vec<usize> = (0..txn.graph().steps.len())
                .filter(|&i| {
                    matches!(
                        txn.step(i).state,
                        StepState::Pending | StepState::WaitingForRetry
                    )
                })
                .collect();
            for i in stranded {
                txn.step_to(i, StepState::Cancelled, json!({ "reason": reason }), |_| {})?;
            }
            txn.finish_task(TaskState::Error, json!({}), None, Some(error))?;
        }
        other => txn.task_to(other, json!({}))?,
    }
    Ok(messages)
}

/// The sink step's result, or the sink steps' results by name.
pub fn task_result(graph: &TaskGraph) -> Value {
    let sinks: Vec<&Step> = graph
        .steps
        .iter()
        .filter(|s| !graph.edges.iter().any(|e| e.from == s.id))
        .collect();
    match sinks.as_slice() {
        [only] => only.result_value().unwrap_or_default(),
        many => Value::Object(
            many.iter()
                .map(|s| (s.name.clone(), s.result_value().unwrap_or_default()))
                .collect(),
        ),
    }
}

/// Cancels the task and every step that has not started; `metadata` is
/// each audit row's (who asked and why).
pub fn cancel(txn: &mut TaskTxn, metadata: &Value) -> Result<(), IllegalTransition> {
    if txn.task().state.is_terminal() {
        return Ok(());
    }
    let pending: Vec<usize> = (0..txn.graph().steps.len())
        .filter(|&i| {
            matches!(
                txn.step(i).state,
                StepState::Pending | StepState::Enqueued | StepState::WaitingForRetry
            )
        })
        .collect();
    for i in pending {
        txn.step_to(i, StepState::Cancelled, metadata.clone(), |_| {})?;
    }
    txn.task_to(TaskState::Cancelled, metadata.clone())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(states: &[StepState], edges: &[(usize, usize)]) -> TaskGraph {
        let task = Task::pending("n", "t", "1", json!({}));
        let steps: Vec<Step> = states
            .iter()
            .enumerate()
            .map(|(i, &state)| Step {
                state,
                ..instantiate(
                    &task,
                    &StepTemplate::standard(&format!("s{i}"), "h", Vec::new()),
                    format!("s{i}"),
                    None,
                    Utc::now(),
                )
            })
            .collect();
        let edges = edges
            .iter()
            .map(|&(from, to)| Edge {
                from: steps[from].id,
                to: steps[to].id,
            })
            .collect();
        TaskGraph { task, steps, edges }
    }

    #[test]
    fn a_step_is_ready_only_when_every_parent_is_complete() {
        use StepState::*;
        // s0 -> s2 <- s1
        let g = graph(&[Complete, InProgress, Pending], &[(0, 2), (1, 2)]);
        let r = readiness(&g, Utc::now());
        assert!(r.ready.is_empty());
        assert_eq!(r.in_flight, 1);
        assert!(!r.all_done);

        let g = graph(&[Complete, ResolvedManually, Pending], &[(0, 2), (1, 2)]);
        assert_eq!(readiness(&g, Utc::now()).ready, vec![2]);
    }

    #[test]
    fn a_retry_is_ready_only_once_its_backoff_is_over() {
        let now = Utc::now();
        let mut g = graph(&[StepState::WaitingForRetry], &[]);
        g.steps[0].backoff_until = Some(now + chrono::Duration::seconds(5));
        let r = readiness(&g, now);
        assert!(r.ready.is_empty());
        assert_eq!(r.next_retry, g.steps[0].backoff_until);

        let r = readiness(&g, now + chrono::Duration::seconds(6));
        assert_eq!(r.ready, vec![0]);
        assert_eq!(r.next_retry, None);
    }

    #[test]
    fn the_first_failed_step_and_completion_are_reported() {
        use StepState::*;
        let r = readiness(&graph(&[Complete, Error, Error], &[]), Utc::now());
        assert_eq!(r.failed, Some(1));
        assert!(!r.all_done);

        let r = readiness(&graph(&[Complete, Cancelled], &[]), Utc::now());
        assert!(
            !r.all_done,
            "a cancelled step does not satisfy its dependents"
        );
        let r = readiness(&graph(&[Complete, ResolvedManually], &[]), Utc::now());
        assert!(r.all_done);
    }
}
