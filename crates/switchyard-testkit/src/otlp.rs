//! A small OTLP trace receiver, as an OpenTelemetry collector is: over
//! HTTP it accepts `POST …/v1/traces` with protobuf bodies (under any base
//! path, as hosted backends such as Langfuse serve it), over gRPC the
//! `TraceService/Export` call; it keeps the spans, and the headers each
//! HTTP export came with, for tests to inspect.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;
use tokio::task::JoinHandle;

/// One received span.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// The span's name.
    pub name: String,
    /// Trace id, 32 hex digits.
    pub trace_id: String,
    /// Span id, 16 hex digits.
    pub span_id: String,
    /// Parent span id, empty for a root span.
    pub parent_span_id: String,
    /// OTLP span kind (1 internal, 2 server, 3 client).
    pub kind: i32,
    /// Attributes, rendered as strings (integers in decimal).
    pub attributes: BTreeMap<String, String>,
    /// Status code (0 unset, 1 ok, 2 error).
    pub status: i32,
    /// The resource's `service.name`.
    pub service: String,
    /// The span's events, each its name then its attributes as `key=value`.
    pub events: Vec<String>,
}

impl ReceivedSpan {
    /// An attribute's value.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn render(value: Option<&Value>) -> String {
    match value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

type Spans = Arc<Mutex<Vec<ReceivedSpan>>>;

/// Each HTTP export's path and headers (names in lower case).
type Exports = Arc<Mutex<Vec<(String, Vec<(String, String)>)>>>;

/// The receiver; stops when dropped.
#[derive(Debug)]
pub struct OtlpReceiver {
    addr: SocketAddr,
    spans: Spans,
    exports: Exports,
    task: JoinHandle<()>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn traces(
    State((spans, exports)): State<(Spans, Exports)>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> (StatusCode, Vec<u8>) {
    if !uri.path().ends_with("/v1/traces") {
        return (StatusCode::NOT_FOUND, Vec::new());
    }
    exports.lock().unwrap_or_else(PoisonError::into_inner).push((
        uri.path().to_owned(),
        headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    ));
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, Vec::new());
    };
    keep(&spans, &request);
    (StatusCode::OK, ExportTraceServiceResponse::default().encode_to_vec())
}

struct Grpc(Spans);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        keep(&self.0, request.get_ref());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn keep(spans: &Spans, request: &ExportTraceServiceRequest) {
    let mut received = Vec::new();
    for resource in &request.resource_spans {
        let service = resource
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .map(|kv| render(kv.value.as_ref().and_then(|v| v.value.as_ref())))
            .unwrap_or_default();
        for scope in &resource.scope_spans {
            for span in &scope.spans {
                received.push(ReceivedSpan {
                    name: span.name.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    kind: span.kind,
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), render(kv.value.as_ref().and_then(|v| v.value.as_ref()))))
                        .collect(),
                    status: span.status.as_ref().map_or(0, |s| s.code),
                    service: service.clone(),
                    events: span
                        .events
                        .iter()
                        .map(|e| {
                            let mut line = e.name.clone();
                            for kv in &e.attributes {
                                line.push_str(&format!(
                                    " {}={}",
                                    kv.key,
                                    render(kv.value.as_ref().and_then(|v| v.value.as_ref()))
                                ));
                            }
                            line
                        })
                        .collect(),
                });
            }
        }
    }
    spans.lock().unwrap_or_else(PoisonError::into_inner).extend(received);
}

impl OtlpReceiver {
    /// Starts an OTLP/gRPC receiver on a free port of 127.0.0.1.
    pub async fn start_grpc() -> std::io::Result<OtlpReceiver> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let spans = Spans::default();
        let service = TraceServiceServer::new(Grpc(spans.clone()));
        let task = tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        Ok(OtlpReceiver {
            addr,
            spans,
            exports: Exports::default(),
            task,
        })
    }

    /// Starts an OTLP/HTTP receiver on a free port of 127.0.0.1.
    pub async fn start() -> std::io::Result<OtlpReceiver> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let spans = Spans::default();
        let exports = Exports::default();
        let app = Router::new()
            .fallback(post(traces))
            .with_state((spans.clone(), exports.clone()));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(OtlpReceiver {
            addr,
            spans,
            exports,
            task,
        })
    }

    /// The base URL (`http://127.0.0.1:port`); spans go to `/v1/traces` under it.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Each HTTP export received: its path and its headers.
    pub fn exports(&self) -> Vec<(String, Vec<(String, String)>)> {
        self.exports.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Waits until `ready` holds for the spans received, up to `max_wait`;
    /// panics with the spans seen if it never does (a test waiting for spans
    /// that never come must fail, not go on to check nothing).
    pub async fn wait_for(&self, max_wait: Duration, ready: impl Fn(&[ReceivedSpan]) -> bool) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + max_wait;
        loop {
            let spans = self.spans();
            if ready(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "the spans awaited did not arrive within {max_wait:?}; received: {spans:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
