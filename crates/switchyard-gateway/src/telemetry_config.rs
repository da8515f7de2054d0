//! `telemetry:` — logs, span export, metrics and the request log.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_telemetry::{LogFormat, LogSink, OtlpProtocol, OtlpSettings, RequestLogSettings, TracingSettings};

use crate::config::{ConfigIssue, EnvSource, issue, resolve_parts, resolve_url};

/// `telemetry:` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `json` (one object per line) or `text`.
    pub log_format: LogFormat,
    /// Log filter, `RUST_LOG` syntax (`RUST_LOG` wins when set).
    pub log_level: String,
    /// Log prompts and completions. Off by default: logs never hold them.
    pub log_payloads: bool,
    /// Serve Prometheus metrics at `/metrics`.
    pub metrics: bool,
    /// Serve `/metrics` to the master key only (LiteLLM's
    /// `require_auth_for_metrics_endpoint`): its series name keys, teams and
    /// what they spend. Off, anyone who reaches the port may read it.
    pub metrics_require_auth: bool,
    /// Drop a key's spend series (`switchyard_key_spend_nanousd_total`)
    /// that nothing updated for this many seconds (0: never), so keys that
    /// stopped sending do not hold series for ever. One updated again
    /// starts from zero. 0, or at least 300.
    pub metrics_idle_timeout_s: u64,
    /// Export spans over OTLP. Without this section, spans are exported when
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) is set.
    pub otlp: Option<OtlpConfig>,
    /// One record per finished request, for analysis and router training.
    pub request_log: Option<RequestLogConfig>,
    /// Alerts to a webhook: soft budgets crossed, budgets spent,
    /// deployments put in cooldown.
    pub alerts: Option<AlertsConfig>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Json,
            log_level: "info".into(),
            log_payloads: false,
            metrics: true,
            metrics_require_auth: false,
            metrics_idle_timeout_s: 0,
            otlp: None,
            request_log: None,
            alerts: None,
        }
    }
}

/// `telemetry.otlp:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// Collector URL: `http://host:4318` for HTTP (`/v1/traces` is added),
    /// `http://host:4317` for gRPC, with `{os.environ/NAME}` (or
    /// `{os.environ/NAME:-default}`) parts. Unset: `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: Option<String>,
    /// `http/protobuf` or `grpc` (unset: `OTEL_EXPORTER_OTLP_PROTOCOL`, else `http/protobuf`).
    pub protocol: Option<OtlpProtocol>,
    /// `service.name` of the spans (unset: `OTEL_SERVICE_NAME`, else `switchyard`).
    pub service_name: Option<String>,
    /// Longest wait for one export, milliseconds.
    pub timeout_ms: u64,
    /// Delay between batch exports, milliseconds (unset: `OTEL_BSP_SCHEDULE_DELAY`, else 5000).
    pub batch_delay_ms: Option<u64>,
    /// Headers sent with each export (a hosted backend's key): values are
    /// literal, `os.environ/NAME`, or hold `{os.environ/NAME}` parts.
    pub headers: std::collections::BTreeMap<String, String>,
    /// HTTP basic authentication of each export (Langfuse: the public key
    /// and the secret key), each `os.environ/NAME` or literal.
    pub basic_auth: Option<BasicAuth>,
    /// The `gen_ai` span carries the request's prompt (`gen_ai.prompt`),
    /// the answer (`gen_ai.completion`) and the end user (`user.id`), for
    /// LLM observability backends (Langfuse…). Off by default.
    pub capture_content: bool,
}

/// A user name and password.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    /// The user name (Langfuse: the public key).
    pub username: String,
    /// The password (Langfuse: the secret key).
    pub password: String,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            protocol: None,
            service_name: None,
            timeout_ms: 10_000,
            batch_delay_ms: None,
            headers: std::collections::BTreeMap::new(),
            basic_auth: None,
            capture_content: false,
        }
    }
}

