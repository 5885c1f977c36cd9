//! The `stepgraph` command line: run a template, validate templates, bench.

mod api_client;
mod bench;
mod cluster;
mod find_bench;
mod fixtures;
mod ops_cli;
mod schedules_cli;
mod server;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use stepgraph_engine::{TaskRequest, TaskState, TaskTemplate, TemplateRegistry};
use stepgraph_worker::{examples, settings, Engine, EngineConfig, Settings};

#[derive(Parser)]
#[command(
    name = "stepgraph",
    version,
    about = "Workflow orchestration with polyglot step handlers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs one task of a template in embedded mode and prints its result and timeline.
    Run {
        /// The template file (YAML).
        template: PathBuf,
        /// The task context, as JSON.
        #[arg(long, default_value = "{}")]
        context: String,
        /// Gives up waiting after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
    },
    /// Finds, shows, retries, resolves and cancels tasks through the HTTP API.
    Tasks {
        #[command(subcommand)]
        command: ops_cli::TasksCommand,
        #[command(flatten)]
        api: ops_cli::ApiArgs,
    },
    /// Cron schedules through the HTTP API: list, create, pause, resume, delete.
    Schedules {
        #[command(subcommand)]
        command: schedules_cli::SchedulesCommand,
        #[command(flatten)]
        api: ops_cli::ApiArgs,
    },
    /// Lists the workers: live, gone (missed heartbeats) and stopped.
    Workers {
        #[command(flatten)]
        api: ops_cli::ApiArgs,
    },
    /// API tokens: `stepgraph tokens new --name NAME --scope read|write|admin`.
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// Prints the HTTP API's OpenAPI 3.1 document (what `serve` answers at /v1/openapi.json).
    Openapi,
    /// Checks template files; prints every problem and exits non-zero on any.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Applies the database migrations.
    Migrate {
        #[command(flatten)]
        args: ServerArgs,
    },
    /// Runs an orchestrator and the HTTP API (PostgreSQL).
    Serve {
        #[command(flatten)]
        args: ServerArgs,
        /// The address to listen on (port 0 picks a free one).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Runs a worker with the built-in Rust handlers (PostgreSQL).
    Worker {
        #[command(flatten)]
        args: ServerArgs,
        /// A namespace to serve (repeatable); default: every template's.
        #[arg(long = "namespace")]
        namespaces: Vec<String>,
        /// Steps run at once.
        #[arg(long)]
        concurrency: Option<usize>,
    },
    /// Runs every seed workflow shape in embedded mode and prints a latency table.
    Bench {
        /// Measured runs per scenario.
        #[arg(long, short = 'n', default_value_t = 1000)]
        iterations: usize,
        /// Unmeasured runs per scenario first.
        #[arg(long, default_value_t = 100)]
        warmup: usize,
        /// Only this scenario (template name: linear, diamond, complex_dag, tree, conditional_approval, csv_batch).
        #[arg(long)]
        scenario: Option<String>,
        /// After the latency table, submit this many linear tasks at once and report steps/s.
        #[arg(long, default_value_t = 0)]
        throughput: usize,
        /// With --database-url: the seed's cluster rows against 2 serve + 2 worker processes.
        #[arg(long, requires = "database_url")]
        cluster: bool,
        /// Runs against PostgreSQL (state and queue) instead of embedded mode.
        #[arg(long, env = "STEPGRAPH_DATABASE_URL")]
        database_url: Option<String>,
        /// With --database-url: how steps travel (postgres, or rabbitmq with --amqp-url).
        #[arg(long, env = "STEPGRAPH_QUEUE", default_value = "postgres")]
        queue: String,
        /// RabbitMQ's address, for --queue rabbitmq.
        #[arg(long, env = "STEPGRAPH_AMQP_URL")]
        amqp_url: Option<String>,
        /// The tokio runtime the engine runs on.
        #[arg(long, value_enum, default_value_t = RuntimeKind::CurrentThread)]
        runtime: RuntimeKind,
        /// With --database-url: every step through the queue, none taken
        /// directly by the worker whose commit made it ready.
        #[arg(long, requires = "database_url")]
        no_eager_dispatch: bool,
        /// With --database-url: fill the database (once) with this many
        /// tasks of history, then time the first page of task lists.
        #[arg(long, requires = "database_url")]
        list_tasks: Option<usize>,
        /// With --database-url: first fill the database (once) with this
        /// many ended linear tasks' whole history (steps, edges, audit
        /// trails, over the last 30 days), generated by SQL.
        #[arg(long, requires = "database_url", default_value_t = 0)]
        history: usize,
        /// With --database-url: instead of the table, run linear tasks for
        /// this long (e.g. 20m) with retention on, printing the database's
        /// size every minute.
        #[arg(long, requires = "database_url", value_parser = humantime::parse_duration)]
        soak: Option<std::time::Duration>,
        /// With --soak: how long ended tasks are kept (e.g. 2m).
        #[arg(long, requires = "soak", default_value = "2m")]
        retention: stepgraph_engine::retention::Keep,
        /// The seed's FFI rows (linear, diamond) with this language's handlers
        /// beside native Rust ones (its package must be installed: ./scripts/setup);
        /// with --database-url, through its worker processes beside the Rust worker's.
        #[arg(long, value_enum)]
        language: Option<bench::language::Language>,
    },
}

