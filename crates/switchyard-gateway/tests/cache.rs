//! The response cache through the real `switchyard` binary in front of the
//! OpenAI mock upstream: exact hits for JSON and streams, per-request
//! controls, spend of cached answers, keys kept apart, a Redis cache shared
//! by two gateways that degrades to misses when Redis goes away, and the
//! semantic cache with the real all-MiniLM-L6-v2 embedder.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use switchyard_testkit::{GatewayProcess, MockUpstream, RedisServer};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const MASTER: &str = "sk-master-key-for-cache-tests";

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

    /// The `data:` payloads of an SSE body, `[DONE]` included.
    fn events(&self) -> Vec<String> {
        self.text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(str::to_owned)
            .collect()
    }
}

fn gateway(mock: &MockUpstream, cache: &str) -> GatewayProcess {
    let yaml = format!(
        r#"
policy:
  master_key: {MASTER}
cache:
{cache}
model_list:
  - model_name: gpt
    deployments:
      - provider: openai
        api_base: "{base}"
        api_key: sk-upstream
        model: gpt-upstream
        input_cost_per_token: 0.000001
        output_cost_per_token: 0.000002
  - model_name: claude
    deployments:
      - provider: anthropic
        api_base: "{root}"
        api_key: sk-upstream
        model: claude-sonnet-4-5
"#,
        base = mock.base_url(),
        root = mock.root_url()
    );
    GatewayProcess::start(BIN.as_ref(), &yaml)
}

