//! Observability through the real `switchyard` binary: spans exported over
//! OTLP/HTTP to a receiver (names, GenAI attributes, parent links, the
//! client's `traceparent`), Prometheus metrics, the request log with
//! feedback, the overhead header, and logs that hold no secret.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::path::Path;
use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use switchyard_testkit::{GatewayProcess, MockUpstream, OtlpReceiver, ReceivedSpan};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const MASTER: &str = "sk-master-observability-0001";
const UPSTREAM_KEY: &str = "sk-upstream-secret-0002";
const PROMPT: &str = "the confidential prompt zebra-quartz-42";

struct Answer {
    status: u16,
    headers: HeaderMap,
    text: String,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|_| panic!("not JSON: {}", self.text))
    }
}

async fn post(gw: &GatewayProcess, path: &str, key: &str, body: Value, headers: &[(&str, &str)]) -> Answer {
    let mut request = reqwest::Client::new()
        .post(format!("{}{path}", gw.base_url()))
        .bearer_auth(key)
        .json(&body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    Answer { status, headers, text }
}

fn models(mock: &MockUpstream) -> String {
    format!(
        r#"
model_list:
  - model_name: gpt
    deployments:
      - {{provider: openai, api_base: "{base}", api_key: "{UPSTREAM_KEY}", model: gpt-upstream, input_cost_per_token: 0.000001, output_cost_per_token: 0.000002}}
  - model_name: flaky
    deployments:
      - {{provider: openai, api_base: "{base}", api_key: "{UPSTREAM_KEY}", model: "flaky-upstream::fail_first=1,status=500"}}
  - model_name: broken
    deployments:
      - {{provider: openai, api_base: "{base}", api_key: "{UPSTREAM_KEY}", model: "broken-upstream::status=500"}}
  - model_name: down
    fallbacks: [gpt]
    deployments:
      - {{provider: openai, api_base: "{base}", api_key: "{UPSTREAM_KEY}", model: "down-upstream::status=503"}}
"#,
        base = mock.base_url()
    )
}

fn chat(model: &str, prompt: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": prompt}]})
}

fn one<'a>(spans: &'a [ReceivedSpan], what: &str, pick: impl Fn(&ReceivedSpan) -> bool) -> &'a ReceivedSpan {
    let found: Vec<_> = spans.iter().filter(|s| pick(s)).collect();
    assert_eq!(found.len(), 1, "{what}: {found:#?}\nall: {spans:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_follow_the_request_with_genai_attributes_under_the_clients_trace() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let mock = MockUpstream::start().await;
    let yaml = format!(
        r#"
router_settings:
  num_retries: 2
  retry_backoff_ms: 1
cache:
  enabled: true
telemetry:
  otlp:
    endpoint: "{endpoint}"
    service_name: switchyard-under-test
    batch_delay_ms: 100
{models}  - model_name: "wild/*"
    deployments:
      - {{provider: openai, api_base: "{base}", api_key: "{UPSTREAM_KEY}", model: "*"}}
"#,
        endpoint = receiver.endpoint(),
        models = models(&mock),
        base = mock.base_url()
    );
    let gw = GatewayProcess::start(BIN.as_ref(), &yaml);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{parent_id}-01");
    let a = post(
        &gw,
        "/v1/chat/completions",
        "",
        chat("gpt", "hello spans"),
        &[("traceparent", &traceparent)],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let b = post(&gw, "/v1/chat/completions", "", chat("flaky", "hello retries"), &[]).await;
    assert_eq!(b.status, 200, "{}", b.text);
    // A made-up model and a key in an admin path stay out of the spans.
    let c = post(&gw, "/v1/chat/completions", "", chat("made-up-model-xyz", "hi"), &[]).await;
    assert_eq!(c.status, 404, "{}", c.text);
    // A model a wildcard group serves is the client's choice: spans are
    // named after the group, the model asked for is an attribute.
    let w = post(&gw, "/v1/chat/completions", "", chat("wild/client-chosen-7", "hi"), &[]).await;
    assert_eq!(w.status, 200, "{}", w.text);
    let d = post(&gw, "/key/sk-path-secret-0042/regenerate", "", json!({}), &[]).await;
    assert!(d.status >= 400, "{}", d.text);
    for path in [
        "/key/sk-path-secret-0042/regenerate/",
        "/v1/key/sk-path-secret-0042/regenerate",
    ] {
        let e = post(&gw, path, "", json!({}), &[]).await;
        assert_eq!(e.status, 404, "{}", e.text);
        assert!(!e.text.contains("sk-path-secret-0042"), "{}", e.text);
    }

    let spans = receiver
        .wait_for(Duration::from_secs(20), |spans| {
            spans
                .iter()
                .filter(|s| s.name.starts_with("chat ") && s.kind == 3)
                .count()
                >= 3
                && spans.iter().filter(|s| s.name == "POST chat").count() >= 3
                && spans.iter().any(|s| s.name == "chat unknown")
                && spans.iter().filter(|s| s.name == "chat wild/*").count() >= 2
                && spans
                    .iter()
                    .any(|s| s.attr("url.path") == Some("/key/{key}/regenerate"))
        })
        .await;
    for s in &spans {
        let text = format!("{} {:?}", s.name, s.attributes);
        assert!(
            !text.contains("made-up-model-xyz") && !text.contains("sk-path-secret-0042"),
            "{s:?}"
        );
    }
    assert!(!spans.iter().any(|s| s.name.contains("client-chosen-7")), "{spans:#?}");
    let wild = one(&spans, "wildcard gen_ai span", |s| {
        s.name == "chat wild/*" && s.kind == 1
    });
    assert_eq!(wild.attr("gen_ai.request.model"), Some("wild/client-chosen-7"));
    let ours: Vec<ReceivedSpan> = spans.iter().filter(|s| s.trace_id == trace_id).cloned().collect();
    let server = one(&ours, "server span", |s| s.name == "POST chat");
    assert_eq!(
        server.parent_span_id, parent_id,
        "the client's traceparent is the parent"
    );
    assert_eq!(server.kind, 2, "server kind");
    assert_eq!(server.service, "switchyard-under-test");
    assert_eq!(server.attr("http.response.status_code"), Some("200"));
    assert_eq!(server.attr("http.request.method"), Some("POST"));
    assert_eq!(server.attr("switchyard.request_id"), Some(a.header("x-request-id")));

    let genai = one(&ours, "gen_ai span", |s| s.name == "chat gpt");
    assert_eq!(genai.parent_span_id, server.span_id);
    assert_eq!(genai.attr("gen_ai.operation.name"), Some("chat"));
    assert_eq!(genai.attr("gen_ai.request.model"), Some("gpt"));
    assert_eq!(genai.attr("gen_ai.response.model"), Some("gpt-upstream"));
    let input: i64 = genai.attr("gen_ai.usage.input_tokens").unwrap().parse().unwrap();
    let output: i64 = genai.attr("gen_ai.usage.output_tokens").unwrap().parse().unwrap();
    assert!(input > 0 && output > 0, "{genai:?}");
    assert_eq!(genai.attr("switchyard.cache"), Some("miss"));
    assert_eq!((genai.attr("error.type"), genai.status), (None, 0), "{genai:?}");
    // A refused generation is a failed one, its status code the error's type.
    let refused = one(&spans, "refused gen_ai span", |s| s.name == "chat unknown");
    assert_eq!(
        (refused.attr("error.type"), refused.status),
        (Some("404"), 2),
        "{refused:?}"
    );

    let lookup = one(&ours, "cache span", |s| s.name == "switchyard.cache.lookup");
    assert_eq!(lookup.parent_span_id, genai.span_id);
    assert_eq!(lookup.attr("switchyard.cache.result"), Some("miss"));
    let route = one(&ours, "route span", |s| s.name == "switchyard.route");
    assert_eq!(route.parent_span_id, genai.span_id);
    assert_eq!(route.attr("switchyard.routing.strategy"), Some("simple-shuffle"));
    assert_eq!(route.attr("switchyard.deployment"), Some("gpt/0"));
    let upstream = one(&ours, "upstream span", |s| s.name == "chat gpt-upstream");
    assert_eq!(upstream.parent_span_id, genai.span_id);
    assert_eq!(upstream.kind, 3, "client kind");
    assert_eq!(upstream.attr("gen_ai.system"), Some("openai"));
    assert_eq!(upstream.attr("gen_ai.provider.name"), Some("openai"));
    assert_eq!(upstream.attr("gen_ai.request.model"), Some("gpt-upstream"));

    // The retried request: a trace of its own, two attempts, the first failed.
    let flaky_genai = spans.iter().find(|s| s.name == "chat flaky").expect("flaky span");
    assert_ne!(flaky_genai.trace_id, trace_id, "no traceparent: a new trace");
    let mut attempts: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.parent_span_id == flaky_genai.span_id && s.kind == 3)
        .collect();
    attempts.sort_by_key(|s| s.attr("switchyard.attempt").map(str::to_owned));
    assert_eq!(attempts.len(), 2, "{attempts:#?}");
    assert_eq!(attempts[0].attr("error.type"), Some("server_error"));
    assert_eq!(attempts[0].status, 2, "error status");
    assert_eq!(attempts[1].attr("error.type"), None);
    for s in &spans {
        for v in s.attributes.values() {
            assert!(!v.contains(UPSTREAM_KEY) && !v.contains("hello spans"), "{s:?}");
        }
    }
}

