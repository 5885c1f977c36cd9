//! Trace context: the W3C `traceparent` a task is created with (or a fresh
//! trace), kept with the task so that every process that works on it puts
//! its spans in the same trace, and the spans themselves as plain records.
//!
//! A task's span starts in the process that creates it and ends in
//! whichever process commits its last transition, so spans are records
//! with their ids and times chosen here, handed to the [`SpanSink`] a
//! process installs (the worker crate's OTLP exporter). Without one,
//! nothing is recorded and a task gets a trace context only when its
//! creator passed one in.

use serde::{Deserialize, Serialize};
use std::sync::OnceLock;
use std::time::SystemTime;

/// A task's place in a trace: the trace, the task's own span, and the span
/// it continues (the `traceparent` it was created with), as lowercase hex.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskTrace {
    /// 32 hex digits.
    pub trace_id: String,
    /// The task's span: 16 hex digits.
    pub span_id: String,
    /// The caller's span the task continues, if it was created with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<String>,
    /// Whether the trace is recorded (the caller's sampled flag; true for a
    /// trace started here).
    pub sampled: bool,
}

impl TaskTrace {
    /// A task's trace: continuing `traceparent` if given (its trace, the
    /// caller's span as parent); else a new trace when spans are recorded
    /// here; else none.
    pub fn for_new_task(traceparent: Option<&str>) -> Result<Option<TaskTrace>, String> {
        let span_id = hex16(new_span_id());
        match traceparent {
            Some(tp) => {
                let parent = TraceParent::parse(tp)?;
                Ok(Some(TaskTrace {
                    trace_id: format!("{:032x}", parent.trace_id),
                    span_id,
                    parent_span_id: Some(hex16(parent.span_id)),
                    sampled: parent.sampled,
                }))
            }
            None if enabled() => Ok(Some(TaskTrace {
                trace_id: format!("{:032x}", new_trace_id()),
                span_id,
                parent_span_id: None,
                sampled: true,
            })),
            None => Ok(None),
        }
    }

    /// The task span's context, for the spans and handlers under it.
    pub fn parent(&self) -> Option<TraceParent> {
        Some(TraceParent {
            trace_id: u128::from_str_radix(&self.trace_id, 16).ok()?,
            span_id: u64::from_str_radix(&self.span_id, 16).ok()?,
            sampled: self.sampled,
        })
    }
}

/// A span's context as W3C Trace Context carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
}

impl TraceParent {
    /// Parses a `traceparent` header value (version 00, or a later version
    /// read as 00 as the specification asks); the error names what is wrong.
    pub fn parse(value: &str) -> Result<TraceParent, String> {
        let bad = |why: &str| {
            format!("traceparent {value:?} is not a W3C traceparent (00-<32 hex trace id>-<16 hex span id>-<2 hex flags>): {why}")
        };
        let value = value.trim();
        let mut parts = value.split('-');
        let (Some(version), Some(trace), Some(span), Some(flags)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("it has fewer than four parts"));
        };
        let is_hex = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !is_hex(version, 2) || version == "ff" {
            return Err(bad(
                "the version is not two lowercase hex digits other than ff",
            ));
        }
        if version == "00" && parts.next().is_some() {
            return Err(bad("version 00 has exactly four parts"));
        }
        if !is_hex(trace, 32) || !is_hex(span, 16) || !is_hex(flags, 2) {
            return Err(bad(
                "an id or the flags have the wrong length or are not lowercase hex",
            ));
        }
        let trace_id = u128::from_str_radix(trace, 16).map_err(|e| bad(&e.to_string()))?;
        let span_id = u64::from_str_radix(span, 16).map_err(|e| bad(&e.to_string()))?;
        if trace_id == 0 || span_id == 0 {
            return Err(bad("an all-zero id is invalid"));
        }
        let flags = u8::from_str_radix(flags, 16).map_err(|e| bad(&e.to_string()))?;
        Ok(TraceParent {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The same trace, another span (a child's context).
    pub fn child(&self, span_id: u64) -> TraceParent {
        TraceParent { span_id, ..*self }
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.sampled as u8
        )
    }
}

fn hex16(id: u64) -> String {
    format!("{id:016x}")
}

/// A random, non-zero span id.
pub fn new_span_id() -> u64 {
    loop {
        let id = uuid::Uuid::new_v4().as_u64_pair().1;
        if id != 0 {
            return id;
        }
    }
}

fn new_trace_id() -> u128 {
    uuid::Uuid::new_v4().as_u128()
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_string())
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}

/// One finished span.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    pub context: TraceParent,
    pub parent_span_id: Option<u64>,
    /// The parent lives in another process (the task's creator's caller).
    pub parent_is_remote: bool,
    pub name: String,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Value)>,
    /// Set when the span's work failed: the status message.
    pub error: Option<String>,
}

/// Where finished spans go (the OTLP exporter).
pub trait SpanSink: Send + Sync {
    fn export(&self, span: SpanRecord);
    /// Sends what is buffered; called before a process exits.
    fn flush(&self);
}

static SINK: OnceLock<Box<dyn SpanSink>> = OnceLock::new();

/// Makes `sink` this process's; false when one is installed already.
pub fn install(sink: Box<dyn SpanSink>) -> bool {
    SINK.set(sink).is_ok()
}

/// Whether spans are recorded in this process.
pub fn enabled() -> bool {
    SINK.get().is_some()
}

/// Records `span` if spans are recorded here and its trace is sampled.
pub fn export(span: SpanRecord) {
    if let Some(sink) = SINK.get() {
        if span.context.sampled {
            sink.export(span);
        }
    }
}

/// Sends the spans buffered so far (before exit).
pub fn flush() {
    if let Some(sink) = SINK.get() {
        sink.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_and_bad_ones_are_named() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(tp).unwrap();
        assert_eq!(parsed.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(parsed.span_id, 0x00f067aa0ba902b7);
        assert!(parsed.sampled);
        assert_eq!(parsed.to_string(), tp);
        // A later version may carry more; its first four parts are read.
        assert!(TraceParent::parse(&format!("cc{}-what-ever", &tp[2..])).is_ok());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            let e = TraceParent::parse(bad).unwrap_err();
            assert!(e.contains("not a W3C traceparent"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_task_continues_the_callers_trace_under_its_own_span() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let trace = TaskTrace::for_new_task(Some(tp)).unwrap().unwrap();
        assert_eq!(trace.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(trace.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_ne!(trace.span_id, "00f067aa0ba902b7");
        assert!(!trace.sampled, "the caller did not sample it");
        let parent = trace.parent().unwrap();
        assert_eq!(
            parent.span_id,
            u64::from_str_radix(&trace.span_id, 16).unwrap()
        );
        // No sink in unit tests: without a traceparent there is no trace.
        assert_eq!(TaskTrace::for_new_task(None).unwrap(), None);
        assert!(TaskTrace::for_new_task(Some("nonsense")).is_err());
    }
}
