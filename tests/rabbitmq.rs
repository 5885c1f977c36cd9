//! The RabbitMQ transport against the real RabbitMQ on this machine
//! (127.0.0.1:5672, guest/guest): state in PostgreSQL, steps over RabbitMQ,
//! real `stepgraph serve` / `stepgraph worker` processes. Each test has its
//! own queue-name prefix; its queues expire a minute after it ends.

mod common;

use common::cluster::{create, wait, TestEnv};
use common::rabbit::{messages, rabbitmqctl, Rabbit};
use common::shapes::{assert_clean_audit, run_seed_shapes};
use common::SIX_16;
use serde_json::json;
use std::time::Duration;
use stepgraph_engine::queue::Outgoing;
use stepgraph_engine::{Queue, StepMessage};
const LONG: Duration = Duration::from_secs(120);

fn count(t: &TestEnv, sql: &str) -> i64 {
    t.db.query(&format!("SELECT ({sql})::text"))[0]
        .parse()
        .unwrap()
}

/// `n` messages taken from the dead-letter queue `name`, each with its
/// reason header, read with lapin itself (a `Queue` delivery has no
/// headers); waits up to 30 s for them.
async fn dead_letters(url: &str, name: &str, n: usize) -> Vec<(String, String)> {
    use lapin::options::BasicGetOptions;
    use lapin::types::AMQPValue;
    let connection = lapin::Connection::connect(url, Default::default())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut channel = connection.create_channel().await.unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {n} poison messages reached {name}",
            out.len()
        );
        match channel
            .basic_get(name.into(), BasicGetOptions { no_ack: true })
            .await
        {
            Ok(Some(m)) => {
                let reason = m
                    .delivery
                    .properties
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get("x-stepgraph-reason").cloned());
                let reason = match reason {
                    Some(AMQPValue::LongString(s)) => s.to_string(),
                    other => panic!("no reason header: {other:?}"),
                };
                out.push((String::from_utf8_lossy(&m.delivery.data).into(), reason));
            }
            Ok(None) => tokio::time::sleep(Duration::from_millis(100)).await,
            // Not declared yet: the 404 closed the channel.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                channel = connection.create_channel().await.unwrap();
            }
        }
    }
    out
}

/// `tasks` tasks of `steps` steps each complete, each step exactly once.
fn assert_nothing_lost_or_duplicated(t: &TestEnv, tasks: i64, steps: i64) {
    assert_eq!(
        count(t, "SELECT count(*) FROM sg_tasks WHERE state = 'complete'"),
        tasks
    );
    assert_eq!(
        count(
            t,
            "SELECT count(*) FROM sg_step_transitions WHERE to_state = 'complete'"
        ),
        tasks * steps
    );
    assert_eq!(
        count(t, "SELECT count(*) FROM (SELECT step_id FROM sg_step_transitions WHERE to_state = 'complete' GROUP BY step_id HAVING count(*) > 1) d"),
        0
    );
}

#[test]
fn seed_shapes_on_rabbitmq_single_instance() {
    let r = Rabbit::new();
    let t = TestEnv::new();
    let serve = t.serve(&r.env());
    let _worker = t.worker(&r.env());
    run_seed_shapes(&[serve.addr()]);
    assert_eq!(
        count(&t, "SELECT count(*) FROM sg_queue"),
        0,
        "no message went through PostgreSQL"
    );
}

#[test]
fn seed_shapes_on_rabbitmq_in_cluster_mode() {
    let r = Rabbit::new();
    let t = TestEnv::new();
    let a = t.serve(&r.env());
    let b = t.serve(&r.env());
    let _w1 = t.worker(&r.env());
    let _w2 = t.worker(&r.env());
    run_seed_shapes(&[a.addr(), b.addr()]);
}

#[test]
fn results_through_the_orchestration_queue_on_rabbitmq() {
    let r = Rabbit::new();
    let t = TestEnv::new();
    let serve = t.serve(&r.env());
    let mut env = r.env();
    env.push(("STEPGRAPH_WORKER_INLINE_ORCHESTRATION", "false"));
    let _worker = t.worker(&env);
    run_seed_shapes(&[serve.addr()]);
}

#[test]
fn closing_every_connection_mid_run_loses_and_duplicates_nothing() {
    let r = Rabbit::isolated();
    let t = TestEnv::new();
    let serve = t.serve(&r.env());
    // 600 steps of 100 ms on 8 slots: several seconds of work to drop the
    // connections in.
    let mut env = r.env();
    env.push(("STEPGRAPH_WORKER_CONCURRENCY", "8"));
    let _worker = t.worker(&env);
    let ids: Vec<String> = (0..300)
        .map(|_| create(serve.addr(), "sleepy", json!({ "sleep_ms": 100 })))
        .collect();
    // Server side: RabbitMQ drops the connections of the worker and the
    // server (once both are connected), twice, each time mid-run and after
    // more tasks completed than at the drop before (they went on).
    let complete = "SELECT count(*) FROM sg_tasks WHERE state = 'complete'";
    let mut done = -1;
    for _ in 0..2 {
        done = t.db.await_count(complete, "tasks completed", |n| n > done);
        assert!(done < 300, "mid-run");
        r.close_all_connections(2, "stepgraph test: connection closed mid-run");
    }
    for id in &ids {
        let v = wait(serve.addr(), id, LONG);
        assert_eq!(v["state"], "complete", "{v}");
        assert_eq!(v["result"], json!({ "slept_ms": 100 }));
    }
    assert_nothing_lost_or_duplicated(&t, 300, 2);
}

