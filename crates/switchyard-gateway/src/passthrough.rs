//! Pass-through routes (`pass_through:`, LiteLLM's
//! `pass_through_endpoints`): a path forwarded as it is to an upstream's
//! own API — method, query, body and (optionally) the client's headers —
//! with the gateway's virtual keys in front and the upstream's credentials
//! added. The answer comes back as the upstream sent it, streamed. Nothing
//! is routed or cached; a key's limits hold (its requests per minute, its
//! requests in flight until the answer ends, a spent budget refuses), and
//! each request is recorded in the spend log at no cost.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use switchyard_providers::Secret;

use crate::config::{ConfigIssue, EnvSource, issue, resolve_secret};
use crate::error::ApiError;
use crate::routes::SharedState;

/// One `pass_through:` entry as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PassThroughEntry {
    /// The path served, e.g. `/anthropic` (not one of the gateway's own).
    pub path: String,
    /// Where requests go: this URL, plus the rest of the path with
    /// `include_subpath`, plus the request's query.
    pub target: String,
    /// Headers added upstream, e.g. the provider's key; values may be
    /// `os.environ/NAME`, or hold one (`Bearer os.environ/NAME`,
    /// `Basic {os.environ/NAME}`); a variable set but empty is refused.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Callers need a virtual key (or the master key); without it anyone
    /// who reaches the gateway uses the upstream with its credentials.
    #[serde(default = "yes")]
    pub auth: bool,
    /// Also send the client's own headers upstream (never its key, nor
    /// hop-by-hop headers).
    #[serde(default)]
    pub forward_headers: bool,
    /// Serve every path under `path` (`/anthropic/v1/messages` goes to
    /// `{target}/v1/messages`), not `path` alone.
    #[serde(default)]
    pub include_subpath: bool,
    /// Longest wait for the upstream's whole answer, milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn yes() -> bool {
    true
}

fn default_timeout_ms() -> u64 {
    600_000
}

/// A validated pass-through route.
#[derive(Debug, Clone)]
pub struct PassThrough {
    /// The path served.
    pub path: String,
    target: reqwest::Url,
    headers: Vec<(HeaderName, Secret)>,
    /// Whether a key is needed.
    pub auth: bool,
    forward_headers: bool,
    /// Whether paths under `path` are served.
    pub include_subpath: bool,
    timeout: Duration,
}

impl PassThrough {
    /// Whether a request to `path` is this route's.
    pub fn serves(&self, path: &str) -> bool {
        match path.strip_prefix(self.path.as_str()) {
            Some("") => true,
            Some(rest) => self.include_subpath && rest.starts_with('/'),
            None => false,
        }
    }
}

/// Holds a request's admission while its answer streams, and records it in
/// the spend log (at no cost) when the answer ends or the client leaves.
struct Admitted {
    policy: switchyard_policy::Policy,
    ticket: Option<switchyard_policy::Ticket>,
    deployment: String,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let policy = self.policy.clone();
        // Taken now: a shutdown's flush waits for the record.
        let guard = policy.write_guard();
        let charge = switchyard_policy::Charge {
            deployment: std::mem::take(&mut self.deployment),
            usage: switchyard_policy::TokenUsage::default(),
            cost: 0,
            cache_hit: false,
        };
        handle.spawn(async move {
            if let Err(e) = policy.settle(ticket, charge).await {
                tracing::warn!(error = %e, "a pass-through request could not be recorded");
            }
            drop(guard);
        });
    }
}

/// Path prefixes the gateway serves itself.
const RESERVED: &[&str] = &[
    "/config",
    "/v1",
    "/v2",
    "/chat",
    "/completions",
    "/embeddings",
    "/images",
    "/moderations",
    "/audio",
    "/rerank",
    "/models",
    "/model",
    "/model_group",
    "/messages",
    "/responses",
    "/feedback",
    "/key",
    "/team",
    "/user",
    "/customer",
    "/end_user",
    "/spend",
    "/admin",
    "/health",
    "/metrics",
];

