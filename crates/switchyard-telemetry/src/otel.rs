//! Logs on stdout and spans over OTLP.

use std::time::Duration;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Human-readable text.
    Text,
}

/// OTLP transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum OtlpProtocol {
    /// gRPC (port 4317 by convention).
    #[serde(rename = "grpc")]
    Grpc,
    /// HTTP with protobuf bodies (port 4318, path `/v1/traces`).
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// Where spans go.
#[derive(Clone, PartialEq)]
pub struct OtlpSettings {
    /// The collector: for gRPC `http://host:4317`; for HTTP the base
    /// `http://host:4318` (`/v1/traces` is added) or the full traces URL.
    /// `None`: the standard `OTEL_EXPORTER_OTLP_*` variables decide.
    pub endpoint: Option<String>,
    /// Headers (gRPC metadata) sent with each export, names in lower case;
    /// their values are never shown by `Debug`.
    pub headers: Vec<(String, String)>,
    /// The transport.
    pub protocol: OtlpProtocol,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// Longest wait for one export.
    pub timeout: Duration,
    /// Delay between batch exports (`None`: `OTEL_BSP_SCHEDULE_DELAY`, else 5 s).
    pub batch_delay: Option<Duration>,
}

impl std::fmt::Debug for OtlpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpSettings")
            .field("endpoint", &self.endpoint)
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            )
            .field("protocol", &self.protocol)
            .field("service_name", &self.service_name)
            .field("timeout", &self.timeout)
            .field("batch_delay", &self.batch_delay)
            .finish()
    }
}

/// Logs and traces.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    /// Log line format.
    pub format: LogFormat,
    /// `RUST_LOG`-style filter for log lines (the variable wins when set).
    pub filter: String,
    /// Span export, when configured.
    pub otlp: Option<OtlpSettings>,
}

/// Errors setting up telemetry.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built.
    #[error("OTLP exporter: {0}")]
    Exporter(String),
    /// A global subscriber was already installed.
    #[error("cannot install the log subscriber: {0}")]
    Subscriber(String),
    /// The request log could not be opened.
    #[error("request log: {0}")]
    RequestLog(String),
}

/// Holds the span exporter. Call [`TelemetryGuard::shutdown`] before the
/// process exits to export what is queued; dropping the guard does not (a
/// flush blocks, which a drop inside the runtime must not).
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports every span still queued, then stops the exporter. Blocks; call
    /// from a blocking thread.
    pub fn shutdown(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.force_flush() {
                tracing::warn!(error = %e, "cannot flush spans");
            }
            if let Err(e) = provider.shutdown() {
                tracing::debug!(error = %e, "span exporter shutdown");
            }
        }
    }

    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

fn exporter(settings: &OtlpSettings) -> Result<SpanExporter, TelemetryError> {
    let built = match settings.protocol {
        OtlpProtocol::Grpc => {
            let mut b = SpanExporter::builder().with_tonic().with_timeout(settings.timeout);
            if let Some(endpoint) = &settings.endpoint {
                b = b.with_endpoint(endpoint.clone());
            }
            if !settings.headers.is_empty() {
                use opentelemetry_otlp::WithTonicConfig as _;
                use opentelemetry_otlp::tonic_types::metadata::MetadataMap;
                let mut headers = http::HeaderMap::new();
                for (name, value) in &settings.headers {
                    let key = http::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| TelemetryError::Exporter(format!("header `{name}` is not a valid name")))?;
                    let value = http::HeaderValue::from_str(value)
                        .map_err(|_| TelemetryError::Exporter(format!("header `{name}` has an invalid value")))?;
                    headers.insert(key, value);
                }
                b = b.with_metadata(MetadataMap::from_headers(headers));
            }
            b.build()
        }
        OtlpProtocol::HttpProtobuf => {
            let mut b = SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_timeout(settings.timeout);
            if let Some(endpoint) = &settings.endpoint {
                let endpoint = endpoint.trim_end_matches('/');
                let full = if endpoint.ends_with("/v1/traces") {
                    endpoint.to_owned()
                } else {
                    format!("{endpoint}/v1/traces")
                };
                b = b.with_endpoint(full);
            }
            if !settings.headers.is_empty() {
                use opentelemetry_otlp::WithHttpConfig as _;
                b = b.with_headers(settings.headers.iter().cloned().collect());
            }
            b.build()
        }
    };
    built.map_err(|e| TelemetryError::Exporter(e.to_string()))
}

/// Installs the process's log subscriber and, with `otlp`, the span
/// exporter. Must run inside a Tokio runtime (the exporter runs on it).
pub fn init_tracing(settings: &TracingSettings) -> Result<TelemetryGuard, TelemetryError> {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.filter));
    let logs = match settings.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .fmt_fields(crate::log_fields::AppendJsonFields)
            .with_writer(std::io::stdout)
            .with_filter(filter())
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stdout)
            .with_ansi(false)
            .with_filter(filter())
            .boxed(),
    };
    let (otel, provider) = match &settings.otlp {
        Some(otlp) => {
            let exporter = exporter(otlp)?;
            let mut config = opentelemetry_sdk::trace::BatchConfigBuilder::default();
            if let Some(delay) = otlp.batch_delay {
                config = config.with_scheduled_delay(delay);
            }
            let batch = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio)
                .with_batch_config(config.build())
                .build();
            let provider = SdkTracerProvider::builder()
                .with_span_processor(batch)
                .with_resource(Resource::builder().with_service_name(otlp.service_name.clone()).build())
                .build();
            let tracer = provider.tracer("switchyard");
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_location(false)
                .with_threads(false)
                .with_target(false)
                .with_tracked_inactivity(false)
                .with_filter(tracing_subscriber::filter::filter_fn(exported))
                .boxed();
            (Some(layer), Some(provider))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(logs)
        .with(otel)
        .try_init()
        .map_err(|e| TelemetryError::Subscriber(e.to_string()))?;
    Ok(TelemetryGuard { provider })
}

/// What goes to the collector: the gateway's spans, and its events at info
/// level and above as span events. Payload events (`log_payloads`) and debug
/// events, which may quote a request body, stay in the local log.
fn exported(meta: &tracing::Metadata<'_>) -> bool {
    meta.target().starts_with("switchyard")
        && (meta.is_span() || (*meta.level() <= tracing::Level::INFO && meta.target() != "switchyard::payload"))
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Sets an attribute on `span`'s exported (OpenTelemetry) span only: unlike
/// a `tracing` field, it never reaches the local log, whatever its level.
/// For what only the trace backend may see (captured prompts and answers).
pub fn set_exported_attribute(span: &tracing::Span, key: &'static str, value: String) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    span.set_attribute(key, value);
}

/// The trace context a client sent in `traceparent` (and `tracestate`);
/// an empty context when it sent none or an invalid one.
pub fn parent_context(headers: &http::HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract_with_context(&opentelemetry::Context::new(), &Headers(headers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt as _;

    #[test]
    fn traceparent_is_read_and_garbage_ignored() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let cx = parent_context(&headers);
        let span = cx.span();
        let sc = span.span_context();
        assert!(sc.is_valid() && sc.is_remote());
        assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        headers.insert("traceparent", http::HeaderValue::from_static("garbage"));
        assert!(!parent_context(&headers).span().span_context().is_valid());
    }
}
