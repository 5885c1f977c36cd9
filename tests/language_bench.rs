//! `stepgraph bench --language L`, embedded and with `--database-url`,
//! against the installed packages (./scripts/setup) and the real services on
//! this machine: a short run, whose figures are not asserted, only that it
//! printed a row per binding and, on PostgreSQL and RabbitMQ, ran exactly
//! the tasks it says, each on its own worker, to its exact result.

mod common;

use common::cluster::TestEnv;
use common::rabbit::Rabbit;

fn cells(line: &str) -> Vec<String> {
    line.trim_matches('|')
        .split('|')
        .map(|c| c.trim().to_string())
        .collect()
}

fn bench(args: &[&str], env: &[(String, String)]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stepgraph"))
        .arg("bench")
        .args(args)
        .args(["-n", "3", "--warmup", "1"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "stepgraph bench {args:?} failed (is the package installed? ./scripts/setup):\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Both row kinds of `language`, whose bindings are `bindings`.
fn check(language: &str, bindings: &[&str]) {
    // Embedded: each binding's table has a linear and a diamond row, its
    // Rust column beside `stepgraph bench`'s own P50 measured in the run.
    let embedded = bench(&["--language", language], &[]);
    let header = embedded
        .lines()
        .find(|l| l.starts_with("| Scenario"))
        .unwrap_or_else(|| panic!("no table: {embedded}"));
    let own = cells(header)
        .iter()
        .position(|c| c == "stepgraph bench P50")
        .unwrap_or_else(|| panic!("no stepgraph bench column: {embedded}"));
    let rows: Vec<Vec<String>> = embedded
        .lines()
        .filter(|l| l.starts_with("| FFI linear") || l.starts_with("| FFI diamond"))
        .map(cells)
        .collect();
    assert_eq!(rows.len(), 2 * bindings.len(), "{embedded}");
    for row in &rows {
        assert!(
            row[own].ends_with("µs") || row[own].ends_with("ms"),
            "{row:?}"
        );
        assert!(row[own + 2].ends_with('x'), "{row:?}");
    }

    let rabbit = Rabbit::new();
    let t = TestEnv::new();
    let env: Vec<(String, String)> = rabbit
        .env()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let out = bench(&["--language", language, "--database-url", &t.db.url], &env);
    let header = out
        .lines()
        .find(|l| l.starts_with("| Scenario"))
        .unwrap_or_else(|| panic!("no table: {out}"));
    let col = |name: &str| {
        cells(header)
            .iter()
            .position(|c| c == name)
            .unwrap_or_else(|| panic!("no {name} column: {out}"))
    };
    let (queue, worker, p50, vs) = (
        col("Queue"),
        col("Worker"),
        col("P50"),
        col("vs Rust worker"),
    );
    let rows: Vec<Vec<String>> = out
        .lines()
        .filter(|l| l.starts_with("| FFI "))
        .map(cells)
        .collect();
    let workers: Vec<&str> = std::iter::once("Rust")
        .chain(bindings.iter().copied())
        .collect();
    // Both rows on both queues (RabbitMQ's with PostgreSQL's first).
    assert_eq!(rows.len(), 2 * 2 * workers.len(), "{out}");
    for (i, row) in rows.iter().enumerate() {
        let q = if i < rows.len() / 2 {
            "PostgreSQL"
        } else {
            "RabbitMQ"
        };
        assert_eq!(row[queue], q, "{out}");
        assert_eq!(row[worker], workers[i % workers.len()], "{out}");
        assert!(row[p50].ends_with(" ms"), "{row:?}");
        if row[worker] != "Rust" {
            assert!(row[vs].ends_with('%'), "{row:?}");
        }
    }
    // Every worker ran its own namespace's tasks: 4 per row and queue, 4 steps each, once.
    for w in &workers {
        let ns = format!("ffi_{}", w.to_lowercase().replace(' ', "_"));
        let tasks: i64 = t.db.query(&format!(
            "SELECT count(*)::text FROM sg_tasks WHERE namespace = '{ns}' AND state = 'complete' \
             AND result = '2821109907456'::jsonb"
        ))[0]
            .parse()
            .unwrap();
        assert_eq!(tasks, 2 * 2 * 4, "{ns}: {out}");
        let steps: i64 = t.db.query(&format!(
            "SELECT count(*)::text FROM sg_step_transitions st JOIN sg_tasks t ON t.id = st.task_id \
             WHERE t.namespace = '{ns}' AND st.to_state = 'complete'"
        ))[0]
            .parse()
            .unwrap();
        assert_eq!(steps, tasks * 4, "{ns}: each step completed once");
    }
    let all: i64 = t.db.query("SELECT count(*)::text FROM sg_tasks")[0]
        .parse()
        .unwrap();
    assert_eq!(all, 2 * 2 * 4 * workers.len() as i64, "{out}");
}

#[test]
fn the_python_bench_runs_embedded_and_through_python_workers() {
    check("python", &["Python"]);
}

#[test]
fn the_ruby_bench_runs_embedded_and_through_ruby_workers() {
    check("ruby", &["Ruby"]);
}

#[test]
fn the_typescript_bench_runs_every_binding_embedded_and_as_workers() {
    check("typescript", &["Bun C ABI", "Bun napi", "Node napi"]);
}
