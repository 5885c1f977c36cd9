//! The task's span, recorded by the commit that ends the task: it started
//! when the task was created (possibly in another process) and ends now.

use crate::model::WriteOp;
use crate::trace::{self, SpanRecord};
use crate::txn::TaskTxn;

/// The span of the task `txn` ends, when the task is traced and spans are
/// recorded here. Nothing is looked at when they are not.
pub(super) fn task_ended(txn: &TaskTxn) -> Option<SpanRecord> {
    if !trace::enabled() {
        return None;
    }
    let task = txn.task();
    let (context, trace) = (task.trace.as_ref()?.parent()?, task.trace.as_ref()?);
    let (to, at, error) = txn.ops().iter().find_map(|op| match op {
        WriteOp::Task {
            transition, error, ..
        } if transition.to.is_terminal() => Some((transition.to, transition.at, error.clone())),
        _ => None,
    })?;
    let parent_span_id = trace
        .parent_span_id
        .as_deref()
        .and_then(|id| u64::from_str_radix(id, 16).ok());
    Some(SpanRecord {
        context,
        parent_span_id,
        parent_is_remote: parent_span_id.is_some(),
        name: format!("task {}/{}", task.namespace, task.name),
        start: task.created_at.into(),
        end: at.into(),
        attributes: vec![
            ("stepgraph.task_id", task.id.to_string().into()),
            (
                "stepgraph.template",
                format!("{}/{}", task.namespace, task.name).into(),
            ),
            ("stepgraph.template_version", task.version.as_str().into()),
            ("stepgraph.outcome", to.to_string().into()),
        ],
        error: error
            .filter(|e| !e.is_null())
            .map(|e| e.to_string())
            .or_else(|| (to == crate::state::TaskState::Error).then(|| "failed".to_string())),
    })
}
