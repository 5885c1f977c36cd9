//! CPU time by process for `stepgraph bench --database-url`: this process's
//! and that of the PostgreSQL backends serving its database (the server
//! runs on this machine), read from `/proc` before and after each scenario.

use sqlx::PgPool;
use std::collections::HashMap;
use std::time::Duration;

/// CPU time (user + system) so far, by process id.
#[derive(Default)]
pub struct Snapshot {
    own: Duration,
    postgres: HashMap<i32, Duration>,
}

/// The CPU a stretch of work took: this process's and PostgreSQL's.
#[derive(Clone, Copy, Debug)]
pub struct Spent {
    pub own: Duration,
    pub postgres: Duration,
}

/// A process's user + system time from `/proc/<pid>/stat` (None when it
/// is gone or unreadable).
pub(crate) fn cpu_of(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may hold spaces: the fields start after its ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let (utime, stime): (u64, u64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / ticks_per_second(),
    ))
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        t if t > 0 => t as f64,
        _ => 100.0,
    }
}

/// The CPU used so far by this process and by the backends connected to
/// the database `pool` uses (None when PostgreSQL is not on this machine
/// or `/proc` cannot be read).
pub async fn snapshot(pool: &PgPool) -> Option<Snapshot> {
    let pids: Vec<i32> =
        sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
            .fetch_all(pool)
            .await
            .ok()?;
    let postgres: HashMap<i32, Duration> = pids
        .into_iter()
        .filter_map(|pid| Some((pid, cpu_of(&pid.to_string())?)))
        .collect();
    if postgres.is_empty() {
        return None;
    }
    Some(Snapshot {
        own: cpu_of("self")?,
        postgres,
    })
}

impl Snapshot {
    /// What was spent from `self` to `later` (a backend that appeared
    /// since counts from zero).
    pub fn until(&self, later: &Snapshot) -> Spent {
        let postgres = later
            .postgres
            .iter()
            .map(|(pid, t)| t.saturating_sub(self.postgres.get(pid).copied().unwrap_or_default()))
            .sum();
        Spent {
            own: later.own.saturating_sub(self.own),
            postgres,
        }
    }
}