#[test]
fn steps_whose_messages_were_lost_are_sent_again() {
    let r = Rabbit::new();
    let t = TestEnv::new();
    let mut env = r.env();
    env.push(("STEPGRAPH_ORCHESTRATOR_RESEND_STRANDED_AFTER_MS", "2000"));
    let serve = t.serve(&env);
    let ids: Vec<String> = (0..20)
        .map(|_| create(serve.addr(), "linear", json!({ "even_number": 6 })))
        .collect();
    // No worker yet: the first steps' messages wait in RabbitMQ. Lose them,
    // as a crash between a commit and its send would.
    let queue = format!("{}worker.e2e/math.square", r.prefix);
    await_ready(&queue, 20);
    // Every message a worker could take is gone (a copy the orchestrator
    // re-sent before the purge went with them): only re-sending finishes these.
    rabbitmqctl(&["purge_queue", &queue]);
    let _worker = t.worker(&r.env());
    for id in &ids {
        let v = wait(serve.addr(), id, LONG);
        assert_eq!(v["state"], "complete", "{v}");
        assert_eq!(v["result"], json!(SIX_16));
    }
    assert_nothing_lost_or_duplicated(&t, 20, 4);
}

#[test]
fn a_step_leased_by_eager_dispatch_is_sent_again_when_its_worker_dies() {
    let r = Rabbit::new();
    let t = TestEnv::new();
    let mut serve_env = r.env();
    serve_env.push(("STEPGRAPH_ORCHESTRATOR_RESEND_STRANDED_AFTER_MS", "1000"));
    let serve = t.serve(&serve_env);
    let mut env = r.env();
    env.push(("STEPGRAPH_WORKER_VISIBILITY_TIMEOUT_MS", "2500"));
    let mut doomed = t.worker(&env);
    let id = create(serve.addr(), "sleepy", json!({ "sleep_ms": 800 }));
    // The commit that completes `nap` leases `after` to the worker that
    // ran it: nothing goes to RabbitMQ for it.
    t.await_running(&id, "after");
    for (q, n) in r.queues() {
        assert_eq!(n, 0, "{q}");
    }
    doomed.kill9();
    let _rescuer = t.worker(&env);
    let v = wait(serve.addr(), &id, LONG);
    assert_eq!(v["state"], "complete", "{v}");
    assert_eq!(v["result"], json!({ "slept_ms": 800 }));
    assert_clean_audit(&v);
}

