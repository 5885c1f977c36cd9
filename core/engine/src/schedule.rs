//! Cron schedules: a template's tasks created at each tick of a cron
//! expression in a time zone. Parsing and the next tick are `croner`'s
//! (five or six fields, seconds optional, with its daylight-saving rules:
//! a tick in a skipped hour runs after the gap, one in a repeated hour
//! once); time zones are `chrono-tz`'s IANA database.
//!
//! Each tick creates its task with the idempotency key
//! [`tick_key`]`(schedule, tick)`, so two processes that fire the same tick,
//! or one that fires it again after a crash, make one task.

use chrono::{DateTime, Utc};
use croner::Cron;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::str::FromStr;

/// What a schedule does after downtime, with ticks missed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Missed ticks create nothing; the schedule goes on from the next one.
    #[default]
    Skip,
    /// One task for the latest missed tick, then on from the next one.
    Once,
}

/// Where a schedule was declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ScheduleSource {
    /// Through the API or the CLI.
    Api,
    /// In a template's `schedules` (kept in step with the template file).
    Template,
}

/// A schedule as asked for: through the API, or (without namespace and
/// template, which are its own) in a template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Unique; letters, digits, `.`, `_` and `-` (at most 128).
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[A-Za-z0-9._-]{1,128}$"))]
    pub name: String,
    /// The template's namespace.
    pub namespace: String,
    /// The template's name.
    pub template: String,
    /// The template's version (default: the latest when each tick fires).
    #[serde(default)]
    pub version: Option<String>,
    /// Five fields (minute ... weekday) or six (seconds first), e.g. `*/5 * * * *`.
    pub cron: String,
    /// An IANA time zone the expression is read in (default UTC).
    #[serde(default = "utc")]
    pub timezone: String,
    /// Each task's context.
    #[serde(default)]
    pub context: Value,
    #[serde(default)]
    pub catch_up: CatchUp,
}

/// The time zone a schedule is read in when it names none.
pub(crate) fn utc() -> String {
    "UTC".into()
}

