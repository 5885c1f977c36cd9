//! The in-memory store's schedules and delayed tasks (see `memory`).

use crate::schedule::Schedule;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

/// Schedules by name.
#[derive(Default)]
pub(super) struct Schedules(BTreeMap<String, Schedule>);

impl Schedules {
    pub(super) fn all(&self) -> Vec<Schedule> {
        self.0.values().cloned().collect()
    }

    pub(super) fn insert(&mut self, s: &Schedule) -> bool {
        if self.0.contains_key(&s.name) {
            return false;
        }
        self.0.insert(s.name.clone(), s.clone());
        true
    }

    pub(super) fn replace(&mut self, s: &Schedule, expected: Option<DateTime<Utc>>) -> bool {
        match self.0.get_mut(&s.name) {
            Some(old) if old.next_run_at == expected => {
                *old = s.clone();
                true
            }
            _ => false,
        }
    }

    pub(super) fn delete(&mut self, name: &str) -> bool {
        self.0.remove(name).is_some()
    }
}
