//! Finding tasks: a filter, newest first, keyset pages (ids are
//! time-ordered, so "older than the last id seen" is the next page: tasks
//! created meanwhile are newer and never shift a later page); and the
//! counts an operator's overview shows.

use crate::model::TaskId;
use crate::state::TaskState;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

/// The most tasks one page holds.
pub const MAX_PAGE: usize = 500;
/// A page's size when the request names none.
pub const DEFAULT_PAGE: usize = 50;

/// Which tasks; every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskFilter {
    /// Any of these (empty: any state).
    pub states: Vec<TaskState>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub version: Option<String>,
    /// Created at or after.
    pub created_after: Option<DateTime<Utc>>,
    /// Created before.
    pub created_before: Option<DateTime<Utc>>,
    pub idempotency_key: Option<String>,
    /// With (true) or without (false) a step in Error.
    pub has_failed_step: Option<bool>,
    /// Only tasks older than this one (the cursor: the last id of the page before).
    pub older_than: Option<TaskId>,
    /// At most this many (1..=[`MAX_PAGE`]).
    pub limit: usize,
}

/// A task as a list shows it: without its context and result, which can be large.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskSummary {
    #[cfg_attr(feature = "openapi", schema(value_type = uuid::Uuid))]
    pub id: TaskId,
    pub namespace: String,
    pub name: String,
    pub version: String,
    pub state: TaskState,
    pub idempotency_key: Option<String>,
    pub priority: i32,
    pub error: Option<Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// When a delayed task starts.
    pub run_at: Option<DateTime<Utc>>,
}

impl From<&crate::model::Task> for TaskSummary {
    fn from(t: &crate::model::Task) -> Self {
        TaskSummary {
            id: t.id,
            namespace: t.namespace.clone(),
            name: t.name.clone(),
            version: t.version.clone(),
            state: t.state,
            idempotency_key: t.idempotency_key.clone(),
            priority: t.priority,
            error: t.error.clone(),
            created_at: t.created_at,
            updated_at: t.updated_at,
            completed_at: t.completed_at,
            run_at: t.run_at,
        }
    }
}

/// Counts by template and state, and what went wrong recently.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    pub templates: Vec<TemplateStats>,
    /// Since the time asked for (the last hour, by the API).
    pub recent: Recent,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TemplateStats {
    pub namespace: String,
    pub name: String,
    /// State -> count; states with none are left out.
    pub tasks: std::collections::BTreeMap<String, i64>,
    pub steps: std::collections::BTreeMap<String, i64>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Recent {
    pub since: Option<DateTime<Utc>>,
    /// Tasks that ended in Error.
    pub failed_tasks: i64,
    /// Steps that ended in Error (attempts exhausted, or a permanent error).
    pub failed_steps: i64,
    /// Attempts that failed and were scheduled again.
    pub retries: i64,
    /// Step attempts ended, a minute at a time, oldest first; minutes
    /// with none are left out.
    pub per_minute: Vec<MinuteCounts>,
    /// The templates with the most failures, most first (at most
    /// [`FAILING_TEMPLATES`]).
    pub failing_templates: Vec<FailingTemplate>,
}

/// How many templates `Recent::failing_templates` names.
pub const FAILING_TEMPLATES: usize = 10;

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MinuteCounts {
    /// The minute's start.
    pub minute: DateTime<Utc>,
    /// Steps that completed.
    pub completed_steps: i64,
    /// Attempts that failed (retried or not).
    pub failed_attempts: i64,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailingTemplate {
    pub namespace: String,
    pub name: String,
    /// Attempts of its steps that failed (retried or not).
    pub failed_attempts: i64,
    /// Its tasks that ended in error.
    pub failed_tasks: i64,
}

impl FailingTemplate {
    /// Most failures first; ties by name.
    pub fn rank(list: &mut Vec<FailingTemplate>) {
        list.sort_by(|a, b| {
            (b.failed_attempts + b.failed_tasks)
                .cmp(&(a.failed_attempts + a.failed_tasks))
                .then_with(|| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)))
        });
        list.truncate(FAILING_TEMPLATES);
    }
}