/// Headers never forwarded from the client: its key, its cookies, and what
/// belongs to one connection.
const NOT_FORWARDED: &[&str] = &[
    "authorization",
    "x-api-key",
    "api-key",
    "x-litellm-api-key",
    "x-goog-api-key",
    "cookie",
    "expect",
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
];

/// Headers of the upstream's answer that belong to its connection.
const NOT_RETURNED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
];

/// A client for pass-through routes: redirects are not followed (they
/// would carry the route's credentials elsewhere), connections are pooled.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
        .unwrap_or_default()
}

/// Checks every entry: paths the gateway does not serve itself, each once;
/// http(s) targets; headers and their secrets.
pub fn validate(entries: &[PassThroughEntry], env: &dyn EnvSource, issues: &mut Vec<ConfigIssue>) -> Vec<PassThrough> {
    let mut out: Vec<PassThrough> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let here = format!("pass_through[{i}]");
        let path = e.path.trim_end_matches('/');
        let reserved = RESERVED
            .iter()
            .find(|r| path == **r || path.starts_with(&format!("{r}/")) || r.starts_with(&format!("{path}/")));
        let plain = path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.' | '~'));
        let odd_segment = path
            .split('/')
            .skip(1)
            .any(|seg| seg.is_empty() || seg == "." || seg == "..");
        if !path.starts_with('/') || path.len() < 2 || !plain || odd_segment {
            issues.push(issue(format!("{here}.path"), "must be a plain path such as /anthropic"));
            continue;
        }
        if let Some(r) = reserved {
            issues.push(issue(
                format!("{here}.path"),
                format!("`{path}` overlaps the gateway's own `{r}`"),
            ));
            continue;
        }
        if out.iter().any(|o| o.path == path) {
            issues.push(issue(format!("{here}.path"), format!("`{path}` is listed twice")));
            continue;
        }
        let target = match reqwest::Url::parse(&e.target) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.query().is_none() => url,
            _ => {
                issues.push(issue(
                    format!("{here}.target"),
                    "must be an http:// or https:// URL without a query",
                ));
                continue;
            }
        };
        let mut headers = Vec::new();
        for (name, value) in &e.headers {
            let field = format!("{here}.headers.{name}");
            let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
                issues.push(issue(field.as_str(), "is not a header name"));
                continue;
            };
            if let Some(secret) = resolve_header(value, &field, env, issues) {
                if HeaderValue::from_str(secret.expose()).is_err() {
                    issues.push(issue(field.as_str(), "holds characters a header may not"));
                    continue;
                }
                headers.push((header, secret));
            }
        }
        if e.timeout_ms == 0 {
            issues.push(issue(format!("{here}.timeout_ms"), "must be greater than 0"));
        }
        out.push(PassThrough {
            path: path.to_owned(),
            target,
            headers,
            auth: e.auth,
            forward_headers: e.forward_headers,
            include_subpath: e.include_subpath,
            timeout: Duration::from_millis(e.timeout_ms.max(1)),
        });
    }
    out
}