/// A stored schedule: its definition and where it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Schedule {
    pub name: String,
    pub namespace: String,
    pub template: String,
    pub version: Option<String>,
    pub cron: String,
    pub timezone: String,
    pub context: Value,
    pub catch_up: CatchUp,
    pub source: ScheduleSource,
    pub paused: bool,
    /// The next tick (null while paused).
    pub next_run_at: Option<DateTime<Utc>>,
    /// The last tick that created a task (or tried to).
    pub last_run_at: Option<DateTime<Utc>>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<uuid::Uuid>))]
    pub last_task_id: Option<crate::TaskId>,
    /// Why the last tick made no task (an unknown template, a context its schema refuses).
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A field of a schedule that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ScheduleError {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> ScheduleError {
    ScheduleError {
        field,
        message: message.into(),
    }
}

/// The cron expression, read the one way every caller reads it.
pub fn parse_cron(expression: &str) -> Result<Cron, ScheduleError> {
    Cron::from_str(expression).map_err(|e| {
        invalid(
            "cron",
            format!("{expression:?} is not a cron expression: {e}"),
        )
    })
}

pub fn parse_timezone(name: &str) -> Result<chrono_tz::Tz, ScheduleError> {
    name.parse().map_err(|_| {
        invalid(
            "timezone",
            format!("{name:?} is not an IANA time zone (e.g. UTC, Europe/Berlin)"),
        )
    })
}

/// The idempotency key of the task a schedule's tick creates.
pub fn tick_key(schedule: &str, tick: DateTime<Utc>) -> String {
    format!(
        "schedule:{schedule}:{}",
        tick.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl ScheduleSpec {
    /// Every field checked; the first tick after `now`.
    pub fn into_schedule(
        self,
        source: ScheduleSource,
        now: DateTime<Utc>,
    ) -> Result<Schedule, ScheduleError> {
        if !valid_name(&self.name) {
            return Err(invalid(
                "name",
                format!(
                    "{:?} must be 1 to 128 letters, digits, '.', '_' or '-'",
                    self.name
                ),
            ));
        }
        for (field, value) in [("namespace", &self.namespace), ("template", &self.template)] {
            if value.is_empty() {
                return Err(invalid(field, "must not be empty"));
            }
        }
        let mut s = Schedule {
            name: self.name,
            namespace: self.namespace,
            template: self.template,
            version: self.version,
            cron: self.cron,
            timezone: self.timezone,
            context: self.context,
            catch_up: self.catch_up,
            source,
            paused: false,
            next_run_at: None,
            last_run_at: None,
            last_task_id: None,
            last_error: None,
            created_at: now,
            updated_at: now,
        };
        s.next_run_at = Some(s.next_after(now)?);
        Ok(s)
    }
}

impl Schedule {
    /// The first tick strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Result<DateTime<Utc>, ScheduleError> {
        let tz = parse_timezone(&self.timezone)?;
        parse_cron(&self.cron)?
            .find_next_occurrence(&t.with_timezone(&tz), false)
            .map(|next| next.with_timezone(&Utc))
            .map_err(|e| {
                invalid(
                    "cron",
                    format!("{:?} has no tick after {t}: {e}", self.cron),
                )
            })
    }

    /// The latest tick at or before `t`.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Result<DateTime<Utc>, ScheduleError> {
        let tz = parse_timezone(&self.timezone)?;
        parse_cron(&self.cron)?
            .find_previous_occurrence(&t.with_timezone(&tz), true)
            .map(|prev| prev.with_timezone(&Utc))
            .map_err(|e| {
                invalid(
                    "cron",
                    format!("{:?} has no tick before {t}: {e}", self.cron),
                )
            })
    }

    /// Whether `other` defines the same schedule (what it runs and when),
    /// whatever its state.
    pub fn same_definition(&self, other: &Schedule) -> bool {
        (
            &self.namespace,
            &self.template,
            &self.version,
            &self.cron,
            &self.timezone,
            &self.context,
            self.catch_up,
        ) == (
            &other.namespace,
            &other.template,
            &other.version,
            &other.cron,
            &other.timezone,
            &other.context,
            other.catch_up,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(cron: &str, timezone: &str) -> ScheduleSpec {
        serde_json::from_value(json!({
            "name": "s", "namespace": "ns", "template": "t", "cron": cron, "timezone": timezone
        }))
        .unwrap()
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn five_and_six_fields_in_a_time_zone() {
        let now = at("2026-03-01T10:00:00Z");
        let every5 = spec("*/5 * * * *", "UTC")
            .into_schedule(ScheduleSource::Api, now)
            .unwrap();
        assert_eq!(every5.next_run_at, Some(at("2026-03-01T10:05:00Z")));
        let seconds = spec("*/10 * * * * *", "UTC")
            .into_schedule(ScheduleSource::Api, now)
            .unwrap();
        assert_eq!(seconds.next_run_at, Some(at("2026-03-01T10:00:10Z")));
        // 09:00 in Berlin is 08:00 UTC in winter, 07:00 UTC in summer.
        let berlin = spec("0 9 * * *", "Europe/Berlin")
            .into_schedule(ScheduleSource::Api, now)
            .unwrap();
        assert_eq!(berlin.next_run_at, Some(at("2026-03-02T08:00:00Z")));
        assert_eq!(
            berlin.next_after(at("2026-04-01T00:00:00Z")).unwrap(),
            at("2026-04-01T07:00:00Z")
        );
    }

    #[test]
    fn daylight_saving_changes() {
        // Berlin skips 02:00-03:00 on 2026-03-29: a 02:30 job runs after the gap, once.
        let s = spec("30 2 * * *", "Europe/Berlin")
            .into_schedule(ScheduleSource::Api, at("2026-03-28T12:00:00Z"))
            .unwrap();
        let first = s.next_after(at("2026-03-28T12:00:00Z")).unwrap();
        assert_eq!(first, at("2026-03-29T01:00:00Z")); // 03:00 CEST, right after the gap
        assert_eq!(s.next_after(first).unwrap(), at("2026-03-30T00:30:00Z"));
        // It repeats 02:00-03:00 on 2026-10-25: a 02:30 job runs once.
        let autumn = s.next_after(at("2026-10-24T12:00:00Z")).unwrap();
        assert_eq!(autumn, at("2026-10-25T00:30:00Z")); // 02:30 CEST
        assert_eq!(s.next_after(autumn).unwrap(), at("2026-10-26T01:30:00Z"));
    }

    #[test]
    fn bad_fields_are_named() {
        let now = Utc::now();
        let e = spec("61 * * * *", "UTC")
            .into_schedule(ScheduleSource::Api, now)
            .unwrap_err();
        assert_eq!(e.field, "cron");
        let e = spec("* * * * *", "Mars/Olympus")
            .into_schedule(ScheduleSource::Api, now)
            .unwrap_err();
        assert_eq!(e.field, "timezone");
        let mut bad = spec("* * * * *", "UTC");
        bad.name = "has space".into();
        assert_eq!(
            bad.into_schedule(ScheduleSource::Api, now)
                .unwrap_err()
                .field,
            "name"
        );
        let e = serde_json::from_value::<ScheduleSpec>(json!({
            "name": "s", "namespace": "n", "template": "t", "cron": "* * * * *", "every": 5
        }))
        .unwrap_err();
        assert!(e.to_string().contains("every"), "{e}");
    }

    #[test]
    fn tick_keys_name_the_schedule_and_the_tick() {
        assert_eq!(
            tick_key("nightly", at("2026-03-01T10:00:00Z")),
            "schedule:nightly:2026-03-01T10:00:00Z"
        );
    }
}
