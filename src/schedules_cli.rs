//! `stepgraph schedules list|create|pause|resume|delete`: cron schedules
//! through the HTTP API, as tables or (`--json`) the API's JSON.

use crate::ops_cli::{client, print_json, s, table, ApiArgs};
use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum SchedulesCommand {
    /// Every schedule: its cron, time zone, next tick and last task.
    List,
    /// Creates a task of a template at each tick of a cron expression.
    Create {
        /// The schedule's name (letters, digits, '.', '_', '-').
        name: String,
        /// Five fields (minute ... weekday) or six (seconds first), e.g. "*/5 * * * *".
        #[arg(long)]
        cron: String,
        #[arg(long)]
        namespace: String,
        /// The template's name.
        #[arg(long)]
        template: String,
        #[arg(long)]
        version: Option<String>,
        /// An IANA time zone the expression is read in.
        #[arg(long, default_value = "UTC")]
        timezone: String,
        /// Each task's context, as JSON.
        #[arg(long, default_value = "{}")]
        context: String,
        /// After downtime: skip the missed ticks, or make one task for them (once).
        #[arg(long, default_value = "skip")]
        catch_up: String,
    },
    /// Stops its ticks until resumed.
    Pause { name: String },
    /// Goes on from the next tick.
    Resume { name: String },
    /// Deletes a schedule made through the API or this CLI.
    Delete { name: String },
}

pub async fn schedules(api: &ApiArgs, command: SchedulesCommand) -> Result<bool> {
    let c = client(api)?;
    let one = match command {
        SchedulesCommand::List => {
            let all = c.call("GET", "/v1/schedules", None).await?;
            if api.json {
                print_json(&all);
            } else {
                let rows: Vec<Vec<String>> = all["schedules"]
                    .as_array()
                    .context("no schedules in the answer")?
                    .iter()
                    .map(row)
                    .collect();
                table(HEADER, &rows);
            }
            return Ok(true);
        }
        SchedulesCommand::Create {
            name,
            cron,
            namespace,
            template,
            version,
            timezone,
            context,
            catch_up,
        } => {
            let context: Value = serde_json::from_str(&context)
                .with_context(|| format!("--context is not JSON: {context}"))?;
            let body = json!({
                "name": name, "cron": cron, "namespace": namespace, "template": template,
                "version": version, "timezone": timezone, "context": context, "catch_up": catch_up,
            });
            c.call("POST", "/v1/schedules", Some(&body)).await?
        }
        SchedulesCommand::Pause { name } => {
            c.call(
                "POST",
                &format!("/v1/schedules/{name}/pause"),
                Some(&json!({})),
            )
            .await?
        }
        SchedulesCommand::Resume { name } => {
            c.call(
                "POST",
                &format!("/v1/schedules/{name}/resume"),
                Some(&json!({})),
            )
            .await?
        }
        SchedulesCommand::Delete { name } => {
            c.call("DELETE", &format!("/v1/schedules/{name}"), None)
                .await?;
            println!("deleted {name}");
            return Ok(true);
        }
    };
    if api.json {
        print_json(&one);
    } else {
        table(HEADER, &[row(&one)]);
    }
    Ok(true)
}

const HEADER: &[&str] = &[
    "NAME",
    "TEMPLATE",
    "CRON",
    "TIMEZONE",
    "STATE",
    "NEXT",
    "LAST TASK",
    "SOURCE",
];

fn row(x: &Value) -> Vec<String> {
    let state = if x["paused"] == true {
        "paused"
    } else {
        "active"
    };
    let last = match (&x["last_task_id"], &x["last_error"]) {
        (_, Value::String(e)) => format!("error: {e}"),
        (id, _) => s(id),
    };
    vec![
        s(&x["name"]),
        format!("{}/{}", s(&x["namespace"]), s(&x["template"])),
        s(&x["cron"]),
        s(&x["timezone"]),
        state.into(),
        s(&x["next_run_at"]),
        last,
        s(&x["source"]),
    ]
}