async fn post(gw: &GatewayProcess, key: &str, body: Value, headers: &[(&str, &str)]) -> Answer {
    let mut request = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", gw.base_url()))
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

/// Asks `body` with the master key until the answer is a cache hit (stores
/// are written after an answer goes out), at most 40 times; the last answer.
/// Asks until the answer is a hit (a Redis entry is written once the answer
/// has gone out), for up to 20 s; the asks store nothing, so a miss does not
/// replace the entry. Returns the last answer and how many asks missed (each
/// an upstream call).
/// The gateway's spend records, filtered by `query` (`?cache_hit=true`…).
async fn spend_logs(gw: &GatewayProcess, query: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{}/spend/logs{query}", gw.base_url()))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()
}

async fn until_hit(gw: &GatewayProcess, body: Value) -> (Answer, usize) {
    let body = with(body, json!({"cache": {"no-store": true}}));
    let mut misses = 0;
    let mut answer = post(gw, MASTER, body.clone(), &[]).await;
    for _ in 0..400 {
        if answer.header("x-switchyard-cache") == "hit" {
            break;
        }
        misses += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
        answer = post(gw, MASTER, body.clone(), &[]).await;
    }
    (answer, misses)
}

fn ask(prompt: &str) -> Value {
    json!({"model": "gpt", "messages": [{"role": "user", "content": prompt}]})
}

fn with(mut body: Value, extra: Value) -> Value {
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

fn upstream_calls(mock: &MockUpstream) -> usize {
    mock.requests()
        .iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_requests_are_answered_once_and_controls_are_obeyed() {
    let mock = MockUpstream::start().await;
    let gw = gateway(&mock, "  enabled: true\n  backend: memory\n  ttl_seconds: 600");

    let first = post(
        &gw,
        MASTER,
        with(ask("hello cache"), json!({"temperature": 0.3, "user": "a"})),
        &[],
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.header("x-switchyard-cache"), "miss");
    assert_eq!(upstream_calls(&mock), 1);
    // Field order and `user` do not change the answer, so they share the entry.
    let body = json!({"user": "b", "temperature": 0.3, "messages": [{"content": "hello cache", "role": "user"}], "model": "gpt"});
    let second = post(&gw, MASTER, body, &[]).await;
    assert_eq!(second.status, 200, "{}", second.text);
    assert_eq!(second.header("x-switchyard-cache"), "hit");
    assert_eq!(second.json(), first.json(), "the same answer, id included");
    assert_eq!(
        second.header("x-switchyard-deployment"),
        first.header("x-switchyard-deployment")
    );
    let cost = |a: &Answer| a.header("x-switchyard-response-cost").parse::<f64>().unwrap();
    assert_eq!(cost(&second), 0.0, "hits are free by default");
    assert!(cost(&first) > 0.0);
    assert_eq!(upstream_calls(&mock), 1, "the hit never reached the upstream");
    // A request the gateway refuses is refused whether or not its answer
    // is cached: a fallback that names no model group.
    let refused = post(
        &gw,
        MASTER,
        with(
            ask("hello cache"),
            json!({"temperature": 0.3, "fallbacks": ["no-such-model"]}),
        ),
        &[],
    )
    .await;
    assert_eq!(refused.status, 400, "{}", refused.text);
    assert_eq!(refused.json()["error"]["param"], "fallbacks[0]", "{}", refused.text);

    // A sampling parameter changes the key.
    let other = post(&gw, MASTER, with(ask("hello cache"), json!({"temperature": 0.9})), &[]).await;
    assert_eq!(other.header("x-switchyard-cache"), "miss");
    assert_eq!(upstream_calls(&mock), 2);

    // no-cache asks the upstream again (and stores the fresh answer).
    let fresh = post(
        &gw,
        MASTER,
        with(
            ask("hello cache"),
            json!({"temperature": 0.3, "cache": {"no-cache": true}}),
        ),
        &[],
    )
    .await;
    assert_eq!(fresh.header("x-switchyard-cache"), "miss");
    assert_ne!(fresh.json()["id"], first.json()["id"]);
    assert_eq!(upstream_calls(&mock), 3);
    let again = post(&gw, MASTER, with(ask("hello cache"), json!({"temperature": 0.3})), &[]).await;
    assert_eq!(again.header("x-switchyard-cache"), "hit");
    assert_eq!(again.json()["id"], fresh.json()["id"], "no-cache replaced the entry");
    // Cache-Control: no-cache does the same.
    let header = post(
        &gw,
        MASTER,
        with(ask("hello cache"), json!({"temperature": 0.3})),
        &[("cache-control", "no-cache")],
    )
    .await;
    assert_eq!(header.header("x-switchyard-cache"), "miss");
    assert_eq!(upstream_calls(&mock), 4);
    // A max-age too large for the clock still means "any age".
    let any_age = post(
        &gw,
        MASTER,
        with(ask("hello cache"), json!({"temperature": 0.3})),
        &[("cache-control", "max-age=18446744073709551615")],
    )
    .await;
    assert_eq!(any_age.header("x-switchyard-cache"), "hit");
    assert_eq!(upstream_calls(&mock), 4);

    // no-store: answered, never kept.
    for _ in 0..2 {
        let a = post(
            &gw,
            MASTER,
            with(ask("do not keep"), json!({"cache": {"no-store": true}})),
            &[],
        )
        .await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("x-switchyard-cache"), "miss");
    }
    assert_eq!(
        post(&gw, MASTER, ask("do not keep"), &[])
            .await
            .header("x-switchyard-cache"),
        "miss"
    );
    assert_eq!(upstream_calls(&mock), 7);

    // A per-request ttl: gone once it passed.
    let short = with(ask("short lived"), json!({"cache": {"ttl": 3}}));
    assert_eq!(
        post(&gw, MASTER, short.clone(), &[]).await.header("x-switchyard-cache"),
        "miss"
    );
    assert_eq!(
        post(&gw, MASTER, short.clone(), &[]).await.header("x-switchyard-cache"),
        "hit"
    );
    tokio::time::sleep(Duration::from_millis(4200)).await;
    assert_eq!(post(&gw, MASTER, short, &[]).await.header("x-switchyard-cache"), "miss");

    // A namespace (LiteLLM's `cache.namespace`) keeps its answers apart.
    let calls = upstream_calls(&mock);
    for (namespace, expected) in [("team-a", "miss"), ("team-a", "hit"), ("team-b", "miss"), ("", "miss")] {
        let body = with(ask("namespaced"), json!({"cache": {"namespace": namespace}}));
        assert_eq!(
            post(&gw, MASTER, body, &[]).await.header("x-switchyard-cache"),
            expected,
            "namespace {namespace:?}"
        );
    }
    assert_eq!(
        post(&gw, MASTER, ask("namespaced"), &[])
            .await
            .header("x-switchyard-cache"),
        "hit",
        "an empty namespace is none"
    );
    assert_eq!(upstream_calls(&mock), calls + 3);

    // Bad controls are the client's error, named by field.
    let bad = post(&gw, MASTER, with(ask("x"), json!({"cache": {"ttl": "soon"}})), &[]).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["param"], "cache.ttl");
    let bad = post(&gw, MASTER, with(ask("x"), json!({"cache": {"namespace": 7}})), &[]).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["param"], "cache.namespace");

    // Spend: hits are recorded apart, at no cost.
    let logs = spend_logs(&gw, "?cache_hit=true").await;
    let hits = logs.as_array().unwrap();
    assert_eq!(hits.len(), 6, "{logs}");
    assert!(
        hits.iter().all(|r| r["cache_hit"] == true && r["cost_nanos"] == 0),
        "{logs}"
    );
    let paid = spend_logs(&gw, "?cache_hit=false").await;
    assert_eq!(paid.as_array().unwrap().len(), 12, "{paid}");

    // A hit is logged with the original token counts, the share its
    // upstream read from its prompt cache included.
    let marked = json!({"model": "gpt", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "cached prefix", "cache_control": {"type": "ephemeral"}}]}
    ]});
    assert_eq!(
        post(&gw, MASTER, marked.clone(), &[])
            .await
            .header("x-switchyard-cache"),
        "miss"
    );
    assert_eq!(post(&gw, MASTER, marked, &[]).await.header("x-switchyard-cache"), "hit");
    let logs = spend_logs(&gw, "").await;
    let read = |hit: bool| {
        logs.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["cache_hit"] == hit)
            .map(|r| r["usage"]["cache_read"].as_u64().unwrap_or(0))
            .max()
            .unwrap_or(0)
    };
    assert!(read(false) > 0, "{logs}");
    assert_eq!(read(true), read(false), "{logs}");

    // Claude's hour-long cache writes keep their share on a hit.
    let hour = json!({"model": "claude", "max_tokens": 20, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "a prefix kept an hour",
            "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}
    ]});
    assert_eq!(
        post(&gw, MASTER, hour.clone(), &[]).await.header("x-switchyard-cache"),
        "miss"
    );
    assert_eq!(post(&gw, MASTER, hour, &[]).await.header("x-switchyard-cache"), "hit");
    let logs = spend_logs(&gw, "").await;
    let usage = |hit: bool| {
        logs.as_array()
            .unwrap()
            .iter()
            .find(|r| r["cache_hit"] == hit && r["model"] == "claude")
            .map(|r| r["usage"].clone())
            .unwrap_or_default()
    };
    assert!(usage(false)["cache_write_1h"].as_u64().unwrap_or(0) > 0, "{logs}");
    assert_eq!(usage(true), usage(false), "{logs}");
}