/// A header value: `os.environ/NAME` as a whole, with such a reference
/// inside (`Bearer os.environ/NAME`, as LiteLLM writes them), or with
/// `{os.environ/NAME}` placeholders (`Basic {os.environ/NAME}`), replaced
/// by the variable's value. A variable set but empty is refused, as a
/// header without its credential would be sent.
fn resolve_header(value: &str, field: &str, env: &dyn EnvSource, issues: &mut Vec<ConfigIssue>) -> Option<Secret> {
    const MARK: &str = "os.environ/";
    let empty_variable = |name: &str, issues: &mut Vec<ConfigIssue>| {
        let empty = env.get(name).is_some_and(|v| v.trim().is_empty());
        if empty {
            issues.push(issue(field, format!("environment variable `{name}` is empty")));
        }
        empty
    };
    if value.contains("{os.environ/") {
        let resolved = crate::config::resolve_parts(value, field, env, issues, false)?;
        // A placeholder with a default stands in for its empty variable.
        let refused = value
            .split("{os.environ/")
            .skip(1)
            .filter_map(|rest| rest.split_once('}').map(|(inside, _)| inside))
            .filter(|inside| !inside.contains(":-"))
            .filter(|name| empty_variable(name, issues))
            .count()
            > 0;
        return (!refused).then_some(resolved);
    }
    let Some(at) = value.find(MARK).filter(|at| *at > 0) else {
        if let Some(name) = value.strip_prefix(MARK)
            && empty_variable(name, issues)
        {
            return None;
        }
        return resolve_secret(value, field, env, issues);
    };
    let name_start = at + MARK.len();
    let name_len = value[name_start..]
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(value.len() - name_start);
    let name = &value[name_start..name_start + name_len];
    if empty_variable(name, issues) {
        return None;
    }
    let resolved = resolve_secret(&format!("{MARK}{name}"), field, env, issues)?;
    Some(Secret::new(format!(
        "{}{}{}",
        &value[..at],
        resolved.expose(),
        &value[name_start + name_len..]
    )))
}

