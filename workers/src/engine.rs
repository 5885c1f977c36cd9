//! The embedded mode: orchestrator, in-memory store and queue, and a worker
//! with this process's handlers, all in one process with nothing installed.

use crate::handler::HandlerRegistry;
use crate::runtime::{Worker, WorkerConfig};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use stepgraph_engine::{
    shutdown_channel, Edge, MemoryQueue, MemoryStore, Orchestrator, OrchestratorConfig,
    OrchestratorError, Queue, ShutdownTrigger, Step, StepState, Store, StoreError, Task,
    TaskCreated, TaskId, TaskRequest, TaskState, TaskView, TemplateRegistry, Transitions,
};
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The worker orchestrates each result in the commit that records it
    /// (see [`Worker::with_inline_orchestration`]); off: through the queue.
    pub inline_orchestration: bool,
    pub worker: WorkerConfig,
    pub orchestrator: OrchestratorConfig,
    /// How long [`Engine::run`] waits for a task.
    pub run_timeout: Duration,
    /// Claim permits granted by a foreign handler host (see [`crate::Host::credits`]).
    pub credits: Option<stepgraph_engine::queue::Credits>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            inline_orchestration: true,
            worker: WorkerConfig::default(),
            orchestrator: OrchestratorConfig::default(),
            run_timeout: Duration::from_secs(300),
            credits: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Orchestrator(#[from] OrchestratorError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("task {task_id} did not finish within {timeout:?} (state {state})")]
    Timeout {
        task_id: TaskId,
        timeout: Duration,
        state: TaskState,
    },
}

pub struct Engine {
    orchestrator: Arc<Orchestrator>,
    worker: Arc<Worker>,
    store: Arc<dyn Store>,
    trigger: ShutdownTrigger,
    loops: Vec<JoinHandle<()>>,
    run_timeout: Duration,
}

impl Engine {
    /// Starts the engine on the current tokio runtime. The worker serves every
    /// namespace of `templates` unless `config.worker.namespaces` names some.
    pub fn embedded(
        templates: TemplateRegistry,
        handlers: HandlerRegistry,
        config: EngineConfig,
    ) -> Engine {
        let store = Arc::new(MemoryStore::new());
        let queue = Arc::new(MemoryQueue::new());
        Engine::with_backends(store, queue, templates, handlers, config)
    }

    /// An orchestrator and a worker in this process over the given backends
    /// (PostgreSQL, say), which other processes may share.
    pub fn with_backends(
        store: Arc<dyn Store>,
        queue: Arc<dyn Queue>,
        templates: TemplateRegistry,
        handlers: HandlerRegistry,
        mut config: EngineConfig,
    ) -> Engine {
        if config.worker.namespaces.is_empty() {
            // One worker serves everything here, queue-routed handlers too.
            config.worker.namespaces = templates.queues();
        }
        // Alone here, the worker also takes the steps of handlers nobody
        // registered, to fail them at once (naming the handler).
        let lacking = if config.worker.shared_queues {
            Vec::new()
        } else {
            handlers.missing_queues(&templates, Some(&config.worker.namespaces))
        };
        let orchestrator = Arc::new(Orchestrator::new(
            store.clone(),
            queue.clone(),
            Arc::new(templates),
            config.orchestrator,
        ));
        let mut worker = Worker::new(store.clone(), queue, Arc::new(handlers), config.worker)
            .also_consuming(lacking);
        if config.inline_orchestration {
            worker = worker.with_inline_orchestration(orchestrator.clone());
        }
        if let Some(credits) = config.credits {
            worker = worker.with_credits(credits);
        }
        let worker = Arc::new(worker);
        let (trigger, shutdown) = shutdown_channel();
        let loops = vec![
            tokio::spawn(orchestrator.clone().run(shutdown.clone())),
            tokio::spawn(worker.clone().run(shutdown)),
        ];
        Engine {
            orchestrator,
            worker,
            store,
            trigger,
            loops,
            run_timeout: config.run_timeout,
        }
    }

    pub fn orchestrator(&self) -> &Arc<Orchestrator> {
        &self.orchestrator
    }

    /// Creates a task; its first steps start on this engine's worker at
    /// once when it has free slots (see [`stepgraph_engine::Eager`]).
    pub async fn submit(&self, request: TaskRequest) -> Result<TaskCreated, EngineError> {
        let (created, claimed) = self
            .orchestrator
            .create_task_eager(request, self.worker.eager())
            .await?;
        self.worker.start_claimed(claimed);
        Ok(created)
    }

