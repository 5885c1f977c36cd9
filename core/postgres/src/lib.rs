//! stepgraph-postgres: the engine's [`Store`](stepgraph_engine::Store) and
//! [`Queue`](stepgraph_engine::Queue) in one PostgreSQL database. Every
//! call is one statement (a server-side function); commits made at once
//! share one transaction ([`group_commit`]); waiters sleep until a NOTIFY.
//! The schema is in `migrations/`, applied by [`migrate`].

mod backend;
mod change;
mod errors;
mod find;
mod group_commit;
mod migrate;
mod notify;
mod partitions;
mod queue;
mod retention;
mod rows;
mod schedules;
mod store;
mod sweep;
mod workers;

pub use backend::{redact, PgBackend, PgOptions};
pub use migrate::{migrate, migrate_tables_until};
pub use notify::FallbackPolls;
pub use queue::PgQueue;
pub use retention::RETENTION_LOCK;
pub use store::PgStore;