/// Forwards `request` through the route at `index` of the state's list.
pub(crate) async fn forward(state: SharedState, index: usize, request: Request) -> Response {
    let Some(route) = state.pass_through.get(index) else {
        return ApiError::Internal("an unknown pass-through route".into()).into_response();
    };
    // An upstream that echoes a TRACE would show the route's credentials.
    if matches!(request.method().as_str(), "TRACE" | "CONNECT") {
        let mut refused = ApiError::MethodNotAllowed(request.method().to_string()).into_response();
        refused.headers_mut().insert(
            axum::http::header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
        );
        return refused;
    }
    let rest = request
        .uri()
        .path()
        .strip_prefix(route.path.as_str())
        .unwrap_or_default()
        .to_owned();
    // The rest of the path stays under the target: no `.` or `..` segment,
    // written plainly or percent-encoded, and no encoded slash.
    let climbs = rest.split('/').any(|seg| {
        let decoded = seg.replace("%2e", ".").replace("%2E", ".");
        decoded == "." || decoded == ".."
    });
    let lower = rest.to_ascii_lowercase();
    if climbs || lower.contains("%2f") || lower.contains("%5c") || rest.contains('\\') {
        return ApiError::InvalidField {
            param: None,
            message: "The path may not leave the route: no `.` or `..` segments, and no encoded slashes.".into(),
        }
        .into_response();
    }
    let mut admitted = None;
    if route.auth {
        let token = crate::metering::presented_key(request.headers());
        let principal = match state.policy.authenticate(token).await {
            Ok(principal) => principal,
            Err(denied) => return ApiError::Denied(denied).into_response(),
        };
        // A key (or its team or user) limited to some models may use a
        // route its list names by path.
        if let Some(view) = principal.view()
            && view
                .model_lists()
                .iter()
                .any(|models| !models.is_empty() && !models.contains(&route.path))
        {
            return ApiError::Forbidden(format!(
                "This API key may not use `{}`: its models do not list it.",
                route.path
            ))
            .into_response();
        }
        // The key's limits hold, the route's path standing for the model;
        // the spend record carries the id the client is given.
        let request_id = request
            .extensions()
            .get::<crate::observe::RequestContext>()
            .map(|ctx| ctx.id.clone());
        match crate::metering::admit_unpriced(&state, &principal, (route.path.clone(), false), request_id).await {
            Ok(ticket) => {
                admitted = Some(Admitted {
                    policy: state.policy.clone(),
                    ticket: Some(ticket),
                    deployment: format!("pass-through {}", route.path),
                });
            }
            Err(refused) => return refused.into_response(),
        }
    }
    let mut url = route.target.clone();
    if !rest.is_empty() {
        // Empty segments are left out: some servers read `//host/…` as
        // another host, or route it elsewhere than `/host/…`.
        let mut rest_path = String::with_capacity(rest.len());
        for c in rest.chars() {
            if !(c == '/' && rest_path.ends_with('/')) {
                rest_path.push(c);
            }
        }
        let joined = format!("{}{rest_path}", url.path().trim_end_matches('/'));
        url.set_path(&joined);
    }
    url.set_query(request.uri().query());
    let method = request.method().clone();
    let client_headers = request.headers().clone();
    // The upstream's time is not the gateway's overhead.
    let upstream_ns = request
        .extensions()
        .get::<crate::observe::RequestContext>()
        .map(|ctx| ctx.upstream_ns.clone());
    // A drain that runs out of time while the body is still coming (a slow
    // upload) or the upstream has not answered: the client gets a 503 and
    // the admission is let go (recorded once sent), as on the other routes.
    let mut cut = state.cut.subscribe();
    let shutting_down = || {
        ApiError::Unavailable("the gateway is shutting down and could not finish this request; send it again".into())
            .into_response()
    };
    let read = tokio::select! {
        biased;
        read = crate::extract::read_body(request, &state) => read,
        Ok(_) = cut.wait_for(|cut| *cut) => {
            if let Some(mut held) = admitted {
                drop(held.ticket.take());
            }
            return shutting_down();
        }
    };
    let body = match read {
        Ok(b) => b,
        Err(e) => {
            // Nothing was sent: the admission is let go, not recorded.
            if let Some(mut held) = admitted {
                drop(held.ticket.take());
            }
            return e.into_response();
        }
    };
    let mut headers = HeaderMap::new();
    if route.forward_headers {
        // Headers the client's `Connection` names are hop-by-hop too.
        let named = connection_named(&client_headers);
        for (name, value) in &client_headers {
            if !NOT_FORWARDED.contains(&name.as_str()) && !named.iter().any(|n| n == name.as_str()) {
                headers.append(name.clone(), value.clone());
            }
        }
    } else if let Some(kind) = client_headers.get(axum::http::header::CONTENT_TYPE) {
        headers.insert(axum::http::header::CONTENT_TYPE, kind.clone());
    }
    for (name, secret) in &route.headers {
        if let Ok(mut value) = HeaderValue::from_str(secret.expose()) {
            value.set_sensitive(true);
            headers.insert(name.clone(), value);
        }
    }
    let asked = std::time::Instant::now();
    let send = state
        .pass_through_client
        .request(method, url)
        .headers(headers)
        .body(body)
        .timeout(route.timeout)
        .send();
    let sent = tokio::select! {
        biased;
        sent = send => sent,
        Ok(_) = cut.wait_for(|cut| *cut) => {
            drop(admitted);
            return shutting_down();
        }
    };
    if let Some(counter) = &upstream_ns {
        crate::observe::RequestContext::add_upstream(counter, asked.elapsed());
    }
    let upstream = match sent {
        Ok(r) => r,
        // Without the URL: the route's target may hold what should not be shown.
        Err(e) => {
            let source = if e.is_timeout() {
                switchyard_providers::ProviderError::Timeout(switchyard_providers::TimeoutPhase::Total)
            } else {
                tracing::warn!(path = %route.path, error = %e.without_url(), "pass-through upstream unreachable");
                switchyard_providers::ProviderError::Connect("the upstream could not be reached".into())
            };
            return ApiError::Upstream {
                deployment: format!("pass-through {}", route.path),
                source: Box::new(source),
            }
            .into_response();
        }
    };
    let mut response = Response::builder().status(upstream.status());
    if let Some(out) = response.headers_mut() {
        // Headers the upstream's `Connection` names belong to its connection too.
        let named = connection_named(upstream.headers());
        // The gateway's own `x-switchyard-*` headers are its to set: an
        // upstream's (another Switchyard) would stand in for them in the
        // client's answer, the request log and the metrics' labels.
        for (name, value) in upstream.headers() {
            if !NOT_RETURNED.contains(&name.as_str())
                && !named.iter().any(|n| n == name.as_str())
                && !name.as_str().starts_with("x-switchyard-")
            {
                out.append(name.clone(), value.clone());
            }
        }
        // The gateway's own `x-request-id` replaces the upstream's: that
        // one, which its support asks for, comes back as on other routes.
        if let Some(id) = switchyard_providers::upstream_id::from_headers(upstream.headers())
            .and_then(|id| HeaderValue::from_str(&id).ok())
        {
            out.insert(crate::routes::UPSTREAM_ID_HEADER, id);
        }
    }
    // The admission is held until the answer has been passed on (or the
    // client leaves), then recorded. A drain that runs out of time cuts the
    // answer (the client sees its body end in an error) and records it
    // before the process exits, also while a client that stopped reading
    // leaves the body unpolled: a watcher takes the admission then.
    let held = std::sync::Arc::new(parking_lot::Mutex::new(Some(admitted)));
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    {
        let held = std::sync::Arc::clone(&held);
        let mut cut = state.cut.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                Ok(_) = cut.wait_for(|cut| *cut) => drop(held.lock().take()),
                // The answer ended (its stream, holding `done`, was dropped).
                _ = finished => {}
            }
        });
    }
    let cut = state.cut.subscribe();
    let body = upstream.bytes_stream();
    let stream = futures_util::stream::unfold(
        (body, cut, held, Some(done)),
        |(mut body, mut cut, held, mut done)| async move {
            done.as_ref()?;
            let item = tokio::select! {
                next = body.next() => match next {
                    Some(Ok(bytes)) => Ok(bytes),
                    Some(Err(e)) => Err(std::io::Error::other(e)),
                    None => {
                        drop(held.lock().take());
                        return None;
                    }
                },
                Ok(_) = cut.wait_for(|cut| *cut) => {
                    Err(std::io::Error::other("the gateway is shutting down"))
                }
            };
            if item.is_err() {
                drop(held.lock().take());
                done = None;
            }
            Some((item, (body, cut, held, done)))
        },
    );
    response
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| ApiError::Internal("an unreadable pass-through answer".into()).into_response())
}