/// Answers over `cache.max_entry_bytes` are served but not kept; a long
/// stream is not held in memory to the end for the cache's sake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_over_the_entry_limit_are_not_kept() {
    let mock = MockUpstream::start().await;
    let gw = gateway(&mock, "  enabled: true\n  max_entry_bytes: 4096");
    let long_prompt = "word ".repeat(100);
    let long_stream = with(ask(&long_prompt), json!({"stream": true}));
    let short_stream = with(ask("a short story"), json!({"stream": true}));
    for body in [&long_stream, &short_stream] {
        let first = post(&gw, MASTER, body.clone(), &[]).await;
        assert_eq!(first.status, 200, "{}", first.text);
        assert_eq!(first.events().last().map(String::as_str), Some("[DONE]"));
    }
    // The short stream is kept once it ended; by then the long one would be too.
    let mut short = post(&gw, MASTER, short_stream.clone(), &[]).await;
    for _ in 0..50 {
        if short.header("x-switchyard-cache") == "hit" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        short = post(&gw, MASTER, short_stream.clone(), &[]).await;
    }
    assert_eq!(short.header("x-switchyard-cache"), "hit");
    let long = post(&gw, MASTER, long_stream, &[]).await;
    assert_eq!(long.status, 200);
    assert_eq!(long.header("x-switchyard-cache"), "miss");
    assert!(long.text.len() > 4096, "{}", long.text.len());
    // The same for a JSON answer.
    let long_json = ask(&"word ".repeat(1000));
    assert_eq!(post(&gw, MASTER, long_json.clone(), &[]).await.status, 200);
    let again = post(&gw, MASTER, long_json, &[]).await;
    assert_eq!(again.header("x-switchyard-cache"), "miss");
    assert_eq!(
        post(&gw, MASTER, ask("short"), &[]).await.header("x-switchyard-cache"),
        "miss"
    );
    assert_eq!(
        post(&gw, MASTER, ask("short"), &[]).await.header("x-switchyard-cache"),
        "hit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_replayed_with_the_same_chunks_and_keys_can_be_kept_apart() {
    let mock = MockUpstream::start().await;
    let gw = gateway(&mock, "  enabled: true\n  per_key: true\n  hit_cost_ratio: 0.5");
    let stream = with(ask("tell me a story"), json!({"stream": true}));
    let first = post(&gw, MASTER, stream.clone(), &[]).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.header("x-switchyard-cache"), "miss");
    let events = first.events();
    assert!(events.len() > 3, "{}", first.text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(
        !first.text.contains("\"usage\":{"),
        "the client did not ask for usage: {}",
        first.text
    );
    // The entry is written once the stream has ended; asks that miss store
    // nothing, so they do not replace it.
    let peek = with(stream.clone(), json!({"cache": {"no-store": true}}));
    let mut second = post(&gw, MASTER, peek.clone(), &[]).await;
    for _ in 0..400 {
        if second.header("x-switchyard-cache") == "hit" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        second = post(&gw, MASTER, peek.clone(), &[]).await;
    }
    assert_eq!(second.header("x-switchyard-cache"), "hit");
    assert_eq!(second.header("content-type"), "text/event-stream");
    assert_eq!(second.events(), events, "the same chunks in the same order");
    // With include_usage the client gets the usage chunk the gateway kept.
    let with_usage = with(stream.clone(), json!({"stream_options": {"include_usage": true}}));
    let third = post(&gw, MASTER, with_usage, &[]).await;
    assert_eq!(third.header("x-switchyard-cache"), "hit");
    assert!(third.text.contains("\"usage\":{"), "{}", third.text);
    // Charged half the original cost.
    let cost = |a: &Answer| a.header("x-switchyard-response-cost").parse::<f64>().unwrap();
    let json_first = post(&gw, MASTER, ask("priced"), &[]).await;
    let json_hit = post(&gw, MASTER, ask("priced"), &[]).await;
    assert_eq!(json_hit.header("x-switchyard-cache"), "hit");
    assert!(
        (cost(&json_hit) * 2.0 - cost(&json_first)).abs() < 1e-6,
        "{} vs {}",
        cost(&json_hit),
        cost(&json_first)
    );

    // per_key: another key's identical request is not served this key's answer.
    let made: Value = reqwest::Client::new()
        .post(format!("{}/key/generate", gw.base_url()))
        .bearer_auth(MASTER)
        .json(&json!({"key_alias": "other"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let other_key = made["key"].as_str().unwrap();
    let other = post(&gw, other_key, ask("priced"), &[]).await;
    assert_eq!(other.status, 200, "{}", other.text);
    assert_eq!(other.header("x-switchyard-cache"), "miss");
    assert_eq!(
        post(&gw, other_key, ask("priced"), &[])
            .await
            .header("x-switchyard-cache"),
        "hit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cache_is_shared_by_replicas_and_an_outage_is_only_a_miss() {
    let mut redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let cache = format!(
        "  enabled: true\n  backend: redis\n  redis:\n    url: {}\n    timeout_ms: 300",
        redis.url()
    );
    let a = gateway(&mock, &cache);
    let b = gateway(&mock, &cache);
    let first = post(&a, MASTER, ask("shared answer"), &[]).await;
    assert_eq!(first.header("x-switchyard-cache"), "miss");
    // Stored in Redis once the answer went out: the other replica finds it.
    let (second, misses) = until_hit(&b, ask("shared answer")).await;
    assert_eq!(second.header("x-switchyard-cache"), "hit", "{}", second.text);
    assert_eq!(second.json(), first.json());
    assert_eq!(upstream_calls(&mock), 1 + misses);

    redis.stop();
    for gw in [&a, &b] {
        let down = post(gw, MASTER, ask("shared answer"), &[]).await;
        assert_eq!(down.status, 200, "Redis down is a miss, not an error: {}", down.text);
        assert_eq!(down.header("x-switchyard-cache"), "miss");
    }
    assert_eq!(upstream_calls(&mock), 3 + misses);
    // After three failures in a row Redis is left alone for a while: later
    // lookups and stores are skipped instead of each waiting on it. Each of
    // the six requests' lookup and store is counted once, as a failure or
    // as skipped.
    for i in 0..5 {
        let down = post(&a, MASTER, ask(&format!("while down {i}")), &[]).await;
        assert_eq!(down.status, 200, "{}", down.text);
    }
    let counter = |text: &str, name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = reqwest::get(format!("{}/metrics", a.base_url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let (errors, skipped) = (
            counter(&text, "switchyard_cache_errors_total"),
            counter(&text, "switchyard_cache_skipped_total"),
        );
        if errors + skipped == 12 {
            assert!(errors >= 3 && skipped > 0, "errors {errors}, skipped {skipped}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "errors {errors}, skipped {skipped}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    redis.restart();
    // Once Redis is back (and A's breaker has let a command through), an
    // answer A stores reaches B: each round asks A a new prompt, then gives
    // B a few tries to find it; B does not store its misses (`no-store`),
    // so a hit is A's answer.
    let mut shared = false;
    for round in 0..40 {
        let prompt = format!("after restart {round}");
        let from_a = post(&a, MASTER, ask(&prompt), &[]).await;
        assert_eq!(from_a.header("x-switchyard-cache"), "miss");
        for _ in 0..10 {
            let peek = with(ask(&prompt), json!({"cache": {"no-store": true}}));
            if post(&b, MASTER, peek, &[]).await.header("x-switchyard-cache") == "hit" {
                shared = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if shared {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(shared, "an answer stored by A after the restart never reached B");
}

fn model_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").exists(),
        "the embedding model is missing from {}: run `cargo xtask models fetch`",
        dir.display()
    );
    dir.canonicalize().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paraphrase_hits_the_semantic_cache_and_an_unrelated_prompt_misses() {
    let mock = MockUpstream::start().await;
    let yaml = format!(
        r#"
embedder:
  model_dir: "{dir}"
cache:
  enabled: true
  semantic:
    gpt:
      min_similarity: 0.85
model_list:
  - model_name: gpt
    deployments:
      - {{provider: openai, api_base: "{base}", api_key: k, model: gpt-upstream}}
  - model_name: exact-only
    deployments:
      - {{provider: openai, api_base: "{base}", api_key: k, model: other-upstream}}
"#,
        dir = model_dir().display(),
        base = mock.base_url()
    );
    let gw = GatewayProcess::start(BIN.as_ref(), &yaml);
    let first = post(&gw, "", ask("What is the capital city of France?"), &[]).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.header("x-switchyard-cache"), "miss");
    let paraphrase = post(&gw, "", ask("What's the capital of France?"), &[]).await;
    assert_eq!(paraphrase.header("x-switchyard-cache"), "hit", "{}", paraphrase.text);
    let similarity: f64 = paraphrase.header("x-switchyard-cache-similarity").parse().unwrap();
    assert!((0.85..1.0).contains(&similarity), "{similarity}");
    assert_eq!(paraphrase.json(), first.json());
    assert!(
        gw.wait_for_log("cache.semantic with cache.per_key false", Duration::from_secs(10)),
        "shared semantic answers are warned about: {:?}",
        gw.logs()
    );
    let unrelated = post(&gw, "", ask("Write a haiku about autumn leaves."), &[]).await;
    assert_eq!(unrelated.header("x-switchyard-cache"), "miss");
    assert!(unrelated.header("x-switchyard-cache-similarity").is_empty());
    // Other parameters, or a group without a semantic cache: no semantic hit.
    let hotter = post(
        &gw,
        "",
        with(ask("What's the capital of France?"), json!({"temperature": 1.5})),
        &[],
    )
    .await;
    assert_eq!(hotter.header("x-switchyard-cache"), "miss");
    let exact_only = json!({"model": "exact-only", "messages": [{"role": "user", "content": "What is the capital city of France?"}]});
    assert_eq!(
        post(&gw, "", exact_only, &[]).await.header("x-switchyard-cache"),
        "miss"
    );
    let exact_only =
        json!({"model": "exact-only", "messages": [{"role": "user", "content": "What's the capital of France?"}]});
    assert_eq!(
        post(&gw, "", exact_only, &[]).await.header("x-switchyard-cache"),
        "miss"
    );
    assert_eq!(upstream_calls(&mock), 5);

    // Prompts that differ in what is not text are not similar, however
    // close their text: another image, an image alone, another split.
    let picture = |url: &str, text: Option<&str>| {
        let mut parts = vec![json!({"type": "image_url", "image_url": {"url": url}})];
        if let Some(text) = text {
            parts.insert(0, json!({"type": "text", "text": text}));
        }
        json!({"model": "gpt", "messages": [{"role": "user", "content": parts}]})
    };
    for body in [
        picture("https://example.com/cat.png", Some("What is in this image?")),
        picture("https://example.com/dog.png", Some("What is in this image?")),
        picture("https://example.com/dog.png", Some("What's in this image?")),
        picture("https://example.com/cat.png", None),
        picture("https://example.com/dog.png", None),
    ] {
        let a = post(&gw, "", body.clone(), &[]).await;
        assert_eq!(a.status, 200, "{}", a.text);
        let expected = if body.to_string().contains("What's") {
            "hit"
        } else {
            "miss"
        };
        assert_eq!(a.header("x-switchyard-cache"), expected, "{body}");
    }
    assert_eq!(upstream_calls(&mock), 9);
    let split = json!({"model": "gpt", "messages": [
        {"role": "user", "content": "Name a planet."},
        {"role": "assistant", "content": "Mars."},
        {"role": "user", "content": "Another one?"}]});
    let joined = json!({"model": "gpt", "messages": [
        {"role": "user", "content": "Name a planet.\nMars.\nAnother one?"}]});
    assert_eq!(post(&gw, "", split, &[]).await.header("x-switchyard-cache"), "miss");
    assert_eq!(post(&gw, "", joined, &[]).await.header("x-switchyard-cache"), "miss");
    assert_eq!(upstream_calls(&mock), 11);

    // Only the question is compared by meaning: another instruction, or
    // another turn before the same question, is another prompt however
    // close the whole reads.
    let chat = |messages: &[(&str, &str)]| {
        let messages: Vec<_> = messages
            .iter()
            .map(|(role, content)| json!({"role": role, "content": content}))
            .collect();
        json!({"model": "gpt", "messages": messages})
    };
    for (messages, expected) in [
        (
            chat(&[
                ("system", "Reply in French."),
                ("user", "What is the capital city of Spain?"),
            ]),
            "miss",
        ),
        (
            chat(&[
                ("system", "Reply in German."),
                ("user", "What is the capital city of Spain?"),
            ]),
            "miss",
        ),
        (
            chat(&[("system", "Reply in French."), ("user", "What's the capital of Spain?")]),
            "hit",
        ),
        (
            chat(&[
                ("user", "Translate 'good morning' into French."),
                ("assistant", "Bonjour."),
                ("user", "And into Spanish?"),
            ]),
            "miss",
        ),
        (
            chat(&[
                ("user", "Translate 'good night' into French."),
                ("assistant", "Bonne nuit."),
                ("user", "And into Spanish?"),
            ]),
            "miss",
        ),
    ] {
        let answer = post(&gw, "", messages.clone(), &[]).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert_eq!(answer.header("x-switchyard-cache"), expected, "{messages}");
    }
    assert_eq!(upstream_calls(&mock), 15);

    // Prompts longer than the embedder's window (256 tokens) that differ
    // only in the part it cuts are not taken for each other; the same long
    // prompt again is an exact hit.
    let boilerplate = "Answer in one short sentence and cite no sources. ".repeat(40);
    let long = |question: &str| ask(&format!("{question}\n{boilerplate}"));
    let a = post(&gw, "", long("Who wrote Hamlet?"), &[]).await;
    assert_eq!(a.header("x-switchyard-cache"), "miss", "{}", a.text);
    let b = post(&gw, "", long("How far away is the Moon?"), &[]).await;
    assert_eq!(b.header("x-switchyard-cache"), "miss", "{}", b.text);
    assert_ne!(a.json(), b.json());
    let again = post(&gw, "", long("Who wrote Hamlet?"), &[]).await;
    assert_eq!(again.header("x-switchyard-cache"), "hit");
    assert!(again.header("x-switchyard-cache-similarity").is_empty());
    assert_eq!(upstream_calls(&mock), 17);

    // Emoji are one unknown token to the embedder: questions that differ
    // only there are not taken for each other.
    let pizza = post(&gw, "", ask("What does the 🍕 emoji mean?"), &[]).await;
    assert_eq!(pizza.header("x-switchyard-cache"), "miss", "{}", pizza.text);
    let smile = post(&gw, "", ask("What does the 😀 emoji mean?"), &[]).await;
    assert_eq!(smile.header("x-switchyard-cache"), "miss", "{}", smile.text);
    assert_eq!(upstream_calls(&mock), 19);

    // A batch of prompts is answered one choice per prompt, in order: the
    // batch reordered is no semantic hit (its answers would go to the other
    // prompts); the same batch again is an exact hit.
    let batch = |prompts: [&'static str; 2]| {
        let url = format!("{}/v1/completions", gw.base_url());
        async move {
            let response = reqwest::Client::new()
                .post(url)
                .json(&json!({"model": "gpt", "prompt": prompts}))
                .send()
                .await
                .unwrap();
            let cache = response.headers()["x-switchyard-cache"].to_str().unwrap().to_owned();
            (response.status().as_u16(), cache)
        }
    };
    let (france, spain) = (
        "What is the capital city of France?",
        "What is the capital city of Spain?",
    );
    assert_eq!(batch([france, spain]).await, (200, "miss".to_owned()));
    assert_eq!(batch([spain, france]).await, (200, "miss".to_owned()));
    assert_eq!(batch([spain, france]).await, (200, "hit".to_owned()));
    // An echoed prompt is part of the answer: a similar one is no hit.
    let complete = |prompt: &'static str, echo: bool| {
        let url = format!("{}/v1/completions", gw.base_url());
        async move {
            let response = reqwest::Client::new()
                .post(url)
                .json(&json!({"model": "gpt", "prompt": prompt, "echo": echo}))
                .send()
                .await
                .unwrap();
            response.headers()["x-switchyard-cache"].to_str().unwrap().to_owned()
        }
    };
    let (capital, reworded) = (
        "What is the capital city of Italy?",
        "What's the capital city of Italy?",
    );
    assert_eq!(complete(capital, false).await, "miss");
    assert_eq!(complete(reworded, false).await, "hit", "similar without echo");
    assert_eq!(complete(capital, true).await, "miss");
    assert_eq!(complete(reworded, true).await, "miss");
    assert_eq!(complete(capital, true).await, "hit", "the same echoed prompt");
    let completions = mock
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/completions"))
        .count();
    assert_eq!(completions - upstream_calls(&mock), 5);
}

/// A streamed answer the upstream sent without usage is kept at what the
/// stream was charged, so its hits are not free; an answer a fallback group
/// gave is not kept as the requested group's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_of_a_stream_without_usage_are_charged_and_fallback_answers_are_not_kept() {
    let mock = MockUpstream::start().await;
    let yaml = format!(
        r#"
policy:
  master_key: {MASTER}
cache:
  enabled: true
  hit_cost_ratio: 1
model_list:
  - model_name: quiet
    deployments:
      - {{provider: openai, api_base: "{base}", api_key: k, model: "quiet::no_usage", input_cost_per_token: 0.000001, output_cost_per_token: 0.000002}}
  - model_name: down
    fallbacks: [quiet]
    deployments:
      - {{provider: openai, api_base: "{base}", api_key: k, model: "down::status=500"}}
"#,
        base = mock.base_url()
    );
    let gw = GatewayProcess::start(BIN.as_ref(), &yaml);
    let cost = |a: &Answer| a.header("x-switchyard-response-cost").parse::<f64>().unwrap();
    let stream =
        json!({"model": "quiet", "stream": true, "messages": [{"role": "user", "content": "tell me a story"}]});
    let first = post(&gw, MASTER, stream.clone(), &[]).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert!(!first.text.contains("\"usage\":{"), "{}", first.text);
    let mut hit = post(&gw, MASTER, stream.clone(), &[]).await;
    for _ in 0..50 {
        if hit.header("x-switchyard-cache") == "hit" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        hit = post(&gw, MASTER, stream.clone(), &[]).await;
    }
    assert_eq!(hit.header("x-switchyard-cache"), "hit");
    assert!(cost(&hit) > 0.0, "a hit at ratio 1 of a charged stream is not free");

    // A JSON answer without usage is charged its output too, by its length:
    // "mock reply: tell me a short story" is 33 characters, 9 tokens at
    // $2 per million, on top of the estimated prompt at $1 per million.
    let json_answer = post(
        &gw,
        MASTER,
        json!({"model": "quiet", "messages": [{"role": "user", "content": "tell me a short story"}]}),
        &[],
    )
    .await;
    assert_eq!(json_answer.status, 200, "{}", json_answer.text);
    assert!(
        json_answer.json().get("usage").is_none_or(Value::is_null),
        "{}",
        json_answer.text
    );
    let nanos = (cost(&json_answer) * 1e9).round() as i64;
    assert!(nanos >= 9 * 2000 + 1000, "{nanos}");
    assert_eq!(
        (nanos - 9 * 2000) % 1000,
        0,
        "the rest is the estimated prompt: {nanos}"
    );

    let down = json!({"model": "down", "messages": [{"role": "user", "content": "hello"}]});
    for _ in 0..2 {
        let a = post(&gw, MASTER, down.clone(), &[]).await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(a.header("x-switchyard-model"), "quiet");
        assert_eq!(
            a.header("x-switchyard-cache"),
            "miss",
            "a fallback's answer is not kept under `down`"
        );
    }
}

/// An embedder setting out of range is named as itself, not as the model's
/// directory.
#[test]
fn an_embedder_setting_out_of_range_is_named() {
    let yaml = format!(
        "embedder:\n  model_dir: \"{}\"\n  batch_size: 0\ncache:\n  enabled: true\n  semantic:\n    gpt:\n      min_similarity: 0.9\nmodel_list:\n  - model_name: gpt\n    deployments:\n      - {{provider: mock, model: m}}\n",
        model_dir().display()
    );
    let output = switchyard_testkit::run_check_config(BIN.as_ref(), &yaml);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("embedder.batch_size"), "{stderr}");
    assert!(!stderr.contains("embedder.model_dir"), "{stderr}");
}

/// A cached answer uses no upstream tokens: a hit takes only its up-front
/// estimate from the key's token limit, not the original answer's count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_hits_do_not_use_up_the_token_limit() {
    let mock = MockUpstream::start().await;
    let gw = gateway(&mock, "  enabled: true");
    let admin = reqwest::Client::new();
    let made: Value = admin
        .post(format!("{}/key/generate", gw.base_url()))
        .bearer_auth(MASTER)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = made["key"].as_str().unwrap().to_owned();
    let text = "Please write a long story about a lighthouse keeper, a storm, and a ship.";
    let prompt = ask(text);
    let first = post(&gw, &key, prompt.clone(), &[]).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let answer: Value = serde_json::from_str(&first.text).unwrap();
    let total = answer["usage"]["total_tokens"].as_u64().unwrap();
    // A hit takes its estimate (4 bytes a token of the prompt and of its
    // message's 16-byte allowance) up front. The limit (set now, so the
    // first answer does not count) holds four such hits with room to spare,
    // but not four charged the answer's count.
    let estimate = (text.len() as u64 + 16).div_ceil(4);
    assert!(
        total > estimate + 4,
        "the answer ({total}) must outweigh the estimate ({estimate})"
    );
    let limit = 4 * estimate + (total - estimate);
    let updated = admin
        .post(format!("{}/key/update", gw.base_url()))
        .bearer_auth(MASTER)
        .json(&json!({"key": key, "tpm_limit": limit}))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), 200);
    for i in 0..4 {
        let hit = post(&gw, &key, prompt.clone(), &[]).await;
        assert_eq!(hit.status, 200, "hit {i} of a {limit}-token limit: {}", hit.text);
        assert_eq!(hit.header("x-switchyard-cache"), "hit");
    }
}

/// Answers are kept for the deployments that made them: a reload that
/// points the model at another upstream model starts it afresh, while one
/// that changes only a price keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_a_models_deployments_starts_its_answers_afresh() {
    let mock = MockUpstream::start().await;
    let gw = gateway(&mock, "  enabled: true");
    let reload = || async {
        let r = reqwest::Client::new()
            .post(format!("{}/config/reload", gw.base_url()))
            .bearer_auth(MASTER)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    };
    let question = ask("which model are you?");
    assert_eq!(
        post(&gw, MASTER, question.clone(), &[])
            .await
            .header("x-switchyard-cache"),
        "miss"
    );
    assert_eq!(
        post(&gw, MASTER, question.clone(), &[])
            .await
            .header("x-switchyard-cache"),
        "hit"
    );

    let config = std::fs::read_to_string(gw.config_path()).unwrap();
    std::fs::write(gw.config_path(), config.replace("0.000002", "0.000003")).unwrap();
    reload().await;
    assert_eq!(
        post(&gw, MASTER, question.clone(), &[])
            .await
            .header("x-switchyard-cache"),
        "hit",
        "a new price changes no answer"
    );

    let config = std::fs::read_to_string(gw.config_path()).unwrap();
    std::fs::write(
        gw.config_path(),
        config.replace("model: gpt-upstream", "model: gpt-upstream-2"),
    )
    .unwrap();
    reload().await;
    let after = post(&gw, MASTER, question.clone(), &[]).await;
    assert_eq!(after.header("x-switchyard-cache"), "miss", "{}", after.text);
    assert!(after.text.contains("gpt-upstream-2"), "{}", after.text);
}

/// A `SIGHUP` that arrives while the gateway is still starting (here,
/// loading the embedding model) does not stop it: it comes up and serves.
#[test]
fn a_sighup_during_start_up_does_not_stop_the_gateway() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        format!(
            "embedder:\n  model_dir: \"{}\"\ncache:\n  enabled: true\n  semantic:\n    m:\n      min_similarity: 0.9\nmodel_list:\n  - model_name: m\n    deployments:\n      - {{provider: mock, model: m}}\n",
            model_dir().display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .args(["--port", "0"])
        .env_remove("SWITCHYARD_MASTER_KEY")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Once the gateway catches `SIGHUP` (its handler is set first thing,
    // before the model is loaded; waited for up to 2 s, well before the
    // model's load ends); before that the signal would end any process.
    let status = format!("/proc/{}/status", child.id());
    for _ in 0..200 {
        let caught = std::fs::read_to_string(&status).ok().and_then(|text| {
            let mask = text.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
            u64::from_str_radix(mask.trim(), 16).ok()
        });
        if caught.is_some_and(|mask| mask & 1 == 1) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    switchyard_testkit::signal_process(child.id(), "HUP");
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines
        .map_while(Result::ok)
        .any(|line| line.contains("listening on http://"));
    let still_running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready && still_running, "the gateway stopped on an early SIGHUP");
}

/// Redis refusing writes (`maxmemory` reached under `noeviction`) is up: the
/// refused stores do not stop lookups of what it already holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_refusing_stores_still_serves_what_it_holds() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let cache = format!(
        "  enabled: true\n  backend: redis\n  redis:\n    url: {}\n    timeout_ms: 300",
        redis.url()
    );
    let gw = gateway(&mock, &cache);
    let first = post(&gw, MASTER, ask("kept answer"), &[]).await;
    assert_eq!(first.header("x-switchyard-cache"), "miss");
    let (again, _) = until_hit(&gw, ask("kept answer")).await;
    assert_eq!(again.header("x-switchyard-cache"), "hit", "{}", again.text);

    let client = redis::Client::open(redis.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    for (name, value) in [("maxmemory-policy", "noeviction"), ("maxmemory", "1")] {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async(&mut con)
            .await
            .unwrap();
    }
    // Six at once: their refused stores come one after another.
    let refused =
        futures_util::future::join_all((0..6).map(|i| post(&gw, MASTER, ask(&format!("not kept {i}")), &[]))).await;
    for answer in refused {
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert_eq!(answer.header("x-switchyard-cache"), "miss");
    }
    // Stores are written after the answer goes out: wait for the last one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = post(&gw, MASTER, ask("kept answer"), &[]).await;
    assert_eq!(held.header("x-switchyard-cache"), "hit", "{}", held.text);
}

/// Redis over TLS (`rediss://`, as managed Redis services require): the
/// cache and the policy store both use it, trusting the server through the
/// system's roots (`SSL_CERT_FILE` here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_serves_the_cache_and_the_policy_store() {
    let redis = RedisServer::start_tls();
    let mock = MockUpstream::start().await;
    let yaml = format!(
        r#"
policy:
  master_key: {MASTER}
  redis:
    url: {url}
    failure_mode: fail_closed
    timeout_ms: 2000
cache:
  enabled: true
  backend: redis
  redis:
    url: {url}
    timeout_ms: 2000
model_list:
  - model_name: gpt
    deployments:
      - provider: openai
        api_base: "{base}"
        api_key: sk-upstream
        model: gpt-upstream
        input_cost_per_token: 0.000001
"#,
        url = redis.url(),
        base = mock.base_url()
    );
    let ca = redis.ca_file().unwrap();
    let gw = GatewayProcess::start_with(BIN.as_ref(), &yaml, &[], &[("SSL_CERT_FILE", ca.to_str().unwrap())]);
    let first = post(&gw, MASTER, ask("over tls"), &[]).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.header("x-switchyard-cache"), "miss");
    let (again, misses) = until_hit(&gw, ask("over tls")).await;
    assert_eq!(again.header("x-switchyard-cache"), "hit", "{}", again.text);
    assert_eq!(mock.requests().len(), 1 + misses);

    // The entry and the spend are in that Redis, read over TLS here too.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let roots = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(std::fs::read(&ca).unwrap()),
    };
    let client = redis::Client::build_with_tls(redis.url(), roots).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut con).await.unwrap();
    assert!(keys.len() >= 2, "{keys:?}");
}

