//! The PostgreSQL backend in this process, against the real PostgreSQL on
//! this machine: eager dispatch by lease, group commit, claims that read
//! the step start, the stranded-step sweep, late results, and the
//! migrations with the server-side functions. (`postgres_queue.rs` has the
//! queue's claims and wake-ups, `postgres_engine.rs` whole engines on it;
//! `postgres.rs` drives `serve` and `worker` processes.)

mod common;

use common::block_on;
use common::cluster::TestDb;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use stepgraph_engine::queue::{handler_queue, Outgoing, Slots};
use stepgraph_engine::{
    Eager, Orchestrator, OrchestratorConfig, Queue, StartOutcome, StepMessage, Store, StoreError,
    TaskRequest,
};
use stepgraph_postgres::PgBackend;
use stepgraph_worker::Transport;
use stepgraph_worker::{Engine, EngineConfig};
use tokio::sync::Semaphore;

const LONG: Duration = Duration::from_secs(120);

/// An orchestrator in this process on a test database, and an eager
/// dispatch of one slot for the e2e namespace.
struct InProcess {
    pg: Arc<PgBackend>,
    store: Arc<dyn Store>,
    queue: Arc<dyn Queue>,
    orchestrator: Orchestrator,
    eager: Eager,
}

impl InProcess {
    async fn start(db: &TestDb) -> InProcess {
        let pg = PgBackend::connect(&db.url, 4).await.unwrap();
        pg.migrate().await.unwrap();
        let (store, queue) = Transport::Postgres.backends(&pg).await.unwrap();
        let orchestrator = Orchestrator::new(
            store.clone(),
            queue.clone(),
            Arc::new(common::fixture_templates()),
            OrchestratorConfig::default(),
        );
        let eager = Eager {
            queues: Arc::new(
                stepgraph_worker::examples::registry()
                    .names()
                    .into_iter()
                    .map(|h| handler_queue("e2e", h))
                    .collect(),
            ),
            slots: Slots::Concurrency(Arc::new(Semaphore::new(1))),
            visibility: Duration::from_secs(60),
            handoff: Default::default(),
        };
        InProcess {
            pg,
            store,
            queue,
            orchestrator,
            eager,
        }
    }
}

#[test]
fn eager_dispatch_claims_first_steps_only_while_slots_are_free() {
    let db = TestDb::create();
    block_on(async {
        let InProcess {
            queue,
            orchestrator,
            eager,
            ..
        } = InProcess::start(&db).await;
        let request = || TaskRequest::new("e2e", "linear", json!({ "even_number": 6 }));
        let (created, claimed) = orchestrator
            .create_task_eager(request(), Some(&eager))
            .await
            .unwrap();
        assert!(created.created);
        assert_eq!(claimed.len(), 1);
        let first = &claimed[0];
        assert_eq!(first.message.step_name, "step_1");
        assert_eq!(first.work.context, json!({ "even_number": 6 }));
        assert_eq!(first.work.attempt, 1);
        assert!(
            first.snapshot.is_some(),
            "the graph to commit the outcome against"
        );
        let square = handler_queue("e2e", "math.square");
        let receive = || queue.receive(&square, 10, Duration::from_secs(60), Duration::ZERO);
        // Leased, not sent: no other consumer gets it.
        assert!(receive().await.unwrap().is_empty());
        assert_eq!(
            db.query(&format!(
                "SELECT (claimed_until > now() + interval '50 seconds')::text FROM sg_steps WHERE id = '{}'",
                first.message.step_id
            )),
            ["true"]
        );

        // The one slot is taken: the next task's first step is an ordinary message.
        let (_, none) = orchestrator
            .create_task_eager(request(), Some(&eager))
            .await
            .unwrap();
        assert!(none.is_empty());
        // Up to the NOTIFY's arrival: the queue was seen drained above.
        let sent = queue.receive(&square, 10, Duration::from_secs(60), Duration::from_secs(5));
        assert_eq!(sent.await.unwrap().len(), 1);
    });
}

