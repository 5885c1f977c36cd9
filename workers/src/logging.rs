//! Where a process's logs go: stderr, as text (coloured only on a
//! terminal) or, with `STEPGRAPH_LOG_FORMAT=json`, one JSON object per
//! line. `STEPGRAPH_LOG` filters them (`info`, `warn`,
//! `stepgraph_engine=debug`, ...); without it servers and workers log at
//! info (tasks created and ended, steps failed, retried, timed out,
//! dead-lettered, circuits opened and closed) and the rest at warn. The
//! CLI sets it up, and so does a language's worker or engine, so a Python,
//! Ruby or TypeScript worker logs the same lines to the same place.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Sets up the process's logging; an error names a bad `STEPGRAPH_LOG` or
/// `STEPGRAPH_LOG_FORMAT`. A process whose logging is set up already (by
/// its host program, or an earlier engine) keeps it.
pub fn init(server: bool) -> Result<(), String> {
    // sqlx reports PostgreSQL's notices (a migration's "already exists") at info.
    // The benches' bulk statements are slow on purpose: not worth a warning.
    let default = if server {
        "info,sqlx=warn"
    } else {
        "warn,sqlx::query=error"
    };
    let filter = match std::env::var("STEPGRAPH_LOG") {
        Ok(f) if !f.is_empty() => {
            EnvFilter::try_new(&f).map_err(|e| format!("STEPGRAPH_LOG={f:?}: {e}"))?
        }
        _ => EnvFilter::new(default),
    };
    let format = std::env::var("STEPGRAPH_LOG_FORMAT").unwrap_or_default();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format.as_str() {
        // A subscriber set up before (by the host program, or an engine
        // made earlier in this process) stays: try_init leaves it.
        "" | "text" => {
            let _ = builder
                .with_ansi(std::io::stderr().is_terminal())
                .try_init();
        }
        "json" => {
            let _ = builder.json().flatten_event(true).try_init();
        }
        other => {
            return Err(format!(
                "STEPGRAPH_LOG_FORMAT={other:?}: use text (the default) or json"
            ))
        }
    }
    Ok(())
}
