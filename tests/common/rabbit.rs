//! RabbitMQ for the tests that run steps over it: the real server on this
//! machine (127.0.0.1:5672, guest/guest), a queue-name prefix per test (its
//! queues expire a minute after it ends) and, where a test closes
//! connections, a virtual host of its own.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use stepgraph_rabbitmq::{RabbitConfig, RabbitQueue};

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A queue-name prefix of this test's own (and, if asked, a virtual host),
/// and the settings that select RabbitMQ.
pub struct Rabbit {
    pub prefix: String,
    pub url: String,
    /// A virtual host of its own, deleted on drop.
    vhost: Option<String>,
}

impl Rabbit {
    /// Queues under a prefix of their own on the default virtual host.
    pub fn new() -> Rabbit {
        static N: AtomicU32 = AtomicU32::new(0);
        if std::net::TcpStream::connect("127.0.0.1:5672").is_err() {
            panic!("RabbitMQ is not reachable on 127.0.0.1:5672; .ci/run starts it");
        }
        Rabbit {
            prefix: format!(
                "sgtest.{}.{}.",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ),
            url: AMQP_URL.to_string(),
            vhost: None,
        }
    }

    /// A virtual host of its own too, for a test that closes every
    /// connection to it (the tests running beside it keep theirs).
    pub fn isolated() -> Rabbit {
        let mut r = Rabbit::new();
        let vhost = r.prefix.trim_end_matches('.').to_string();
        rabbitmqctl(&["add_vhost", &vhost]);
        rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
        r.url = format!("amqp://guest:guest@127.0.0.1:5672/{vhost}");
        r.vhost = Some(vhost);
        r
    }

    /// This test's queues (in its virtual host), but the delay and dead
    /// letter queues, each with the messages it holds.
    pub fn queues(&self) -> Vec<(String, u64)> {
        let vhost = self.vhost.as_deref().unwrap_or("/");
        rabbitmqctl(&[
            "list_queues",
            "-q",
            "--no-table-headers",
            "-p",
            vhost,
            "name",
            "messages",
        ])
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(q, _)| {
            q.starts_with(&self.prefix) && !q.contains(".delay.") && !q.ends_with(".dead")
        })
        .map(|(q, n)| (q.to_string(), n.trim().parse().unwrap_or(0)))
        .collect()
    }

    /// Closes, server side, every connection to this test's virtual host,
    /// once there are at least `expected` (processes that are still starting
    /// or reconnecting are waited for, up to a minute).
    pub fn close_all_connections(&self, expected: usize, reason: &str) {
        let vhost = self.vhost.as_deref().expect("an isolated virtual host");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let open = rabbitmqctl(&["list_connections", "-q", "--no-table-headers", "vhost"])
                .lines()
                .filter(|l| l.trim() == vhost)
                .count();
            if open >= expected {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{open} connections to {vhost}, expected {expected}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        rabbitmqctl(&["close_all_connections", "--vhost", vhost, reason]);
    }

    pub fn env(&self) -> Vec<(&str, &str)> {
        vec![
            ("STEPGRAPH_QUEUE", "rabbitmq"),
            ("STEPGRAPH_AMQP_URL", &self.url),
            ("STEPGRAPH_AMQP_PREFIX", &self.prefix),
            ("STEPGRAPH_AMQP_QUEUE_EXPIRES_MS", "60000"),
        ]
    }

    pub async fn queue(&self) -> RabbitQueue {
        let mut config = RabbitConfig::new(&self.url);
        config.prefix = self.prefix.clone();
        config.expires = Some(Duration::from_secs(60));
        RabbitQueue::connect(config).await.unwrap()
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        if let Some(vhost) = &self.vhost {
            let _ = std::process::Command::new("rabbitmqctl")
                .args(["delete_vhost", vhost])
                .output();
        }
    }
}

pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// RabbitMQ's count `column` (messages, messages_ready...) of queue `name`.
pub fn messages(name: &str, column: &str) -> u64 {
    rabbitmqctl(&["list_queues", "-q", "--no-table-headers", "name", column])
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .find(|(q, _)| *q == name)
        .map_or(0, |(_, n)| n.trim().parse().unwrap_or(0))
}
