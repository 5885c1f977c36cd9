//! `stepgraph tasks list|show|retry|resolve|cancel` and `stepgraph
//! workers`: the HTTP API from a terminal. Tables for people by default,
//! the API's JSON with `--json` for scripts.

use crate::api_client::ApiClient;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Where the API is and who asks.
#[derive(Args)]
pub struct ApiArgs {
    /// The server (`serve`'s address).
    #[arg(
        long,
        env = "STEPGRAPH_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    /// A bearer token (see `stepgraph tokens new`).
    #[arg(long, env = "STEPGRAPH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

#[derive(Subcommand)]
pub enum TasksCommand {
    /// Finds tasks, newest first.
    List {
        /// Only tasks in this state (repeatable: error, complete, cancelled, steps_in_process, ...).
        #[arg(long)]
        state: Vec<String>,
        #[arg(long)]
        namespace: Option<String>,
        /// The template's name.
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        version: Option<String>,
        /// Only tasks with a step in error.
        #[arg(long)]
        failed_step: bool,
        /// Tasks per page (at most 500).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// The page after this one (the `next` a listing printed).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// A task: its steps, the timeline of every transition, errors with their tracebacks.
    Show { id: String },
    /// Retries a failed task's steps in error (or one, with --step), with fresh attempts.
    Retry {
        id: String,
        #[arg(long)]
        step: Option<String>,
        /// Why: recorded in the audit trail.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Ends a step by hand with a result its dependents run with.
    Resolve {
        id: String,
        #[arg(long)]
        step: String,
        /// The step's result, as JSON.
        #[arg(long)]
        result: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Cancels a task: its steps not started never run.
    Cancel {
        id: String,
        /// Why: recorded in the audit trail.
        #[arg(long)]
        reason: Option<String>,
    },
}

pub(crate) fn client(api: &ApiArgs) -> Result<ApiClient> {
    ApiClient::new(&api.server, api.token.clone())
}

pub(crate) fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// The first line of a JSON error, cut to `max` characters.
fn short(v: &Value, max: usize) -> String {
    let text = match v {
        Value::Null => return String::new(),
        Value::String(s) => s.clone(),
        other => other
            .get("message")
            .or_else(|| other.get("error").and_then(|e| e.get("message")))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| other.to_string()),
    };
    let line = text.lines().next().unwrap_or_default();
    match line.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line.to_string(),
    }
}

pub(crate) fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Rows under a header, each column as wide as its widest cell.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

fn query(pairs: &[(&str, String)]) -> String {
    let encoded = serde_urlencoded::to_string(pairs).unwrap_or_default();
    if encoded.is_empty() {
        String::new()
    } else {
        format!("?{encoded}")
    }
}

pub async fn tasks(api: &ApiArgs, command: TasksCommand) -> Result<bool> {
    let c = client(api)?;
    match command {
        TasksCommand::List {
            state,
            namespace,
            name,
            version,
            failed_step,
            limit,
            cursor,
        } => {
            let mut pairs: Vec<(&str, String)> = state.into_iter().map(|s| ("state", s)).collect();
            for (key, value) in [
                ("namespace", namespace),
                ("name", name),
                ("version", version),
                ("cursor", cursor),
            ] {
                if let Some(v) = value {
                    pairs.push((key, v));
                }
            }
            if failed_step {
                pairs.push(("has_failed_step", "true".into()));
            }
            pairs.push(("limit", limit.to_string()));
            let page = c
                .call("GET", &format!("/v1/tasks{}", query(&pairs)), None)
                .await?;
            if api.json {
                print_json(&page);
                return Ok(true);
            }
            let rows: Vec<Vec<String>> = page["tasks"]
                .as_array()
                .context("no tasks in the answer")?
                .iter()
                .map(|t| {
                    vec![
                        s(&t["id"]),
                        s(&t["state"]),
                        format!(
                            "{}/{}@{}",
                            s(&t["namespace"]),
                            s(&t["name"]),
                            s(&t["version"])
                        ),
                        s(&t["created_at"]),
                        short(&t["error"], 60),
                    ]
                })
                .collect();
            table(&["ID", "STATE", "TEMPLATE", "CREATED", "ERROR"], &rows);
            if let Some(next) = page["next_cursor"].as_str() {
                println!("\nmore: stepgraph tasks list ... --cursor {next}");
            }
        }
        TasksCommand::Show { id } => {
            let t = c.call("GET", &format!("/v1/tasks/{id}"), None).await?;
            if api.json {
                print_json(&t);
                return Ok(true);
            }
            show(&t);
        }
        TasksCommand::Retry { id, step, reason } => {
            let path = match &step {
                Some(step) => format!("/v1/tasks/{id}/steps/{step}/retry"),
                None => format!("/v1/tasks/{id}/retry"),
            };
            let done = c
                .call("POST", &path, Some(&json!({ "reason": reason })))
                .await?;
            report(api, &done);
        }
        TasksCommand::Resolve {
            id,
            step,
            result,
            reason,
        } => {
            let result: Value = serde_json::from_str(&result)
                .with_context(|| format!("--result is not JSON: {result}"))?;
            let body = json!({ "result": result, "reason": reason });
            let done = c
                .call(
                    "POST",
                    &format!("/v1/tasks/{id}/steps/{step}/resolve"),
                    Some(&body),
                )
                .await?;
            report(api, &done);
        }
        TasksCommand::Cancel { id, reason } => {
            let body = json!({ "reason": reason });
            let done = c
                .call("POST", &format!("/v1/tasks/{id}/cancel"), Some(&body))
                .await?;
            report(api, &done);
        }
    }
    Ok(true)
}

fn report(api: &ApiArgs, done: &Value) {
    if api.json {
        print_json(done);
    } else {
        println!("task {}: {}", s(&done["task_id"]), s(&done["state"]));
    }
}

fn show(t: &Value) {
    println!("task      {}", s(&t["id"]));
    println!(
        "template  {}/{}@{}",
        s(&t["namespace"]),
        s(&t["name"]),
        s(&t["version"])
    );
    println!("state     {}", s(&t["state"]));
    println!("created   {}", s(&t["created_at"]));
    println!("ended     {}", s(&t["completed_at"]));
    if !t["result"].is_null() {
        println!("result    {}", t["result"]);
    }
    if !t["error"].is_null() {
        println!("error     {}", t["error"]);
    }
    let steps = t["steps"].as_array().cloned().unwrap_or_default();
    println!();
    let rows: Vec<Vec<String>> = steps
        .iter()
        .map(|st| {
            let state = match st["waiting_for_handler"].as_str() {
                Some(h) => format!(
                    "{} (waiting for a worker with handler {h})",
                    s(&st["state"])
                ),
                None => s(&st["state"]),
            };
            vec![
                s(&st["name"]),
                state,
                format!("{}/{}", s(&st["attempts"]), s(&st["max_attempts"])),
                short(&st["error"], 70),
            ]
        })
        .collect();
    table(&["STEP", "STATE", "ATTEMPTS", "ERROR"], &rows);
    for st in &steps {
        if let Some(trace) = st["error"]["backtrace"].as_str() {
            println!(
                "\n{} failed: {}\n{trace}",
                s(&st["name"]),
                s(&st["error"]["message"])
            );
        }
    }
    // Every transition of the task and its steps, in time order.
    let mut timeline: Vec<(String, String, String, String)> = Vec::new();
    for tr in t["transitions"]["task"].as_array().into_iter().flatten() {
        timeline.push((
            s(&tr["at"]),
            "(task)".into(),
            format!("{} -> {}", s(&tr["from"]), s(&tr["to"])),
            meta(&tr["metadata"]),
        ));
    }
    for tr in t["transitions"]["steps"].as_array().into_iter().flatten() {
        timeline.push((
            s(&tr["at"]),
            s(&tr["step_name"]),
            format!("{} -> {}", s(&tr["from"]), s(&tr["to"])),
            meta(&tr["metadata"]),
        ));
    }
    // Stable: rows of one moment keep the order they were written in.
    timeline.sort_by(|a, b| a.0.cmp(&b.0));
    println!();
    let rows: Vec<Vec<String>> = timeline
        .into_iter()
        .map(|(at, who, what, why)| vec![at, who, what, why])
        .collect();
    table(&["AT", "STEP", "TRANSITION", "DETAIL"], &rows);
}

/// An audit row's metadata, shortened (`{}` as nothing).
fn meta(v: &Value) -> String {
    match v.as_object() {
        Some(m) if m.is_empty() => String::new(),
        None if v.is_null() => String::new(),
        _ => short(&Value::String(v.to_string()), 80),
    }
}

pub async fn workers(api: &ApiArgs) -> Result<bool> {
    let all = client(api)?.call("GET", "/v1/workers", None).await?;
    if api.json {
        print_json(&all);
        return Ok(true);
    }
    let rows: Vec<Vec<String>> = all["workers"]
        .as_array()
        .context("no workers in the answer")?
        .iter()
        .map(|w| {
            let handlers: Vec<String> = w["handlers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(s)
                .collect();
            vec![
                s(&w["id"]),
                s(&w["state"]),
                s(&w["language"]),
                format!("{}:{}", s(&w["host"]), s(&w["pid"])),
                s(&w["concurrency"]),
                s(&w["heartbeat_at"]),
                short(&Value::String(handlers.join(",")), 50),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "STATE",
            "LANGUAGE",
            "HOST:PID",
            "SLOTS",
            "LAST HEARTBEAT",
            "HANDLERS",
        ],
        &rows,
    );
    Ok(true)
}
