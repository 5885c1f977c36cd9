//! The scheduler every orchestrating process (`serve`, an embedded engine)
//! runs: it starts delayed tasks when their time comes and fires cron
//! schedules' ticks. It sleeps until the earliest of those, woken early
//! when a task is delayed or a schedule changes in this process, and looks
//! at least every `schedule_poll` for what other processes stored.
//!
//! Several processes may run it at once: a delayed task is started by a
//! compare-and-swap (one wins), and a tick's task has an idempotency key
//! made of the schedule and the tick, created before the schedule moves on
//! (by another compare-and-swap): a race or a crash makes one task per tick.

use super::{Orchestrator, OrchestratorError, TaskRequest};
use crate::schedule::{tick_key, CatchUp, Schedule, ScheduleSource, ScheduleSpec};
use crate::shutdown::Shutdown;
use chrono::{DateTime, Utc};
use serde_json::json;

/// A tick this late still fires; later, it was missed (see [`CatchUp`]).
pub const LATE_TOLERANCE: chrono::TimeDelta = chrono::TimeDelta::seconds(2);
/// Delayed tasks started per look.
const BATCH: i64 = 100;

impl Orchestrator {
    pub(super) async fn scheduler(&self, mut shutdown: Shutdown) {
        let poll = chrono::TimeDelta::from_std(self.config.schedule_poll)
            .unwrap_or(chrono::TimeDelta::seconds(1));
        let mut synced = false;
        loop {
            if !synced {
                match self.sync_template_schedules().await {
                    Ok(()) => synced = true,
                    Err(e) => {
                        tracing::warn!(error = %e, "storing the templates' schedules failed; will try again")
                    }
                }
            }
            let now = Utc::now();
            let next = match self.run_due(now).await {
                Ok(next) => next.map_or(now + poll, |n| n.min(now + poll)),
                Err(e) => {
                    tracing::warn!(error = %e, "starting delayed tasks or firing schedules failed; will try again");
                    now + poll
                }
            };
            let wait = (next - Utc::now()).to_std().unwrap_or_default();
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// Starts the delayed tasks due at `now` and fires the schedules'
    /// ticks due then; when the next is due.
    pub async fn run_due(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, OrchestratorError> {
        loop {
            let due = self.store.due_tasks(now, BATCH).await?;
            for &task_id in &due {
                match self.start_scheduled(task_id).await {
                    Ok(_) => {}
                    Err(e @ OrchestratorError::TemplateNotFound { .. }) => {
                        // It can never start: end it rather than look at it forever.
                        tracing::error!(task = %task_id, error = %e, "a delayed task's template is gone");
                        let error =
                            json!({ "code": "template_not_found", "message": e.to_string() });
                        self.store
                            .fail_task(task_id, error, "its template is gone")
                            .await?;
                    }
                    Err(e) => return Err(e),
                }
            }
            if (due.len() as i64) < BATCH {
                break;
            }
        }
        let mut next = self.store.next_due().await?;
        for s in self.store.schedules().await? {
            let Some(tick) = s.next_run_at.filter(|_| !s.paused) else {
                continue;
            };
            let at = if tick <= now {
                self.fire(s, tick, now).await?
            } else {
                Some(tick)
            };
            next = match (next, at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Ok(next)
    }

    /// Creates the task of `schedule`'s tick (unless missed and skipped)
    /// and moves the schedule on; its next tick.
    async fn fire(
        &self,
        schedule: Schedule,
        tick: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, OrchestratorError> {
        let missed = now - tick > LATE_TOLERANCE;
        let mut moved = schedule.clone();
        let run_for = match (missed, schedule.catch_up) {
            (false, _) => Some(tick),
            (true, CatchUp::Skip) => None,
            (true, CatchUp::Once) => Some(schedule.latest_at_or_before(now).unwrap_or(tick)),
        };
        if let Some(at) = run_for {
            let request = TaskRequest {
                version: schedule.version.clone(),
                idempotency_key: Some(tick_key(&schedule.name, at)),
                ..TaskRequest::new(
                    &schedule.namespace,
                    &schedule.template,
                    schedule.context.clone(),
                )
            };
            match self.create_task(request).await {
                Ok(created) => {
                    tracing::info!(schedule = %schedule.name, tick = %at, task = %created.task_id, "schedule fired");
                    moved.last_task_id = Some(created.task_id);
                    moved.last_error = None;
                }
                // Not this tick's fault: the same tick again next look.
                Err(e @ (OrchestratorError::Store(_) | OrchestratorError::Queue(_))) => {
                    return Err(e)
                }
                Err(e) => {
                    tracing::error!(schedule = %schedule.name, tick = %at, error = %e, "schedule fired, but made no task");
                    moved.last_error = Some(e.to_string());
                }
            }
            moved.last_run_at = Some(at);
        } else {
            tracing::info!(schedule = %schedule.name, missed_since = %tick, "skipped the ticks missed while no process ran the schedule");
        }
        let from = if missed { now } else { tick };
        let next = schedule.next_after(from).ok();
        moved.next_run_at = next;
        moved.updated_at = Utc::now();
        // Lost: another process fired this tick (it made the same task) or
        // the schedule was paused or changed meanwhile.
        self.store.replace_schedule(&moved, Some(tick)).await?;
        Ok(next)
    }

    /// Stores the schedules the templates declare (the latest version of
    /// each), updates those whose definition changed, and removes those no
    /// template declares any more. Pausing one survives a restart.
    pub async fn sync_template_schedules(&self) -> Result<(), OrchestratorError> {
        let now = Utc::now();
        let mut declared = Vec::new();
        for t in self.templates.latest() {
            for (i, s) in t.schedules.iter().enumerate() {
                let spec = ScheduleSpec {
                    name: s
                        .name
                        .clone()
                        .unwrap_or_else(|| format!("{}.{}.{i}", t.namespace, t.name)),
                    namespace: t.namespace.clone(),
                    template: t.name.clone(),
                    version: None,
                    cron: s.cron.clone(),
                    timezone: s.timezone.clone(),
                    context: s.context.clone(),
                    catch_up: s.catch_up,
                };
                // The template's own validation read these fields already.
                match spec.into_schedule(ScheduleSource::Template, now) {
                    Ok(s) => declared.push(s),
                    Err(e) => {
                        tracing::error!(template = %t.key(), error = %e, "a template's schedule cannot be used")
                    }
                }
            }
        }
        let stored = self.store.schedules().await?;
        for new in &declared {
            match stored.iter().find(|s| s.name == new.name) {
                None => {
                    self.store.insert_schedule(new).await?;
                }
                Some(old)
                    if old.source == ScheduleSource::Template && !old.same_definition(new) =>
                {
                    let updated = Schedule {
                        paused: old.paused,
                        next_run_at: new.next_run_at.filter(|_| !old.paused),
                        last_run_at: old.last_run_at,
                        last_task_id: old.last_task_id,
                        created_at: old.created_at,
                        ..new.clone()
                    };
                    self.store
                        .replace_schedule(&updated, old.next_run_at)
                        .await?;
                }
                Some(old) if old.source == ScheduleSource::Api => {
                    tracing::warn!(schedule = %new.name, "a template declares a schedule whose name one made through the API has; the API's stays");
                }
                Some(_) => {}
            }
        }
        for old in stored {
            if old.source == ScheduleSource::Template
                && !declared.iter().any(|s| s.name == old.name)
            {
                self.store.delete_schedule(&old.name).await?;
            }
        }
        self.wake.notify_one();
        Ok(())
    }

    /// The scheduler looks again now (a schedule changed here).
    pub fn wake_scheduler(&self) {
        self.wake.notify_one();
    }
}
