//! How long ended tasks are kept. A template may keep its tasks for a time
//! of its own (`retention: 7d`, `failed_retention: 90d`); the rest follow the
//! process's default. A task that ended in Error is kept for the failed
//! time (someone may still want to look at it), any other ended task for the
//! ended time. What has expired is removed, audit trail and all, or archived
//! first, by [`crate::Store::expire`].

use serde::{Deserialize, Deserializer};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// How long to keep an ended task: a time (`"7d"`, `"12h"`, `"90m"`) or `"forever"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    For(Duration),
    Forever,
}

impl Keep {
    /// The time in seconds, or None for ever.
    pub fn seconds(self) -> Option<f64> {
        match self {
            Keep::For(d) => Some(d.as_secs_f64()),
            Keep::Forever => None,
        }
    }
}

impl FromStr for Keep {
    type Err = String;

    fn from_str(text: &str) -> Result<Keep, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("forever") {
            return Ok(Keep::Forever);
        }
        let d = humantime::parse_duration(text).map_err(|e| {
            format!(
                "retention {text:?}: {e} (expected a time such as \"7d\", \"12h\" or \"forever\")"
            )
        })?;
        if d.is_zero() {
            return Err(format!(
                "retention {text:?} must be longer than zero (\"forever\" keeps everything)"
            ));
        }
        Ok(Keep::For(d))
    }
}

/// A time as a setting is written: the largest whole unit (`30d`, `12h`,
/// `90m`, `45s`), seconds' fractions left out.
pub fn short(d: Duration) -> String {
    let secs = d.as_secs();
    match [(86_400, "d"), (3_600, "h"), (60, "m")]
        .into_iter()
        .find(|(unit, _)| secs >= *unit && secs % unit == 0)
    {
        Some((unit, name)) => format!("{}{name}", secs / unit),
        None => format!("{secs}s"),
    }
}

/// An age as a person reads it: in days from two days on, else hours,
/// else minutes, else seconds.
pub fn age(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 2 * 3_600 => format!("{} hours", s / 3_600),
        s if s >= 120 => format!("{} minutes", s / 60),
        s => format!("{s} seconds"),
    }
}

impl fmt::Display for Keep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Keep::For(d) => f.write_str(&short(*d)),
            Keep::Forever => f.write_str("forever"),
        }
    }
}

impl<'de> Deserialize<'de> for Keep {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Keep, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// What is kept of ended tasks: those that ended in Error for `failed`,
/// the others (Complete, Cancelled, ResolvedManually) for `ended`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub ended: Keep,
    pub failed: Keep,
}

/// A month for what went well, three for what failed: long enough to look
/// into last month's incident, short enough that history stays bounded.
pub const DEFAULT_ENDED: Keep = Keep::For(Duration::from_secs(30 * 86_400));
pub const DEFAULT_FAILED: Keep = Keep::For(Duration::from_secs(90 * 86_400));

impl Default for Retention {
    fn default() -> Self {
        Retention {
            ended: DEFAULT_ENDED,
            failed: DEFAULT_FAILED,
        }
    }
}

/// One template version's own retention (its `retention` and
/// `failed_retention`, each falling back to the default's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateRetention {
    pub namespace: String,
    pub name: String,
    pub version: String,
    pub keep: Retention,
}

/// Everything [`crate::Store::expire`] needs: the default, every template
/// version that differs from it, and whether to archive before removing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expiry {
    pub default: Retention,
    pub templates: Vec<TemplateRetention>,
    pub archive: bool,
}

impl Expiry {
    /// The retention of a task of that template version.
    pub fn of(&self, namespace: &str, name: &str, version: &str) -> Retention {
        self.templates
            .iter()
            .find(|t| t.namespace == namespace && t.name == name && t.version == version)
            .map_or(self.default, |t| t.keep)
    }

    /// The shortest time any ended task is kept; None when nothing ever expires.
    pub fn shortest(&self) -> Option<Duration> {
        std::iter::once(&self.default)
            .chain(self.templates.iter().map(|t| &t.keep))
            .flat_map(|r| [r.ended, r.failed])
            .filter_map(|k| match k {
                Keep::For(d) => Some(d),
                Keep::Forever => None,
            })
            .min()
    }
}

/// What one [`crate::Store::rotate`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rotation {
    /// History partitions made ahead.
    pub created: u64,
    /// History partitions dropped, with every audit row in them.
    pub dropped: u64,
    /// Audit rows of tasks still kept, moved out of dropped partitions.
    pub moved: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_forever_parse() {
        assert_eq!(
            "7d".parse::<Keep>(),
            Ok(Keep::For(Duration::from_secs(7 * 86_400)))
        );
        assert_eq!(
            "90m".parse::<Keep>(),
            Ok(Keep::For(Duration::from_secs(5400)))
        );
        assert_eq!("Forever".parse::<Keep>(), Ok(Keep::Forever));
        assert_eq!(Keep::For(Duration::from_secs(86_400)).to_string(), "1d");
        assert_eq!(Keep::For(Duration::from_secs(5400)).to_string(), "90m");
        assert_eq!(Keep::For(Duration::from_millis(1500)).to_string(), "1s");
        assert_eq!(age(Duration::from_secs(119 * 86_400 + 70_000)), "119 days");
        assert_eq!(age(Duration::from_secs(100)), "100 seconds");
    }

    #[test]
    fn nonsense_and_zero_are_refused_with_the_text() {
        let e = "soon".parse::<Keep>().unwrap_err();
        assert!(e.contains("\"soon\""), "{e}");
        let e = "0s".parse::<Keep>().unwrap_err();
        assert!(e.contains("longer than zero"), "{e}");
    }

    #[test]
    fn a_template_rule_overrides_the_default() {
        let own = Retention {
            ended: Keep::For(Duration::from_secs(60)),
            failed: Keep::Forever,
        };
        let expiry = Expiry {
            templates: vec![TemplateRetention {
                namespace: "ns".into(),
                name: "t".into(),
                version: "1".into(),
                keep: own,
            }],
            ..Expiry::default()
        };
        assert_eq!(expiry.of("ns", "t", "1"), own);
        assert_eq!(expiry.of("ns", "t", "2"), Retention::default());
        assert_eq!(expiry.shortest(), Some(Duration::from_secs(60)));
    }
}
