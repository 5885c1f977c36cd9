//! `stepgraph bench` against the real services on this machine: a short
//! run of each database mode, whose figures are not asserted, only that
//! they are printed and that it ran exactly the tasks it says, each to its
//! exact result.

mod common;

use common::cluster::TestEnv;
use common::rabbit::{rabbitmqctl, Rabbit};

fn count(t: &TestEnv, sql: &str) -> i64 {
    t.db.query(&format!("SELECT ({sql})::text"))[0]
        .parse()
        .unwrap()
}

/// `stepgraph bench --queue rabbitmq`, in-process and `--cluster`, measures
/// the PostgreSQL queue too and prints its P50 beside RabbitMQ's (a short
/// run; the figures are not asserted): it ran exactly the tasks it says,
/// on both transports, each to its exact result.
#[test]
fn the_rabbitmq_bench_prints_the_postgresql_queue_beside_it() {
    let rabbit = Rabbit::new();
    let t = TestEnv::new();
    let mut tasks = 0;
    for cluster in [false, true] {
        let mut bench = std::process::Command::new(env!("CARGO_BIN_EXE_stepgraph"));
        bench
            .args([
                "bench",
                "--database-url",
                &t.db.url,
                "-n",
                "3",
                "--warmup",
                "1",
            ])
            .envs(rabbit.env());
        if cluster {
            bench.arg("--cluster");
        } else {
            bench.args(["--scenario", "linear", "--throughput", "20"]);
        }
        let out = bench.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let header = stdout
            .lines()
            .find(|l| l.starts_with("| Scenario"))
            .unwrap();
        let cells = |line: &str| -> Vec<String> {
            line.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        };
        let pg = cells(header)
            .iter()
            .position(|c| c == "PostgreSQL queue P50")
            .unwrap_or_else(|| panic!("no PostgreSQL queue column: {stdout}"));
        let rows: Vec<_> = stdout
            .lines()
            .filter(|l| l.starts_with("| Linear") || l.starts_with("| Cluster"))
            .collect();
        assert_eq!(rows.len(), if cluster { 2 } else { 1 }, "{stdout}");
        for row in rows {
            let row = cells(row);
            for col in [2, pg] {
                assert!(row[col].ends_with(" ms"), "{col} of {row:?}");
            }
        }
        if !cluster {
            assert!(stdout.contains("steps/s (PostgreSQL queue: "), "{stdout}");
            let header = cells(header);
            let col = header
                .iter()
                .position(|c| c == "DB statements/step")
                .unwrap_or_else(|| panic!("no statements column: {stdout}"));
            let row = stdout.lines().find(|l| l.starts_with("| Linear")).unwrap();
            let per_step: f64 = cells(row)[col].parse().unwrap();
            assert!(per_step > 0.5, "{per_step} statements per step");
            // Each P50 against the durable-commit floor measured at the start.
            let col = header
                .iter()
                .position(|c| c == "vs floor")
                .unwrap_or_else(|| panic!("no floor column: {stdout}"));
            let vs_floor: f64 = cells(row)[col].trim_end_matches('x').parse().unwrap();
            assert!(vs_floor > 0.0, "{vs_floor}");
            assert!(
                stdout.contains("the floor is a single-row INSERT committed durably"),
                "{stdout}"
            );
            // CPU per step, PostgreSQL's (on this machine) and the bench's own.
            for name in ["PG CPU/step", "bench CPU/step"] {
                let col = header
                    .iter()
                    .position(|c| c == name)
                    .unwrap_or_else(|| panic!("no {name} column: {stdout}"));
                let cell = &cells(row)[col];
                assert!(
                    cell.ends_with(" µs") || cell.ends_with(" ms"),
                    "{name}: {cell}"
                );
            }
        }
        // 3 measured + 1 warm-up linear tasks per transport; in-process also
        // 20 for throughput, in the cluster a single and a pair per run.
        tasks += 2 * if cluster { 4 * 3 } else { 4 + 20 };
        assert_eq!(count(&t, "SELECT count(*) FROM sg_tasks"), tasks);
        assert_eq!(
            count(
                &t,
                "SELECT count(*) FROM sg_tasks WHERE state = 'complete' AND name = 'linear' \
                 AND result = '2821109907456'::jsonb"
            ),
            tasks
        );
        assert_eq!(
            count(
                &t,
                "SELECT count(*) FROM sg_step_transitions WHERE to_state = 'complete'"
            ),
            tasks * 4,
            "each step completed once"
        );
        let queues = rabbitmqctl(&["list_queues", "-q", "--no-table-headers", "name"]);
        assert!(
            queues
                .lines()
                .any(|q| q.trim() == format!("{}worker.e2e/math.square", rabbit.prefix)),
            "the RabbitMQ run declared its handler's queue"
        );
    }
}
