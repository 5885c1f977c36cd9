//! Engines (orchestrator and worker in this process) on the real
//! PostgreSQL on this machine: a finished step passes its slot on, and a
//! result whose orchestration gave way to concurrent changes is
//! orchestrated again. (`postgres_backend.rs` has the backend's own
//! pieces; `postgres.rs` drives `serve` and `worker` processes.)

mod common;

use common::cluster::TestDb;
use common::{block_on, SIX_16};
use serde_json::json;
use std::time::Duration;
use stepgraph_engine::TaskRequest;
use stepgraph_postgres::PgBackend;
use stepgraph_worker::Transport;
use stepgraph_worker::{examples, Engine, EngineConfig};

const LONG: Duration = Duration::from_secs(120);

/// An engine with the fixture templates and the example handlers on the
/// test database (migrated), over `connections` connections.
async fn fixture_engine(db: &TestDb, connections: u32, config: EngineConfig) -> Engine {
    let pg = PgBackend::connect(&db.url, connections).await.unwrap();
    pg.migrate().await.unwrap();
    let (store, queue) = Transport::Postgres.backends(&pg).await.unwrap();
    Engine::with_backends(
        store,
        queue,
        common::fixture_templates(),
        examples::registry(),
        config,
    )
}

#[test]
fn a_finished_step_passes_its_slot_on_so_chains_stay_eager_with_every_slot_busy() {
    let db = TestDb::create();
    block_on(async {
        let mut config = EngineConfig::default();
        config.worker.concurrency = 1;
        let engine = fixture_engine(&db, 4, config).await;
        let runs = (0..5).map(|_| async {
            let request = TaskRequest::new("e2e", "linear", json!({ "even_number": 6 }));
            let id = engine.submit(request).await.unwrap().task_id;
            engine.wait_task(id, LONG).await.unwrap()
        });
        for task in futures::future::join_all(runs).await {
            assert_eq!(task.result, Some(json!(SIX_16)));
        }
        // The one slot was always busy when a step made the next one ready:
        // only the slot the finished step passed on let the next run here.
        assert_eq!(
            db.query("SELECT count(*)::text FROM sg_steps WHERE name <> 'step_1' AND claimed_until IS NOT NULL"),
            ["15"],
            "every later step leased to the worker by the commit of the step before it"
        );
        engine.shutdown().await;
    });
}

/// Results orchestrated through the queue with no retry of a
/// compare-and-swap conflict: the parallel leaves of many trees finishing
/// at once make their orchestrations collide, and each that loses gives
/// up (contention). Its message must come back and be orchestrated again,
/// not be acknowledged: with the PostgreSQL queue nothing else would send
/// it, and the task would wait forever.
#[test]
fn a_result_that_loses_to_contention_is_orchestrated_again() {
    let db = TestDb::create();
    block_on(async {
        let mut config = EngineConfig {
            inline_orchestration: false,
            ..EngineConfig::default()
        };
        config.orchestrator.conflict_retries = 0;
        config.worker.concurrency = 32;
        let engine = fixture_engine(&db, 16, config).await;
        let ids =
            futures::future::join_all((0..40).map(|_| {
                engine.submit(TaskRequest::new("e2e", "tree", json!({ "even_number": 2 })))
            }))
            .await;
        for id in ids {
            let task = engine.wait_task(id.unwrap().task_id, LONG).await.unwrap();
            assert_eq!(task.state.to_string(), "complete", "{task:?}");
        }
        engine.shutdown().await;
    });
}
