//! The chaos suite: real PostgreSQL, real RabbitMQ and real `stepgraph
//! serve` / `stepgraph worker` processes (2 of each) running linear tasks
//! while a fault strikes: workers killed with SIGKILL, a server killed,
//! PostgreSQL restarted, its backends terminated, RabbitMQ's connections
//! closed, a poison task amid 1,000 ordinary ones, a burst of 5,000.
//! Every scenario then checks the same invariants ([`assert_invariants`]):
//! each task complete with its exact result, no step or task completed
//! twice, every audit chain unbroken, nothing left running or queued, no
//! deadlock.
//!
//! A soak: `mixed_faults_while_tasks_keep_arriving` strikes a fault of each
//! kind in turn; `STEPGRAPH_CHAOS_TASKS` (default 300) and
//! `STEPGRAPH_CHAOS_FAULT_EVERY_MS` (default 1500) make it a long run, e.g.
//! `STEPGRAPH_CHAOS_TASKS=100000 STEPGRAPH_CHAOS_FAULT_EVERY_MS=10000
//! cargo test --release --test chaos mixed_faults`.

mod common;

use common::cluster::{try_http, Process, TestEnv};
use common::rabbit::Rabbit;
use common::SIX_16;
use parking_lot::RwLock;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A scenario that stops the PostgreSQL server holds this exclusively;
/// every other one shares it.
static SERVER: RwLock<()> = parking_lot::const_rwlock(());

/// How long the tasks of one scenario may take to end, faults included.
const DEADLINE: Duration = Duration::from_secs(240);

/// Short timeouts, so that what a killed process held comes back within
/// seconds: its claimed messages, its eager-dispatch leases, and (over
/// RabbitMQ) what it committed and had not yet sent.
const FAST_RECOVERY: &[(&str, &str)] = &[
    ("STEPGRAPH_WORKER_VISIBILITY_TIMEOUT_MS", "3000"),
    ("STEPGRAPH_ORCHESTRATOR_VISIBILITY_TIMEOUT_MS", "3000"),
    ("STEPGRAPH_ORCHESTRATOR_RESEND_STRANDED_AFTER_MS", "2000"),
];

const TERMINAL: &str = "('complete', 'error', 'cancelled', 'resolved_manually')";

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        _ => default,
    }
}

/// 2 `serve` and 2 `worker` processes on a database of their own.
struct Cluster {
    t: TestEnv,
    env: Vec<(String, String)>,
    serves: Vec<Process>,
    workers: Vec<Process>,
    rabbit: Option<Rabbit>,
}

impl Cluster {
    fn new(rabbit: Option<Rabbit>) -> Cluster {
        let mut env: Vec<(String, String)> = FAST_RECOVERY
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if let Some(r) = &rabbit {
            env.extend(r.env().iter().map(|(k, v)| (k.to_string(), v.to_string())));
        }
        Cluster {
            t: TestEnv::new(),
            env,
            serves: Vec::new(),
            workers: Vec::new(),
            rabbit,
        }
    }

    fn started(rabbit: Option<Rabbit>) -> Cluster {
        let mut c = Cluster::new(rabbit);
        c.start_serves(2);
        c.start_workers(2);
        c
    }

