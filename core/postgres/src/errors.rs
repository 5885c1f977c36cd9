//! What a failed statement means, and how a statement survives a lost
//! connection: every statement the store and queue run is safe to repeat.

use stepgraph_engine::StoreError;

/// Whether an error means the connection died (server restart, terminated
/// backend): the statement may be retried on another connection. Every
/// statement the store and queue run is safe to repeat.
pub(crate) fn is_disconnect(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("57P") || c.starts_with("08")),
        _ => false,
    }
}

/// Runs a statement, again on another connection when the
/// connection it got turned out to be dead (each dead pooled connection
/// fails once, so this allows for the whole pool having died).
pub(crate) const RECONNECT_TRIES: u32 = 12;

macro_rules! retrying {
    ($self:ident, $pool:ident => $body:expr) => {{
        let mut tries = 0;
        loop {
            let $pool = $self.pool();
            match $body.await {
                Err(e) if tries < $crate::errors::RECONNECT_TRIES && $crate::errors::is_disconnect(&e) => {
                    tracing::debug!(error = %e, "connection lost; retrying the statement");
                    tries += 1;
                }
                other => break other,
            }
        }
    }};
}
pub(crate) use retrying;

/// A failure the same statement may not meet again: a deadlock or a
/// serialization failure (class 40), the server out of connections or
/// memory (class 53), a statement cancelled (57014, a statement timeout).
fn is_passing(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    db.code()
        .is_some_and(|c| c.starts_with("40") || c.starts_with("53") || c == "57014")
}

/// What a failed statement means, by SQLSTATE: SG409 (raised by
/// `sg_conflict`) a compare-and-swap that found another state, 23505 a
/// unique key taken (named by its constraint), a value that cannot be
/// decoded unreadable data, a lost or refused connection (or an exhausted
/// pool) or a passing failure (`is_passing`) the backend unavailable (a
/// later try may work: a poison message's count ignores it).
pub(crate) fn backend_error(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e {
        match db.code().as_deref() {
            Some("SG409") => return StoreError::Conflict(db.message().to_string()),
            Some("23505") => {
                return StoreError::KeyTaken {
                    constraint: db.constraint().unwrap_or_default().to_string(),
                    message: db.message().to_string(),
                }
            }
            _ => {}
        }
    }
    if matches!(e, sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_)) {
        return StoreError::Unreadable(e.to_string());
    }
    if is_disconnect(&e)
        || is_passing(&e)
        || matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed)
    {
        return StoreError::Unavailable(e.to_string());
    }
    StoreError::Backend(e.to_string())
}
