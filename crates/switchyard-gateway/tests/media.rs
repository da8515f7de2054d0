//! `/v1/images/generations` and `/v1/moderations` through the real
//! `switchyard` binary, against the mock of OpenAI's and Azure's wire
//! protocol: routing, the upstream's view, errors, and the charge per image
//! or per token.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_testkit::{GatewayProcess, MockUpstream};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const MASTER: &str = "sk-master-key-for-media-tests";

fn config(mock: &MockUpstream) -> String {
    let (base, root) = (mock.base_url(), mock.root_url());
    format!(
        r#"
policy:
  master_key: {MASTER}
router_settings:
  num_retries: 0
model_list:
  - model_name: dall-e-3
    deployments:
      - {{provider: openai, model: dall-e-3, api_base: "{base}", api_key: k}}
  - model_name: azure-dalle
    deployments:
      - {{provider: azure, model: dalle3-eu, base_model: dall-e-3, api_base: "{root}", api_version: 2024-10-21, api_key: k}}
  - model_name: gpt-image-1
    deployments:
      - {{provider: openai, model: gpt-image-1, api_base: "{base}", api_key: k}}
  - model_name: quiet-image-proxy
    deployments:
      - {{provider: openai, model: my-image-proxy, base_model: gpt-image-1, api_base: "{base}", api_key: k}}
  - model_name: flat-priced
    deployments:
      - {{provider: openai, model: my-diffusion, api_base: "{base}", api_key: k, output_cost_per_image: 0.5}}
  - model_name: omni-moderation-latest
    deployments:
      - {{provider: openai, model: omni-moderation-latest, api_base: "{base}", api_key: k}}
  - model_name: priced-moderation
    deployments:
      - {{provider: openai, model: omni-moderation-2024-09-26, api_base: "{base}", api_key: k, input_cost_per_token: 0.000001}}
  - model_name: dall-e-2
    content_policy_fallbacks: [dall-e-3]
    deployments:
      - {{provider: openai, model: dall-e-2, api_base: "{base}", api_key: k}}
  - model_name: tts-1
    deployments:
      - {{provider: openai, model: tts-1, api_base: "{base}", api_key: k}}
  - model_name: stalling-tts
    deployments:
      - {{provider: openai, model: "tts-1::chunk_delay_ms=5000", api_base: "{base}", api_key: k, timeouts: {{idle_ms: 300}}}}
  - model_name: broken-tts
    fallbacks: [tts-1]
    deployments:
      - {{provider: openai, model: "tts-1::status=500", api_base: "{base}", api_key: k}}
  - model_name: whisper-1
    deployments:
      - {{provider: openai, model: whisper-1, api_base: "{base}", api_key: k}}
  - model_name: broken-whisper
    deployments:
      - {{provider: openai, model: "whisper-1::status=500", api_base: "{base}", api_key: k}}
  - model_name: gpt-4o-transcribe
    deployments:
      - {{provider: openai, model: gpt-4o-transcribe, api_base: "{base}", api_key: k}}
  - model_name: azure-whisper
    deployments:
      - {{provider: azure, model: whisper-eu, base_model: whisper-1, api_base: "{root}", api_version: 2024-10-21, api_key: k}}
  - model_name: bge-reranker
    deployments:
      - {{provider: openai, model: BAAI/bge-reranker-v2-m3, api_base: "{base}", api_key: k, input_cost_per_token: 0.00000002, output_cost_per_token: 0}}
  - model_name: rerank-v3.5
    deployments:
      - {{provider: openai, model: rerank-v3.5, api_base: "{root}/v2", api_key: k}}
  - model_name: claude
    deployments:
      - {{provider: anthropic, model: claude-sonnet-4, api_base: "{root}", api_key: k}}
  - model_name: chat-only
    deployments:
      - {{provider: openai, model: "chat-only::status=404", api_base: "{base}", api_key: k}}
  - model_name: voyage-like
    deployments:
      - {{provider: openai, model: "my-embedder::partial_usage", api_base: "{base}", api_key: k, input_cost_per_token: 0.000001}}
  - model_name: styled-tts
    deployments:
      - {{provider: openai, model: my-tts, api_base: "{base}", api_key: k, input_cost_per_token: 0.000001, output_cost_per_token: 0}}
  - model_name: failing-images
    fallbacks: [dall-e-3]
    deployments:
      - {{provider: openai, model: "dall-e-2::status=500", api_base: "{base}", api_key: k}}
"#
    )
}