/// The header names a `Connection` header lists (RFC 9110 §7.6.1), lowercase.
fn connection_named(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(axum::http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::resolve_header;

    fn resolve(value: &str) -> (Option<String>, Vec<String>) {
        let env: BTreeMap<String, String> = [("KEY", "c2stbGY"), ("EMPTY", "")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let mut issues = Vec::new();
        let out = resolve_header(value, "pass_through[0].headers.authorization", &env, &mut issues);
        (
            out.map(|s| s.expose().to_owned()),
            issues.into_iter().map(|i| i.message).collect(),
        )
    }

    /// The forms LiteLLM's files and the migration guide write: a whole
    /// reference, one inside a value, and `{…}` placeholders (with a
    /// default); a variable set but empty is refused, naming it.
    #[test]
    fn header_values_read_the_environment_in_every_form() {
        assert_eq!(resolve("os.environ/KEY").0.as_deref(), Some("c2stbGY"));
        assert_eq!(resolve("Bearer os.environ/KEY").0.as_deref(), Some("Bearer c2stbGY"));
        assert_eq!(resolve("Basic {os.environ/KEY}").0.as_deref(), Some("Basic c2stbGY"));
        assert_eq!(resolve("Basic {os.environ/UNSET:-abc}").0.as_deref(), Some("Basic abc"));
        assert_eq!(resolve("Basic {os.environ/EMPTY:-abc}").0.as_deref(), Some("Basic abc"));
        assert_eq!(resolve("plain").0.as_deref(), Some("plain"));
        for value in [
            "os.environ/EMPTY",
            "Bearer os.environ/EMPTY",
            "Basic {os.environ/EMPTY}",
        ] {
            let (out, issues) = resolve(value);
            assert!(out.is_none(), "{value}");
            assert_eq!(issues, ["environment variable `EMPTY` is empty"], "{value}");
        }
        let (out, issues) = resolve("Basic {os.environ/UNSET}");
        assert!(out.is_none());
        assert_eq!(issues, ["environment variable `UNSET` is not set"]);
    }
}
