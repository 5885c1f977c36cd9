//! What the in-memory store answers an operator (see `memory`): counts by
//! state, found tasks, stats, workers, and the delayed tasks that are due.

use super::memory::{Inner, TaskEntry};
use super::{
    FailingTemplate, MinuteCounts, Recent, StateCounts, Stats, TaskFilter, TaskSummary,
    TemplateStats, WorkerRecord, WorkerState,
};
use crate::model::{StepMessage, TaskId};
use crate::state::{StepState, TaskState};
use chrono::{DateTime, DurationRound, Utc};
use std::collections::BTreeMap;

fn matches(e: &TaskEntry, f: &TaskFilter) -> bool {
    let t = &e.task;
    let same = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
    (f.states.is_empty() || f.states.contains(&t.state))
        && same(&f.namespace, &t.namespace)
        && same(&f.name, &t.name)
        && same(&f.version, &t.version)
        && f.created_after.is_none_or(|a| t.created_at >= a)
        && f.created_before.is_none_or(|b| t.created_at < b)
        && (f.idempotency_key.is_none() || f.idempotency_key == t.idempotency_key)
        && f.has_failed_step
            .is_none_or(|want| want == e.steps.iter().any(|s| s.state == StepState::Error))
        && f.older_than.is_none_or(|id| t.id < id)
}

impl Inner {
    pub(super) fn counts(&self) -> StateCounts {
        let mut tasks: BTreeMap<String, i64> = Default::default();
        let mut steps: BTreeMap<String, i64> = Default::default();
        for e in self.tasks.values() {
            *tasks.entry(e.task.state.to_string()).or_default() += 1;
            for s in &e.steps {
                *steps.entry(s.state.to_string()).or_default() += 1;
            }
        }
        StateCounts {
            tasks: tasks.into_iter().collect(),
            steps: steps.into_iter().collect(),
        }
    }

    pub(super) fn list(&self, filter: &TaskFilter) -> Vec<TaskSummary> {
        let mut found: Vec<&TaskEntry> =
            self.tasks.values().filter(|e| matches(e, filter)).collect();
        found.sort_by_key(|e| std::cmp::Reverse(e.task.id));
        found
            .into_iter()
            .take(filter.limit)
            .map(|e| TaskSummary::from(&e.task))
            .collect()
    }

    pub(super) fn workers_since(&self, since: DateTime<Utc>) -> Vec<WorkerRecord> {
        let now = Utc::now();
        let mut all: Vec<WorkerRecord> = self
            .workers
            .values()
            .filter(|(_, beat, _, _)| *beat >= since)
            .map(|(info, beat, stopped, circuits)| {
                WorkerRecord::new(info.clone(), *beat, *stopped, now, circuits.clone())
            })
            .collect();
        all.sort_by_key(|w| {
            (
                w.state != WorkerState::Live,
                std::cmp::Reverse(w.info.started_at),
            )
        });
        all
    }

    /// Scheduled tasks whose time has come, earliest first (a scan: an
    /// embedded engine holds few tasks).
    pub(super) fn due(&self, now: DateTime<Utc>, limit: i64) -> Vec<TaskId> {
        let mut due: Vec<(DateTime<Utc>, TaskId)> = self
            .tasks
            .values()
            .filter(|e| e.task.state == TaskState::Scheduled)
            .filter_map(|e| Some((e.task.run_at?, e.task.id)))
            .filter(|(at, _)| *at <= now)
            .collect();
        due.sort();
        due.into_iter()
            .take(limit.max(0) as usize)
            .map(|(_, id)| id)
            .collect()
    }

