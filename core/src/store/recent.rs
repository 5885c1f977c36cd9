//! The graphs of the tasks this process committed last, with the lock
//! version each commit left: the next step of such a task can start from it
//! when the database says the version is still current, instead of reading
//! the graph again. Bounded by tasks and by steps (oldest out first).

use crate::model::{TaskGraph, TaskId};
use std::collections::{HashMap, VecDeque};

const MAX_TASKS: usize = 4096;
const MAX_STEPS: usize = 100_000;

#[derive(Default)]
pub(super) struct Recent {
    graphs: HashMap<TaskId, (u64, i64, TaskGraph)>,
    /// Insertion order as (sequence, task); an entry whose task was taken
    /// or put again since carries an old sequence and is skipped.
    order: VecDeque<(u64, TaskId)>,
    seq: u64,
    steps: usize,
}

impl Recent {
    /// Keeps `graph` at `version` (a finished task's is dropped instead).
    pub(super) fn put(&mut self, version: i64, graph: TaskGraph) {
        let id = graph.task.id;
        self.take(id);
        if graph.task.state.is_terminal() {
            return;
        }
        self.seq += 1;
        self.steps += graph.steps.len();
        self.graphs.insert(id, (self.seq, version, graph));
        self.order.push_back((self.seq, id));
        while self.graphs.len() > MAX_TASKS || self.steps > MAX_STEPS {
            let Some((seq, old)) = self.order.pop_front() else {
                break;
            };
            if self.graphs.get(&old).is_some_and(|(s, _, _)| *s == seq) {
                self.take(old);
            }
        }
        if self.order.len() > 2 * self.graphs.len() + 64 {
            let graphs = &self.graphs;
            self.order
                .retain(|(seq, id)| graphs.get(id).is_some_and(|(s, _, _)| s == seq));
        }
    }

    /// Takes the task's graph out, with its version.
    pub(super) fn take(&mut self, id: TaskId) -> Option<(i64, TaskGraph)> {
        let (_, version, graph) = self.graphs.remove(&id)?;
        self.steps -= graph.steps.len();
        Some((version, graph))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{new_id, Task};
    use crate::state::TaskState;
    use chrono::Utc;
    use serde_json::json;

    fn graph(state: TaskState) -> TaskGraph {
        let now = Utc::now();
        TaskGraph {
            task: Task {
                id: new_id(),
                namespace: "ns".into(),
                name: "t".into(),
                version: "1".into(),
                context: json!({}),
                state,
                idempotency_key: None,
                priority: 0,
                result: None,
                error: None,
                created_at: now,
                updated_at: now,
                completed_at: None,
            },
            steps: Vec::new(),
            edges: Vec::new(),
        }
    }

    #[test]
    fn keeps_the_latest_version_drops_finished_tasks_and_stays_bounded() {
        let mut r = Recent::default();
        let g = graph(TaskState::StepsInProcess);
        let id = g.task.id;
        r.put(1, g.clone());
        r.put(2, g.clone());
        assert_eq!(r.take(id).map(|(v, _)| v), Some(2));
        assert!(r.take(id).is_none(), "taken out");

        r.put(3, g.clone());
        let mut done = g.clone();
        done.task.state = TaskState::Complete;
        r.put(4, done);
        assert!(r.take(id).is_none(), "a finished task is not kept");

        let first = graph(TaskState::StepsInProcess);
        let first_id = first.task.id;
        r.put(1, first);
        for _ in 0..MAX_TASKS {
            r.put(1, graph(TaskState::StepsInProcess));
        }
        assert_eq!(r.graphs.len(), MAX_TASKS);
        assert!(r.take(first_id).is_none(), "the oldest went first");
        assert!(r.order.len() <= 2 * r.graphs.len() + 64);
    }
}