#[derive(Subcommand)]
enum TokensCommand {
    /// Makes a random token and prints it with the configuration that admits it.
    New {
        /// Who uses it: recorded in the audit trail of every repair it makes.
        #[arg(long)]
        name: String,
        /// read (get, list, wait, stats), write (also create, cancel) or admin (also retry, resolve).
        #[arg(long, default_value = "read")]
        scope: String,
    },
}

/// Prints a new token and the lines that configure it (its hash, never the token).
fn new_token(name: &str, scope: &str) -> Result<bool> {
    let (token, hash) = stepgraph_http::new_token().map_err(anyhow::Error::msg)?;
    stepgraph_http::Token::new(name, scope, &hash).map_err(anyhow::Error::msg)?;
    println!("token: {token}");
    println!("(give it to its user; only its hash is kept)\n");
    println!("[[tokens]]\nname = {name:?}\nscope = {scope:?}\nhash = {hash:?}\n");
    println!("or: STEPGRAPH_TOKENS={name}:{scope}:{hash}");
    Ok(true)
}

/// Where a server process gets its settings (flags win over the environment and the file).
#[derive(clap::Args)]
struct ServerArgs {
    /// A TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    database_url: Option<String>,
    /// The directory of task templates.
    #[arg(long)]
    templates: Option<PathBuf>,
}

impl ServerArgs {
    fn load(&self) -> Result<Settings> {
        let mut c = Settings::load(self.config.as_deref())?;
        if let Some(url) = &self.database_url {
            c.database_url = Some(url.clone());
        }
        if let Some(dir) = &self.templates {
            c.templates_dir = dir.clone();
        }
        Ok(c)
    }
}

