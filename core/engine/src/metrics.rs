//! What the orchestrator counts and times, rendered as Prometheus text:
//! step attempts by outcome, retries, steps and tasks that ended, per
//! template and handler (counted from each commit's changes once it is
//! made, so a commit lost to a conflict and made again counts once), and
//! latency histograms. `serve` and every worker that orchestrates inline
//! serve it at `/metrics`.

use crate::model::{StepOutcome, WriteOp};
use crate::state::{StepState, TaskState};
use crate::txn::TaskTxn;

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, label: &str) {
        for (b, n) in BUCKETS.iter().zip(self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{label}le=\"{b}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{{label}le=\"+Inf\"}} {}", self.count);
        let trimmed = label.trim_end_matches(',');
        let braces = if trimmed.is_empty() {
            String::new()
        } else {
            format!("{{{trimmed}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// One counted event of a commit: a step attempt's outcome (`completed`,
/// `failed`, `timed_out`), a retry scheduled, a step that ended in error,
/// or a task that ended (`completed`, `failed`, `cancelled`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Tally {
    Attempt {
        template: String,
        handler: String,
        outcome: &'static str,
    },
    Retry {
        template: String,
        handler: String,
    },
    StepError {
        template: String,
        handler: String,
    },
    Task {
        template: String,
        outcome: &'static str,
    },
}

impl Tally {
    /// What `txn`'s changes count.
    pub(crate) fn of(txn: &TaskTxn) -> Vec<Tally> {
        let task = txn.task();
        let name = std::cell::OnceCell::new();
        let template = || {
            name.get_or_init(|| format!("{}/{}", task.namespace, task.name))
                .clone()
        };
        let mut out = Vec::new();
        for op in txn.ops() {
            match op {
                WriteOp::Step {
                    transition,
                    outcome,
                    ..
                } => {
                    let handler = || {
                        txn.step_index(transition.step_id)
                            .map(|i| txn.step(i).handler.clone())
                            .unwrap_or_default()
                    };
                    let failed = match outcome {
                        Some(StepOutcome::Failure { error })
                            if error.code.as_deref() == Some("timeout") =>
                        {
                            "timed_out"
                        }
                        _ => "failed",
                    };
                    let attempt = |outcome| Tally::Attempt {
                        template: template(),
                        handler: handler(),
                        outcome,
                    };
                    match transition.to {
                        StepState::Complete => out.push(attempt("completed")),
                        StepState::WaitingForRetry => {
                            out.push(attempt(failed));
                            out.push(Tally::Retry {
                                template: template(),
                                handler: handler(),
                            });
                        }
                        StepState::Error if outcome.is_some() => {
                            out.push(attempt(failed));
                            out.push(Tally::StepError {
                                template: template(),
                                handler: handler(),
                            });
                        }
                        _ => {}
                    }
                }
                WriteOp::Task { transition, .. } => {
                    let outcome = match transition.to {
                        TaskState::Complete => "completed",
                        TaskState::Error => "failed",
                        TaskState::Cancelled => "cancelled",
                        _ => continue,
                    };
                    out.push(Tally::Task {
                        template: template(),
                        outcome,
                    });
                }
                _ => {}
            }
        }
        out
    }
}

/// Messages moved to the dead letters by this process, by queue: counted
/// where any consumer moves one (worker or orchestrator alike), shown by
/// every [`Metrics::render`] of the process.
static DEAD_LETTERS: Mutex<BTreeMap<String, u64>> = parking_lot::const_mutex(BTreeMap::new());

/// A message of `queue` was moved to the dead letters.
pub fn dead_lettered(queue: &str) {
    *DEAD_LETTERS.lock().entry(queue.to_string()).or_default() += 1;
}

/// Ended tasks removed by retention in this process.
static EXPIRED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `n` ended tasks were removed by retention.
pub fn expired(n: u64) {
    EXPIRED.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
}

static PARTITIONS_DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What a rotation of the history partitions did (the drops are counted).
pub fn rotated(r: &crate::retention::Rotation) {
    PARTITIONS_DROPPED.fetch_add(r.dropped, std::sync::atomic::Ordering::Relaxed);
}

#[derive(Default)]
pub struct Metrics {
    /// Handler execution time as the worker measured it, by template and handler.
    steps: Mutex<BTreeMap<(String, String), Histogram>>,
    /// Creation to completion, by template.
    tasks: Mutex<BTreeMap<String, Histogram>>,
    /// Ready to started, for steps that came through a queue, by template and handler.
    queue_waits: Mutex<BTreeMap<(String, String), Histogram>>,
    /// Counted events (see [`Tally`]) and how many of each.
    counts: Mutex<BTreeMap<Tally, u64>>,
}

impl Metrics {
    pub fn observe_step(&self, template: &str, handler: &str, took: Duration) {
        self.steps
            .lock()
            .entry((template.to_string(), handler.to_string()))
            .or_default()
            .observe(took.as_secs_f64());
    }

    /// A step that came through a queue waited `took` there before it started.
    pub fn observe_queue_wait(&self, template: &str, handler: &str, took: Duration) {
        self.queue_waits
            .lock()
            .entry((template.to_string(), handler.to_string()))
            .or_default()
            .observe(took.as_secs_f64());
    }

    pub(crate) fn count(&self, tallies: Vec<Tally>) {
        if tallies.is_empty() {
            return;
        }
        let mut counts = self.counts.lock();
        for t in tallies {
            *counts.entry(t).or_default() += 1;
        }
    }

    pub fn observe_task(&self, template: &str, took: Duration) {
        self.tasks
            .lock()
            .entry(template.to_string())
            .or_default()
            .observe(took.as_secs_f64());
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_counts(&mut out);
        let by_step = |(template, handler): &(String, String)| {
            format!(
                "template=\"{}\",handler=\"{}\",",
                escape(template),
                escape(handler)
            )
        };
        histograms(
            &mut out,
            "stepgraph_step_duration_seconds",
            "Handler execution time per step attempt.",
            &self.steps.lock(),
            by_step,
        );
        histograms(
            &mut out,
            "stepgraph_step_queue_wait_seconds",
            "From ready to started, for steps delivered through a queue.",
            &self.queue_waits.lock(),
            by_step,
        );
        histograms(
            &mut out,
            "stepgraph_task_duration_seconds",
            "Task creation to completion.",
            &self.tasks.lock(),
            |template: &String| format!("template=\"{}\",", escape(template)),
        );
        out
    }

    fn render_counts(&self, out: &mut String) {
        let name = "stepgraph_dead_letters_total";
        let _ = writeln!(
            out,
            "# HELP {name} Messages moved to the dead letters by this process.\n# TYPE {name} counter"
        );
        for (queue, n) in DEAD_LETTERS.lock().iter() {
            let _ = writeln!(out, "{name}{{queue=\"{}\"}} {n}", escape(queue));
        }
        let name = "stepgraph_tasks_expired_total";
        let _ = writeln!(
            out,
            "# HELP {name} Ended tasks removed by retention in this process.\n# TYPE {name} counter\n{name} {}",
            EXPIRED.load(std::sync::atomic::Ordering::Relaxed)
        );
        let name = "stepgraph_history_partitions_dropped_total";
        let _ = writeln!(
            out,
            "# HELP {name} History partitions dropped by retention in this process.\n# TYPE {name} counter\n{name} {}",
            PARTITIONS_DROPPED.load(std::sync::atomic::Ordering::Relaxed)
        );
        let counts = self.counts.lock();
        for (name, help) in FAMILIES {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (t, n) in counts.iter().filter(|(t, _)| t.family() == name) {
                let _ = writeln!(out, "{name}{{{}}} {n}", t.labels());
            }
        }
    }
}

/// The counter families, in the order they are shown.
const FAMILIES: [(&str, &str); 4] = [
    (
        "stepgraph_step_attempts_total",
        "Step attempts by outcome: completed, failed, timed_out.",
    ),
    (
        "stepgraph_step_retries_total",
        "Failed attempts scheduled to run again.",
    ),
    (
        "stepgraph_step_errors_total",
        "Steps that ended in error (no attempts left, or a permanent error).",
    ),
    (
        "stepgraph_tasks_ended_total",
        "Tasks that ended, by outcome: completed, failed, cancelled.",
    ),
];

impl Tally {
    fn family(&self) -> &'static str {
        match self {
            Tally::Attempt { .. } => FAMILIES[0].0,
            Tally::Retry { .. } => FAMILIES[1].0,
            Tally::StepError { .. } => FAMILIES[2].0,
            Tally::Task { .. } => FAMILIES[3].0,
        }
    }

    fn labels(&self) -> String {
        let pair =
            |t: &str, h: &str| format!("template=\"{}\",handler=\"{}\"", escape(t), escape(h));
        match self {
            Tally::Attempt {
                template,
                handler,
                outcome,
            } => format!("{},outcome=\"{outcome}\"", pair(template, handler)),
            Tally::Retry { template, handler } | Tally::StepError { template, handler } => {
                pair(template, handler)
            }
            Tally::Task { template, outcome } => {
                format!("template=\"{}\",outcome=\"{outcome}\"", escape(template))
            }
        }
    }
}

/// One histogram family: its help, its type, and a series per key.
fn histograms<K>(
    out: &mut String,
    name: &str,
    help: &str,
    series: &BTreeMap<K, Histogram>,
    labels: impl Fn(&K) -> String,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (key, h) in series {
        h.render(out, name, &labels(key));
    }
}

/// A label value as the text format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