#[test]
fn changes_made_at_once_share_commits_and_a_failing_one_fails_only_itself() {
    let db = TestDb::create();
    block_on(async {
        let InProcess {
            pg, orchestrator, ..
        } = InProcess::start(&db).await;
        let request = |key: Option<&str>| {
            let mut r = TaskRequest::new("e2e", "linear", json!({ "even_number": 6 }));
            r.idempotency_key = key.map(str::to_string);
            r
        };
        let before = pg.statements();
        let created =
            futures::future::join_all((0..40).map(|_| orchestrator.create_task(request(None))))
                .await;
        let statements = pg.statements() - before;
        assert!(created.into_iter().all(|c| c.unwrap().created));
        assert!(
            statements < 20,
            "40 creations at once took {statements} statements: they did not share commits"
        );

        // Two of these share an idempotency key: a batch holding both fails
        // as a whole, and its changes are then applied one by one.
        let keys: Vec<String> = (0..20)
            .map(|i| match i {
                3 | 17 => "shared".to_string(),
                i => format!("key-{i}"),
            })
            .collect();
        let created = futures::future::join_all(
            keys.iter()
                .map(|k| orchestrator.create_task(request(Some(k)))),
        )
        .await;
        let created: Vec<_> = created.into_iter().map(Result::unwrap).collect();
        assert_eq!(created.iter().filter(|c| c.created).count(), 19);
        assert_eq!(created[3].task_id, created[17].task_id);

        assert_eq!(
            db.query("SELECT count(*)::text FROM sg_tasks"),
            ["59"],
            "no creation lost or applied twice"
        );
        assert_eq!(
            db.query("SELECT count(*)::text FROM sg_steps WHERE state = 'enqueued'"),
            ["59"]
        );
        assert_eq!(
            db.query("SELECT count(*)::text FROM sg_queue WHERE queue = 'worker.e2e/math.square'"),
            ["59"],
            "each task's first step sent once"
        );
        assert_eq!(
            db.query(
                "SELECT count(*)::text FROM sg_task_transitions t JOIN sg_tasks k ON k.id = t.task_id
                  WHERE t.sort_key = k.transitions AND t.to_state = k.state"
            ),
            ["59"],
            "each task's audit trail ends in its state"
        );
    });
}

#[test]
fn a_step_message_claim_reads_the_step_start_with_it() {
    let db = TestDb::create();
    block_on(async {
        let InProcess {
            pg,
            store,
            queue,
            orchestrator,
            ..
        } = InProcess::start(&db).await;
        let request = || TaskRequest::new("e2e", "linear", json!({ "even_number": 6 }));
        let q = handler_queue("e2e", "math.square");
        let created = orchestrator.create_task(request()).await.unwrap();
        let unknown = StepMessage {
            task_id: created.task_id,
            step_id: stepgraph_engine::new_id(),
            attempt: 1,
            step_name: "nowhere".into(),
            handler: "none".into(),
            ready_at_us: None,
            traceparent: None,
        };
        let poison = [b"not json".to_vec(), serde_json::to_vec(&unknown).unwrap()];
        let outgoing = poison
            .iter()
            .map(|payload| Outgoing {
                payload: payload.clone(),
                delay: Duration::ZERO,
            })
            .collect();
        queue.send(&q, outgoing).await.unwrap();
        let receive = || queue.receive(&q, 10, Duration::from_secs(60), Duration::from_secs(5));

        // One statement claims all three; undecodable payloads do not fail it.
        let before = pg.statements();
        let got = receive().await.unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(pg.statements(), before + 1);
        let step: StepMessage = got[0].decode().unwrap();
        assert_eq!(got[1].payload, b"not json");

        // The starts came with the claim: no statement of their own.
        match store.start_step(step.step_id, 1, false).await.unwrap() {
            StartOutcome::Started(work, snapshot) => {
                assert_eq!(work.step_name, "step_1");
                assert_eq!(work.context, json!({ "even_number": 6 }));
                assert!(snapshot.is_some(), "the graph to commit against");
            }
            other => panic!("step_1 did not start: {other:?}"),
        }
        assert!(matches!(
            store.start_step(unknown.step_id, 1, false).await,
            Err(StoreError::StepNotFound(id)) if id == unknown.step_id
        ));
        assert_eq!(pg.statements(), before + 1);

        // Each is read once: asked again, the database answers.
        assert!(matches!(
            store.start_step(step.step_id, 1, false).await.unwrap(),
            StartOutcome::Started(..)
        ));
        assert_eq!(pg.statements(), before + 2);

        // A start that marks the step InProgress is the database's to make.
        orchestrator.create_task(request()).await.unwrap();
        let got = receive().await.unwrap();
        let step: StepMessage = got[0].decode().unwrap();
        let before = pg.statements();
        assert!(matches!(
            store.start_step(step.step_id, 1, true).await.unwrap(),
            StartOutcome::Started(..)
        ));
        assert_eq!(pg.statements(), before + 1);
        assert_eq!(
            db.query(&format!(
                "SELECT state FROM sg_steps WHERE id = '{}'",
                step.step_id
            )),
            ["in_progress"]
        );
    });
}

