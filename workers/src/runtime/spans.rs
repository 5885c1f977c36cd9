//! A step attempt's spans, when its task is traced and this process records
//! spans: the attempt's span under the task's, with its queue wait, its
//! handler's run and the commit of its outcome as children. The handler's
//! span context goes to the handler (`ctx.traceparent`), so the spans a
//! handler makes in any language nest under its run.

use std::time::SystemTime;
use stepgraph_engine::trace::{self, new_span_id, SpanRecord, TraceParent, Value};
use stepgraph_engine::{StepMessage, StepOutcome, StepWork};

pub(super) struct StepSpan {
    task: TraceParent,
    attempt: TraceParent,
    handler: TraceParent,
    start: SystemTime,
    ready_at: Option<SystemTime>,
    ran: Option<(SystemTime, SystemTime)>,
    attributes: Vec<(&'static str, Value)>,
    handler_name: String,
    step_name: String,
    error: Option<String>,
}

impl StepSpan {
    /// Begins the attempt's span now and gives `work` its handler's span
    /// context; none (and nothing done) when spans are not recorded.
    pub(super) fn begin(msg: &StepMessage, work: &mut StepWork) -> Option<StepSpan> {
        if !trace::enabled() {
            return None;
        }
        let task = TraceParent::parse(msg.traceparent.as_deref()?).ok()?;
        let attempt = task.child(new_span_id());
        let handler = task.child(new_span_id());
        work.traceparent = Some(handler.to_string());
        Some(StepSpan {
            task,
            attempt,
            handler,
            start: SystemTime::now(),
            ready_at: msg.ready_at_us.map(|us| {
                SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(us.max(0) as u64)
            }),
            ran: None,
            attributes: vec![
                ("stepgraph.task_id", work.task_id.to_string().into()),
                (
                    "stepgraph.template",
                    format!("{}/{}", work.namespace, work.task_name).into(),
                ),
                ("stepgraph.step", work.step_name.as_str().into()),
                ("stepgraph.handler", work.handler.as_str().into()),
                ("stepgraph.attempt", i64::from(work.attempt).into()),
            ],
            handler_name: work.handler.clone(),
            step_name: work.step_name.clone(),
            error: None,
        })
    }

    /// The handler ran from `start` until now, to `outcome`.
    pub(super) fn ran(&mut self, start: SystemTime, outcome: &StepOutcome) {
        self.ran = Some((start, SystemTime::now()));
        let (name, error) = match outcome {
            StepOutcome::Failure { error } => (
                match error.code.as_deref() {
                    Some("timeout") => "timed_out",
                    _ => "failed",
                },
                Some(error.message.clone()),
            ),
            _ => ("completed", None),
        };
        self.attributes.push(("stepgraph.outcome", name.into()));
        self.error = error;
    }

    /// Ends the attempt's span now, its outcome committed with its task's
    /// orchestration (`committed`) or submitted for the orchestrator.
    pub(super) fn end(self, committed: bool) {
        let end = SystemTime::now();
        let error = self.error.clone();
        let child = |context: TraceParent, name: String, start, end, error| SpanRecord {
            context,
            parent_span_id: Some(self.attempt.span_id),
            parent_is_remote: false,
            name,
            start,
            end,
            attributes: Vec::new(),
            error,
        };
        if let Some(ready) = self.ready_at.filter(|r| *r < self.start) {
            let queue = self.attempt.child(new_span_id());
            trace::export(child(queue, "queue wait".into(), ready, self.start, None));
        }
        if let Some((start, ran)) = self.ran {
            let name = format!("handler {}", self.handler_name);
            trace::export(child(self.handler, name, start, ran, error.clone()));
            let commit = self.attempt.child(new_span_id());
            let name = if committed { "commit" } else { "submit" };
            trace::export(child(commit, name.into(), ran, end, None));
        }
        trace::export(SpanRecord {
            context: self.attempt,
            parent_span_id: Some(self.task.span_id),
            parent_is_remote: false,
            name: format!("step {}", self.step_name),
            start: self.start,
            end,
            attributes: self.attributes,
            error,
        });
    }
}
