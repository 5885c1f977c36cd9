//! Task and step state machines. Every change of state goes through
//! [`StepState::check`] / [`TaskState::check`], so an illegal transition is an
//! error at the call site, never a silent overwrite.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Pending,
    Enqueued,
    InProgress,
    EnqueuedForOrchestration,
    Complete,
    Error,
    WaitingForRetry,
    Cancelled,
    ResolvedManually,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Created to start later (`run_at`): nothing runs until then.
    Scheduled,
    Pending,
    Initializing,
    EnqueuingSteps,
    StepsInProcess,
    EvaluatingResults,
    WaitingForRetry,
    BlockedByFailures,
    Complete,
    Error,
    Cancelled,
    ResolvedManually,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal {entity} transition {from} -> {to}")]
pub struct IllegalTransition {
    pub entity: &'static str,
    pub from: String,
    pub to: String,
}

impl StepState {
    pub const ALL: [StepState; 9] = [
        StepState::Pending,
        StepState::Enqueued,
        StepState::InProgress,
        StepState::EnqueuedForOrchestration,
        StepState::Complete,
        StepState::Error,
        StepState::WaitingForRetry,
        StepState::Cancelled,
        StepState::ResolvedManually,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Enqueued => "enqueued",
            StepState::InProgress => "in_progress",
            StepState::EnqueuedForOrchestration => "enqueued_for_orchestration",
            StepState::Complete => "complete",
            StepState::Error => "error",
            StepState::WaitingForRetry => "waiting_for_retry",
            StepState::Cancelled => "cancelled",
            StepState::ResolvedManually => "resolved_manually",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StepState::Complete | StepState::Cancelled | StepState::ResolvedManually
        )
    }

    /// Handed to a worker and not yet processed by the orchestrator.
    pub fn is_in_flight(self) -> bool {
        matches!(
            self,
            StepState::Enqueued | StepState::InProgress | StepState::EnqueuedForOrchestration
        )
    }

    /// Counts as satisfied for the steps that depend on it.
    pub fn satisfies_dependents(self) -> bool {
        matches!(self, StepState::Complete | StepState::ResolvedManually)
    }

    pub fn can_transition_to(self, to: StepState) -> bool {
        use StepState::*;
        match self {
            Pending => matches!(to, Enqueued | Cancelled | ResolvedManually),
            Enqueued => matches!(to, InProgress | Cancelled | ResolvedManually),
            InProgress => matches!(to, EnqueuedForOrchestration | Cancelled | ResolvedManually),
            EnqueuedForOrchestration => {
                matches!(to, Complete | Error | WaitingForRetry | Cancelled)
            }
            WaitingForRetry => matches!(to, Enqueued | Cancelled | ResolvedManually),
            // Only by an operator's repair: a failed step retried with fresh
            // attempts, or a step its task's failure cancelled revived.
            Error => matches!(to, Pending | ResolvedManually),
            Cancelled => matches!(to, Pending | ResolvedManually),
            Complete | ResolvedManually => false,
        }
    }

    pub fn check(self, to: StepState) -> Result<(), IllegalTransition> {
        if self.can_transition_to(to) {
            Ok(())
        } else {
            Err(IllegalTransition {
                entity: "step",
                from: self.to_string(),
                to: to.to_string(),
            })
        }
    }
}