#[test]
fn the_sweep_sends_a_lapsed_lease_once_and_ends_only_the_lease_it_took() {
    let db = TestDb::create();
    block_on(async {
        let InProcess {
            store,
            queue,
            orchestrator,
            eager,
            ..
        } = InProcess::start(&db).await;
        let request = TaskRequest::new("e2e", "linear", json!({ "even_number": 6 }));
        let (_, claimed) = orchestrator
            .create_task_eager(request, Some(&eager))
            .await
            .unwrap();
        let step = claimed[0].message.step_id;
        let lease = |sql: &str| db.query(&format!("{sql} WHERE id = '{step}'"));
        let lapse = || lease("UPDATE sg_steps SET claimed_until = now() - interval '1 second'");
        let sweep_after = Duration::from_secs(60);

        // Its worker died: the sweep sends the step's message, then ends the lease.
        lapse();
        assert_eq!(orchestrator.resend_stranded(sweep_after).await.unwrap(), 1);
        let sent = queue
            .receive(
                &handler_queue("e2e", "math.square"),
                10,
                Duration::from_secs(60),
                Duration::ZERO,
            )
            .await
            .unwrap();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].decode::<StepMessage>().unwrap().step_id, step);
        assert_eq!(
            lease("SELECT coalesce(claimed_until::text, 'none') FROM sg_steps"),
            ["none"]
        );

        // One sweep at a time: the first leases the step for a while.
        lapse();
        let first = store.stranded(sweep_after, 100).await.unwrap();
        assert_eq!(first.steps.len(), 1);
        assert!(store
            .stranded(sweep_after, 100)
            .await
            .unwrap()
            .steps
            .is_empty());
        // Meanwhile a commit leased the step anew (it ran again and became
        // ready again): ending the sweep's lease leaves that one alone.
        lease("UPDATE sg_steps SET claimed_until = now() + interval '5 minutes'");
        let taken = (step, first.steps[0].lease.expect("a lapsed lease"));
        store.end_leases(&[taken]).await.unwrap();
        assert_eq!(
            lease("SELECT (claimed_until > now() + interval '4 minutes')::text FROM sg_steps"),
            ["true"]
        );
    });
}

#[test]
fn every_server_side_function_is_defined_in_functions_sql_and_migrate_is_idempotent() {
    let db = TestDb::create();
    let sql = include_str!("../core/postgres/functions.sql");
    let mut defined: Vec<String> = sql
        .lines()
        .filter_map(|l| l.strip_prefix("CREATE OR REPLACE FUNCTION "))
        .map(|l| l.split('(').next().unwrap().trim().to_string())
        .collect();
    defined.sort();
    let functions = "SELECT proname::text FROM pg_proc WHERE proname LIKE 'sg\\_%' ORDER BY 1";
    block_on(async {
        let pg = PgBackend::connect(&db.url, 2).await.unwrap();
        // Every numbered migration, once, in order.
        let migrations = std::fs::read_dir(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/core/postgres/migrations"
        ))
        .unwrap()
        .count() as i32;
        assert_eq!(
            pg.migrate().await.unwrap(),
            (1..=migrations).collect::<Vec<i32>>()
        );
        // Exactly the functions of the file: none left over from a migration.
        assert_eq!(db.query(functions), defined);
        // Applying again changes nothing.
        assert_eq!(pg.migrate().await.unwrap(), Vec::<i32>::new());
        let applied = "SELECT applied_at::text FROM sg_schema_functions";
        let first = db.query(applied);
        assert_eq!(pg.migrate().await.unwrap(), Vec::<i32>::new());
        assert_eq!(
            db.query(applied),
            first,
            "an unchanged functions.sql is not re-applied"
        );
        // A database whose functions differ from the file gets the file's.
        db.query("UPDATE sg_schema_functions SET body = 'older' RETURNING ''");
        db.query(
            "CREATE OR REPLACE FUNCTION sg_conflict(msg text) RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$",
        );
        pg.migrate().await.unwrap();
        assert_eq!(db.query(functions), defined);
        let body = db.query("SELECT prosrc FROM pg_proc WHERE proname = 'sg_conflict'");
        assert!(body[0].contains("SG409"), "{body:?}");
    });
}

