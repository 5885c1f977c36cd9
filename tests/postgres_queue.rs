//! The PostgreSQL queue in this process, against the real PostgreSQL on
//! this machine: a drained queue is not claimed again before a send or a
//! due message, and a send wakes a sleeping receiver by NOTIFY, not by its
//! fallback poll.

mod common;

use common::block_on;
use common::cluster::TestDb;
use std::time::Duration;
use stepgraph_engine::queue::Outgoing;
use stepgraph_engine::Queue;
use stepgraph_postgres::PgBackend;

/// Up to 4 messages, claimed for 400 ms, waiting up to `wait_ms` for one.
async fn receive(
    q: &str,
    queue: &stepgraph_postgres::PgQueue,
    wait_ms: u64,
) -> Result<Vec<stepgraph_engine::queue::Delivery>, stepgraph_engine::QueueError> {
    let visibility = Duration::from_millis(400);
    queue
        .receive(q, 4, visibility, Duration::from_millis(wait_ms))
        .await
}

#[test]
fn a_drained_queue_is_not_claimed_again_before_a_send_or_its_next_message_is_due() {
    let db = TestDb::create();
    block_on(async {
        let pg = PgBackend::connect(&db.url, 4).await.unwrap();
        pg.migrate().await.unwrap();
        // Two consumers, as two processes would be.
        let (a, b) = (pg.queue(), pg.queue());
        let one = |payload: &[u8], delay_ms: u64| {
            vec![Outgoing {
                payload: payload.to_vec(),
                delay: Duration::from_millis(delay_ms),
            }]
        };

        // Drained once, receiving again costs no statement until something is sent.
        assert!(receive("q", &a, 0).await.unwrap().is_empty());
        let before = pg.statements();
        for _ in 0..5 {
            assert!(receive("q", &a, 0).await.unwrap().is_empty());
        }
        assert_eq!(pg.statements(), before, "a drained queue was claimed again");

        // A send wakes it (the NOTIFY).
        b.send("q", one(b"now", 0)).await.unwrap();
        let got = receive("q", &a, 5000).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].payload, b"now");
        a.ack("q", &[got[0].receipt]).await.unwrap();

        // A delayed message: announced when sent, claimed once it is due.
        let start = std::time::Instant::now();
        b.send("q", one(b"later", 300)).await.unwrap();
        let got = receive("q", &a, 5000).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].payload, b"later");
        assert!(
            start.elapsed() >= Duration::from_millis(300),
            "it came early"
        );
        a.ack("q", &[got[0].receipt]).await.unwrap();

        // Claimed by b, never acknowledged: no NOTIFY tells a when its
        // visibility timeout ends, the time the claim reported does.
        b.send("q", one(b"lost", 0)).await.unwrap();
        let lost = receive("q", &b, 5000).await.unwrap();
        assert_eq!(lost.len(), 1);
        assert!(receive("q", &a, 0).await.unwrap().is_empty());
        let again = receive("q", &a, 3000).await.unwrap();
        assert_eq!(again.len(), 1, "the unacknowledged message came back");
        assert_eq!(
            (again[0].payload.as_slice(), again[0].delivery_count),
            (&b"lost"[..], 2)
        );
    });
}

/// A receiver sleeping on a drained queue is woken by the NOTIFY of a send
/// from another backend (another process's pool and LISTEN connection),
/// not by its fallback poll, which is set far beyond the wait.
#[test]
fn a_send_from_another_backend_wakes_a_sleeping_receiver_by_notify() {
    let db = TestDb::create();
    block_on(async {
        let polls = stepgraph_postgres::FallbackPolls {
            queue: Duration::from_secs(30),
            wait: Duration::from_secs(30),
        };
        let options = stepgraph_postgres::PgOptions {
            max_connections: 4,
            polls,
        };
        let pg = PgBackend::connect_with(&db.url, options).await.unwrap();
        pg.migrate().await.unwrap();
        let other = PgBackend::connect(&db.url, 2).await.unwrap();
        let (a, mut b) = (pg.queue(), other.queue());
        assert!(receive("q", &a, 0).await.unwrap().is_empty(), "drained");
        for round in 0..3 {
            let sender = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let one = vec![Outgoing {
                    payload: b"ping".to_vec(),
                    delay: Duration::ZERO,
                }];
                b.send("q", one).await.unwrap();
                b
            });
            let start = std::time::Instant::now();
            let got = receive("q", &a, 20_000).await.unwrap();
            let took = start.elapsed();
            assert_eq!(got.len(), 1, "round {round}: nothing woke the receiver");
            assert!(
                took < Duration::from_secs(5),
                "round {round}: woken after {took:?}, by the poll, not the NOTIFY"
            );
            a.ack("q", &[got[0].receipt]).await.unwrap();
            b = sender.await.unwrap();
        }
    });
}

/// A worker's claim takes from every queue it names (its handlers'), in
/// one statement, oldest first over them, each delivery naming its queue;
/// a send to any of them wakes it, and it never takes from another queue.
#[test]
fn one_claim_takes_from_several_queues_and_a_send_to_any_wakes_it() {
    let db = TestDb::create();
    block_on(async {
        let pg = PgBackend::connect(&db.url, 4).await.unwrap();
        pg.migrate().await.unwrap();
        let (a, b) = (pg.queue(), pg.queue());
        let one = |payload: &[u8]| {
            vec![Outgoing {
                payload: payload.to_vec(),
                delay: Duration::ZERO,
            }]
        };
        let mine = ["worker.n/x".to_string(), "worker.n/y".to_string()];
        b.send("worker.n/y", one(b"y1")).await.unwrap();
        b.send("worker.n/x", one(b"x1")).await.unwrap();
        b.send("worker.n/z", one(b"z1")).await.unwrap();
        b.send("worker.n/x", one(b"x2")).await.unwrap();

        let visibility = Duration::from_secs(60);
        let before = pg.statements();
        let got = a
            .receive_any(&mine, 10, visibility, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(pg.statements(), before + 1, "one statement");
        let seen: Vec<(&str, &[u8])> = got
            .iter()
            .map(|d| (d.queue.as_str(), d.payload.as_slice()))
            .collect();
        assert_eq!(
            seen,
            [
                ("worker.n/y", &b"y1"[..]),
                ("worker.n/x", b"x1"),
                ("worker.n/x", b"x2")
            ]
        );
        for d in &got {
            a.ack(&d.queue, &[d.receipt]).await.unwrap();
        }
        assert_eq!(a.depth("worker.n/z").await.unwrap(), 1, "not its queue");

        // Asleep on both, woken by a send to the second.
        let waiting = a.receive_any(&mine, 10, visibility, Duration::from_secs(10));
        let sending = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            b.send("worker.n/y", one(b"y2")).await.unwrap();
        };
        let start = std::time::Instant::now();
        let (got, ()) = tokio::join!(waiting, sending);
        let got = got.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].queue.as_str(), got[0].payload.as_slice()),
            ("worker.n/y", &b"y2"[..])
        );
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "woken by the NOTIFY, not a poll"
        );
    });
}