/// A 200 that answered nothing (no `choices`) is served but never kept;
/// calls the cache does not apply to (images) are not counted as bypassing
/// it; an embeddings hit is logged with the tokens its miss was charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_real_answers_are_kept_and_counted() {
    let mock = MockUpstream::start().await;
    let yaml = format!(
        r#"
policy:
  master_key: {MASTER}
cache:
  enabled: true
model_list:
  - model_name: odd
    deployments:
      - {{provider: openai, api_base: "{base}", api_key: k, model: "m::wrong_shape"}}
  - model_name: embed
    deployments:
      - {{provider: openai, api_base: "{base}", api_key: k, model: "e::no_usage", input_cost_per_token: 0.000001}}
  - model_name: dall-e-3
    deployments:
      - {{provider: openai, api_base: "{base}", api_key: k, model: dall-e-3}}
"#,
        base = mock.base_url()
    );
    let gw = GatewayProcess::start(BIN.as_ref(), &yaml);
    let http = reqwest::Client::new();
    let send = |path: &str, body: Value| {
        let request = http
            .post(format!("{}{path}", gw.base_url()))
            .bearer_auth(MASTER)
            .json(&body);
        async move {
            let response = request.send().await.unwrap();
            let cache = response
                .headers()
                .get("x-switchyard-cache")
                .map(|v| v.to_str().unwrap().to_owned());
            (response.status().as_u16(), cache)
        }
    };
    let chat = json!({"model": "odd", "messages": [{"role": "user", "content": "hi"}]});
    for _ in 0..2 {
        let (status, cache) = send("/v1/chat/completions", chat.clone()).await;
        assert_eq!((status, cache.as_deref()), (200, Some("miss")));
    }
    // Stores are written after the answer goes out: a kept answer would be
    // there by now.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, cache) = send("/v1/chat/completions", chat.clone()).await;
    assert_eq!(cache.as_deref(), Some("miss"));
    assert_eq!(mock.requests().len(), 3);

    let (status, _) = send(
        "/v1/images/generations",
        json!({"model": "dall-e-3", "prompt": "a lighthouse"}),
    )
    .await;
    assert_eq!(status, 200);
    let metrics = reqwest::get(format!("{}/metrics", gw.base_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"switchyard_cache_lookups_total{model="odd",result="miss"} 3"#),
        "{metrics}"
    );
    assert!(!metrics.contains(r#"result="bypass""#), "{metrics}");

    let input = json!({"model": "embed", "input": "some words to embed"});
    let (_, first) = send("/v1/embeddings", input.clone()).await;
    assert_eq!(first.as_deref(), Some("miss"));
    let mut again = send("/v1/embeddings", input.clone()).await.1;
    for _ in 0..40 {
        if again.as_deref() == Some("hit") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        again = send("/v1/embeddings", input.clone()).await.1;
    }
    assert_eq!(again.as_deref(), Some("hit"));
    let logs = |hit: bool| {
        let request = http
            .get(format!("{}/spend/logs?cache_hit={hit}&model=embed", gw.base_url()))
            .bearer_auth(MASTER);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let (paid, hits) = (logs(false).await, logs(true).await);
    let prompt = paid[0]["usage"]["prompt"].as_u64().unwrap();
    assert!(prompt > 0, "{paid}");
    assert_eq!(hits[0]["usage"]["prompt"], prompt, "{hits}");
}
