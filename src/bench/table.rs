//! The latency table `stepgraph bench` prints, and its units.

use super::{Measured, Options};
use std::time::Duration;

pub(super) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub(crate) fn fmt_latency(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

/// Durable commits timed for the floor.
pub(crate) const FLOOR_RUNS: usize = 300;

/// The latency table (with `beside`: its P50s in a column of their own;
/// with the durable-commit `floor`: each P50 against it), then steps/s.
pub(super) fn print_table(
    mode: &str,
    o: &Options<'_>,
    m: &Measured,
    beside: Option<&Measured>,
    floor: Option<Duration>,
) {
    println!(
        "stepgraph bench: {mode}, Rust handlers, {} tokio runtime), {} runs per scenario after {} warm-up runs",
        o.runtime, o.iterations, o.warmup
    );
    println!();
    let trips_col = m.rows.iter().any(|r| r.statements.is_some());
    let cpu_col = m.rows.iter().any(|r| r.cpu.is_some());
    let mut header = format!(
        "| {:<18} | {:>5} | {:>9} | {:>9} | {:>9} | {:>9} |",
        "Scenario", "Steps", "P50", "P95", "P99", "Per stage"
    );
    let mut rule = format!(
        "|{:-<20}|{:->7}|{:->11}|{:->11}|{:->11}|{:->11}|",
        "", ":", ":", ":", ":", ":"
    );
    if beside.is_some() {
        header.push_str(" PostgreSQL queue P50 |");
        rule.push_str("---------------------:|");
    }
    if floor.is_some() {
        header.push_str(" vs floor |");
        rule.push_str("---------:|");
    }
    // The reference system's published P50s: constants, not measured here.
    header.push_str(" Reference P50 (published) | vs reference |");
    rule.push_str("--------------------------:|-------------:|");
    if trips_col {
        header.push_str(" DB statements/step |");
        rule.push_str("-------------------:|");
    }
    if cpu_col {
        header.push_str(" PG CPU/step | bench CPU/step |");
        rule.push_str("------------:|---------------:|");
    }
    println!("{header}\n{rule}");
    let statements_note = trips_col.then_some(
        "DB statements/step: every statement this process sent to PostgreSQL during the measured runs \
         (the engine's, and the client's reads while it waits), divided by their steps",
    );
    for (i, row) in m.rows.iter().enumerate() {
        let (s, samples, per_step) = (row.scenario, &row.samples, row.statements);
        let p50 = percentile(samples, 0.50);
        let per_stage = p50 / s.stages as u32;
        let mut line = format!(
            "| {:<18} | {:>5} | {:>9} | {:>9} | {:>9} | {:>9} |",
            s.label,
            s.steps,
            fmt_latency(p50),
            fmt_latency(percentile(samples, 0.95)),
            fmt_latency(percentile(samples, 0.99)),
            fmt_latency(per_stage),
        );
        if let Some(b) = beside {
            line.push_str(&format!(
                " {:>20} |",
                fmt_latency(percentile(&b.rows[i].samples, 0.50))
            ));
        }
        if let Some(floor) = floor {
            let least = floor.as_secs_f64() * (s.steps + 1) as f64;
            line.push_str(&format!(" {:>7.1}x |", p50.as_secs_f64() / least));
        }
        let ratio = s.seed_p50_ms / (p50.as_secs_f64() * 1000.0);
        line.push_str(&format!(
            " {:>25} | {:>11.0}x |",
            format!("{} ms", s.seed_p50_ms),
            ratio
        ));
        if let Some(t) = per_step {
            line.push_str(&format!(" {t:>18.1} |"));
        }
        if let Some(c) = row.cpu {
            let per_step = |d: Duration| d / (o.iterations * s.steps) as u32;
            line.push_str(&format!(
                " {:>11} | {:>14} |",
                fmt_latency(per_step(c.postgres)),
                fmt_latency(per_step(c.own))
            ));
        }
        println!("{line}");
    }
    if let Some(floor) = floor {
        println!(
            "\nvs floor: P50 / (floor x (steps + 1)), a task needing one durable commit to be created and one per step; \
             the floor is a single-row INSERT committed durably on one connection, measured at the start: {} (median of {FLOOR_RUNS}).",
            fmt_latency(floor)
        );
    }
    if let Some(note) = statements_note {
        println!("\n{note}.");
    }
    if cpu_col {
        println!(
            "\nCPU/step: user + system time during the measured runs, from /proc, divided by their steps: \
             PG, of the PostgreSQL backends connected to this database; bench, of this process (the engine, \
             its worker and the client)."
        );
    }
    if let Some(took) = m.throughput {
        let steps = o.throughput * 4;
        let rate = |took: Duration| steps as f64 / took.as_secs_f64();
        let beside = beside
            .and_then(|b| b.throughput)
            .map(|t| format!(" (PostgreSQL queue: {:.0} steps/s)", rate(t)))
            .unwrap_or_default();
        println!();
        println!(
            "Throughput: {} linear tasks submitted at once, {steps} steps in {:.2} s = {:.0} steps/s{beside}",
            o.throughput,
            took.as_secs_f64(),
            rate(took)
        );
    }
}