/// Waits until RabbitMQ's queue `name` holds `n` ready messages.
fn await_ready(name: &str, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while messages(name, "messages_ready") < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{name} never held {n} messages"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn results_whose_messages_were_lost_are_sent_again() {
    let r = Rabbit::new();
    let t = TestEnv::new();
    let mut serve = t.serve(&r.env());
    let ids: Vec<String> = (0..10)
        .map(|_| create(serve.addr(), "linear", json!({ "even_number": 6 })))
        .collect();
    // No orchestrator: the worker records step_1's results and sends them
    // to the orchestration queue, where they wait. Lose them.
    serve.kill9();
    let mut env = r.env();
    env.push(("STEPGRAPH_WORKER_INLINE_ORCHESTRATION", "false"));
    let _worker = t.worker(&env);
    let orchestration = format!("{}orchestration", r.prefix);
    await_ready(&orchestration, 10);
    rabbitmqctl(&["purge_queue", &orchestration]);
    let mut env = r.env();
    env.push(("STEPGRAPH_ORCHESTRATOR_RESEND_STRANDED_AFTER_MS", "1000"));
    let serve = t.serve(&env);
    for id in &ids {
        let v = wait(serve.addr(), id, LONG);
        assert_eq!(v["state"], "complete", "{v}");
        assert_eq!(v["result"], json!(SIX_16));
    }
    assert_nothing_lost_or_duplicated(&t, 10, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_go_to_the_dead_letter_queue_and_the_worker_keeps_serving() {
    let r = Rabbit::new();
    let t = TestEnv::new();
    let serve = t.serve(&r.env());
    let _worker = t.worker(&r.env());
    let queue = r.queue().await;
    let unknown = StepMessage {
        task_id: stepgraph_engine::new_id(),
        step_id: stepgraph_engine::new_id(),
        attempt: 1,
        step_name: "ghost".into(),
        handler: "math.square".into(),
        ready_at_us: None,
        traceparent: None,
    };
    let poison = vec![
        Outgoing {
            payload: b"{ this is not a step message".to_vec(),
            delay: Duration::ZERO,
        },
        Outgoing {
            payload: serde_json::to_vec(&unknown).unwrap(),
            delay: Duration::ZERO,
        },
    ];
    queue.send("worker.e2e", poison).await.unwrap();
    let mut dead = dead_letters(&r.url, &format!("{}worker.e2e.dead", r.prefix), 2).await;
    dead.sort();
    assert_eq!(dead[0].0, "{ this is not a step message");
    assert!(
        dead[0].1.starts_with("undecodable step message: "),
        "{:?}",
        dead[0]
    );
    assert!(dead[1].0.contains("ghost"), "{:?}", dead[1]);
    assert_eq!(
        dead[1].1,
        format!("message for an unknown step {}", unknown.step_id)
    );
    // The worker is still serving.
    let addr = serve.addr().to_string();
    let v = tokio::task::spawn_blocking(move || {
        let id = create(&addr, "linear", json!({ "even_number": 6 }));
        wait(&addr, &id, LONG)
    })
    .await
    .unwrap();
    assert_eq!(v["result"], json!(SIX_16));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_arrive_after_their_delay_and_releases_come_back() {
    let r = Rabbit::new();
    let queue = r.queue().await;
    let start = std::time::Instant::now();
    queue
        .send(
            "delays",
            vec![Outgoing {
                payload: b"later".to_vec(),
                delay: Duration::from_millis(200),
            }],
        )
        .await
        .unwrap();
    let got = queue
        .receive(
            "delays",
            1,
            Duration::from_secs(30),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, b"later");
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "it came early"
    );
    queue
        .release("delays", got[0].receipt, Duration::ZERO)
        .await
        .unwrap();
    let again = queue
        .receive(
            "delays",
            1,
            Duration::from_secs(30),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        again[0].delivery_count, 2,
        "a released message comes back as a redelivery"
    );
    // A release with a delay is a new message to RabbitMQ: the count of
    // its deliveries travels with it.
    queue
        .release("delays", again[0].receipt, Duration::from_millis(10))
        .await
        .unwrap();
    let third = queue
        .receive("delays", 1, Duration::from_secs(30), LONG)
        .await
        .unwrap();
    assert_eq!(third[0].delivery_count, 3);
    queue.ack("delays", &[third[0].receipt]).await.unwrap();
    assert_eq!(queue.depth("delays").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_failing_on_every_delivery_is_dead_lettered_and_its_task_fails() {
    let r = Rabbit::new();
    let t = TestEnv::new();
    let mut env = r.env();
    env.push(("STEPGRAPH_MAX_DELIVERIES", "3"));
    let serve = t.serve(&env);
    let addr = serve.addr().to_string();
    let poison = {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || create(&addr, "linear", json!({ "even_number": 6 })))
            .await
            .unwrap()
    };
    // Stored as no engine reads it back (see the chaos suite's poison task).
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    t.db.query(&format!(
        "UPDATE sg_tasks SET context = '{deep}'::jsonb WHERE id = '{poison}' RETURNING id::text"
    ));
    let _worker = t.worker(&env);
    let dead = dead_letters(
        &r.url,
        &format!("{}worker.e2e/math.square.dead", r.prefix),
        1,
    )
    .await;
    assert!(
        dead[0]
            .1
            .starts_with("failed on each of 3 deliveries: stored data cannot be read"),
        "{dead:?}"
    );
    assert!(dead[0].0.contains(&poison), "{dead:?}");
    let state = t.db.query(&format!(
        "SELECT state || ' ' || (error->>'code') FROM sg_tasks WHERE id = '{poison}'"
    ));
    assert_eq!(state, ["error poison_message"]);
    // The worker goes on serving, and the sweep sends nothing of the
    // failed task again.
    let v = tokio::task::spawn_blocking(move || {
        let id = create(&addr, "linear", json!({ "even_number": 6 }));
        wait(&addr, &id, LONG)
    })
    .await
    .unwrap();
    assert_eq!(v["result"], json!(SIX_16));
    assert_eq!(
        count(
            &t,
            &format!(
                "SELECT count(*) FROM sg_steps WHERE task_id = '{poison}' AND state <> 'cancelled'"
            )
        ),
        0
    );
}

#[test]
fn a_bad_amqp_url_is_a_clear_error() {
    let t = TestEnv::new();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stepgraph"))
        .args(["worker", "--templates"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/templates"
        ))
        .env("STEPGRAPH_DATABASE_URL", &t.db.url)
        .env("STEPGRAPH_QUEUE", "rabbitmq")
        .env_remove("STEPGRAPH_AMQP_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("needs an AMQP URL"), "{stderr}");
}
