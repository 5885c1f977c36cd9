//! The foreign handler host, driven by a simulated language side: threads
//! that pull events with `next_events` and report with `complete`, as a
//! binding's handler threads do.

mod common;

use common::host::*;
use common::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stepgraph_engine::{StepError, StepOutcome, StepState, TaskRequest, TaskState};
use stepgraph_worker::{HandlerRegistry, Host, HostConfig, HostError, StepEvent};

/// `threads` language-side threads, each with one handler slot, until `stop`.
fn language_side(
    host: &Arc<Host>,
    threads: usize,
    stop: &Arc<AtomicBool>,
    run: impl Fn(&Host, StepEvent) + Send + Sync + 'static,
) -> Vec<std::thread::JoinHandle<()>> {
    language_side_polling(host, threads, stop, Duration::from_millis(50), run)
}

/// [`language_side`] whose threads wait up to `poll` for events per call.
fn language_side_polling(
    host: &Arc<Host>,
    threads: usize,
    stop: &Arc<AtomicBool>,
    poll: Duration,
    run: impl Fn(&Host, StepEvent) + Send + Sync + 'static,
) -> Vec<std::thread::JoinHandle<()>> {
    let run = Arc::new(run);
    (0..threads)
        .map(|_| {
            let (host, stop, run) = (host.clone(), stop.clone(), run.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match host.next_events(1, poll) {
                        Ok(events) => events.into_iter().for_each(|e| run(&host, e)),
                        Err(_) => return,
                    }
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_handlers_run_the_seed_shapes_exactly() {
    let host = Host::new(HostConfig::default());
    let stop = Arc::new(AtomicBool::new(false));
    let threads = language_side(&host, 4, &stop, |h, e| {
        h.complete(e.event_id, math(&e)).unwrap()
    });
    let engine = engine(fixture_templates(), &host, MATH);
    for (name, expected) in [
        ("linear", json!(SIX_16)),
        ("diamond", json!(SIX_16)),
        ("tree", json!(SIX_64)),
    ] {
        let report = engine
            .run("e2e", name, json!({ "even_number": 6 }))
            .await
            .unwrap();
        assert_completed_with(&report, name, &expected);
    }
    engine.shutdown().await;
    stop.store(true, Ordering::SeqCst);
    threads.into_iter().for_each(|t| t.join().unwrap());
    host.shutdown();
    assert!(matches!(
        host.next_events(1, Duration::ZERO),
        Err(HostError::Closed)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_event_times_out_and_its_late_completion_is_refused() {
    let yaml = r#"
namespace: t
name: hang
version: "1"
steps:
  - name: slow
    handler: { callable: slow }
    timeout_seconds: 0.2
    retry: { retryable: false, max_attempts: 1 }
"#;
    let host = Host::new(HostConfig::default());
    let stop = Arc::new(AtomicBool::new(false));
    let late: Arc<parking_lot::Mutex<Option<Result<(), HostError>>>> = Default::default();
    let l = late.clone();
    let threads = language_side(&host, 1, &stop, move |h, e| {
        std::thread::sleep(Duration::from_millis(600));
        *l.lock() = Some(h.complete(e.event_id, StepOutcome::Success { result: json!(1) }));
    });
    let engine = engine(templates_from(yaml), &host, &["slow"]);
    let report = engine.run("t", "hang", json!({})).await.unwrap();
    assert_eq!(report.state(), TaskState::Error);
    let err = report.step("slow").unwrap().error().unwrap().clone();
    assert_eq!(err.code.as_deref(), Some("timeout"), "{err:?}");
    while late.lock().is_none() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = late.lock().clone().unwrap();
    assert!(
        matches!(refused, Err(HostError::NotPending(_))),
        "{refused:?}"
    );
    // The refused result changed nothing.
    let again = engine.report(report.task.id).await.unwrap();
    assert_eq!(again.step("slow").unwrap().state, StepState::Error);
    assert_eq!(host.pending_count(), 0);
    engine.shutdown().await;
    stop.store(true, Ordering::SeqCst);
    threads.into_iter().for_each(|t| t.join().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_short_circuits_then_closes_after_a_probe() {
    let yaml = r#"
namespace: t
name: flaky
version: "1"
steps:
  - name: call_api
    handler: { callable: api }
    retry: { max_attempts: 10, backoff: none }
"#;
    let host = Host::new(HostConfig::default());
    let breakers = stepgraph_worker::BreakerConfig {
        failure_threshold: 2,
        cool_down: Duration::from_millis(300),
    };
    let registry = HandlerRegistry::new().with_breakers(breakers);
    let state = registry.breakers().clone();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let threads = language_side(&host, 1, &stop, move |h, e| {
        // The first two calls fail; the API is back by the time of the probe.
        let outcome = if s.fetch_add(1, Ordering::SeqCst) < 2 {
            StepOutcome::Failure {
                error: StepError::retryable("503 from the API"),
            }
        } else {
            StepOutcome::Success {
                result: json!("ok"),
            }
        };
        h.complete(e.event_id, outcome).unwrap();
    });
    let engine = engine_with_breakers(templates_from(yaml), &host, &["api"], registry);
    let report = engine.run("t", "flaky", json!({})).await.unwrap();
    assert_eq!(
        report.state(),
        TaskState::Complete,
        "{:?}",
        report.task.error
    );
    // Two failures reached the language side, then the probe; the attempt in
    // between was short-circuited without reaching it.
    assert_eq!(seen.load(Ordering::SeqCst), 3);
    let step = report.step("call_api").unwrap();
    assert_eq!(step.attempts, 4);
    let circuit: Vec<&Value> = report
        .transitions
        .steps
        .iter()
        .filter(|t| t.to == StepState::WaitingForRetry)
        .map(|t| &t.metadata["error"])
        .collect();
    assert_eq!(circuit.len(), 3);
    assert!(
        circuit[2]
            .as_str()
            .unwrap()
            .starts_with("circuit open for handler `api`"),
        "{circuit:?}"
    );
    // The short-circuited attempt waited out the cool-down before the probe.
    let backoffs: Vec<u64> = report
        .transitions
        .steps
        .iter()
        .filter_map(|t| t.metadata["backoff_ms"].as_u64())
        .collect();
    assert!(backoffs[2] > 0, "{backoffs:?}");
    assert_eq!(state.state("api"), stepgraph_worker::BreakerState::Closed);
    engine.shutdown().await;
    stop.store(true, Ordering::SeqCst);
    threads.into_iter().for_each(|t| t.join().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_completions_lose_nothing() {
    let host = Host::new(HostConfig::default());
    let stop = Arc::new(AtomicBool::new(false));
    let threads = language_side(&host, 8, &stop, |h, e| {
        h.complete(e.event_id, math(&e)).unwrap()
    });
    let engine = engine(fixture_templates(), &host, MATH);
    let mut ids = Vec::new();
    for _ in 0..40 {
        let req = TaskRequest::new("e2e", "tree", json!({ "even_number": 6 }));
        ids.push(engine.submit(req).await.unwrap().task_id);
    }
    for id in ids {
        let report = engine.wait(id, Duration::from_secs(60)).await.unwrap();
        assert_eq!(report.state(), TaskState::Complete);
        assert_eq!(result(&report), &json!(SIX_64));
    }
    assert_eq!(host.pending_count(), 0);
    engine.shutdown().await;
    stop.store(true, Ordering::SeqCst);
    threads.into_iter().for_each(|t| t.join().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_claims_only_what_the_language_side_asked_for() {
    let host = Host::new(HostConfig::default());
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicUsize::new(0));
    let p = peak.clone();
    // One thread, one slot: at most the event it runs and the one it asked
    // for next. It waits for events without timing out and asking again: a
    // new ask while a claim granted by the last one is still in flight is
    // granted again (see `Inner::rebalance` in workers/src/host/mod.rs).
    let poll = Duration::from_secs(30);
    let threads = language_side_polling(&host, 1, &stop, poll, move |h, e| {
        p.fetch_max(h.pending_count(), Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(2));
        h.complete(e.event_id, math(&e)).unwrap();
    });
    let engine = engine(fixture_templates(), &host, MATH);
    let mut ids = Vec::new();
    for _ in 0..10 {
        let req = TaskRequest::new("e2e", "tree", json!({ "even_number": 6 }));
        ids.push(engine.submit(req).await.unwrap().task_id);
    }
    for id in ids {
        let report = engine.wait(id, Duration::from_secs(60)).await.unwrap();
        assert_eq!(report.state(), TaskState::Complete);
    }
    assert!(
        peak.load(Ordering::SeqCst) <= 2,
        "{} events were out at once",
        peak.load(Ordering::SeqCst)
    );
    engine.shutdown().await;
    stop.store(true, Ordering::SeqCst);
    // Wakes the waiting thread.
    host.shutdown();
    threads.into_iter().for_each(|t| t.join().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_stops_handing_out_events_but_takes_running_ones_results() {
    use stepgraph_worker::roundtrip::sample_context;
    use stepgraph_worker::{HandlerError, StepHandler, StepOutput};
    let host = Host::new(HostConfig::default());
    let handler = Arc::new(host.handler("noop"));
    // One step handed out (running on the language side), one still queued.
    let running = tokio::spawn({
        let h = handler.clone();
        async move { h.call(&sample_context("noop")).await }
    });
    let event = loop {
        let got = host.next_events(1, Duration::from_secs(5)).unwrap();
        if let Some(e) = got.into_iter().next() {
            break e;
        }
    };
    let queued = tokio::spawn({
        let h = handler.clone();
        async move { h.call(&sample_context("noop")).await }
    });
    while host.pending_count() < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    host.drain();
    assert_eq!(
        host.next_events(1, Duration::ZERO).unwrap_err(),
        HostError::Closed
    );
    let refused: Result<StepOutput, HandlerError> = queued.await.unwrap();
    let refused = refused.unwrap_err();
    assert_eq!(refused.code.as_deref(), Some("host_unavailable"));
    assert!(
        refused
            .message
            .contains("shut down before the step was handed"),
        "{}",
        refused.message
    );
    // The running handler's result still arrives.
    host.complete(event.event_id, StepOutcome::Success { result: json!(7) })
        .unwrap();
    assert_eq!(
        running.await.unwrap().unwrap(),
        StepOutput::Success(json!(7))
    );
    // New steps are refused at once, without waiting for a language side.
    let late = handler.call(&sample_context("noop")).await.unwrap_err();
    assert_eq!(late.code.as_deref(), Some("host_unavailable"));
    host.shutdown();
}

/// Records the thread it runs on, then does `math.multiply_and_square`.
/// An engine on the host's runtime is driven by the language thread that
/// waits for events: the Rust step after the foreign ones runs on the one
/// language thread that reported their results (no hand-off to another
/// thread).
#[test]
fn the_language_thread_that_reports_a_result_drives_the_next_step() {
    let host = Host::new(HostConfig::default());
    let stop = Arc::new(AtomicBool::new(false));
    let language = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let seen = language.clone();
    let threads = language_side(&host, 1, &stop, move |h, e| {
        seen.lock().push(std::thread::current().id());
        h.complete(e.event_id, math(&e)).unwrap()
    });
    let rust = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut handlers = HandlerRegistry::new();
    handlers.register("math.multiply_and_square", OnThread(rust.clone()));
    let engine = {
        let _runtime = host.runtime().unwrap().enter();
        engine_with_breakers(fixture_templates(), &host, &["math.square"], handlers)
    };
    let engine = Arc::new(engine);
    for _ in 0..20 {
        let rx = spawn_run(&host, &engine, "diamond");
        let report = rx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
        assert_eq!(report.state(), TaskState::Complete);
        assert_eq!(result(&report), &json!(SIX_16));
    }
    let language = language.lock().clone();
    assert_eq!(language.len(), 60, "three foreign steps per task");
    assert!(
        language.iter().all(|t| *t == language[0]),
        "one language thread"
    );
    let rust = rust.lock().clone();
    assert_eq!(rust.len(), 20);
    // A language thread descheduled for over a millisecond between its
    // result and its next wait leaves the driving to the background thread
    // (a loaded machine): most, not all, run on the language thread. With
    // a runtime of worker threads of its own, none would.
    let inline = rust.iter().filter(|t| **t == language[0]).count();
    assert!(
        inline >= 10,
        "{inline} of 20 Rust steps ran on the language thread that drove them"
    );
    stop.store(true, Ordering::SeqCst);
    host.shutdown();
    threads.into_iter().for_each(|t| t.join().unwrap());
}