async fn metrics(gw: &GatewayProcess) -> String {
    reqwest::get(format!("{}/metrics", gw.base_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the sample whose line starts with `prefix`.
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or_else(|| panic!("no sample `{prefix}` in:\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics_count_requests_tokens_cost_cache_routing_and_refusals() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("requests.jsonl");
    let yaml = format!(
        "policy:\n  master_key: {MASTER}\nrouter_settings:\n  num_retries: 3\n  retry_backoff_ms: 1\n  cooldown_ms: 600000\ncache:\n  enabled: true\ntelemetry:\n  request_log:\n    path: {}\n{}",
        log_path.display(),
        models(&mock)
    );
    let gw = GatewayProcess::start(BIN.as_ref(), &yaml);
    for _ in 0..2 {
        assert_eq!(
            post(&gw, "/v1/chat/completions", MASTER, chat("gpt", "count me"), &[])
                .await
                .status,
            200
        );
    }
    let stream = json!({"model": "gpt", "stream": true, "messages": [{"role": "user", "content": "stream me"}]});
    assert_eq!(post(&gw, "/v1/chat/completions", MASTER, stream, &[]).await.status, 200);
    let retried = post(&gw, "/v1/chat/completions", MASTER, chat("flaky", "retry me"), &[]).await;
    assert_eq!(retried.status, 200, "{}", retried.text);
    let fell_back = post(&gw, "/v1/chat/completions", MASTER, chat("down", "fall back"), &[]).await;
    assert_eq!(fell_back.status, 200, "{}", fell_back.text);
    let key = post(
        &gw,
        "/key/generate",
        MASTER,
        json!({"rpm_limit": 1, "key_alias": "metered"}),
        &[],
    )
    .await
    .json()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        post(&gw, "/v1/chat/completions", &key, chat("gpt", "one"), &[])
            .await
            .status,
        200
    );
    assert_eq!(
        post(&gw, "/v1/chat/completions", &key, chat("gpt", "two"), &[])
            .await
            .status,
        429
    );

    // A cache hit's record names the group that made the answer, as its
    // `x-switchyard-model` does (training reads it).
    let records = wait_for_lines(&log_path, 8).await;
    let hits: Vec<&Value> = records.iter().filter(|r| r["cache"] == "hit").collect();
    assert_eq!(hits.len(), 1, "{records:#?}");
    assert_eq!(hits[0]["served_model"], "gpt", "{:#?}", hits[0]);
    assert_eq!(hits[0]["deployment"], "gpt/0", "{:#?}", hits[0]);

    let text = metrics(&gw).await;
    assert!(text.contains("# TYPE switchyard_requests_total counter"), "{text}");
    assert_eq!(
        sample(
            &text,
            r#"switchyard_requests_total{route="chat",model="gpt",deployment="gpt/0",status="200"}"#
        ),
        4.0,
        "one JSON, one stream, one for the key, one fallback answered by gpt"
    );
    assert_eq!(
        sample(
            &text,
            r#"switchyard_requests_total{route="chat",model="gpt",deployment="cache",status="200"}"#
        ),
        1.0,
        "a cache hit is not the deployment's traffic"
    );
    assert_eq!(
        sample(
            &text,
            r#"switchyard_requests_total{route="chat",model="gpt",deployment="",status="429"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(&text, r#"switchyard_rate_limited_total{reason="rate_limit"}"#),
        1.0
    );
    assert!(
        sample(
            &text,
            r#"switchyard_request_duration_seconds_count{route="chat",model="gpt"}"#
        ) >= 5.0
    );
    assert_eq!(
        sample(
            &text,
            r#"switchyard_time_to_first_token_seconds_count{model="gpt",deployment="gpt/0"}"#
        ),
        1.0
    );
    assert!(
        sample(
            &text,
            r#"switchyard_tokens_total{model="gpt",deployment="gpt/0",direction="input"}"#
        ) > 0.0
    );
    assert!(
        sample(
            &text,
            r#"switchyard_tokens_total{model="gpt",deployment="gpt/0",direction="output"}"#
        ) > 0.0
    );
    assert!(sample(&text, r#"switchyard_cost_nanousd_total{model="gpt",cache="miss"}"#) > 0.0);
    assert_eq!(
        sample(&text, r#"switchyard_cache_lookups_total{model="gpt",result="hit"}"#),
        1.0
    );
    assert!(sample(&text, r#"switchyard_cache_lookups_total{model="gpt",result="miss"}"#) >= 3.0);
    assert!(
        sample(
            &text,
            r#"switchyard_routing_decisions_total{strategy="simple-shuffle",model="gpt",deployment="gpt/0"}"#
        ) >= 4.0
    );
    assert_eq!(sample(&text, r#"switchyard_retries_total{model="flaky"}"#), 1.0);
    assert_eq!(
        sample(&text, r#"switchyard_fallbacks_total{from="down",to="gpt"}"#),
        1.0
    );
    assert!(
        sample(
            &text,
            r#"switchyard_upstream_attempts_total{deployment="flaky/0",outcome="server_error"}"#
        ) >= 1.0
    );
    assert!(sample(&text, r#"switchyard_cooldowns_total{deployment="down/0"}"#) >= 1.0);
    assert_eq!(sample(&text, "switchyard_in_flight_requests"), 0.0);
    assert!(sample(&text, "switchyard_overhead_seconds_count") >= 5.0);
    // Spend by key (named by reference and alias, never by value) and team.
    let by_key: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("switchyard_key_spend_nanousd_total{") && l.contains(r#"key_alias="metered""#))
        .collect();
    assert_eq!(by_key.len(), 1, "{text}");
    assert!(by_key[0].contains(r#"team="""#), "{}", by_key[0]);
    let spent: f64 = by_key[0].rsplit(' ').next().unwrap().parse().unwrap();
    assert!(spent > 0.0, "{}", by_key[0]);
    assert!(!text.contains(&key), "a key's value in the metrics");
    // Each deployment's breaker, read at the scrape: `down` cooled down.
    assert!(text.contains("# TYPE switchyard_deployment_state gauge"), "{text}");
    assert_eq!(
        sample(
            &text,
            r#"switchyard_deployment_state{model="down",deployment="down/0"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(&text, r#"switchyard_deployment_state{model="gpt",deployment="gpt/0"}"#),
        0.0
    );
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn wait_for_lines(path: &Path, n: usize) -> Vec<Value> {
    for _ in 0..200 {
        let lines = read_lines(path);
        if lines.len() >= n {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    read_lines(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_log_and_feedback_hold_what_training_needs_and_no_secret_reaches_the_logs() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("requests.jsonl");
    let yaml = format!(
        "policy:\n  master_key: {MASTER}\ntelemetry:\n  request_log:\n    path: {}\n{}",
        log_path.display(),
        models(&mock)
    );
    let gw = GatewayProcess::start_with(BIN.as_ref(), &yaml, &[], &[("RUST_LOG", "debug")]);
    let key = post(&gw, "/key/generate", MASTER, json!({"key_alias": "team-a-app"}), &[])
        .await
        .json()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let json_answer = post(&gw, "/v1/chat/completions", &key, chat("gpt", PROMPT), &[]).await;
    assert_eq!(json_answer.status, 200, "{}", json_answer.text);
    let stream = json!({"model": "gpt", "stream": true, "messages": [{"role": "user", "content": PROMPT}]});
    let streamed = post(&gw, "/v1/chat/completions", &key, stream, &[]).await;
    assert_eq!(streamed.status, 200);
    let missing = post(&gw, "/v1/chat/completions", &key, chat("no-such-model", PROMPT), &[]).await;
    assert_eq!(missing.status, 404);
    let anthropic = json!({"model": "gpt", "max_tokens": 50, "messages": [{"role": "user", "content": PROMPT}]});
    let message = post(&gw, "/v1/messages", &key, anthropic, &[]).await;
    assert_eq!(message.status, 200, "{}", message.text);
    let failing = post(&gw, "/v1/chat/completions", &key, chat("broken", PROMPT), &[]).await;
    assert_eq!(failing.status, 502, "{}", failing.text);
    for a in [&json_answer, &streamed, &missing] {
        assert!(a.header("x-request-id").starts_with("req-"), "every answer has an id");
        let overhead: f64 = a.header("x-switchyard-overhead-ms").parse().unwrap();
        assert!(overhead >= 0.0);
    }

    let records = wait_for_lines(&log_path, 5).await;
    assert_eq!(records.len(), 5, "{records:#?}");
    let by_id = |id: &str| {
        records
            .iter()
            .find(|r| r["request_id"] == id)
            .unwrap_or_else(|| panic!("{id}: {records:#?}"))
    };
    let r = by_id(json_answer.header("x-request-id"));
    assert_eq!(r["type"], "request");
    assert_eq!(r["key_alias"], "team-a-app");
    let key_ref = r["key_ref"].as_str().unwrap().to_owned();
    assert_eq!(key_ref.len(), 16, "{r}");
    assert_eq!(r["model"], "gpt");
    assert_eq!(r["deployment"], "gpt/0");
    assert_eq!(r["strategy"], "simple-shuffle");
    assert_eq!(
        r["upstream_request_id"],
        json_answer.header("x-switchyard-upstream-request-id"),
        "the upstream's own id is logged with the request"
    );
    assert!(
        r["upstream_request_id"].as_str().unwrap().starts_with("req_mock"),
        "{r}"
    );
    assert_eq!(r["status"], 200);
    assert!(r["prompt_tokens"].as_u64().unwrap() > 0 && r["completion_tokens"].as_u64().unwrap() > 0);
    let header_cost: f64 = json_answer.header("x-switchyard-response-cost").parse().unwrap();
    assert!((r["cost_usd"].as_f64().unwrap() - header_cost).abs() < 1e-12, "{r}");
    assert!(r["latency_ms"].as_f64().unwrap() > 0.0 && r["ts"].as_i64().unwrap() > 0);
    assert!(r.get("prompt").is_none(), "prompts are not kept unless configured");
    let s = by_id(streamed.header("x-request-id"));
    assert_eq!(s["stream"], true);
    assert_eq!(s["status"], 200);
    assert!(s["completion_tokens"].as_u64().unwrap() > 0, "{s}");
    assert!(s["ttfb_ms"].as_f64().unwrap() <= s["latency_ms"].as_f64().unwrap());
    let m = by_id(missing.header("x-request-id"));
    assert_eq!(m["status"], 404);
    assert_eq!(m["error_class"], "model_not_found");
    // A request every attempt failed: how many, and where.
    let f = by_id(failing.header("x-request-id"));
    assert_eq!(f["status"], 502);
    assert_eq!(
        f["attempts"].to_string(),
        failing.header("x-switchyard-attempts"),
        "{f}"
    );
    assert!(f["attempts"].as_u64().unwrap() > 1, "{f}");
    assert_eq!(
        (&f["served_model"], &f["deployment"]),
        (&json!("broken"), &json!("broken/0")),
        "{f}"
    );
    let anthropic = by_id(message.header("x-request-id"));
    assert_eq!(anthropic["endpoint"], "messages");
    assert_eq!(anthropic["deployment"], "gpt/0");
    assert!(anthropic["completion_tokens"].as_u64().unwrap() > 0, "{anthropic}");

    // Feedback joins a request by id.
    let id = json_answer.header("x-request-id");
    let ok = post(
        &gw,
        "/v1/feedback",
        &key,
        json!({"request_id": id, "score": 0.8, "comment": "good"}),
        &[],
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let down = post(
        &gw,
        "/v1/feedback",
        &key,
        json!({"request_id": streamed.header("x-request-id"), "thumbs": "down"}),
        &[],
    )
    .await;
    assert_eq!(down.status, 200);
    for (body, param) in [
        (json!({"request_id": id, "score": 1.5}), "score"),
        (json!({"request_id": id, "thumbs": "sideways"}), "thumbs"),
        (json!({"request_id": id}), "score"),
        (json!({"score": 1}), "request_id"),
    ] {
        let bad = post(&gw, "/v1/feedback", &key, body.clone(), &[]).await;
        assert_eq!(bad.status, 400, "{body}");
        assert_eq!(bad.json()["error"]["param"], param, "{body}");
    }
    let unauthenticated = post(
        &gw,
        "/v1/feedback",
        "sk-wrong",
        json!({"request_id": id, "score": 1}),
        &[],
    )
    .await;
    assert_eq!(unauthenticated.status, 401);
    let lines = wait_for_lines(&log_path, 7).await;
    let feedback: Vec<&Value> = lines.iter().filter(|l| l["type"] == "feedback").collect();
    assert_eq!(feedback.len(), 2);
    assert_eq!(feedback[0]["request_id"], id);
    assert_eq!(feedback[0]["score"], 0.8);
    assert_eq!(
        feedback[0]["key_ref"],
        key_ref.as_str(),
        "who gave it, to tell it from another key's"
    );
    assert_eq!(feedback[1]["score"], 0.0);
    // Feedback counts against the key's request rate: it cannot flood the log.
    // A key limited to some models may still rate their answers.
    let limited = post(
        &gw,
        "/key/generate",
        MASTER,
        json!({"rpm_limit": 2, "models": ["gpt"]}),
        &[],
    )
    .await
    .json()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let statuses: Vec<u16> = futures_util::future::join_all((0..3).map(|_| {
        post(
            &gw,
            "/v1/feedback",
            &limited,
            json!({"request_id": id, "score": 1}),
            &[],
        )
    }))
    .await
    .iter()
    .map(|a| a.status)
    .collect();
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 1, "{statuses:?}");
    // That refusal is counted with the others.
    assert_eq!(
        sample(
            &metrics(&gw).await,
            r#"switchyard_rate_limited_total{reason="rate_limit"}"#
        ),
        1.0
    );

    // Nothing secret in the logs (at debug level) or the request log.
    let logs = gw.logs().join("\n");
    assert!(
        logs.lines().filter(|l| l.starts_with('{')).count() > 5,
        "JSON log lines: {logs}"
    );
    let file = std::fs::read_to_string(&log_path).unwrap();
    for secret in [PROMPT, "zebra-quartz", key.as_str(), MASTER, UPSTREAM_KEY] {
        assert!(!logs.contains(secret), "`{secret}` reached the logs:\n{logs}");
        assert!(!file.contains(secret), "`{secret}` reached the request log");
    }
    let with_id = logs.lines().any(|l| l.contains(id));
    assert!(with_id, "log lines carry the request id:\n{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_are_logged_and_kept_only_when_asked() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("requests.jsonl");
    let yaml = format!(
        "telemetry:\n  log_payloads: true\n  otlp:\n    endpoint: \"{}\"\n    batch_delay_ms: 100\n  request_log:\n    path: {}\n    include_prompt: true\n{}",
        receiver.endpoint(),
        log_path.display(),
        models(&mock)
    );
    let gw = GatewayProcess::start_with(BIN.as_ref(), &yaml, &[], &[("RUST_LOG", "debug")]);
    let a = post(&gw, "/v1/chat/completions", "", chat("gpt", PROMPT), &[]).await;
    assert_eq!(a.status, 200);
    // A body serde rejects, quoting the prompt, in a debug event.
    let bad = post(
        &gw,
        "/v1/chat/completions",
        "",
        json!({"model": "gpt", "messages": PROMPT}),
        &[],
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    // A method HTTP does not define is named `_OTHER`: clients cannot make up
    // span names.
    let brewed = reqwest::Client::new()
        .request(
            reqwest::Method::from_bytes(b"BREW").unwrap(),
            format!("{}/v1/chat/completions", gw.base_url()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(brewed.status(), 405);
    let spans = receiver
        .wait_for(Duration::from_secs(20), |spans| {
            spans.iter().filter(|s| s.name == "POST chat").count() >= 2 && spans.iter().any(|s| s.name == "_OTHER chat")
        })
        .await;
    assert!(!spans.iter().any(|s| s.name.contains("BREW")), "{spans:#?}");
    for span in &spans {
        let attributes = format!("{:?}", span.attributes);
        assert!(
            !attributes.contains(PROMPT) && !span.events.iter().any(|e| e.contains(PROMPT)),
            "payloads stay out of the exported spans: {span:#?}"
        );
    }
    let records = wait_for_lines(&log_path, 1).await;
    assert_eq!(records[0]["prompt"], PROMPT);
    assert!(
        gw.wait_for_log(PROMPT, Duration::from_secs(5)),
        "the prompt is logged with log_payloads"
    );
    assert!(!gw.logs().join("\n").contains(UPSTREAM_KEY), "keys never are");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_over_grpc_to_the_collector_named_by_the_standard_variables() {
    let receiver = OtlpReceiver::start_grpc().await.unwrap();
    let mock = MockUpstream::start().await;
    let endpoint = receiver.endpoint();
    let gw = GatewayProcess::start_with(
        BIN.as_ref(),
        &models(&mock),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_SERVICE_NAME", "from-the-environment"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let a = post(&gw, "/v1/chat/completions", "", chat("gpt", "over grpc"), &[]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let spans = receiver
        .wait_for(Duration::from_secs(20), |spans| {
            spans.iter().any(|s| s.name == "chat gpt-upstream")
        })
        .await;
    let upstream = one(&spans, "upstream span", |s| s.name == "chat gpt-upstream");
    let genai = one(&spans, "gen_ai span", |s| s.name == "chat gpt");
    assert_eq!(upstream.parent_span_id, genai.span_id);
    assert_eq!(upstream.trace_id, genai.trace_id);
    assert_eq!(upstream.service, "from-the-environment");
    assert_eq!(genai.attr("switchyard.cache"), None, "no cache configured");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_log_can_be_a_redis_stream() {
    let redis = switchyard_testkit::RedisServer::start();
    let mock = MockUpstream::start().await;
    let yaml = format!(
        "telemetry:\n  request_log:\n    redis:\n      url: {}\n      stream: test:requests\n{}",
        redis.url(),
        models(&mock)
    );
    let gw = GatewayProcess::start(BIN.as_ref(), &yaml);
    let a = post(&gw, "/v1/chat/completions", "", chat("gpt", "into redis"), &[]).await;
    assert_eq!(a.status, 200);
    let id = a.header("x-request-id").to_owned();
    let f = post(&gw, "/v1/feedback", "", json!({"request_id": id, "thumbs": "up"}), &[]).await;
    assert_eq!(f.status, 200, "{}", f.text);
    let mut entries = Vec::new();
    for _ in 0..100 {
        let out = std::process::Command::new("redis-cli")
            .args(["-u", &redis.url(), "--raw", "XRANGE", "test:requests", "-", "+"])
            .output()
            .unwrap();
        entries = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect();
        if entries.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[0]["type"], "request");
    assert_eq!(entries[0]["request_id"], id.as_str());
    assert_eq!(entries[0]["deployment"], "gpt/0");
    assert_eq!(entries[1]["type"], "feedback");
    assert_eq!(entries[1]["score"], 1.0);
}

/// A background response's spans stay in its request's trace, under its
/// server span; a request whose client left before a retry is no failed
/// generation (`error.type` `client_closed`, no error status).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_work_keeps_its_trace_and_a_client_leaving_is_no_failure() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let mock = MockUpstream::start().await;
    let yaml = format!(
        r#"
router_settings:
  num_retries: 1
  retry_backoff_ms: 1
telemetry:
  otlp:
    endpoint: "{endpoint}"
    batch_delay_ms: 100
{models}  - model_name: failing-slowly
    deployments:
      - {{provider: openai, api_base: "{base}", api_key: "{UPSTREAM_KEY}", model: "late::first_byte_ms=1500,status=500"}}
"#,
        endpoint = receiver.endpoint(),
        models = models(&mock),
        base = mock.base_url()
    );
    let gw = GatewayProcess::start(BIN.as_ref(), &yaml);
    let trace_id = "5bf92f3577b34da6a3ce929d0e0e4737";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b8-01");
    let queued = post(
        &gw,
        "/v1/responses",
        "",
        json!({"model": "gpt", "input": "in the background", "background": true}),
        &[("traceparent", &traceparent)],
    )
    .await;
    assert_eq!(queued.status, 200, "{}", queued.text);
    let gone = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", gw.base_url()))
        .timeout(Duration::from_millis(500))
        .json(&chat("failing-slowly", "I will not wait"))
        .send()
        .await;
    assert!(gone.is_err(), "the client gave up first");
    let spans = receiver
        .wait_for(Duration::from_secs(20), |spans| {
            spans.iter().any(|s| s.name == "chat gpt" && s.kind == 1)
                && spans.iter().any(|s| s.name == "chat failing-slowly" && s.kind == 1)
        })
        .await;
    let genai = one(&spans, "background gen_ai span", |s| {
        s.name == "chat gpt" && s.kind == 1
    });
    assert_eq!(genai.trace_id, trace_id, "{genai:?}");
    let server = one(&spans, "its server span", |s| s.span_id == genai.parent_span_id);
    assert_eq!(server.kind, 2, "{server:?}");
    assert_eq!(server.trace_id, trace_id);
    let left = one(&spans, "left gen_ai span", |s| {
        s.name == "chat failing-slowly" && s.kind == 1
    });
    assert_eq!(
        (left.attr("error.type"), left.status),
        (Some("client_closed"), 0),
        "{left:?}"
    );
}

/// A client that leaves before its answer is still counted (status 499),
/// while the work it started goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_client_left_is_counted() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.jsonl");
    let yaml = format!(
        "telemetry:\n  request_log:\n    path: {}\n{}  - model_name: slow\n    deployments:\n      - {{provider: openai, api_base: \"{}\", api_key: k, model: \"slow::first_byte_ms=4000\"}}\n",
        log.display(),
        models(&mock),
        mock.base_url()
    );
    let gw = GatewayProcess::start(BIN.as_ref(), &yaml);
    let gone = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", gw.base_url()))
        .timeout(Duration::from_millis(1500))
        .json(&json!({"model": "slow", "messages": [{"role": "user", "content": "slow"}]}))
        .send()
        .await;
    assert!(gone.is_err(), "the client gave up first");
    let mut metrics = String::new();
    for _ in 0..400 {
        metrics = reqwest::get(format!("{}/metrics", gw.base_url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains(r#"status="499""#) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        metrics.lines().any(|l| l.starts_with("switchyard_requests_total{")
            && l.contains(r#"route="chat""#)
            && l.contains(r#"status="499""#)),
        "{metrics}"
    );
    // The request log agrees once the answer came (and was charged).
    let mut written = String::new();
    for _ in 0..200 {
        written = std::fs::read_to_string(&log).unwrap_or_default();
        if written.contains("\"model\":\"slow\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let record: Value = written
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|r| r["model"] == "slow")
        .unwrap_or_else(|| panic!("no record: {written}"));
    assert_eq!(record["status"], 499, "{record}");
    assert_eq!(record["error_class"], "client_closed", "{record}");
    // A request whose own timeout ran out during an attempt names the
    // deployment it was waiting on.
    let late = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", gw.base_url()))
        .json(&json!({"model": "slow", "timeout": 0.5, "messages": [{"role": "user", "content": "late"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(late.status(), 504);
    let id = late.headers()["x-request-id"].to_str().unwrap().to_owned();
    let mut record = Value::Null;
    for _ in 0..200 {
        let written = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(found) = written
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|r| r["request_id"] == id.as_str())
        {
            record = found;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(record["status"], 504, "{record}");
    assert_eq!(record["deployment"], "slow/0", "{record}");
}

/// `telemetry.metrics_require_auth`: `/metrics` (which names keys and their
/// spend) answers the master key only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_require_the_master_key() {
    let mock = MockUpstream::start().await;
    let yaml = format!(
        "policy:\n  master_key: {MASTER}\n  keys:\n    - {{key: sk-virtual-observability-3, key_alias: reader}}\ntelemetry:\n  metrics_require_auth: true\n{}",
        models(&mock)
    );
    let gw = GatewayProcess::start(BIN.as_ref(), &yaml);
    let scrape = |key: Option<&'static str>| {
        let request = reqwest::Client::new().get(format!("{}/metrics", gw.base_url()));
        let request = match key {
            Some(key) => request.bearer_auth(key),
            None => request,
        };
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let (status, body) = scrape(None).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    assert_eq!(scrape(Some("sk-virtual-observability-3")).await.0, 403);
    assert_eq!(scrape(Some("sk-not-a-key-of-this-gateway")).await.0, 401);
    let (status, body) = scrape(Some(MASTER)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("switchyard_"), "{body}");
}

/// The text a streamed chat answer carried, from its SSE body.
fn streamed_text(sse: &str) -> String {
    sse.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect()
}

/// LiteLLM's `success_callback: ["langfuse"]`: spans go to Langfuse's
/// OpenTelemetry endpoint under `LANGFUSE_HOST` with its keys as basic
/// auth, and the `gen_ai` span carries the prompt, the answer (a stream's
/// whole text, the span lasting until its end, with its usage) and the end
/// user, as Langfuse reads them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_langfuse_callback_sends_prompts_and_answers_to_langfuse() {
    use base64::Engine as _;
    let receiver = OtlpReceiver::start().await.unwrap();
    let mock = MockUpstream::start().await;
    let yaml = format!(
        r#"
model_list:
  - model_name: gpt
    litellm_params:
      model: openai/gpt-upstream
      api_base: "{base}"
      api_key: "{UPSTREAM_KEY}"
  - model_name: breaks
    litellm_params:
      model: "openai/b::reset_after=2"
      api_base: "{base}"
      api_key: "{UPSTREAM_KEY}"
  - model_name: slow
    litellm_params:
      model: "openai/s::chunks=6,chunk_delay_ms=700"
      api_base: "{base}"
      api_key: "{UPSTREAM_KEY}"
litellm_settings:
  success_callback: ["langfuse"]
environment_variables:
  LANGFUSE_HOST: "{host}"
  LANGFUSE_SECRET_KEY: sk-lf-secret-0002
"#,
        base = mock.base_url(),
        host = receiver.endpoint()
    );
    // The file's `environment_variables` come before the process's, as
    // LiteLLM sets them.
    let gw = GatewayProcess::start_with(
        BIN.as_ref(),
        &yaml,
        &[],
        &[
            ("LANGFUSE_HOST", "http://127.0.0.1:9"),
            ("LANGFUSE_PUBLIC_KEY", "pk-lf-test-0001"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let mut whole = chat("gpt", PROMPT);
    whole["user"] = json!("alice");
    let a = post(&gw, "/v1/chat/completions", "", whole, &[]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let answer = a.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    let stream =
        json!({"model": "gpt", "stream": true, "messages": [{"role": "user", "content": "stream to langfuse"}]});
    let b = post(&gw, "/v1/chat/completions", "", stream, &[]).await;
    assert_eq!(b.status, 200, "{}", b.text);
    let streamed = streamed_text(&b.text);
    assert!(!streamed.is_empty(), "{}", b.text);
    // A stream the upstream breaks, and one its client leaves.
    let broken = json!({"model": "breaks", "stream": true, "messages": [{"role": "user", "content": "break"}]});
    assert_eq!(post(&gw, "/v1/chat/completions", "", broken, &[]).await.status, 200);
    let left = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", gw.base_url()))
        .timeout(Duration::from_millis(2500))
        .json(&json!({"model": "slow", "stream": true, "messages": [{"role": "user", "content": "leave"}]}))
        .send()
        .await;
    if let Ok(response) = left {
        assert!(response.text().await.is_err(), "the client gave up mid-stream");
    }

    let spans = receiver
        .wait_for(Duration::from_secs(20), |spans| {
            spans.iter().filter(|s| s.name == "chat gpt").count() >= 2
                && spans.iter().any(|s| s.name == "chat breaks")
                && spans.iter().any(|s| s.name == "chat slow")
        })
        .await;
    let broke = spans.iter().find(|s| s.name == "chat breaks").unwrap();
    assert_eq!(broke.status, 2, "{broke:?}");
    assert_eq!(broke.attr("error.type"), Some("other"), "{broke:?}");
    assert!(broke.attr("gen_ai.usage.output_tokens").is_some(), "{broke:?}");
    let gone = spans.iter().find(|s| s.name == "chat slow").unwrap();
    assert_eq!(gone.attr("error.type"), Some("client_closed"), "{gone:?}");
    assert_ne!(
        gone.status, 2,
        "a client leaving is not the gateway's failure: {gone:?}"
    );
    let output: i64 = gone.attr("gen_ai.usage.output_tokens").unwrap().parse().unwrap();
    assert!(output > 0, "{gone:?}");
    let exports = receiver.exports();
    assert!(!exports.is_empty());
    let basic = base64::engine::general_purpose::STANDARD.encode("pk-lf-test-0001:sk-lf-secret-0002");
    for (path, headers) in &exports {
        assert_eq!(path, "/api/public/otel/v1/traces");
        let auth = headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v.clone());
        assert_eq!(auth, Some(format!("Basic {basic}")));
    }
    let genai: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.name == "chat gpt").collect();
    let first = genai
        .iter()
        .find(|s| s.attr("gen_ai.prompt").is_some_and(|p| p.contains(PROMPT)))
        .unwrap_or_else(|| panic!("no span with the prompt: {genai:#?}"));
    let prompt: Value = serde_json::from_str(first.attr("gen_ai.prompt").unwrap()).unwrap();
    assert_eq!(prompt[0]["content"], PROMPT, "the messages, as sent");
    let completion: Value = serde_json::from_str(first.attr("gen_ai.completion").unwrap()).unwrap();
    assert_eq!(completion["content"], answer.as_str(), "the answer's message");
    assert_eq!(first.attr("user.id"), Some("alice"));
    let second = genai
        .iter()
        .find(|s| {
            s.attr("gen_ai.prompt")
                .is_some_and(|p| p.contains("stream to langfuse"))
        })
        .unwrap_or_else(|| panic!("no span of the stream: {genai:#?}"));
    assert_eq!(second.attr("gen_ai.completion"), Some(streamed.as_str()));
    let output: i64 = second.attr("gen_ai.usage.output_tokens").unwrap().parse().unwrap();
    assert!(output > 0, "{second:?}");
    // Neither key reaches a span.
    for s in &spans {
        for v in s.attributes.values() {
            assert!(!v.contains(UPSTREAM_KEY) && !v.contains("sk-lf-secret-0002"), "{s:?}");
        }
    }
}

/// A stream translated to Anthropic's events that meets an event it cannot
/// read ends with an error event, and is logged as the upstream's failure
/// (502), not as a client that left (499).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_translated_stream_the_upstream_broke_is_logged_as_its_failure() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("requests.jsonl");
    let yaml = format!(
        "telemetry:\n  request_log:\n    path: {}\nmodel_list:\n  - model_name: odd\n    deployments:\n      - {{provider: openai, api_base: \"{}\", api_key: k, model: \"odd::foreign_chunk\"}}\n",
        log_path.display(),
        mock.base_url()
    );
    let gw = GatewayProcess::start(BIN.as_ref(), &yaml);
    let body = json!({"model": "odd", "max_tokens": 50, "stream": true,
        "messages": [{"role": "user", "content": "hello"}]});
    let answer = post(&gw, "/v1/messages", "unused", body, &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert!(answer.text.contains("event: error"), "{}", answer.text);
    // The same through the Responses API, which reads the chat stream.
    let body = json!({"model": "odd", "stream": true, "input": "hello"});
    let response = post(&gw, "/v1/responses", "unused", body, &[]).await;
    assert_eq!(response.status, 200, "{}", response.text);
    assert!(response.text.contains("response.failed"), "{}", response.text);
    let records = wait_for_lines(&log_path, 2).await;
    for record in &records {
        assert_eq!(record["status"], 502, "{record}");
        assert_ne!(record["error_class"], "client_closed", "{record}");
    }
}
