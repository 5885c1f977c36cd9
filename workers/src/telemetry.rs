//! The OTLP exporter of the engine's spans (`STEPGRAPH_OTLP_ENDPOINT`, off
//! by default): each finished span becomes the OpenTelemetry SDK's span data
//! and goes out through its batch processor over OTLP/HTTP (protobuf).
//!
//! The engine chooses its spans' ids and times itself (a task's span starts
//! in the process that creates the task and ends in the one that commits its
//! end), so spans are handed to the SDK's processor finished, not made with
//! its tracer; batching, retries, limits and the protocol are the SDK's.

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::trace::{BatchSpanProcessor, SpanData, SpanProcessor};
use opentelemetry_sdk::Resource;
use stepgraph_engine::trace::{self, SpanRecord, SpanSink, Value};

/// The environment variable that turns tracing on: the collector's OTLP/HTTP
/// address, e.g. `http://127.0.0.1:4318` (`/v1/traces` is added unless the
/// address ends with it).
pub const ENDPOINT_VAR: &str = "STEPGRAPH_OTLP_ENDPOINT";

struct Otlp {
    processor: BatchSpanProcessor,
    scope: InstrumentationScope,
}

impl SpanSink for Otlp {
    fn export(&self, span: SpanRecord) {
        self.processor.on_end(span_data(span, &self.scope));
    }

    fn flush(&self) {
        if let Err(e) = self.processor.force_flush() {
            tracing::warn!(error = %e, "flushing the spans to the OTLP endpoint failed");
        }
    }
}

/// Installs the OTLP exporter when [`ENDPOINT_VAR`] is set, once per
/// process (later calls do nothing); `service` names the process kind
/// (`stepgraph-serve`, `stepgraph-worker`, `stepgraph-python`, ...).
/// Whether spans are recorded; an error names a bad address.
pub fn init_from_env(service: &str) -> Result<bool, String> {
    if trace::enabled() {
        return Ok(true);
    }
    match std::env::var(ENDPOINT_VAR) {
        Ok(endpoint) if !endpoint.trim().is_empty() => {
            init(&endpoint, service)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Installs the exporter sending to `endpoint` (see [`ENDPOINT_VAR`]).
pub fn init(endpoint: &str, service: &str) -> Result<(), String> {
    let endpoint = endpoint.trim().trim_end_matches('/');
    let url = if endpoint.ends_with("/v1/traces") {
        endpoint.to_string()
    } else {
        format!("{endpoint}/v1/traces")
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!(
            "{ENDPOINT_VAR} {endpoint:?} is not an http:// or https:// address of an OTLP/HTTP collector"
        ));
    }
    let exporter = SpanExporter::builder()
        .with_http()
        .with_endpoint(&url)
        .build()
        .map_err(|e| format!("{ENDPOINT_VAR} {endpoint:?}: {e}"))?;
    let mut processor = BatchSpanProcessor::builder(exporter).build();
    processor.set_resource(
        &Resource::builder()
            .with_service_name(service.to_string())
            .build(),
    );
    let scope = InstrumentationScope::builder("stepgraph")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    if trace::install(Box::new(Otlp { processor, scope })) {
        tracing::info!(%url, "spans are exported over OTLP");
    }
    Ok(())
}

fn span_data(span: SpanRecord, scope: &InstrumentationScope) -> SpanData {
    let flags = if span.context.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    SpanData {
        span_context: SpanContext::new(
            TraceId::from(span.context.trace_id),
            SpanId::from(span.context.span_id),
            flags,
            false,
            TraceState::default(),
        ),
        parent_span_id: span
            .parent_span_id
            .map(SpanId::from)
            .unwrap_or(SpanId::INVALID),
        parent_span_is_remote: span.parent_is_remote,
        span_kind: SpanKind::Internal,
        name: span.name.into(),
        start_time: span.start,
        end_time: span.end,
        attributes: span
            .attributes
            .into_iter()
            .map(|(key, value)| match value {
                Value::Str(s) => KeyValue::new(key, s),
                Value::Int(n) => KeyValue::new(key, n),
            })
            .collect(),
        dropped_attributes_count: 0,
        events: Default::default(),
        links: Default::default(),
        status: match span.error {
            Some(message) => Status::error(message),
            None => Status::Unset,
        },
        instrumentation_scope: scope.clone(),
    }
}
