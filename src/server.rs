//! `stepgraph migrate`, `serve` (orchestrator + HTTP API) and `worker`
//! (native Rust handlers) against PostgreSQL. Any number of each may share
//! one database.

use anyhow::{Context, Result};
use std::sync::Arc;
use std::time::Duration;
use stepgraph_engine::{
    shutdown_channel, MemoryQueue, MemoryStore, Orchestrator, Queue, ShutdownTrigger, Store,
    TemplateRegistry,
};
use stepgraph_http::{self as api, ApiState};
use stepgraph_postgres::PgBackend;
use stepgraph_worker::{examples, Engine, EngineConfig, Settings};

async fn connect(config: &Settings) -> Result<Arc<PgBackend>> {
    Ok(stepgraph_worker::connect(config).await?)
}

pub async fn migrate(config: &Settings) -> Result<()> {
    let pg = PgBackend::connect(config.database_url()?, 2).await?;
    let applied = pg.migrate().await?;
    if applied.is_empty() {
        println!("database is up to date");
    } else {
        println!("applied migrations {applied:?}");
    }
    Ok(())
}

/// SIGTERM or Ctrl-C trigger a graceful shutdown. The handlers are in place
/// when this returns (a signal right after start-up is not lost).
fn on_signal(trigger: ShutdownTrigger) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down");
        trigger.trigger();
    });
    Ok(())
}

/// The orchestrator and the HTTP API. Without a database URL it runs in
/// embedded mode: in-memory state and queue and a worker in this process
/// (nothing persists; for trying things out).
pub async fn serve(config: &Settings) -> Result<()> {
    let templates =
        TemplateRegistry::load_dir(&config.templates_dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let (trigger, shutdown) = shutdown_channel();
    on_signal(trigger)?;
    let mut orchestrating = None;
    let (state, engine, mode) = match &config.database_url {
        Some(_) => {
            let pg = connect(config).await?;
            pg.store_templates(&templates).await?;
            let (store, queue) = config.transport()?.backends(&pg).await?;
            let orchestrator = Arc::new(Orchestrator::new(
                store.clone(),
                queue.clone(),
                Arc::new(templates),
                config.serving_orchestrator(),
            ));
            // The templates' schedules are listed from the first request on.
            orchestrator.sync_template_schedules().await?;
            orchestrating = Some(tokio::spawn(orchestrator.clone().run(shutdown.clone())));
            let state = ApiState::new(orchestrator, store, queue);
            (state, None, "")
        }
        // The embedded engine, with the example handlers, behind the API.
        None => {
            let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
            let queue: Arc<dyn Queue> = Arc::new(MemoryQueue::new());
            let engine = Engine::with_backends(
                store.clone(),
                queue.clone(),
                templates,
                examples::registry().with_breakers(config.breakers()),
                EngineConfig {
                    orchestrator: config.serving_orchestrator(),
                    worker: config.worker(),
                    ..Default::default()
                },
            );
            let state = ApiState::new(engine.orchestrator().clone(), store, queue);
            let mode = " (embedded mode: in-memory state, nothing persists)";
            (state, Some(engine), mode)
        }
    };
    let state = state.with_auth(auth(config, listener.local_addr()?)?);
    // Tests and scripts read the bound address (the port may be 0).
    println!("listening on http://{}{mode}", listener.local_addr()?);
    let limits = api::Limits {
        header_timeout: Duration::from_millis(config.http_header_timeout_ms.max(1)),
        max_connections: config.http_max_connections,
    };
    let state = state.with_shutdown(shutdown.clone());
    let app = api::router(state.clone()).merge(stepgraph_dashboard::router(state));
    api::serve(listener, app, shutdown, limits).await?;
    if let Some(engine) = engine {
        engine.shutdown().await;
    }
    if let Some(orchestrating) = orchestrating {
        orchestrating.await?;
    }
    Ok(())
}

/// The API's tokens. Without any, the API is open: allowed on a loopback
/// address, elsewhere only when the settings say `insecure` (logged).
fn auth(config: &Settings, addr: std::net::SocketAddr) -> Result<api::Auth> {
    let tokens = config
        .tokens
        .iter()
        .map(|t| api::Token::new(&t.name, &t.scope, &t.hash))
        .collect::<Result<Vec<_>, String>>()
        .map_err(|e| anyhow::anyhow!("serve: {e}"))?;
    if tokens.is_empty() && !addr.ip().is_loopback() {
        if !config.insecure {
            anyhow::bail!(
                "serve: no API tokens are configured and {addr} is not a loopback address: anyone \
                 who reaches it could create, cancel and repair tasks. Configure tokens \
                 ([[tokens]] or STEPGRAPH_TOKENS; `stepgraph tokens new` makes one), listen on \
                 127.0.0.1, or set insecure = true (STEPGRAPH_INSECURE=true) to serve it open"
            );
        }
        tracing::warn!(%addr, "the API is open to anyone who reaches this address (insecure = true, no tokens)");
    }
    Ok(api::Auth::new(tokens, config.open_probes))
}

pub async fn worker(config: &Settings) -> Result<()> {
    let templates =
        TemplateRegistry::load_dir(&config.templates_dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let worker = stepgraph_worker::connect_worker(
        config,
        templates,
        examples::registry().with_breakers(config.breakers()),
        None,
    )
    .await?;
    let namespaces = worker.namespaces().to_vec();
    let worker = Arc::new(worker);
    let (trigger, shutdown) = shutdown_channel();
    on_signal(trigger)?;
    println!("worker serving namespaces {namespaces:?}");
    worker.run(shutdown).await;
    Ok(())
}