impl TaskState {
    pub const ALL: [TaskState; 12] = [
        TaskState::Scheduled,
        TaskState::Pending,
        TaskState::Initializing,
        TaskState::EnqueuingSteps,
        TaskState::StepsInProcess,
        TaskState::EvaluatingResults,
        TaskState::WaitingForRetry,
        TaskState::BlockedByFailures,
        TaskState::Complete,
        TaskState::Error,
        TaskState::Cancelled,
        TaskState::ResolvedManually,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Scheduled => "scheduled",
            TaskState::Pending => "pending",
            TaskState::Initializing => "initializing",
            TaskState::EnqueuingSteps => "enqueuing_steps",
            TaskState::StepsInProcess => "steps_in_process",
            TaskState::EvaluatingResults => "evaluating_results",
            TaskState::WaitingForRetry => "waiting_for_retry",
            TaskState::BlockedByFailures => "blocked_by_failures",
            TaskState::Complete => "complete",
            TaskState::Error => "error",
            TaskState::Cancelled => "cancelled",
            TaskState::ResolvedManually => "resolved_manually",
        }
    }

    /// No further orchestration happens for a task in one of these states
    /// (an `Error` task may still be resolved manually).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Complete
                | TaskState::Error
                | TaskState::Cancelled
                | TaskState::ResolvedManually
        )
    }

    pub fn can_transition_to(self, to: TaskState) -> bool {
        use TaskState::*;
        if to == Cancelled {
            return !self.is_terminal();
        }
        match self {
            Scheduled | Pending => matches!(to, Initializing),
            Initializing => matches!(to, EnqueuingSteps | Error),
            EnqueuingSteps => matches!(to, StepsInProcess | Error),
            StepsInProcess => matches!(to, EvaluatingResults),
            EvaluatingResults => matches!(
                to,
                EnqueuingSteps
                    | StepsInProcess
                    | WaitingForRetry
                    | BlockedByFailures
                    | Complete
                    | Error
            ),
            WaitingForRetry => matches!(to, EvaluatingResults),
            BlockedByFailures => matches!(to, EvaluatingResults | Error | ResolvedManually),
            // A failed task goes on again only by an operator's repair.
            Error => matches!(to, EvaluatingResults | ResolvedManually),
            Complete | Cancelled | ResolvedManually => false,
        }
    }

    /// The transitions that take a task from here to Error along the state
    /// machine (empty when it is terminal): how a task that cannot go on
    /// (a poison message) is ended with an audit chain that stays valid.
    pub fn path_to_error(self) -> Vec<TaskState> {
        use TaskState::*;
        match self {
            Scheduled | Pending => vec![Initializing, Error],
            StepsInProcess | WaitingForRetry => vec![EvaluatingResults, Error],
            Initializing | EnqueuingSteps | EvaluatingResults | BlockedByFailures => vec![Error],
            Complete | Error | Cancelled | ResolvedManually => Vec::new(),
        }
    }

    pub fn check(self, to: TaskState) -> Result<(), IllegalTransition> {
        if self.can_transition_to(to) {
            Ok(())
        } else {
            Err(IllegalTransition {
                entity: "task",
                from: self.to_string(),
                to: to.to_string(),
            })
        }
    }
}

macro_rules! display_from_str {
    ($ty:ty, $what:literal) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                <$ty>::ALL
                    .iter()
                    .copied()
                    .find(|state| state.as_str() == s)
                    .ok_or_else(|| {
                        let known: Vec<_> = <$ty>::ALL.iter().map(|t| t.as_str()).collect();
                        format!("unknown {} {s:?} (one of {})", $what, known.join(", "))
                    })
            }
        }
    };
}

display_from_str!(StepState, "step state");
display_from_str!(TaskState, "task state");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_live_task_state_has_a_legal_path_to_error() {
        for state in TaskState::ALL {
            let path = state.path_to_error();
            assert_eq!(path.is_empty(), state.is_terminal(), "{state}");
            let mut at = state;
            for next in path {
                assert!(at.can_transition_to(next), "{at} -> {next}");
                at = next;
            }
            assert!(state.is_terminal() || at == TaskState::Error);
        }
    }

    #[test]
    fn happy_paths_are_legal() {
        use StepState::*;
        let path = [
            Pending,
            Enqueued,
            InProgress,
            EnqueuedForOrchestration,
            Complete,
        ];
        for pair in path.windows(2) {
            assert!(pair[0].can_transition_to(pair[1]), "{:?}", pair);
        }
        let retry = [EnqueuedForOrchestration, WaitingForRetry, Enqueued];
        for pair in retry.windows(2) {
            assert!(pair[0].can_transition_to(pair[1]), "{:?}", pair);
        }
        use TaskState as T;
        let path = [
            T::Pending,
            T::Initializing,
            T::EnqueuingSteps,
            T::StepsInProcess,
            T::EvaluatingResults,
            T::Complete,
        ];
        for pair in path.windows(2) {
            assert!(pair[0].can_transition_to(pair[1]), "{:?}", pair);
        }
    }

    #[test]
    fn illegal_transitions_are_errors() {
        let err = StepState::Pending.check(StepState::Complete).unwrap_err();
        assert_eq!(
            err.to_string(),
            "illegal step transition pending -> complete"
        );
        assert!(StepState::Complete.check(StepState::Pending).is_err());
        assert!(TaskState::Complete.check(TaskState::Cancelled).is_err());
        assert!(TaskState::StepsInProcess
            .check(TaskState::Complete)
            .is_err());
    }

    #[test]
    fn names_round_trip() {
        for s in StepState::ALL {
            assert_eq!(s.as_str().parse::<StepState>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for s in TaskState::ALL {
            assert_eq!(s.as_str().parse::<TaskState>().unwrap(), s);
        }
    }
}
