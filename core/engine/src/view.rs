//! The one view of a task that every surface shows: the HTTP API's
//! `GET /v1/tasks/{id}`, and an embedded engine's `run` in every language.
//! Clients build their task result from it, whichever surface it came from.

use crate::template::StepType;
use crate::{Step, StepError, StepState, Task, TaskGraph, Transitions};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

/// A step as a task's view shows it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StepView {
    pub name: String,
    pub state: StepState,
    /// The template step it was made from (a batch worker's differs from its name).
    pub template_step: String,
    #[serde(rename = "type")]
    pub step_type: StepType,
    pub handler: String,
    /// The handler's configuration from the template.
    pub config: Value,
    /// The steps whose results it is given, by name.
    pub dependencies: Vec<String>,
    pub attempts: u32,
    pub max_attempts: u32,
    /// What its dependents see (null until it has one).
    pub result: Option<Value>,
    /// The latest attempt's error, with the handler's traceback where there is one.
    pub error: Option<StepError>,
    /// A batch worker's slice of the work.
    pub cursor: Option<Value>,
    /// The step's handler, when the step is enqueued and no live worker
    /// serves that handler: it waits for one.
    pub waiting_for_handler: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl StepView {
    pub fn new(s: &Step, graph: &TaskGraph) -> Self {
        StepView {
            name: s.name.clone(),
            state: s.state,
            template_step: s.template_step.clone(),
            step_type: s.step_type,
            handler: s.handler.clone(),
            config: s.config.clone(),
            dependencies: graph
                .parents_of(s.id)
                .filter_map(|id| graph.step(id))
                .map(|p| p.name.clone())
                .collect(),
            attempts: s.attempts,
            max_attempts: s.max_attempts,
            result: s.result_value(),
            error: s.error().cloned(),
            cursor: s.cursor.clone(),
            waiting_for_handler: None,
            created_at: s.created_at,
        }
    }
}

/// A task with its steps and, when asked for, its audit trail.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskView {
    #[serde(flatten)]
    pub task: Task,
    pub steps: Vec<StepView>,
    /// Every transition of the task and its steps, in order. The API always
    /// shows it; an engine's `run` leaves it out (it is most of the view),
    /// and its `get_task` shows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(required = true, nullable = false))]
    pub transitions: Option<Transitions>,
}

impl TaskView {
    pub fn new(graph: TaskGraph, transitions: Option<Transitions>) -> TaskView {
        let steps = graph
            .steps
            .iter()
            .map(|st| StepView::new(st, &graph))
            .collect();
        TaskView {
            steps,
            task: graph.task,
            transitions,
        }
    }
}
