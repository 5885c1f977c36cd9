//! In-process queue for the embedded mode: same semantics as the durable
//! backends (visibility timeout, redelivery, delayed send), nothing persisted.

use super::{Delivery, Outgoing, Queue, QueueError};
use async_trait::async_trait;
use parking_lot::Mutex;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Default)]
pub struct MemoryQueue {
    queues: Mutex<HashMap<String, Arc<Channel>>>,
    /// A wake-up per set of queues received from together (a worker's), so
    /// that waiting on many queues costs one waiter, not one per queue.
    groups: Mutex<HashMap<Vec<String>, Arc<Notify>>>,
    next_id: AtomicU64,
    rotation: AtomicU64,
}

#[derive(Default)]
struct Channel {
    state: Mutex<ChannelState>,
    arrived: Notify,
    /// The wake-ups of the sets of queues this one is in.
    groups: Mutex<Vec<Arc<Notify>>>,
}

impl Channel {
    fn wake(&self) {
        self.arrived.notify_waiters();
        for g in self.groups.lock().iter() {
            g.notify_waiters();
        }
    }
}

#[derive(Default)]
struct ChannelState {
    ready: VecDeque<u64>,
    /// (visible at, id); an entry is stale when the message's `visible_at` differs.
    invisible: BinaryHeap<Reverse<(Instant, u64)>>,
    messages: HashMap<u64, Message>,
}

struct Message {
    payload: Vec<u8>,
    deliveries: u32,
    visible_at: Option<Instant>,
}

impl ChannelState {
    fn promote(&mut self, now: Instant) {
        while let Some(Reverse((at, id))) = self.invisible.peek().copied() {
            if at > now {
                break;
            }
            self.invisible.pop();
            if let Some(m) = self.messages.get_mut(&id) {
                if m.visible_at == Some(at) {
                    m.visible_at = None;
                    self.ready.push_back(id);
                }
            }
        }
    }

    fn hide(&mut self, id: u64, until: Instant) {
        if let Some(m) = self.messages.get_mut(&id) {
            m.visible_at = Some(until);
            self.invisible.push(Reverse((until, id)));
        }
    }

    fn next_visible(&self) -> Option<Instant> {
        self.invisible.peek().map(|Reverse((at, _))| *at)
    }
}

impl MemoryQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// The wake-up of `queues` as a set, made (and given to each of
    /// their channels) on first use.
    fn group(&self, queues: &[String], channels: &[(&String, Arc<Channel>)]) -> Arc<Notify> {
        let mut groups = self.groups.lock();
        if let Some(g) = groups.get(queues) {
            return g.clone();
        }
        let g = Arc::new(Notify::new());
        for (_, c) in channels {
            c.groups.lock().push(g.clone());
        }
        groups.insert(queues.to_vec(), g.clone());
        g
    }

    fn channel(&self, name: &str) -> Arc<Channel> {
        let mut queues = self.queues.lock();
        if let Some(c) = queues.get(name) {
            return c.clone();
        }
        let c = Arc::new(Channel::default());
        queues.insert(name.to_string(), c.clone());
        c
    }
}

#[async_trait]
impl Queue for MemoryQueue {
    async fn send(&self, queue: &str, messages: Vec<Outgoing>) -> Result<(), QueueError> {
        if messages.is_empty() {
            return Ok(());
        }
        let channel = self.channel(queue);
        let now = Instant::now();
        {
            let mut st = channel.state.lock();
            for m in messages {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                st.messages.insert(
                    id,
                    Message {
                        payload: m.payload,
                        deliveries: 0,
                        visible_at: None,
                    },
                );
                if m.delay.is_zero() {
                    st.ready.push_back(id);
                } else {
                    st.hide(id, now + m.delay);
                }
            }
        }
        // Waiters also re-arm their timers on a delayed message.
        channel.wake();
        Ok(())
    }