struct Answer {
    status: u16,
    cost: Option<String>,
    request_id: String,
    /// The model group that answered (`x-switchyard-model`).
    model: String,
    body: Value,
}

async fn post(gateway: &GatewayProcess, path: &str, body: Value) -> Answer {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", gateway.base_url()))
        .bearer_auth(MASTER)
        .json(&body)
        .send()
        .await
        .unwrap();
    let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    let (cost, request_id, model) = (
        header("x-switchyard-response-cost"),
        header("x-switchyard-request-id").unwrap_or_default(),
        header("x-switchyard-model").unwrap_or_default(),
    );
    Answer {
        status: response.status().as_u16(),
        cost,
        request_id,
        model,
        body: response.json().await.unwrap_or_default(),
    }
}

/// The spend record of `request_id`, once written.
async fn charged(gateway: &GatewayProcess, request_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logs: Value = reqwest::Client::new()
            .get(format!("{}/spend/logs", gateway.base_url()))
            .bearer_auth(MASTER)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or_default();
        if let Some(record) = logs
            .as_array()
            .and_then(|all| all.iter().find(|r| r["request_id"] == request_id))
        {
            return record.clone();
        }
        assert!(Instant::now() < deadline, "no spend record for {request_id}: {logs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_routed_passed_through_and_charged_per_image() {
    let mock = MockUpstream::start().await;
    let gateway = GatewayProcess::start(Path::new(BIN), &config(&mock));

    // DALL·E 3 at 1792x1024 in HD: $0.12 an image, OpenAI's list price.
    let hd = post(
        &gateway,
        "/v1/images/generations",
        json!({"model": "dall-e-3", "prompt": "a lighthouse at dusk", "size": "1792x1024", "quality": "hd", "style": "vivid"}),
    )
    .await;
    assert_eq!(hd.status, 200, "{}", hd.body);
    assert_eq!(hd.body["data"].as_array().unwrap().len(), 1);
    assert!(
        hd.body["data"][0]["url"]
            .as_str()
            .unwrap()
            .starts_with("https://images.mock.invalid/")
    );
    assert_eq!(hd.cost.as_deref(), Some("0.120000000"));
    assert_eq!(charged(&gateway, &hd.request_id).await["cost_nanos"], 120_000_000);
    let sent = mock.last_request().unwrap();
    assert_eq!(sent.path, "/v1/images/generations");
    assert_eq!(
        sent.body,
        json!({"model": "dall-e-3", "prompt": "a lighthouse at dusk", "size": "1792x1024", "quality": "hd", "style": "vivid"})
    );

    // Azure: the deployment's own path; standard square images are $0.04.
    let azure = post(
        &gateway,
        "/images/generations",
        json!({"model": "azure-dalle", "prompt": "a red fox", "response_format": "b64_json"}),
    )
    .await;
    assert_eq!(azure.status, 200, "{}", azure.body);
    assert!(azure.body["data"][0]["b64_json"].is_string());
    assert_eq!(azure.cost.as_deref(), Some("0.040000000"));
    let sent = mock.last_request().unwrap();
    assert_eq!(sent.path, "/openai/deployments/dalle3-eu/images/generations");
    assert_eq!(sent.query.as_deref(), Some("api-version=2024-10-21"));

    // GPT image models are charged by their tokens ($5 in, $40 out per
    // million): 3 prompt words and 1,056 tokens per medium image, two images.
    let tokens = post(
        &gateway,
        "/v1/images/generations",
        json!({"model": "gpt-image-1", "prompt": "three small cats", "n": 2}),
    )
    .await;
    assert_eq!(tokens.status, 200, "{}", tokens.body);
    assert_eq!(tokens.body["data"].as_array().unwrap().len(), 2);
    let record = charged(&gateway, &tokens.request_id).await;
    assert_eq!(record["usage"]["prompt"], 3);
    assert_eq!(record["usage"]["completion"], 2112);
    assert_eq!(record["cost_nanos"], 3 * 5_000 + 2112 * 40_000);
    // Without `model`, a GPT image parameter asks for OpenAI's GPT image
    // model, as OpenAI reads it; otherwise its default is dall-e-2.
    let transparent = post(
        &gateway,
        "/v1/images/generations",
        json!({"prompt": "a logo", "background": "transparent"}),
    )
    .await;
    assert_eq!(transparent.status, 200, "{}", transparent.body);
    assert_eq!(transparent.model, "gpt-image-1");
    let plain = post(&gateway, "/v1/images/generations", json!({"prompt": "a logo"})).await;
    assert_eq!(
        (plain.status, plain.model.as_str()),
        (200, "dall-e-2"),
        "{}",
        plain.body
    );

    // A token-priced image model whose upstream reports no usage: the
    // estimated prompt and the most output an image bills (6,240 tokens at
    // $40 per million), not nothing.
    let quiet = post(
        &gateway,
        "/v1/images/generations",
        json!({"model": "quiet-image-proxy", "prompt": "a lighthouse"}),
    )
    .await;
    assert_eq!(quiet.status, 200, "{}", quiet.body);
    let record = charged(&gateway, &quiet.request_id).await;
    assert_eq!(record["usage"]["completion"], 6_240, "{record}");
    assert!(record["cost_nanos"].as_i64().unwrap() >= 6_240 * 40_000, "{record}");

    // A configured per-image price holds whatever the size.
    let flat = post(
        &gateway,
        "/v1/images/generations",
        json!({"model": "flat-priced", "prompt": "a map", "n": 3, "size": "512x512"}),
    )
    .await;
    assert_eq!(flat.status, 200, "{}", flat.body);
    assert_eq!(flat.cost.as_deref(), Some("1.500000000"));

    // A failing deployment falls back like any request, charged at the
    // price of the one that answered (DALL·E 3's, not DALL·E 2's $0.02).
    let rescued = post(
        &gateway,
        "/v1/images/generations",
        json!({"model": "failing-images", "prompt": "a boat"}),
    )
    .await;
    assert_eq!(rescued.status, 200, "{}", rescued.body);
    assert_eq!(rescued.cost.as_deref(), Some("0.040000000"));

    // A budget reserves the price of the dearest image the request may
    // get: `dall-e-2` may fall back to `dall-e-3` on a content-policy
    // refusal, where this size and quality cost $0.12, past the key's $0.10.
    let key: Value = reqwest::Client::new()
        .post(format!("{}/key/generate", gateway.base_url()))
        .bearer_auth(MASTER)
        .json(&json!({"max_budget": 0.10}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let budgeted = reqwest::Client::new()
        .post(format!("{}/v1/images/generations", gateway.base_url()))
        .bearer_auth(key["key"].as_str().unwrap())
        .json(&json!({"model": "dall-e-2", "prompt": "a tall ship", "size": "1024x1792", "quality": "hd"}))
        .send()
        .await
        .unwrap();
    assert_eq!(budgeted.status(), 400);
    let refusal: Value = budgeted.json().await.unwrap();
    assert_eq!(refusal["error"]["code"], "budget_exceeded", "{refusal}");

    // The upstream's own refusal comes back as OpenAI's error, naming the field.
    let refused = post(
        &gateway,
        "/v1/images/generations",
        json!({"model": "dall-e-3", "prompt": "two boats", "n": 2}),
    )
    .await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(refused.body["error"]["param"], "n");

    // The gateway's own checks, before any upstream is called.
    let before = mock.requests().len();
    for (body, param) in [
        (json!({"model": "dall-e-3", "prompt": " "}), "prompt"),
        (json!({"model": "dall-e-3", "prompt": "x", "n": 11}), "n"),
        (json!({"model": "dall-e-3", "prompt": "x", "stream": true}), "stream"),
    ] {
        let answer = post(&gateway, "/v1/images/generations", body.clone()).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.body);
        assert_eq!(answer.body["error"]["param"], param, "{body}");
    }
    let missing = post(&gateway, "/v1/images/generations", json!({"model": "dall-e-3"})).await;
    assert_eq!(missing.status, 400, "{}", missing.body);
    // A provider without an image API says so.
    let claude = post(
        &gateway,
        "/v1/images/generations",
        json!({"model": "claude", "prompt": "x"}),
    )
    .await;
    assert_eq!(claude.status, 400, "{}", claude.body);
    assert!(
        claude.body["error"]["message"].as_str().unwrap().contains("images"),
        "{}",
        claude.body
    );
    assert_eq!(mock.requests().len(), before, "none of these reached the upstream");
    // No model: OpenAI's default, `dall-e-2`, which this gateway serves.
    // `"stream": null` is no stream asked for.
    let default = post(
        &gateway,
        "/v1/images/generations",
        json!({"prompt": "a kite", "stream": null}),
    )
    .await;
    assert_eq!(default.status, 200, "{}", default.body);
    assert_eq!(mock.last_request().unwrap().body["model"], "dall-e-2");
    assert_eq!(default.cost.as_deref(), Some("0.020000000"));
    let metrics = reqwest::get(format!("{}/metrics", gateway.base_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("switchyard_requests_total")
            && l.contains("route=\"images\"")
            && l.contains("model=\"dall-e-3\"")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderations_are_routed_and_answered_as_the_upstream_gave_them() {
    let mock = MockUpstream::start().await;
    let gateway = GatewayProcess::start(Path::new(BIN), &config(&mock));
    let one = post(
        &gateway,
        "/v1/moderations",
        json!({"model": "omni-moderation-latest", "input": "a violent threat"}),
    )
    .await;
    assert_eq!(one.status, 200, "{}", one.body);
    assert_eq!(one.body["results"][0]["flagged"], true);
    assert_eq!(one.body["results"][0]["categories"]["violence"], true);
    assert_eq!(mock.last_request().unwrap().path, "/v1/moderations");
    // No model: OpenAI's default, which this gateway serves.
    let many = post(
        &gateway,
        "/moderations",
        json!({"input": ["hello there", {"type": "text", "text": "so violent"}]}),
    )
    .await;
    assert_eq!(many.status, 200, "{}", many.body);
    let flagged: Vec<&Value> = many.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["flagged"])
        .collect();
    assert_eq!(flagged, [&json!(false), &json!(true)]);
    assert_eq!(mock.last_request().unwrap().body["model"], "omni-moderation-latest");
    // Moderation is free at OpenAI: charged nothing…
    assert_eq!(charged(&gateway, &many.request_id).await["cost_nanos"], 0);
    // …unless the deployment has input prices: the text's estimated tokens
    // (a token per 4 bytes), an image part counted as one image whatever its size.
    let priced = post(
        &gateway,
        "/v1/moderations",
        json!({"model": "priced-moderation", "input": [
            {"type": "text", "text": "0123456789abcdef"},
            {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{}", "A".repeat(200_000))}},
        ]}),
    )
    .await;
    assert_eq!(priced.status, 200, "{}", priced.body);
    let record = charged(&gateway, &priced.request_id).await;
    assert_eq!(record["usage"]["prompt"], (16 + 2_500) / 4, "{record}");
    assert_eq!(record["cost_nanos"], (16 + 2_500) / 4 * 1_000);

    let empty = post(&gateway, "/v1/moderations", json!({"input": []})).await;
    assert_eq!(
        (empty.status, empty.body["error"]["param"].clone()),
        (400, json!("input"))
    );
    // Azure has no moderation endpoint; Anthropic neither.
    let claude = post(&gateway, "/v1/moderations", json!({"model": "claude", "input": "x"})).await;
    assert_eq!(claude.status, 400, "{}", claude.body);
}

/// A multipart upload of `bytes` bytes named `name`, with `fields`.
fn upload(name: &str, bytes: usize, fields: &[(&str, &str)]) -> reqwest::multipart::Form {
    let mut form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(vec![7u8; bytes])
            .file_name(name.to_owned())
            .mime_str("audio/mpeg")
            .unwrap(),
    );
    for (field, value) in fields {
        form = form.text((*field).to_owned(), (*value).to_owned());
    }
    form
}

async fn send_form(
    gateway: &GatewayProcess,
    path: &str,
    form: reqwest::multipart::Form,
) -> (u16, String, Option<String>, String) {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", gateway.base_url()))
        .bearer_auth(MASTER)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    let (kind, cost) = (
        header("content-type").unwrap_or_default(),
        header("x-switchyard-response-cost"),
    );
    (response.status().as_u16(), kind, cost, response.text().await.unwrap())
}

/// Embeddings whose usage gives `total_tokens` only (Voyage AI's count) are
/// charged those tokens, not nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_counted_in_total_tokens_only_are_charged() {
    let mock = MockUpstream::start().await;
    let gateway = GatewayProcess::start(Path::new(BIN), &config(&mock));
    let answer = post(
        &gateway,
        "/v1/embeddings",
        json!({"model": "voyage-like", "input": ["one two three four five six seven eight"]}),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body["usage"].get("prompt_tokens").is_none(), "{}", answer.body);
    let tokens = answer.body["usage"]["total_tokens"].as_u64().unwrap();
    assert!(tokens > 0, "{}", answer.body);
    let record = charged(&gateway, &answer.request_id).await;
    assert_eq!(record["usage"]["prompt"], tokens, "{record}");
    let cost: f64 = answer.cost.unwrap().parse().unwrap();
    assert!((cost - tokens as f64 * 0.000001).abs() < 1e-9, "{cost}");
}

/// A speech model's `instructions` are billed input (gpt-4o-mini-tts):
/// they count in the prompt the request is charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speech_instructions_are_charged_as_input() {
    let mock = MockUpstream::start().await;
    let gateway = GatewayProcess::start(Path::new(BIN), &config(&mock));
    let http = reqwest::Client::new();
    let mut costs = Vec::new();
    for body in [
        json!({"model": "styled-tts", "voice": "alloy", "input": "hi"}),
        json!({"model": "styled-tts", "voice": "alloy", "input": "hi", "instructions": "x".repeat(400)}),
    ] {
        let response = http
            .post(format!("{}/v1/audio/speech", gateway.base_url()))
            .bearer_auth(MASTER)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let cost: f64 = response.headers()["x-switchyard-response-cost"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        costs.push(cost);
    }
    // 400 bytes of instructions: about 100 tokens more, at $1 per million.
    assert!((costs[1] - costs[0] - 0.0001).abs() < 2e-6, "{costs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speech_comes_back_as_audio_charged_per_character() {
    let mock = MockUpstream::start().await;
    let gateway = GatewayProcess::start(Path::new(BIN), &config(&mock));
    let http = reqwest::Client::new();
    let speak = |body: Value| {
        http.post(format!("{}/v1/audio/speech", gateway.base_url()))
            .bearer_auth(MASTER)
            .json(&body)
            .send()
    };
    let response = speak(json!({"model": "tts-1", "voice": "alloy", "input": "hello world"}))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "audio/mpeg");
    // tts-1: $15 per million characters.
    assert_eq!(response.headers()["x-switchyard-response-cost"], "0.000165000");
    let audio = response.bytes().await.unwrap();
    assert!(
        audio.starts_with(b"ID3") && audio.len() == 3 + 32 * 11,
        "{} bytes",
        audio.len()
    );
    let sent = mock.last_request().unwrap();
    assert_eq!(sent.path, "/v1/audio/speech");
    assert_eq!(
        sent.body,
        json!({"model": "tts-1", "input": "hello world", "voice": "alloy"})
    );

    let wav = speak(json!({"model": "tts-1", "voice": "nova", "input": "hi", "response_format": "wav"}))
        .await
        .unwrap();
    assert_eq!(wav.headers()["content-type"], "audio/wav");
    assert!(wav.bytes().await.unwrap().starts_with(b"RIFF"));

    for (body, param) in [
        (json!({"model": "tts-1", "voice": "alloy", "input": ""}), "input"),
        (
            json!({"model": "tts-1", "voice": "alloy", "input": "x".repeat(4097)}),
            "input",
        ),
        (
            json!({"model": "tts-1", "voice": "alloy", "input": "x", "stream_format": "sse"}),
            "stream_format",
        ),
    ] {
        let refused = speak(body.clone()).await.unwrap();
        assert_eq!(refused.status(), 400, "{body}");
        let error: Value = refused.json().await.unwrap();
        assert_eq!(error["error"]["param"], param, "{body}");
    }
    // Audio that stalls once begun ends in an error after the idle timeout,
    // not once the upstream goes on.
    let stalled = speak(json!({"model": "stalling-tts", "voice": "alloy", "input": "hi"}))
        .await
        .unwrap();
    assert_eq!(stalled.status(), 200);
    assert!(stalled.bytes().await.is_err(), "the stalled audio ends in an error");
    // An upstream failing before its audio starts is retried elsewhere.
    let fell_back = speak(json!({"model": "broken-tts", "voice": "alloy", "input": "hi"}))
        .await
        .unwrap();
    assert_eq!(fell_back.status(), 200);
    assert_eq!(fell_back.headers()["x-switchyard-model"], "tts-1");
    assert!(fell_back.bytes().await.unwrap().starts_with(b"ID3"));
    let claude = speak(json!({"model": "claude", "voice": "alloy", "input": "x"}))
        .await
        .unwrap();
    assert_eq!(claude.status(), 400);
    let error: Value = claude.json().await.unwrap();
    assert_eq!(error["error"]["code"], "unsupported", "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_transcribed_and_charged_by_duration_or_tokens() {
    let mock = MockUpstream::start().await;
    let gateway = GatewayProcess::start(Path::new(BIN), &config(&mock));

    // whisper-1 reports 3 seconds of audio: $0.006 a minute.
    let (status, kind, cost, body) = send_form(
        &gateway,
        "/v1/audio/transcriptions",
        upload("call.mp3", 48_000, &[("model", "whisper-1"), ("language", "en")]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(kind.starts_with("application/json"), "{kind}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["text"],
        "transcript of call.mp3"
    );
    assert_eq!(cost.as_deref(), Some("0.000300000"));
    let sent = mock.last_request().unwrap();
    assert_eq!(sent.path, "/v1/audio/transcriptions");
    assert_eq!(
        sent.body,
        json!({"model": "whisper-1", "language": "en", "file": {"filename": "call.mp3", "content_type": "audio/mpeg", "bytes": 48_000}})
    );

    // A text transcript reports no duration: the upstream is asked for
    // JSON, which does, and the client gets its text.
    let (status, kind, cost, body) = send_form(
        &gateway,
        "/audio/translations",
        upload(
            "rede.mp3",
            48_000,
            &[("model", "whisper-1"), ("response_format", "text")],
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(kind.starts_with("text/plain"), "{kind}");
    assert_eq!(body, "transcript of rede.mp3\n");
    assert_eq!(cost.as_deref(), Some("0.000300000"));
    let sent = mock.last_request().unwrap();
    assert_eq!(sent.path, "/v1/audio/translations");
    assert_eq!(sent.body["response_format"], "json");

    // Subtitles are charged to the end of their last cue (5 seconds here).
    let (status, _, cost, body) = send_form(
        &gateway,
        "/v1/audio/transcriptions",
        upload(
            "talk.mp3",
            80_000,
            &[("model", "whisper-1"), ("response_format", "vtt")],
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("WEBVTT"), "{body}");
    assert_eq!(cost.as_deref(), Some("0.000500000"));

    // The gateway's own fields, as the SDKs send lists in a form: a
    // fallback taken, tags recorded, neither sent upstream.
    let form = upload(
        "call.mp3",
        16_000,
        &[
            ("model", "broken-whisper"),
            ("fallbacks[]", "whisper-1"),
            ("tags[]", "voice"),
        ],
    );
    let response = reqwest::Client::new()
        .post(format!("{}/v1/audio/transcriptions", gateway.base_url()))
        .bearer_auth(MASTER)
        .header("x-litellm-tags", "support")
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-switchyard-model"], "whisper-1");
    let request_id = response.headers()["x-switchyard-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let sent = mock.last_request().unwrap();
    assert_eq!(sent.body["model"], "whisper-1");
    assert!(
        sent.body.get("fallbacks[]").is_none() && sent.body.get("tags[]").is_none(),
        "{}",
        sent.body
    );
    let record = charged(&gateway, &request_id).await;
    let tags: Vec<&str> = record["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(tags.contains(&"voice") && tags.contains(&"support"), "{record}");

    // A GPT-4o model is charged by its tokens: 30 audio tokens in at $6
    // and 3 text tokens out at $10 per million.
    let (status, _, cost, body) = send_form(
        &gateway,
        "/v1/audio/transcriptions",
        upload("memo.wav", 48_000, &[("model", "gpt-4o-transcribe")]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(cost.as_deref(), Some("0.000210000"));

    // Azure: the deployment's path, priced as its base model.
    let (status, _, cost, body) = send_form(
        &gateway,
        "/v1/audio/transcriptions",
        upload("note.mp3", 48_000, &[("model", "azure-whisper")]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(cost.as_deref(), Some("0.000300000"));
    let sent = mock.last_request().unwrap();
    assert_eq!(sent.path, "/openai/deployments/whisper-eu/audio/transcriptions");
    assert_eq!(sent.body["model"], "whisper-eu");

    // What the gateway refuses itself.
    let no_file = reqwest::multipart::Form::new().text("model", "whisper-1");
    let (status, _, _, body) = send_form(&gateway, "/v1/audio/transcriptions", no_file).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["param"], "file");
    let (status, _, _, body) = send_form(&gateway, "/v1/audio/transcriptions", upload("a.mp3", 10, &[])).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["param"], "model");
    let not_a_form = reqwest::Client::new()
        .post(format!("{}/v1/audio/transcriptions", gateway.base_url()))
        .bearer_auth(MASTER)
        .json(&json!({"model": "whisper-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(not_a_form.status(), 400);
    let error: Value = not_a_form.json().await.unwrap();
    assert_eq!(error["error"]["param"], "file", "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_orders_documents_and_is_charged_by_tokens_or_searches() {
    let mock = MockUpstream::start().await;
    let gateway = GatewayProcess::start(Path::new(BIN), &config(&mock));

    // A vLLM-style server: ordered results, charged its reported tokens.
    let ranked = post(
        &gateway,
        "/v1/rerank",
        json!({"model": "bge-reranker", "query": "capital of france", "top_n": 2,
            "documents": ["Berlin is big", "Paris is the capital of France", {"text": "a capital idea"}]}),
    )
    .await;
    assert_eq!(ranked.status, 200, "{}", ranked.body);
    let order: Vec<i64> = ranked.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["index"].as_i64().unwrap())
        .collect();
    assert_eq!(order, [1, 2]);
    let sent = mock.last_request().unwrap();
    assert_eq!(sent.path, "/v1/rerank");
    assert_eq!(sent.body["model"], "BAAI/bge-reranker-v2-m3");
    // 3 query words and 3 + 6 + 3 document words, at $0.02 per million.
    assert_eq!(charged(&gateway, &ranked.request_id).await["cost_nanos"], 15 * 20);

    // Cohere's /v2/rerank, by its clients' path: $2 per 1,000 searches,
    // a search per 100 documents.
    // 150 documents, one of them 600 words long: 151 chunks, 2 searches.
    let mut documents: Vec<String> = (0..150).map(|i| format!("document {i}")).collect();
    documents[3] = "word ".repeat(600);
    let cohere = post(
        &gateway,
        "/v2/rerank",
        json!({"model": "rerank-v3.5", "query": "document 7", "documents": documents}),
    )
    .await;
    assert_eq!(cohere.status, 200, "{}", cohere.body);
    assert_eq!(cohere.body["results"].as_array().unwrap().len(), 150);
    assert_eq!(mock.last_request().unwrap().path, "/v2/rerank");
    assert_eq!(cohere.cost.as_deref(), Some("0.004000000"));

    let empty = post(
        &gateway,
        "/rerank",
        json!({"model": "bge-reranker", "query": "x", "documents": []}),
    )
    .await;
    assert_eq!(
        (empty.status, empty.body["error"]["param"].clone()),
        (400, json!("documents"))
    );
    // A server without the route (OpenAI has no /rerank) answers 404:
    // the request cannot be served there, and the deployment, which serves
    // chat, is not put in cooldown however often it is asked.
    for _ in 0..4 {
        let missing = post(
            &gateway,
            "/v1/rerank",
            json!({"model": "chat-only", "query": "x", "documents": ["y"]}),
        )
        .await;
        assert_eq!(
            (missing.status, missing.body["error"]["code"].clone()),
            (400, json!("unsupported")),
            "{}",
            missing.body
        );
    }
    let deployments: Value = reqwest::Client::new()
        .get(format!("{}/admin/deployments", gateway.base_url()))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let chat_only = deployments["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["deployment"] == "chat-only/0")
        .unwrap();
    assert_eq!(chat_only["cooldown"]["state"], "closed", "{chat_only}");
    assert_eq!(chat_only["cooldown"]["recent_failures"], 0, "{chat_only}");
    let claude = post(
        &gateway,
        "/v1/rerank",
        json!({"model": "claude", "query": "x", "documents": ["y"]}),
    )
    .await;
    assert_eq!(
        (claude.status, claude.body["error"]["code"].clone()),
        (400, json!("unsupported"))
    );
}

/// An image part of a multipart form.
fn image_part(name: &str) -> reqwest::multipart::Part {
    reqwest::multipart::Part::bytes(vec![9u8; 100])
        .file_name(name.to_owned())
        .mime_str("image/png")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_edits_are_uploaded_routed_and_charged() {
    let mock = MockUpstream::start().await;
    let gateway = GatewayProcess::start(Path::new(BIN), &config(&mock));

    // DALL·E 2: one image and a mask, two 512x512 images at $0.018 each.
    let form = reqwest::multipart::Form::new()
        .part("image", image_part("cat.png"))
        .part("mask", image_part("mask.png"))
        .text("prompt", "make it blue")
        .text("n", "2")
        .text("size", "512x512")
        .text("user", "u-1")
        .text("model", "dall-e-2");
    let (status, kind, cost, body) = send_form(&gateway, "/v1/images/edits", form).await;
    assert_eq!(status, 200, "{body}");
    assert!(kind.starts_with("application/json"), "{kind}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["data"].as_array().unwrap().len(), 2, "{answer}");
    assert_eq!(cost.as_deref(), Some("0.036000000"));
    let sent = mock.last_request().unwrap();
    assert_eq!(sent.path, "/v1/images/edits");
    let file = |name: &str| json!({"filename": name, "content_type": "image/png", "bytes": 100});
    assert_eq!(
        sent.body,
        json!({"model": "dall-e-2", "prompt": "make it blue", "n": "2", "size": "512x512", "user": "u-1",
               "image": file("cat.png"), "mask": file("mask.png")})
    );

    // A GPT image model edits several images (`image[]`), charged by the
    // tokens it reports: 3 words and 272 per image in at $5 a million, the
    // 544 image tokens $5 more (image input is $10), 1,056 out at $40. The
    // gateway's own form fields do not go upstream.
    let form = reqwest::multipart::Form::new()
        .part("image[]", image_part("a.png"))
        .part("image[]", image_part("b.png"))
        .text("prompt", "make it blue")
        .text("model", "gpt-image-1")
        .text("tags[]", "catalogue");
    let (status, _, cost, body) = send_form(&gateway, "/images/edits", form).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(cost.as_deref(), Some("0.047695000"));
    let sent = mock.last_request().unwrap();
    assert_eq!(sent.body["image[]"], json!([file("a.png"), file("b.png")]));
    assert!(sent.body.get("tags[]").is_none(), "{}", sent.body);

    // No model and several images: OpenAI's GPT image default.
    let form = reqwest::multipart::Form::new()
        .part("image[]", image_part("a.png"))
        .part("image[]", image_part("b.png"))
        .text("prompt", "make it blue");
    let (status, _, _, body) = send_form(&gateway, "/v1/images/edits", form).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(mock.last_request().unwrap().body["model"], "gpt-image-1");

    // No model: OpenAI's default, dall-e-2, at 1024x1024 ($0.02).
    let form = reqwest::multipart::Form::new()
        .part("image", image_part("cat.png"))
        .text("prompt", "a hat");
    let (status, _, cost, body) = send_form(&gateway, "/v1/images/edits", form).await;
    assert_eq!((status, cost.as_deref()), (200, Some("0.020000000")), "{body}");

    // Azure addresses the deployment.
    let form = reqwest::multipart::Form::new()
        .part("image", image_part("cat.png"))
        .text("prompt", "a hat")
        .text("model", "azure-dalle");
    let (status, _, _, body) = send_form(&gateway, "/v1/images/edits", form).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        mock.last_request().unwrap().path,
        "/openai/deployments/dalle3-eu/images/edits"
    );

    // Mistakes are the client's, each naming its field; nothing reaches the mock.
    let before = mock.requests().len();
    for (form, param) in [
        (
            reqwest::multipart::Form::new()
                .text("prompt", "x")
                .text("model", "dall-e-2"),
            "image",
        ),
        (
            reqwest::multipart::Form::new()
                .part("image", image_part("cat.png"))
                .text("model", "dall-e-2"),
            "prompt",
        ),
        (
            reqwest::multipart::Form::new()
                .part("image", image_part("cat.png"))
                .text("prompt", "x")
                .text("n", "11"),
            "n",
        ),
        (
            reqwest::multipart::Form::new()
                .part("image", image_part("cat.png"))
                .text("prompt", "x")
                .text("stream", "true"),
            "stream",
        ),
        // What is checked and reserved is what goes upstream.
        (
            reqwest::multipart::Form::new()
                .part("image", image_part("cat.png"))
                .text("prompt", "x")
                .text("n", "1")
                .text("n", "10"),
            "n",
        ),
    ] {
        let (status, _, _, body) = send_form(&gateway, "/v1/images/edits", form).await;
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (status, answer["error"]["param"].as_str()),
            (400, Some(param)),
            "{body}"
        );
    }
    assert_eq!(mock.requests().len(), before);
    // A deployment that cannot edit images says so.
    let form = reqwest::multipart::Form::new()
        .part("image", image_part("cat.png"))
        .text("prompt", "x")
        .text("model", "claude");
    let (status, _, _, body) = send_form(&gateway, "/v1/images/edits", form).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("image edits"), "{body}");
}