    /// Waits for a terminal state; the task as it then is.
    pub async fn wait_task(&self, task_id: TaskId, timeout: Duration) -> Result<Task, EngineError> {
        let task = self.store.wait_terminal(task_id, timeout).await?;
        if task.state.is_terminal() {
            Ok(task)
        } else {
            Err(EngineError::Timeout {
                task_id,
                timeout,
                state: task.state,
            })
        }
    }

    /// Waits for a terminal state, then reports the whole task.
    pub async fn wait(
        &self,
        task_id: TaskId,
        timeout: Duration,
    ) -> Result<TaskReport, EngineError> {
        self.wait_task(task_id, timeout).await?;
        self.report(task_id).await
    }

    /// Creates a task and waits for it (up to the configured run timeout).
    pub async fn run(
        &self,
        namespace: &str,
        name: &str,
        context: Value,
    ) -> Result<TaskReport, EngineError> {
        let created = self
            .submit(TaskRequest::new(namespace, name, context))
            .await?;
        self.wait(created.task_id, self.run_timeout).await
    }

    pub async fn report(&self, task_id: TaskId) -> Result<TaskReport, EngineError> {
        let (graph, transitions) = self.store.graph_and_transitions(task_id).await?;
        Ok(TaskReport {
            task: graph.task,
            steps: graph.steps,
            edges: graph.edges,
            transitions,
        })
    }

    /// The task as every surface shows it (see [`TaskView`]), with its
    /// audit trail when `transitions`.
    pub async fn view(&self, task_id: TaskId, transitions: bool) -> Result<TaskView, EngineError> {
        Ok(if transitions {
            let (graph, transitions) = self.store.graph_and_transitions(task_id).await?;
            TaskView::new(graph, Some(transitions))
        } else {
            TaskView::new(self.store.graph(task_id).await?, None)
        })
    }

    pub async fn cancel(&self, task_id: TaskId) -> Result<TaskState, EngineError> {
        Ok(self
            .orchestrator
            .cancel(
                task_id,
                &stepgraph_engine::repair::Requested {
                    by: "engine".into(),
                    reason: "cancelled by request".into(),
                },
            )
            .await?)
    }

    /// Stops taking work and waits for running steps to finish.
    pub async fn shutdown(self) {
        self.trigger.trigger();
        for l in self.loops {
            let _ = l.await;
        }
    }
}

/// A finished (or running) task: its steps and its audit trail.
#[derive(Debug, Clone, Serialize)]
pub struct TaskReport {
    pub task: Task,
    pub steps: Vec<Step>,
    pub edges: Vec<Edge>,
    pub transitions: Transitions,
}

/// One step's line in a timeline; times are offsets from the task's creation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelineRow {
    pub step: String,
    pub state: StepState,
    pub attempts: u32,
    /// When the last attempt started running.
    pub started: Option<Duration>,
    /// When the last attempt's outcome was submitted.
    pub finished: Option<Duration>,
}

impl TimelineRow {
    pub fn duration(&self) -> Option<Duration> {
        Some(self.finished?.saturating_sub(self.started?))
    }
}

impl TaskReport {
    pub fn state(&self) -> TaskState {
        self.task.state
    }

    pub fn result(&self) -> Option<&Value> {
        self.task.result.as_ref()
    }

    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }

    pub fn step_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.steps.iter().map(|s| s.name.as_str()).collect();
        names.sort();
        names
    }

    fn offset(&self, at: DateTime<Utc>) -> Duration {
        (at - self.task.created_at).to_std().unwrap_or_default()
    }

    /// Steps in the order they started.
    pub fn timeline(&self) -> Vec<TimelineRow> {
        let mut rows: Vec<TimelineRow> = self
            .steps
            .iter()
            .map(|s| {
                let mine = || self.transitions.steps.iter().filter(|t| t.step_id == s.id);
                let last_to =
                    |state: StepState| mine().filter(|t| t.to == state).map(|t| t.at).next_back();
                TimelineRow {
                    step: s.name.clone(),
                    state: s.state,
                    attempts: s.attempts,
                    started: last_to(StepState::InProgress).map(|t| self.offset(t)),
                    finished: last_to(StepState::EnqueuedForOrchestration).map(|t| self.offset(t)),
                }
            })
            .collect();
        rows.sort_by_key(|r| (r.started.is_none(), r.started));
        rows
    }
}