impl Command {
    /// A server command's settings, its flags over the file and environment.
    fn server_settings(&self) -> Option<Result<Settings>> {
        let args = match self {
            Command::Migrate { args }
            | Command::Serve { args, .. }
            | Command::Worker { args, .. } => args,
            _ => return None,
        };
        Some(args.load().map(|mut c| {
            match self {
                Command::Serve {
                    listen: Some(l), ..
                } => c.listen = l.clone(),
                Command::Worker {
                    namespaces,
                    concurrency,
                    ..
                } => {
                    if !namespaces.is_empty() {
                        c.worker.namespaces = namespaces.clone();
                    }
                    if let Some(n) = concurrency {
                        c.worker.concurrency = *n;
                    }
                }
                _ => {}
            }
            c
        }))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RuntimeKind {
    CurrentThread,
    MultiThread,
}

/// mimalloc rather than glibc's allocator: a step allocates and frees many
/// blocks of a few KB (futures, JSON), on which glibc consolidates its free
/// lists again and again (benches/README.md, 2026-12-08).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let server = matches!(cli.command, Command::Serve { .. } | Command::Worker { .. });
    if let Err(e) = stepgraph_worker::logging::init(server) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let service = match cli.command {
        Command::Serve { .. } => "stepgraph-serve",
        Command::Worker { .. } => "stepgraph-worker",
        _ => "stepgraph",
    };
    if let Err(e) = stepgraph_worker::telemetry::init_from_env(service) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    // Servers and workers: the file, the environment and their flags, read once.
    let settings = match cli.command.server_settings() {
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => return report(e),
        None => None,
    };
    let threads = match (&cli.command, &settings) {
        // The embedded engine is fastest when orchestrator, worker and handlers
        // share one thread: no cross-thread wake-ups between the stages.
        (Command::Bench { runtime, .. }, _) => usize::from(*runtime == RuntimeKind::CurrentThread),
        (_, Some(c)) => c.threads,
        _ => 0,
    };
    let runtime = match settings::runtime(threads) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let settings = || settings.context("no server settings");
        match cli.command {
            Command::Run {
                template,
                context,
                timeout_secs,
            } => run(template, &context, Duration::from_secs(timeout_secs)).await,
            Command::Validate { files } => validate(&files),
            Command::Tokens {
                command: TokensCommand::New { name, scope },
            } => new_token(&name, &scope),
            Command::Openapi => {
                print!("{}", stepgraph_http::openapi_json());
                Ok(true)
            }
            Command::Tasks { command, api } => ops_cli::tasks(&api, command).await,
            Command::Workers { api } => ops_cli::workers(&api).await,
            Command::Schedules { command, api } => schedules_cli::schedules(&api, command).await,
            Command::Migrate { .. } => server::migrate(&settings()?).await.map(|()| true),
            Command::Serve { .. } => server::serve(&settings()?).await.map(|()| true),
            Command::Worker { .. } => server::worker(&settings()?).await.map(|()| true),
            Command::Bench {
                iterations,
                warmup,
                scenario,
                runtime,
                database_url,
                throughput,
                cluster,
                language,
                queue,
                amqp_url,
                no_eager_dispatch,
                list_tasks,
                history,
                soak,
                retention,
            } => {
                if let Some(n) = list_tasks {
                    let url = database_url.as_deref().unwrap_or_default();
                    return find_bench::run(url, n, iterations.max(1))
                        .await
                        .map(|()| true);
                }
                // The flags, with the other STEPGRAPH_* settings (AMQP prefix, expiry).
                let mut settings = Settings::load(None)?;
                settings.queue = queue.clone();
                settings.amqp_url = amqp_url.clone();
                let transport = settings.transport()?;
                if let Some(soak) = soak {
                    let url = database_url.as_deref().unwrap_or_default();
                    return bench::soak::run(url, &transport, soak, retention)
                        .await
                        .map(|()| true);
                }
                // The processes' settings for a bench of several processes.
                let mut env = vec![("STEPGRAPH_QUEUE", queue.clone())];
                if let Some(u) = &amqp_url {
                    env.push(("STEPGRAPH_AMQP_URL", u.clone()));
                }
                if no_eager_dispatch {
                    env.push(("STEPGRAPH_WORKER_EAGER_DISPATCH", "false".into()));
                }
                // The processes share the cores: one runtime thread each,
                // unless STEPGRAPH_THREADS says otherwise.
                let set = std::env::var("STEPGRAPH_THREADS").is_ok_and(|v| !v.is_empty());
                let threads = if set { settings.threads } else { 1 };
                env.push(("STEPGRAPH_THREADS", threads.to_string()));
                if let Some(language) = language {
                    let Some(url) = database_url.as_deref() else {
                        return bench::language::embedded(language, iterations.max(1), warmup)
                            .await
                            .map(|()| true);
                    };
                    // On RabbitMQ, the PostgreSQL queue's rows first, as
                    // the other database benches print them beside.
                    let mut queues = vec![("PostgreSQL", env.clone())];
                    if matches!(transport, stepgraph_worker::Transport::RabbitMq(_)) {
                        queues[0].1[0].1 = "postgres".into();
                        queues.push(("RabbitMQ", env));
                    }
                    return bench::language_workers::run(
                        language,
                        url,
                        &queues,
                        iterations.max(1),
                        warmup,
                    )
                    .await
                    .map(|()| true);
                }
                if cluster {
                    let url = database_url.as_deref().unwrap_or_default();
                    return cluster::run(url, &env, iterations.max(1), warmup, throughput)
                        .await
                        .map(|()| true);
                }
                let label = match runtime {
                    RuntimeKind::CurrentThread => "current-thread",
                    RuntimeKind::MultiThread => "multi-thread",
                };
                bench::run(bench::Options {
                    iterations: iterations.max(1),
                    warmup,
                    only: scenario.as_deref(),
                    runtime: label,
                    database_url: database_url.as_deref(),
                    throughput,
                    transport,
                    eager_dispatch: !no_eager_dispatch,
                    history,
                })
                .await
                .map(|()| true)
            }
        }
    });
    // Spans still buffered go out before the process ends.
    stepgraph_engine::trace::flush();
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => report(e),
    }
}