    fn env(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    fn start_serves(&mut self, n: usize) {
        for _ in 0..n {
            let p = self.t.serve(&self.env());
            self.serves.push(p);
        }
    }

    fn start_workers(&mut self, n: usize) {
        for _ in 0..n {
            let p = self.t.worker(&self.env());
            self.workers.push(p);
        }
    }

    fn addrs(&self) -> Vec<String> {
        self.serves.iter().map(|s| s.addr().to_string()).collect()
    }

    fn count(&self, sql: &str) -> i64 {
        self.t.db.query(&format!("SELECT ({sql})::text"))[0]
            .parse()
            .unwrap()
    }

    /// The count, or None while the database cannot be reached.
    fn try_count(&self, sql: &str) -> Option<i64> {
        let rows = self.t.db.try_query(&format!("SELECT ({sql})::text")).ok()?;
        rows.first()?.parse().ok()
    }

    /// Waits (through faults) until `ok` holds for the count `sql` returns.
    fn await_count(&self, sql: &str, what: &str, ok: impl Fn(i64) -> bool) -> i64 {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let n = self.try_count(sql);
            if let Some(n) = n.filter(|n| ok(*n)) {
                return n;
            }
            assert!(Instant::now() < deadline, "{what}: still {n:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn completed(&self) -> i64 {
        self.try_count("SELECT count(*) FROM sg_tasks WHERE state = 'complete'")
            .unwrap_or(0)
    }

    /// Waits until at least `n` tasks have completed (the work is under way).
    fn await_completed(&self, n: i64) -> i64 {
        self.await_count(
            "SELECT count(*) FROM sg_tasks WHERE state = 'complete'",
            "tasks completed",
            |c| c >= n,
        )
    }

    fn await_all_ended(&self, tasks: usize) {
        self.await_count(
            &format!("SELECT count(*) FROM sg_tasks WHERE state IN {TERMINAL}"),
            "tasks ended",
            |n| n == tasks as i64,
        );
    }
}

/// Creates `n` linear tasks over the servers of `addrs`, from 4 threads,
/// each with an idempotency key (`{tag}-{i}`), so that a create retried
/// after a failed answer (a server killed, PostgreSQL restarting) never
/// makes a second task. Their ids.
fn create_linear(addrs: &[String], tag: &str, n: usize) -> Vec<String> {
    let threads = 4.min(n.max(1));
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (t..n)
                        .step_by(threads)
                        .map(|i| create_retrying(addrs, &format!("{tag}-{i}"), i))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

fn create_retrying(addrs: &[String], key: &str, i: usize) -> String {
    let body = json!({
        "namespace": "e2e", "name": "linear", "context": { "even_number": 6 },
        "idempotency_key": key,
    })
    .to_string();
    let deadline = Instant::now() + DEADLINE;
    let mut last = String::new();
    for attempt in 0.. {
        assert!(Instant::now() < deadline, "creating {key}: {last}");
        let addr = &addrs[(i + attempt) % addrs.len()];
        match try_http(addr, "POST", "/v1/tasks", Some(body.as_bytes())) {
            Ok((201 | 200, v)) => return v["task_id"].as_str().unwrap().to_string(),
            Ok((status, v)) if status >= 500 || status == 0 => last = format!("{status} {v}"),
            Ok((status, v)) => panic!("creating {key}: {status} {v}"),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    unreachable!()
}

/// The invariants every scenario ends with. `complete` tasks completed with
/// the linear result (6^16); `failed`, the ids of tasks that must have
/// failed instead. Stops the cluster's processes (to read the deadlocks).
fn assert_invariants(mut c: Cluster, complete: usize, failed: &[String]) {
    let all = complete + failed.len();
    c.await_all_ended(all);
    let failed_list = if failed.is_empty() {
        "NULL".to_string()
    } else {
        failed
            .iter()
            .map(|id| format!("'{id}'::uuid"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let ordinary = format!("task_id NOT IN ({failed_list}) OR {}", failed.is_empty());
    assert_eq!(
        c.count(&format!(
            "SELECT count(*) FROM sg_tasks WHERE state = 'complete' AND result = '{SIX_16}'::jsonb"
        )),
        complete as i64,
        "tasks complete with the exact result"
    );
    assert_eq!(
        c.count(&format!(
            "SELECT count(*) FROM sg_tasks WHERE state = 'error' AND id IN ({failed_list})"
        )),
        failed.len() as i64,
        "tasks failed"
    );
    // Each ordinary task's four steps completed, each exactly once.
    assert_eq!(
        c.count(&format!(
            "SELECT count(*) FROM sg_steps WHERE state = 'complete' AND ({ordinary})"
        )),
        4 * complete as i64
    );
    for (entities, table, key) in [
        ("sg_steps", "sg_step_transitions", "step_id"),
        ("sg_tasks", "sg_task_transitions", "task_id"),
    ] {
        assert_eq!(
            c.count(&format!("SELECT count(*) FROM (SELECT {key} FROM {table} WHERE to_state = 'complete' GROUP BY {key} HAVING count(*) > 1) d")),
            0,
            "{table}: an entity completed twice"
        );
        // Each audit row starts where the one before it ended, numbered
        // without a gap from 1; the first starts from nothing.
        assert_eq!(
            c.count(&format!(
                "SELECT count(*) FROM (SELECT from_state, lag(to_state) OVER w AS prev, sort_key, row_number() OVER w AS n
                   FROM {table} WINDOW w AS (PARTITION BY {key} ORDER BY sort_key)) x
                  WHERE from_state IS DISTINCT FROM prev OR sort_key <> n"
            )),
            0,
            "{table}: a broken audit chain"
        );
        // Each entity counts its audit rows, and the last of them is the
        // entity's state.
        assert_eq!(
            c.count(&format!(
                "SELECT count(*) FROM {entities} e WHERE (SELECT count(*) FROM {table} t WHERE t.{key} = e.id) <> e.transitions
                    OR NOT EXISTS (SELECT 1 FROM {table} t
                                    WHERE t.{key} = e.id AND t.sort_key = e.transitions AND t.to_state = e.state)"
            )),
            0,
            "{entities}: the count of audit rows is wrong or the last one is another state"
        );
    }
    assert_eq!(
        c.count(
            "SELECT count(*) FROM sg_steps WHERE state NOT IN ('complete', 'cancelled', 'resolved_manually', 'error')"
        ),
        0,
        "steps left running or waiting once every task ended"
    );
    // Copies of messages that were not lost after all are dropped as stale
    // as they arrive: the queues drain.
    match &c.rabbit {
        None => {
            c.await_count("SELECT count(*) FROM sg_queue", "messages left", |n| n == 0);
        }
        Some(r) => {
            let deadline = Instant::now() + Duration::from_secs(60);
            let queues = r.queues();
            assert!(
                queues
                    .iter()
                    .any(|(q, _)| q.ends_with("worker.e2e/math.square")),
                "the handler's queue: {queues:?}"
            );
            loop {
                let left: Vec<_> = r.queues().into_iter().filter(|(_, n)| *n > 0).collect();
                if left.is_empty() {
                    break;
                }
                assert!(Instant::now() < deadline, "messages left: {left:?}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    c.serves.clear();
    c.workers.clear();
    assert_eq!(c.t.db.deadlocks(), 0, "deadlocks");
}

/// Creates `n` linear tasks (keys `{tag}-{i}`) while `fault` strikes
/// `rounds` times, each once more tasks have completed than at the strike
/// before and before all have; then checks the invariants.
fn under_faults(
    mut c: Cluster,
    n: usize,
    tag: &str,
    rounds: usize,
    mut fault: impl FnMut(&mut Cluster, usize),
) {
    let ids = std::thread::scope(|scope| {
        let addrs = c.addrs();
        let creating = scope.spawn(move || create_linear(&addrs, tag, n));
        let mut done = 0;
        for round in 0..rounds {
            done = c.await_completed(done + 1);
            assert!(
                done < n as i64,
                "round {round}: the tasks ended before the fault"
            );
            fault(&mut c, round);
        }
        creating.join().unwrap()
    });
    assert_eq!(ids.len(), n);
    assert_invariants(c, n, &[]);
}

#[test]
fn workers_killed_three_times_mid_run() {
    let _shared = SERVER.read();
    under_faults(Cluster::started(None), 400, "k", 3, |c, round| {
        let i = round % c.workers.len();
        c.workers.remove(i).kill9();
        c.start_workers(1);
    });
}

#[test]
fn a_server_killed_mid_run() {
    let _shared = SERVER.read();
    let mut c = Cluster::started(None);
    let n = 400;
    let addrs = c.addrs();
    let first = create_linear(&addrs, "a", n / 2);
    c.await_completed(1);
    // The killed server's orchestrator held claimed messages: they come
    // back to the other after their visibility timeout.
    c.serves.remove(0).kill9();
    let second = create_linear(&c.addrs(), "b", n / 2);
    assert_eq!(first.len() + second.len(), n);
    assert_invariants(c, n, &[]);
}

#[test]
fn postgresql_restarted_mid_run() {
    let _alone = SERVER.write();
    under_faults(Cluster::started(None), 300, "r", 1, |_, _| {
        let version = std::fs::read_dir("/etc/postgresql")
            .expect("PostgreSQL's clusters are under /etc/postgresql")
            .next()
            .unwrap()
            .unwrap()
            .file_name();
        let out = std::process::Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect"])
            .arg(&version)
            .args(["main", "restart"])
            .output()
            .expect("pg_ctlcluster runs");
        assert!(
            out.status.success(),
            "restarting PostgreSQL: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

#[test]
fn postgresql_backends_terminated_mid_run() {
    let _shared = SERVER.read();
    under_faults(Cluster::started(None), 300, "t", 2, |c, _| {
        assert!(c.t.db.terminate_connections() > 0);
    });
}

#[test]
fn rabbitmq_connections_closed_mid_run() {
    let _shared = SERVER.read();
    let c = Cluster::started(Some(Rabbit::isolated()));
    // Once: every process reconnects only after a while, by which time the
    // tasks of a second round would have ended (tests/rabbitmq.rs closes
    // twice, on slower steps).
    under_faults(c, 400, "q", 1, |c, _| {
        let r = c.rabbit.as_ref().unwrap();
        r.close_all_connections(4, "stepgraph chaos: connection closed mid-run");
    });
}

#[test]
fn a_poison_task_amid_a_thousand_ordinary_ones() {
    let _shared = SERVER.read();
    let mut c = Cluster::new(None);
    c.start_serves(2);
    let addrs = c.addrs();
    // No worker yet: the poison task's first step waits in the queue while
    // its stored context is made one the engine cannot read back (deeper
    // than any decoder here takes; creation refuses such a context, so only
    // another version or a hand can write it).
    let poison = create_linear(&addrs, "poison", 1).remove(0);
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    c.t.db.query(&format!(
        "UPDATE sg_tasks SET context = '{deep}'::jsonb WHERE id = '{poison}' RETURNING id::text"
    ));
    let n = 1000;
    let ids = std::thread::scope(|scope| {
        let creating = scope.spawn(|| create_linear(&addrs, "o", n));
        c.start_workers(2);
        creating.join().unwrap()
    });
    assert_eq!(ids.len(), n);
    c.await_all_ended(n + 1);
    // The task failed naming the cause; its message is in the dead letters
    // after the configured 5 deliveries, with the same reason.
    let task = c.t.db.query(&format!(
        "SELECT concat_ws(' | ', state, error->>'code', error->>'step', error->>'message') FROM sg_tasks WHERE id = '{poison}'"
    ));
    let task = &task[0];
    assert!(
        task.starts_with("error | poison_message | step_1 | failed on each of 5 deliveries"),
        "{task}"
    );
    assert!(task.contains("cannot be read"), "{task}");
    let dead =
        c.t.db
            .query("SELECT concat_ws(' | ', queue, delivery_count, reason) FROM sg_dead_letters");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0].starts_with("worker.e2e/math.square | 5 | failed on each of 5 deliveries"),
        "{dead:?}"
    );
    // Its steps ended, saying why, and the API names what it cannot read.
    let steps = c.t.db.query(&format!(
        "SELECT DISTINCT state || ' ' || (SELECT metadata->>'reason' FROM sg_step_transitions t
                                      WHERE t.task_id = s.task_id AND t.step_id = s.id AND t.sort_key = s.transitions)
           FROM sg_steps s WHERE task_id = '{poison}'"
    ));
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert!(
        steps[0].starts_with("cancelled a message of this task was dead-lettered"),
        "{steps:?}"
    );
    let (status, body) = try_http(&addrs[0], "GET", &format!("/v1/tasks/{poison}"), None).unwrap();
    assert_eq!(status, 500, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("cannot be read"),
        "{body}"
    );
    assert_invariants(c, n, &[poison]);
}

#[test]
fn a_burst_of_five_thousand_tasks() {
    let _shared = SERVER.read();
    let c = Cluster::started(None);
    let n = 5000;
    let ids = create_linear(&c.addrs(), "burst", n);
    assert_eq!(ids.len(), n);
    // A sample read back through the API, as a client would.
    for id in ids.iter().step_by(500) {
        let (status, v) = try_http(
            &c.addrs()[0],
            "GET",
            &format!("/v1/tasks/{id}/wait?timeout_ms=120000"),
            None,
        )
        .unwrap();
        assert_eq!(
            (status, &v["state"], &v["result"]),
            (200, &json!("complete"), &json!(SIX_16)),
            "{v}"
        );
    }
    assert_invariants(c, n, &[]);
}

/// The soak (see the module's doc); in CI a short run of the same.
#[test]
fn mixed_faults_while_tasks_keep_arriving() {
    let _shared = SERVER.read();
    let n = env_number("STEPGRAPH_CHAOS_TASKS", 300) as usize;
    let every = Duration::from_millis(env_number("STEPGRAPH_CHAOS_FAULT_EVERY_MS", 1500));
    let mut c = Cluster::started(None);
    let addrs = c.addrs();
    let done = AtomicBool::new(false);
    let faults = std::thread::scope(|scope| {
        let creating = scope.spawn(|| {
            // Only through the first server: the second is the one killed.
            let ids = create_linear(&addrs[..1], "m", n);
            done.store(true, Ordering::SeqCst);
            ids
        });
        let mut faults = 0;
        let mut last = Instant::now();
        while !done.load(Ordering::SeqCst) || c.completed() < n as i64 {
            std::thread::sleep(Duration::from_millis(50));
            if last.elapsed() < every {
                continue;
            }
            last = Instant::now();
            match faults % 3 {
                0 => {
                    c.workers.remove(0).kill9();
                    c.start_workers(1);
                }
                1 => {
                    c.serves.remove(1).kill9();
                    c.start_serves(1);
                }
                _ => {
                    c.t.db.terminate_connections();
                }
            }
            faults += 1;
        }
        assert_eq!(creating.join().unwrap().len(), n);
        faults
    });
    assert!(faults >= 1, "no fault struck while {n} tasks ran");
    eprintln!("mixed faults: {faults} faults over {n} tasks");
    assert_invariants(c, n, &[]);
}
