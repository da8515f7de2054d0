//! Observability for Switchyard.
//!
//! - [`Metrics`]: Prometheus metrics, recorded through the `metrics` facade
//!   into a recorder this value owns (nothing global), rendered for `/metrics`.
//! - [`init_tracing`]: JSON (or text) logs on stdout, and spans exported with
//!   OpenTelemetry over OTLP (gRPC or HTTP/protobuf).
//! - [`parent_context`]: a client's W3C `traceparent`, to continue its trace.
//! - [`RequestLog`]: one record per finished request, and feedback on it, in a
//!   rotating JSONL file or a Redis stream: what router training reads.

mod log_fields;
mod metrics_registry;
mod otel;
mod request_log;

pub use metrics_registry::{InFlightGuard, Metrics};
pub use otel::{
    LogFormat, OtlpProtocol, OtlpSettings, TelemetryError, TelemetryGuard, TracingSettings, init_tracing,
    parent_context, set_exported_attribute,
};
pub use request_log::{Feedback, LogSink, RequestLog, RequestLogSettings, RequestRecord, key_ref};