    async fn receive_any(
        &self,
        queues: &[String],
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let channels: Vec<(&String, Arc<Channel>)> =
            queues.iter().map(|q| (q, self.channel(q))).collect();
        let wake = match channels.as_slice() {
            [] => {
                tokio::time::sleep(wait).await;
                return Ok(Vec::new());
            }
            [_] => None,
            _ => Some(self.group(queues, &channels)),
        };
        let deadline = Instant::now() + wait;
        loop {
            let arrived = match &wake {
                Some(group) => group.notified(),
                None => channels[0].1.arrived.notified(),
            };
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let now = Instant::now();
            let mut out = Vec::new();
            let mut next_visible: Option<Instant> = None;
            // Each receive starts at another queue, so that one busy
            // handler's steps do not keep the others waiting.
            let first = self.rotation.fetch_add(1, Ordering::Relaxed) as usize;
            for i in 0..channels.len() {
                let (name, channel) = &channels[(first + i) % channels.len()];
                let mut st = channel.state.lock();
                st.promote(now);
                while out.len() < max {
                    let Some(id) = st.ready.pop_front() else {
                        break;
                    };
                    st.hide(id, now + visibility);
                    let m = st.messages.get_mut(&id).expect("ready message exists");
                    m.deliveries += 1;
                    out.push(Delivery {
                        queue: name.to_string(),
                        receipt: id,
                        payload: m.payload.clone(),
                        delivery_count: m.deliveries,
                    });
                }
                if let Some(at) = st.next_visible() {
                    next_visible = Some(next_visible.map_or(at, |n| n.min(at)));
                }
            }
            if !out.is_empty() {
                return Ok(out);
            }
            if Instant::now() >= deadline {
                return Ok(Vec::new());
            }
            let wake_at = next_visible.map_or(deadline, |v| v.min(deadline));
            tokio::select! {
                _ = &mut arrived => {}
                _ = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    async fn ack(&self, queue: &str, receipts: &[u64]) -> Result<(), QueueError> {
        let channel = self.channel(queue);
        let mut st = channel.state.lock();
        for id in receipts {
            st.messages.remove(id);
        }
        Ok(())
    }

    async fn release(&self, queue: &str, receipt: u64, delay: Duration) -> Result<(), QueueError> {
        let channel = self.channel(queue);
        {
            let mut st = channel.state.lock();
            if !st.messages.contains_key(&receipt) {
                return Ok(());
            }
            if delay.is_zero() {
                if let Some(m) = st.messages.get_mut(&receipt) {
                    m.visible_at = None;
                }
                st.ready.push_back(receipt);
            } else {
                st.hide(receipt, Instant::now() + delay);
            }
        }
        channel.wake();
        Ok(())
    }

    async fn depth(&self, queue: &str) -> Result<u64, QueueError> {
        Ok(self.channel(queue).state.lock().messages.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(s: &str) -> Outgoing {
        Outgoing {
            payload: s.as_bytes().to_vec(),
            delay: Duration::ZERO,
        }
    }

    #[tokio::test]
    async fn claim_ack_and_redelivery_after_visibility_timeout() {
        let q = MemoryQueue::new();
        q.send("q", vec![msg("a"), msg("b")]).await.unwrap();
        let got = q
            .receive("q", 1, Duration::from_millis(50), Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].payload, b"a");
        let b = q
            .receive("q", 5, Duration::from_secs(60), Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].payload, b"b");
        q.ack("q", &[b[0].receipt]).await.unwrap();
        // "a" was never acked: it comes back once its visibility timeout passes.
        let again = q
            .receive("q", 5, Duration::from_secs(60), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].payload, b"a");
        assert_eq!(again[0].delivery_count, 2);
        q.ack("q", &[again[0].receipt]).await.unwrap();
        assert_eq!(q.depth("q").await.unwrap(), 0);
    }

    #[tokio::test]
    async fn receive_wakes_on_send_and_honours_delay() {
        let q = Arc::new(MemoryQueue::new());
        let q2 = q.clone();
        let waiter = tokio::spawn(async move {
            q2.receive("q", 1, Duration::from_secs(1), Duration::from_secs(10))
                .await
                .unwrap()
        });
        tokio::task::yield_now().await;
        q.send("q", vec![msg("x")]).await.unwrap();
        let got = waiter.await.unwrap();
        assert_eq!(got[0].payload, b"x");

        q.send(
            "q",
            vec![Outgoing {
                payload: b"later".to_vec(),
                delay: Duration::from_millis(100),
            }],
        )
        .await
        .unwrap();
        assert!(q
            .receive("q", 1, Duration::from_secs(1), Duration::ZERO)
            .await
            .unwrap()
            .is_empty());
        let start = Instant::now();
        let got = q
            .receive("q", 1, Duration::from_secs(1), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(got[0].payload, b"later");
        assert!(start.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn receive_any_takes_from_each_queue_and_wakes_on_a_send_to_any() {
        let q = Arc::new(MemoryQueue::new());
        let mine = ["x".to_string(), "y".to_string()];
        q.send("x", vec![msg("x1")]).await.unwrap();
        q.send("y", vec![msg("y1")]).await.unwrap();
        q.send("z", vec![msg("z1")]).await.unwrap();
        let mut got = q
            .receive_any(&mine, 10, Duration::from_secs(60), Duration::ZERO)
            .await
            .unwrap();
        got.sort_by(|a, b| a.queue.cmp(&b.queue));
        let seen: Vec<_> = got
            .iter()
            .map(|d| (d.queue.as_str(), &d.payload[..]))
            .collect();
        assert_eq!(seen, [("x", &b"x1"[..]), ("y", b"y1")]);
        assert_eq!(q.depth("z").await.unwrap(), 1, "not its queue");

        let q2 = q.clone();
        let waiter = tokio::spawn(async move {
            q2.receive_any(&mine, 1, Duration::from_secs(1), Duration::from_secs(10))
                .await
                .unwrap()
        });
        tokio::task::yield_now().await;
        q.send("y", vec![msg("y2")]).await.unwrap();
        let got = waiter.await.unwrap();
        assert_eq!(
            (got[0].queue.as_str(), &got[0].payload[..]),
            ("y", &b"y2"[..])
        );
    }

    #[tokio::test]
    async fn release_makes_a_message_visible_again() {
        let q = MemoryQueue::new();
        q.send("q", vec![msg("a")]).await.unwrap();
        let got = q
            .receive("q", 1, Duration::from_secs(60), Duration::ZERO)
            .await
            .unwrap();
        q.release("q", got[0].receipt, Duration::ZERO)
            .await
            .unwrap();
        let again = q
            .receive("q", 1, Duration::from_secs(60), Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(again[0].payload, b"a");
        assert_eq!(again[0].delivery_count, 2);
    }
}
