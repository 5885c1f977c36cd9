//! `Host::complete_and_next`, the event loop's fast path: one thread that
//! never blocks for events while a chain of steps runs reports each result
//! and receives the next event in the same call, as the TypeScript pool does.

mod common;

use common::host::*;
use common::*;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stepgraph_engine::{StepOutcome, TaskState};
use stepgraph_worker::{HandlerRegistry, Host, HostConfig, HostError, StepEvent};

/// One language thread with `slots` handler slots: it waits with
/// `next_events` only when it holds no event, and reports every result with
/// `complete_and_next`. Counts the events that came back from it.
fn event_loop(
    host: &Arc<Host>,
    slots: usize,
    stop: &Arc<AtomicBool>,
    inline: &Arc<AtomicUsize>,
    ran_on: &Arc<parking_lot::Mutex<Vec<std::thread::ThreadId>>>,
) -> std::thread::JoinHandle<()> {
    let (host, stop, inline, ran_on) = (host.clone(), stop.clone(), inline.clone(), ran_on.clone());
    std::thread::spawn(move || {
        let mut held: Vec<StepEvent> = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            if held.is_empty() {
                match host.next_events(slots, Duration::from_millis(50)) {
                    Ok(events) => held = events,
                    Err(_) => return,
                }
                continue;
            }
            let event = held.remove(0);
            ran_on.lock().push(std::thread::current().id());
            let free = slots - held.len();
            let next = host
                .complete_and_next(event.event_id, math(&event), free)
                .unwrap();
            assert!(
                next.len() <= free,
                "{} events for {free} free slots",
                next.len()
            );
            inline.fetch_add(next.len(), Ordering::SeqCst);
            held.extend(next);
        }
    })
}

/// Every seed shape through one thread that reports with
/// `complete_and_next`; most events after a task's first come back from it,
/// and the Rust step after the foreign ones runs on that thread.
#[test]
fn results_come_back_with_the_next_events_on_the_reporting_thread() {
    let host = Host::new(HostConfig::default());
    let stop = Arc::new(AtomicBool::new(false));
    let inline = Arc::new(AtomicUsize::new(0));
    let language = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let thread = event_loop(&host, 4, &stop, &inline, &language);
    let rust = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let engine = {
        let _runtime = host.runtime().unwrap().enter();
        let mut handlers = HandlerRegistry::new();
        handlers.register("math.multiply_and_square", OnThread(rust.clone()));
        Arc::new(engine_with_breakers(
            fixture_templates(),
            &host,
            &["math.square"],
            handlers,
        ))
    };
    let mut foreign = 0;
    for _ in 0..10 {
        for (name, expected, steps) in [
            ("linear", json!(SIX_16), 4),
            ("diamond", json!(SIX_16), 3),
            ("tree", json!(SIX_64), 7),
        ] {
            let rx = spawn_run(&host, &engine, name);
            let report = rx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
            assert_completed_with(&report, name, &expected);
            foreign += steps;
        }
    }
    stop.store(true, Ordering::SeqCst);
    thread.join().unwrap();
    let language = language.lock().clone();
    assert_eq!(language.len(), foreign, "every foreign step ran once");
    // A task's first event comes through `next_events` (unless the task
    // was created while the thread still drove); on a loaded machine a
    // thread descheduled between two calls leaves some steps to the
    // background driver, hence "most" of the others.
    let inline = inline.load(Ordering::SeqCst);
    assert!(
        inline * 2 >= foreign - 30,
        "{inline} of {foreign} events came back from complete_and_next"
    );
    let rust = rust.lock().clone();
    let here = rust.iter().filter(|t| **t == language[0]).count();
    assert!(
        here * 2 >= rust.len(),
        "{here} of {} Rust steps ran on the reporting thread",
        rust.len()
    );
    host.shutdown();
}

/// A result for an event that is not pending is refused as `complete`
/// refuses it, and what is queued stays queued for the next caller.
#[test]
fn a_refused_result_loses_no_queued_event() {
    let host = Host::new(HostConfig::default());
    let engine = {
        let _runtime = host.runtime().unwrap().enter();
        Arc::new(engine(fixture_templates(), &host, MATH))
    };
    let rx = spawn_run(&host, &engine, "linear");
    let first = loop {
        let mut events = host.next_events(1, Duration::from_secs(5)).unwrap();
        if let Some(event) = events.pop() {
            break event;
        }
    };
    let refused = host.complete_and_next(
        first.event_id + 1000,
        StepOutcome::Success { result: json!(1) },
        4,
    );
    assert!(
        matches!(refused, Err(HostError::NotPending(_))),
        "{refused:?}"
    );
    // No slots: the result is taken, no event is handed out.
    assert!(host
        .complete_and_next(first.event_id, math(&first), 0)
        .unwrap()
        .is_empty());
    let mut held = host.next_events(1, Duration::from_secs(5)).unwrap();
    while let Some(event) = held.pop() {
        held = host
            .complete_and_next(event.event_id, math(&event), 1)
            .unwrap();
        if held.is_empty() {
            held = host.next_events(1, Duration::from_millis(200)).unwrap();
        }
    }
    let report = rx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
    assert_eq!(report.state(), TaskState::Complete);
    assert_eq!(result(&report), &json!(SIX_16));
    host.shutdown();
    assert!(matches!(
        host.complete_and_next(first.event_id, math(&first), 1),
        Err(HostError::Closed)
    ));
}

/// `poll_events` after starting a task: the caller takes what is queued
/// (running the task's first work itself when nothing else drives) without
/// waiting, and what it does not take `next_events` hands out; the task
/// ends with its result either way.
#[test]
fn a_task_just_started_gives_its_first_events_to_a_poll() {
    let host = Host::new(HostConfig::default());
    let engine = {
        let _runtime = host.runtime().unwrap().enter();
        Arc::new(engine(fixture_templates(), &host, MATH))
    };
    for _ in 0..20 {
        let rx = spawn_run(&host, &engine, "diamond");
        let mut held = host.poll_events(4).unwrap();
        assert!(held.len() <= 1, "one first step: {held:?}");
        let report = loop {
            if let Ok(report) = rx.try_recv() {
                break report.unwrap();
            }
            if held.is_empty() {
                held = host.next_events(4, Duration::from_millis(20)).unwrap();
                continue;
            }
            let event = held.remove(0);
            let free = 4 - held.len();
            held.extend(
                host.complete_and_next(event.event_id, math(&event), free)
                    .unwrap(),
            );
        };
        assert!(
            held.is_empty(),
            "events left after the task ended: {held:?}"
        );
        assert_completed_with(&report, "diamond", &json!(SIX_16));
    }
    assert!(host.poll_events(0).unwrap().is_empty());
    host.shutdown();
    assert!(matches!(host.poll_events(1), Err(HostError::Closed)));
}
