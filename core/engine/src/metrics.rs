//! Latency histograms the orchestrator keeps, rendered as Prometheus text.

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

#[derive(Default)]
pub struct Metrics {
    /// Handler execution time as the worker measured it, by handler.
    steps: Mutex<BTreeMap<String, Histogram>>,
    /// Creation to completion, by template.
    tasks: Mutex<BTreeMap<String, Histogram>>,
}

impl Metrics {
    pub fn observe_step(&self, handler: &str, took: Duration) {
        self.steps
            .lock()
            .entry(handler.to_string())
            .or_default()
            .observe(took.as_secs_f64());
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
        let _ = writeln!(
            out,
            "# HELP stepgraph_step_duration_seconds Handler execution time per step attempt.\n# TYPE stepgraph_step_duration_seconds histogram"
        );
        for (handler, h) in self.steps.lock().iter() {
            h.render(
                &mut out,
                "stepgraph_step_duration_seconds",
                &format!("handler=\"{handler}\","),
            );
        }
        let _ = writeln!(
            out,
            "# HELP stepgraph_task_duration_seconds Task creation to completion.\n# TYPE stepgraph_task_duration_seconds histogram"
        );
        for (template, h) in self.tasks.lock().iter() {
            h.render(
                &mut out,
                "stepgraph_task_duration_seconds",
                &format!("template=\"{template}\","),
            );
        }
        out
    }
}