/// `telemetry.request_log:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RequestLogConfig {
    /// JSONL file (rotated to `.1`, `.2`…). Ignored with `redis`.
    pub path: PathBuf,
    /// Size that rotates the file, bytes.
    pub max_bytes: u64,
    /// Rotated files kept (at most 1,000).
    pub keep: usize,
    /// Write to a Redis stream instead of a file.
    pub redis: Option<RequestLogRedis>,
    /// Records carry the prompt text.
    pub include_prompt: bool,
    /// Records queued in memory before new ones are dropped (and counted):
    /// 16 to 10,000,000. Each may hold up to 64 KiB of prompt with
    /// `include_prompt`, so size it to the memory it may take.
    pub queue: usize,
}

impl Default for RequestLogConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("./switchyard-data/requests.jsonl"),
            max_bytes: 100 * 1024 * 1024,
            keep: 5,
            redis: None,
            include_prompt: false,
            queue: 65_536,
        }
    }
}

/// `telemetry.request_log.redis:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestLogRedis {
    /// `redis://host:port/db` (`rediss://` for TLS, verified against the
    /// system's roots; see docs/caching.md for a private CA), `os.environ/NAME`, or a URL with
    /// `{os.environ/NAME}` parts (`redis://:{os.environ/REDIS_PASSWORD}@host:6379`).
    pub url: String,
    /// Stream key.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Approximate entries kept.
    #[serde(default = "default_max_len")]
    pub max_len: u64,
}

fn default_stream() -> String {
    "switchyard:requests".into()
}

fn default_max_len() -> u64 {
    1_000_000
}

/// `telemetry.alerts:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// Where alerts are POSTed: a URL, or `os.environ/NAME` (webhook URLs
    /// such as Slack's carry their secret).
    pub webhook_url: String,
    /// `json` (one object per alert) or `slack` (`{"text": …}`, for Slack
    /// and services that take its incoming-webhook format).
    #[serde(default)]
    pub format: AlertFormat,
    /// Which alerts are sent (default: all).
    #[serde(default = "all_alert_events")]
    pub events: Vec<AlertEvent>,
    /// Longest wait for one delivery, milliseconds (each alert is tried up
    /// to 3 times).
    #[serde(default = "default_alert_timeout_ms")]
    pub timeout_ms: u64,
    /// A `slow_request` alert is sent for an answer that took longer than
    /// this, milliseconds (default 300000, LiteLLM's `alerting_threshold`).
    #[serde(default = "default_slow_request_ms")]
    pub slow_request_ms: u64,
    /// A budget alert the webhook failed to take (three tries) may be sent
    /// again this long after, milliseconds, by the next request that finds
    /// the same cause (default 60000).
    #[serde(default = "default_alert_retry_ms")]
    pub retry_ms: u64,
}

/// The body of an alert.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertFormat {
    /// `{"event", …fields}`.
    #[default]
    Json,
    /// `{"text": "…"}`.
    Slack,
}

/// The kinds of alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertEvent {
    /// A key's, team's or user's spend reached its `soft_budget` (once a
    /// budget period).
    SoftBudgetCrossed,
    /// A request was refused because a budget is spent (once a budget period).
    BudgetExhausted,
    /// A deployment was put in cooldown (at most once a minute each).
    DeploymentCooldown,
    /// A request failed upstream after its retries and fallbacks, or its
    /// stream broke (at most once a minute per model group).
    RequestFailed,
    /// An answer took longer than `slow_request_ms` (at most once a minute
    /// per deployment).
    SlowRequest,
}

fn all_alert_events() -> Vec<AlertEvent> {
    vec![
        AlertEvent::SoftBudgetCrossed,
        AlertEvent::BudgetExhausted,
        AlertEvent::DeploymentCooldown,
        AlertEvent::RequestFailed,
        AlertEvent::SlowRequest,
    ]
}

fn default_alert_timeout_ms() -> u64 {
    5_000
}

fn default_slow_request_ms() -> u64 {
    300_000
}