    /// Steps Enqueued since longer than `older_than`, oldest first (a scan).
    pub(super) fn enqueued_for(
        &self,
        older_than: std::time::Duration,
        limit: i64,
    ) -> Vec<StepMessage> {
        let before = Utc::now() - chrono::Duration::from_std(older_than).unwrap_or_default();
        let mut found: Vec<(DateTime<Utc>, StepMessage)> = Vec::new();
        for e in self.tasks.values() {
            for s in e.steps.iter().filter(|s| s.state == StepState::Enqueued) {
                let since = e
                    .transitions
                    .steps
                    .iter()
                    .filter(|t| t.step_id == s.id)
                    .map(|t| t.at)
                    .max();
                if let Some(at) = since.filter(|at| *at < before) {
                    found.push((
                        at,
                        StepMessage {
                            task_id: s.task_id,
                            step_id: s.id,
                            attempt: s.attempts,
                            step_name: s.name.clone(),
                            handler: s.handler.clone(),
                            ready_at_us: None,
                            traceparent: None,
                        },
                    ));
                }
            }
        }
        found.sort_by_key(|(at, _)| *at);
        found
            .into_iter()
            .take(limit.max(0) as usize)
            .map(|(_, m)| m)
            .collect()
    }

    pub(super) fn next_due(&self) -> Option<DateTime<Utc>> {
        self.tasks
            .values()
            .filter(|e| e.task.state == TaskState::Scheduled)
            .filter_map(|e| e.task.run_at)
            .min()
    }

    pub(super) fn stats(&self, since: DateTime<Utc>) -> Stats {
        let mut by_template: BTreeMap<(String, String), TemplateStats> = Default::default();
        let mut recent = Recent {
            since: Some(since),
            ..Recent::default()
        };
        let mut minutes: BTreeMap<DateTime<Utc>, MinuteCounts> = BTreeMap::new();
        let mut failing: BTreeMap<(String, String), FailingTemplate> = BTreeMap::new();
        for e in self.tasks.values() {
            let key = (e.task.namespace.clone(), e.task.name.clone());
            let mut failed_attempts = 0;
            let mut failed_tasks = 0;
            let t = by_template
                .entry(key.clone())
                .or_insert_with(|| TemplateStats {
                    namespace: e.task.namespace.clone(),
                    name: e.task.name.clone(),
                    ..TemplateStats::default()
                });
            *t.tasks.entry(e.task.state.to_string()).or_default() += 1;
            for s in &e.steps {
                *t.steps.entry(s.state.to_string()).or_default() += 1;
            }
            let recently = |at: &DateTime<Utc>| *at >= since;
            failed_tasks += e
                .transitions
                .task
                .iter()
                .filter(|t| t.to == TaskState::Error && recently(&t.at))
                .count() as i64;
            for t in e.transitions.steps.iter().filter(|t| recently(&t.at)) {
                match t.to {
                    StepState::Error => recent.failed_steps += 1,
                    StepState::WaitingForRetry => recent.retries += 1,
                    StepState::Complete => {}
                    _ => continue,
                }
                let minute =
                    t.at.duration_trunc(chrono::TimeDelta::minutes(1))
                        .unwrap_or(t.at);
                let m = minutes.entry(minute).or_insert(MinuteCounts {
                    minute,
                    completed_steps: 0,
                    failed_attempts: 0,
                });
                if t.to == StepState::Complete {
                    m.completed_steps += 1;
                } else {
                    m.failed_attempts += 1;
                    failed_attempts += 1;
                }
            }
            recent.failed_tasks += failed_tasks;
            if failed_attempts + failed_tasks > 0 {
                let f = failing.entry(key).or_insert_with(|| FailingTemplate {
                    namespace: e.task.namespace.clone(),
                    name: e.task.name.clone(),
                    failed_attempts: 0,
                    failed_tasks: 0,
                });
                f.failed_attempts += failed_attempts;
                f.failed_tasks += failed_tasks;
            }
        }
        recent.per_minute = minutes.into_values().collect();
        recent.failing_templates = failing.into_values().collect();
        FailingTemplate::rank(&mut recent.failing_templates);
        Stats {
            templates: by_template.into_values().collect(),
            recent,
        }
    }
}