/// An error on one line of standard error, and the failure exit code.
fn report(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {}", format!("{e:#}").replace('\n', "; "));
    ExitCode::FAILURE
}

fn validate(files: &[PathBuf]) -> Result<bool> {
    let mut ok = true;
    for f in files {
        match TaskTemplate::from_file(f) {
            Ok(t) => println!(
                "ok    {} ({}, {} steps)",
                f.display(),
                t.key(),
                t.steps.len()
            ),
            Err(errors) => {
                ok = false;
                for e in errors.0 {
                    println!("error {e}");
                }
            }
        }
    }
    Ok(ok)
}

async fn run(path: PathBuf, context: &str, timeout: Duration) -> Result<bool> {
    let context: Value = serde_json::from_str(context).context("--context is not valid JSON")?;
    let template = TaskTemplate::from_file(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (namespace, name) = (template.namespace.clone(), template.name.clone());
    let mut templates = TemplateRegistry::new();
    templates
        .register(template)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let engine = Engine::embedded(templates, examples::registry(), EngineConfig::default());
    let created = engine
        .submit(TaskRequest::new(&namespace, &name, context))
        .await?;
    let report = engine.wait(created.task_id, timeout).await?;
    engine.shutdown().await;

    println!(
        "task {} {namespace}/{name}: {}",
        report.task.id, report.task.state
    );
    match report.task.state {
        TaskState::Complete => println!(
            "result: {}",
            serde_json::to_string_pretty(report.result().unwrap_or(&Value::Null))?
        ),
        _ => {
            if let Some(err) = &report.task.error {
                println!("error: {}", serde_json::to_string_pretty(err)?);
            }
        }
    }
    println!();
    println!(
        "{:<28} {:<27} {:>8} {:>12} {:>12}",
        "step", "state", "attempts", "started", "duration"
    );
    let ms = |d: Option<Duration>| {
        d.map_or("-".to_string(), |d| {
            format!("{:.3} ms", d.as_secs_f64() * 1e3)
        })
    };
    for row in report.timeline() {
        println!(
            "{:<28} {:<27} {:>8} {:>12} {:>12}",
            row.step,
            row.state.to_string(),
            row.attempts,
            ms(row.started),
            ms(row.duration())
        );
    }
    if report.task.state != TaskState::Complete {
        bail!("task ended {}", report.task.state);
    }
    Ok(true)
}