fn default_alert_retry_ms() -> u64 {
    60_000
}

/// The validated alert settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertSettings {
    /// The webhook.
    pub url: switchyard_providers::Secret,
    /// The body's format.
    pub format: AlertFormat,
    /// Which alerts are sent.
    pub events: Vec<AlertEvent>,
    /// Longest wait for one delivery.
    pub timeout: Duration,
    /// An answer slower than this is a `slow_request`.
    pub slow_request: Duration,
    /// When an undelivered budget alert may be sent again.
    pub retry: Duration,
}

/// The validated telemetry settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetrySpec {
    /// Logs and spans.
    pub tracing: TracingSettings,
    /// The request log.
    pub request_log: Option<RequestLogSettings>,
    /// Log prompts and completions.
    pub log_payloads: bool,
    /// Serve `/metrics`.
    pub metrics: bool,
    /// `/metrics` needs the master key.
    pub metrics_require_auth: bool,
    /// How long a series may go without an update before it is dropped.
    pub metrics_idle_timeout: Option<Duration>,
    /// Alerts to a webhook.
    pub alerts: Option<AlertSettings>,
    /// Spans carry prompts, answers and end users (`telemetry.otlp.capture_content`).
    pub capture_content: bool,
}

impl TelemetryConfig {
    /// Validates the section; `env` supplies `OTEL_EXPORTER_OTLP_*`.
    pub fn validate(&self, env: &dyn EnvSource, issues: &mut Vec<ConfigIssue>) -> TelemetrySpec {
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            issues.push(issue("telemetry.log_level", e.to_string()));
        }
        if (1..300).contains(&self.metrics_idle_timeout_s) {
            issues.push(issue(
                "telemetry.metrics_idle_timeout_s",
                format!(
                    "{} s would drop series between two scrapes; use 0 (never) or at least 300",
                    self.metrics_idle_timeout_s
                ),
            ));
        }
        let from_env = ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
            .iter()
            .any(|n| env.get(n).is_some_and(|v| !v.trim().is_empty()));
        let otlp = match (&self.otlp, from_env) {
            (None, false) => None,
            (section, _) => {
                let c = section.clone().unwrap_or_default();
                let endpoint = c.endpoint.as_deref().and_then(|e| {
                    let resolved = resolve_parts(e, "telemetry.otlp.endpoint", env, issues, false)?;
                    match reqwest::Url::parse(resolved.expose()) {
                        Ok(url) if matches!(url.scheme(), "http" | "https") => Some(resolved.expose().to_owned()),
                        _ => {
                            issues.push(issue("telemetry.otlp.endpoint", "must be an http:// or https:// URL"));
                            None
                        }
                    }
                });
                let mut headers = Vec::new();
                for (name, value) in &c.headers {
                    let path = format!("telemetry.otlp.headers.{name}");
                    if headers.iter().any(|(n, _): &(String, _)| n.eq_ignore_ascii_case(name)) {
                        issues.push(issue(&path, "is given twice (header names are not case-sensitive)"));
                        continue;
                    }
                    if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                        issues.push(issue(&path, "is not a valid header name"));
                        continue;
                    }
                    if let Some(v) = resolve_parts(value, &path, env, issues, false) {
                        // The value is not shown: it is likely a secret.
                        if axum::http::HeaderValue::from_str(v.expose()).is_err() {
                            issues.push(issue(&path, "is not a valid header value"));
                        } else {
                            headers.push((name.to_ascii_lowercase(), v));
                        }
                    }
                }
                if let Some(auth) = &c.basic_auth {
                    if headers.iter().any(|(n, _)| n == "authorization") {
                        issues.push(issue(
                            "telemetry.otlp.basic_auth",
                            "and headers.authorization cannot both be set",
                        ));
                    }
                    let user = crate::config::resolve_secret(
                        &auth.username,
                        "telemetry.otlp.basic_auth.username",
                        env,
                        issues,
                    );
                    let pass = crate::config::resolve_secret(
                        &auth.password,
                        "telemetry.otlp.basic_auth.password",
                        env,
                        issues,
                    );
                    if let (Some(user), Some(pass)) = (user, pass) {
                        use base64::Engine as _;
                        let token = base64::engine::general_purpose::STANDARD.encode(format!(
                            "{}:{}",
                            user.expose(),
                            pass.expose()
                        ));
                        headers.push((
                            "authorization".into(),
                            switchyard_providers::Secret::new(format!("Basic {token}")),
                        ));
                    }
                }
                if c.timeout_ms == 0 {
                    issues.push(issue("telemetry.otlp.timeout_ms", "must be greater than 0"));
                }
                if c.batch_delay_ms == Some(0) {
                    issues.push(issue("telemetry.otlp.batch_delay_ms", "must be greater than 0"));
                }
                let env_protocol = env
                    .get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                    .or_else(|| env.get("OTEL_EXPORTER_OTLP_PROTOCOL"));
                let protocol = c.protocol.unwrap_or(match env_protocol.as_deref() {
                    Some("grpc") => OtlpProtocol::Grpc,
                    _ => OtlpProtocol::HttpProtobuf,
                });
                // The gRPC exporter is built without TLS: refused here, with
                // the field named, rather than failing at start-up.
                let effective = endpoint.clone().or_else(|| {
                    env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                        .or_else(|| env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
                });
                if protocol == OtlpProtocol::Grpc
                    && effective.is_some_and(|e| e.trim().to_ascii_lowercase().starts_with("https://"))
                {
                    issues.push(issue(
                        if c.protocol.is_some() {
                            "telemetry.otlp.protocol"
                        } else {
                            "telemetry.otlp.protocol (OTEL_EXPORTER_OTLP_PROTOCOL)"
                        },
                        "grpc is sent without TLS, so it cannot reach an https:// endpoint: use http/protobuf, which takes https, or a collector's plain gRPC port",
                    ));
                }
                Some(OtlpSettings {
                    endpoint,
                    headers: headers.into_iter().map(|(n, v)| (n, v.expose().to_owned())).collect(),
                    protocol,
                    service_name: c
                        .service_name
                        .or_else(|| env.get("OTEL_SERVICE_NAME").filter(|s| !s.trim().is_empty()))
                        .unwrap_or_else(|| "switchyard".into()),
                    timeout: Duration::from_millis(c.timeout_ms),
                    batch_delay: c.batch_delay_ms.map(Duration::from_millis),
                })
            }
        };
        // Only where spans go somewhere.
        let capture_content = otlp.is_some() && self.otlp.as_ref().is_some_and(|o| o.capture_content);
        let request_log = self.request_log.as_ref().map(|r| {
            if !(16..=10_000_000).contains(&r.queue) {
                issues.push(issue("telemetry.request_log.queue", "must be from 16 to 10000000"));
            }
            if r.keep > 1_000 {
                issues.push(issue("telemetry.request_log.keep", "must be at most 1000"));
            }
            let sink = match &r.redis {
                Some(redis) => {
                    let resolved = resolve_url(&redis.url, "telemetry.request_log.redis.url", env, issues)
                        .map(|s| s.expose().to_owned());
                    let url = resolved.clone().unwrap_or_default();
                    // (One that could not be read is named already.)
                    if resolved.is_some()
                        && !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("unix://"))
                    {
                        issues.push(issue(
                            "telemetry.request_log.redis.url",
                            "must start with redis://, rediss:// or unix://",
                        ));
                    }
                    if redis.max_len == 0 {
                        issues.push(issue("telemetry.request_log.redis.max_len", "must be greater than 0"));
                    }
                    if redis.stream.trim().is_empty() {
                        issues.push(issue("telemetry.request_log.redis.stream", "must not be empty"));
                    }
                    LogSink::Redis {
                        url,
                        stream: redis.stream.clone(),
                        max_len: redis.max_len,
                    }
                }
                None => {
                    if r.max_bytes < 4096 {
                        issues.push(issue("telemetry.request_log.max_bytes", "must be at least 4096"));
                    }
                    LogSink::File {
                        path: r.path.clone(),
                        max_bytes: r.max_bytes,
                        keep: r.keep,
                    }
                }
            };
            RequestLogSettings {
                sink,
                include_prompt: r.include_prompt,
                queue: r.queue,
            }
        });
        let alerts = self.alerts.as_ref().and_then(|a| {
            if a.events.is_empty() {
                issues.push(issue("telemetry.alerts.events", "must name at least one alert"));
            }
            if a.timeout_ms == 0 {
                issues.push(issue("telemetry.alerts.timeout_ms", "must be greater than 0"));
            }
            if a.slow_request_ms == 0 {
                issues.push(issue("telemetry.alerts.slow_request_ms", "must be greater than 0"));
            }
            if a.retry_ms == 0 {
                issues.push(issue("telemetry.alerts.retry_ms", "must be greater than 0"));
            }
            let url = crate::config::resolve_secret(&a.webhook_url, "telemetry.alerts.webhook_url", env, issues)?;
            match reqwest::Url::parse(url.expose()) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                // The value is not shown: it may be a secret.
                _ => {
                    issues.push(issue(
                        "telemetry.alerts.webhook_url",
                        "must be an http:// or https:// URL",
                    ));
                    return None;
                }
            }
            Some(AlertSettings {
                url,
                format: a.format,
                events: a.events.clone(),
                timeout: Duration::from_millis(a.timeout_ms.max(1)),
                slow_request: Duration::from_millis(a.slow_request_ms.max(1)),
                retry: Duration::from_millis(a.retry_ms.max(1)),
            })
        });
        TelemetrySpec {
            tracing: TracingSettings {
                format: self.log_format,
                filter: self.log_level.clone(),
                otlp,
            },
            request_log,
            log_payloads: self.log_payloads,
            metrics: self.metrics,
            metrics_require_auth: self.metrics_require_auth,
            metrics_idle_timeout: (self.metrics_idle_timeout_s > 0)
                .then(|| Duration::from_secs(self.metrics_idle_timeout_s)),
            alerts,
            capture_content,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn otlp(section: serde_json::Value) -> TelemetryConfig {
        serde_json::from_value(serde_json::json!({"otlp": section})).unwrap()
    }

    /// The gRPC exporter has no TLS: grpc to an https:// endpoint (given,
    /// or from the standard variables) is refused naming the protocol.
    #[test]
    fn grpc_to_an_https_endpoint_is_refused_at_load() {
        for (section, vars) in [
            (
                serde_json::json!({"endpoint": "https://api.honeycomb.io:443", "protocol": "grpc"}),
                env(&[]),
            ),
            (
                serde_json::json!({}),
                env(&[
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://api.honeycomb.io:443"),
                ]),
            ),
        ] {
            let mut issues = Vec::new();
            otlp(section.clone()).validate(&vars, &mut issues);
            assert!(
                issues.iter().any(|i| i.to_string().contains("telemetry.otlp.protocol")),
                "{section}: {issues:?}"
            );
        }
        let mut issues = Vec::new();
        otlp(serde_json::json!({"endpoint": "http://collector:4317", "protocol": "grpc"}))
            .validate(&env(&[]), &mut issues);
        assert!(issues.is_empty(), "{issues:?}");
    }

    #[test]
    fn export_headers_and_basic_auth_are_resolved_and_never_shown() {
        let config = otlp(serde_json::json!({
            "endpoint": "{os.environ/TRACE_HOST}/api/public/otel",
            "headers": {"X-Team": "research", "x-api-key": "os.environ/TRACE_KEY", "x-default": "{os.environ/NOT_SET_HERE:-fallback}"},
            "basic_auth": {"username": "pk-1", "password": "os.environ/TRACE_SECRET"},
            "capture_content": true,
        }));
        let mut issues = Vec::new();
        let vars = env(&[
            ("TRACE_HOST", "https://traces.example.com/"),
            ("TRACE_KEY", "key-0001"),
            ("TRACE_SECRET", "secret-0002"),
        ]);
        let spec = config.validate(&vars, &mut issues);
        assert!(issues.is_empty(), "{issues:?}");
        assert!(spec.capture_content);
        let settings = spec.tracing.otlp.unwrap();
        assert_eq!(
            settings.endpoint.as_deref(),
            Some("https://traces.example.com/api/public/otel"),
            "a host is put in as it is, not percent-encoded"
        );
        let headers: BTreeMap<String, String> = settings.headers.iter().cloned().collect();
        assert_eq!(headers["x-team"], "research");
        assert_eq!(headers["x-api-key"], "key-0001");
        assert_eq!(headers["x-default"], "fallback", "an unset variable's default");
        assert_eq!(headers["authorization"], "Basic cGstMTpzZWNyZXQtMDAwMg==");
        let shown = format!("{settings:?}");
        assert!(!shown.contains("key-0001") && !shown.contains("cGstMT"), "{shown}");
    }

    #[test]
    fn a_metrics_idle_timeout_is_never_or_longer_than_scrapes() {
        let check = |seconds: u64| {
            let config: TelemetryConfig =
                serde_json::from_value(serde_json::json!({"metrics_idle_timeout_s": seconds})).unwrap();
            let mut issues = Vec::new();
            let spec = config.validate(&env(&[]), &mut issues);
            (
                spec.metrics_idle_timeout,
                issues.iter().map(|i| i.path.clone()).collect::<Vec<_>>(),
            )
        };
        assert_eq!(check(0), (None, vec![]));
        assert_eq!(check(3_600), (Some(Duration::from_secs(3_600)), vec![]));
        assert_eq!(check(30).1, vec!["telemetry.metrics_idle_timeout_s".to_owned()]);
    }

    #[test]
    fn request_log_sizes_are_bounded() {
        let said = |queue: u64, keep: u64| {
            let config: TelemetryConfig =
                serde_json::from_value(serde_json::json!({"request_log": {"queue": queue, "keep": keep}})).unwrap();
            let mut issues = Vec::new();
            config.validate(&env(&[]), &mut issues);
            issues
                .iter()
                .map(|i| format!("{}: {}", i.path, i.message))
                .collect::<Vec<_>>()
        };
        assert!(said(16, 1000).is_empty(), "{:?}", said(16, 1000));
        for (queue, keep, expected) in [
            (8, 5, "telemetry.request_log.queue: must be from 16 to 10000000"),
            (1 << 62, 5, "telemetry.request_log.queue: must be from 16 to 10000000"),
            (1024, 1_000_000_000, "telemetry.request_log.keep: must be at most 1000"),
        ] {
            assert_eq!(said(queue, keep), [expected]);
        }
    }

    #[test]
    fn bad_export_settings_name_their_field() {
        let config = otlp(serde_json::json!({
            "headers": {"bad header": "x", "authorization": "Bearer y", "X-Key": "a", "x-key": "b"},
            "basic_auth": {"username": "u", "password": "os.environ/UNSET_SECRET"},
        }));
        let mut issues = Vec::new();
        config.validate(&env(&[]), &mut issues);
        let said: Vec<String> = issues.iter().map(|i| format!("{}: {}", i.path, i.message)).collect();
        for expected in [
            "telemetry.otlp.headers.bad header",
            "telemetry.otlp.basic_auth: and headers.authorization",
            "telemetry.otlp.basic_auth.password",
            "telemetry.otlp.headers.x-key: is given twice",
        ] {
            assert!(said.iter().any(|s| s.starts_with(expected)), "{expected}: {said:?}");
        }
        // Content is captured only where spans go.
        let quiet: TelemetryConfig = serde_json::from_value(serde_json::json!({})).unwrap();
        assert!(!quiet.validate(&env(&[]), &mut Vec::new()).capture_content);
    }
}