/// A result for an attempt that is no longer the step's is refused by the
/// database and changes nothing: the step keeps its later attempt's result.
#[test]
fn the_store_refuses_a_late_result_from_an_old_attempt() {
    let db = TestDb::create();
    block_on(async {
        let pg = PgBackend::connect(&db.url, 4).await.unwrap();
        pg.migrate().await.unwrap();
        let (store, queue) = Transport::Postgres.backends(&pg).await.unwrap();
        let templates = common::templates_from(
            "namespace: t\nname: late\nversion: \"1\"\nsteps:\n  - name: only\n    handler: { callable: twice }\n    retry: { max_attempts: 2, backoff: none }\n",
        );
        let mut handlers = stepgraph_worker::HandlerRegistry::new();
        handlers.register_fn("twice", |ctx| async move {
            match ctx.attempt {
                1 => Err(stepgraph_worker::HandlerError::retryable("first try")),
                n => Ok(stepgraph_worker::StepOutput::Success(json!(n))),
            }
        });
        let engine = Engine::with_backends(
            store.clone(),
            queue,
            templates,
            handlers,
            EngineConfig::default(),
        );
        let id = engine
            .submit(TaskRequest::new("t", "late", json!({})))
            .await
            .unwrap()
            .task_id;
        let task = engine.wait_task(id, LONG).await.unwrap();
        assert_eq!(task.result, Some(json!(2)));
        let step = store.graph(id).await.unwrap().steps[0].id;
        let late = stepgraph_engine::StepOutcome::Success { result: json!(1) };
        let (outcome, _) = store
            .submit_result(step, 1, late, Default::default())
            .await
            .unwrap();
        assert_eq!(
            outcome,
            stepgraph_engine::SubmitOutcome::Refused {
                state: stepgraph_engine::StepState::Complete,
                attempts: 2
            }
        );
        let graph = store.graph(id).await.unwrap();
        assert_eq!(graph.steps[0].state, stepgraph_engine::StepState::Complete);
        assert_eq!(graph.task.result, Some(json!(2)), "unchanged");
        engine.shutdown().await;
    });
}

/// Commits that arrive together go in one statement, all or nothing: when
/// one task's compare-and-swap fails, nothing of the batch is applied, and
/// each change is then committed alone, so only the stale one fails.
#[test]
fn a_stale_change_fails_only_itself_in_a_batch_that_is_retried_one_by_one() {
    use stepgraph_engine::{TaskState, TaskTransition, WriteOp};
    let db = TestDb::create();
    // One thread: the commits below are all queued before the first flush
    // runs, so they form one batch.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let InProcess {
            pg,
            store,
            orchestrator,
            ..
        } = InProcess::start(&db).await;
        let mut ids = Vec::new();
        for _ in 0..3 {
            let r = TaskRequest::new("e2e", "linear", json!({ "even_number": 6 }));
            ids.push(orchestrator.create_task(r).await.unwrap().task_id);
        }
        let cancel = |graph: &stepgraph_engine::TaskGraph| {
            vec![WriteOp::Task {
                transition: TaskTransition {
                    task_id: graph.task.id,
                    from: Some(graph.task.state),
                    to: TaskState::Cancelled,
                    at: chrono::Utc::now(),
                    metadata: json!({ "reason": "test" }),
                },
                result: None,
                error: None,
            }]
        };
        // Two locks on the first task: the one committed first makes the other stale.
        let (first, fresh) = store.lock_task(ids[0]).await.unwrap();
        let (_, stale) = store.lock_task(ids[0]).await.unwrap();
        store
            .commit(fresh, cancel(&first), Default::default())
            .await
            .unwrap();
        let mut batch = vec![(stale, cancel(&first))];
        for id in &ids[1..] {
            let (graph, lock) = store.lock_task(*id).await.unwrap();
            batch.push((lock, cancel(&graph)));
        }
        let before = pg.statements();
        let results = futures::future::join_all(
            batch
                .into_iter()
                .map(|(lock, ops)| store.commit(lock, ops, Default::default())),
        )
        .await;
        assert!(
            matches!(results[0], Err(StoreError::Conflict(_))),
            "{:?}",
            results[0].as_ref().err()
        );
        assert!(results[1..].iter().all(Result::is_ok));
        assert_eq!(
            pg.statements() - before,
            4,
            "one statement for the batch, which failed, then one per change"
        );
        assert_eq!(
            db.query("SELECT count(*)::text FROM sg_task_transitions WHERE to_state = 'cancelled'"),
            ["3"],
            "each task cancelled once: nothing of the failed batch stayed"
        );
    });
}
