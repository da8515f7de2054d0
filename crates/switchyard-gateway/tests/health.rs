//! `GET /health` through the real `switchyard` binary: each deployment is
//! asked over HTTP (the mocks of OpenAI's and Anthropic's wire protocols),
//! and the healthy and unhealthy ones are listed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::path::Path;

use serde_json::Value;
use switchyard_testkit::{GatewayProcess, MockUpstream};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const MASTER: &str = "sk-master-key-for-health-tests";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_asks_every_deployment_and_lists_the_failing_ones() {
    let mock = MockUpstream::start().await;
    let (base, root) = (mock.base_url(), mock.root_url());
    let config = format!(
        r#"
policy:
  master_key: {MASTER}
model_list:
  - model_name: chat
    deployments:
      - {{provider: openai, model: mock-model, api_base: "{base}", api_key: k}}
      - {{provider: openai, model: "mock-model::status=500", api_base: "{base}", api_key: k}}
  - model_name: claude
    deployments:
      - {{provider: anthropic, model: claude-sonnet-4, api_base: "{root}", api_key: k}}
  - model_name: embed
    deployments:
      - {{provider: openai, model: text-embedding-3-small, api_base: "{base}", api_key: k, health_check: embedding}}
  - model_name: images
    deployments:
      - {{provider: openai, model: dall-e-3, api_base: "{base}", api_key: k, health_check: none}}
"#
    );
    let gateway = GatewayProcess::start(Path::new(BIN), &config);
    let get = |path: &str, key: &str| {
        reqwest::Client::new()
            .get(format!("{}{path}", gateway.base_url()))
            .bearer_auth(key)
            .send()
    };
    let response = get("/health", MASTER).await.unwrap();
    assert_eq!(response.status(), 200);
    let report: Value = response.json().await.unwrap();
    let names = |list: &str| -> Vec<String> {
        let mut names: Vec<String> = report[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["deployment"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        names("healthy_endpoints"),
        ["chat/0", "claude/0", "embed/0"],
        "{report}"
    );
    assert_eq!(names("unhealthy_endpoints"), ["chat/1"], "{report}");
    assert_eq!(
        (report["healthy_count"].as_u64(), report["unhealthy_count"].as_u64()),
        (Some(3), Some(1))
    );
    let failed = &report["unhealthy_endpoints"][0];
    assert!(failed["error"].as_str().unwrap().contains("500"), "{failed}");
    // What the upstreams were sent: one token of chat, one input to embed.
    let sent = mock.requests();
    let embedded = sent.iter().find(|r| r.path == "/v1/embeddings").unwrap();
    assert_eq!(embedded.body["input"], "health check");
    assert!(
        sent.iter()
            .filter(|r| r.path == "/v1/chat/completions")
            .all(|r| r.body["max_tokens"] == 1)
    );
    assert!(
        !sent.iter().any(|r| r.path.contains("images")),
        "health_check: none is not asked"
    );

    // One group; an unknown one; and only the master key may spend on it.
    let one: Value = get("/health?model=claude", MASTER).await.unwrap().json().await.unwrap();
    assert_eq!(
        (one["healthy_count"].as_u64(), one["unhealthy_count"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(get("/health?model=nope", MASTER).await.unwrap().status(), 404);
    let key: Value = reqwest::Client::new()
        .post(format!("{}/key/generate", gateway.base_url()))
        .bearer_auth(MASTER)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let refused = get("/health", key["key"].as_str().unwrap()).await.unwrap();
    assert!(matches!(refused.status().as_u16(), 401 | 403), "{}", refused.status());
}

/// Deployments of the other endpoints are asked what they serve: the
/// smallest image, a moderation, a little speech, a little silence to
/// transcribe, one document to rerank; a deployment that cannot serve its
/// check is unhealthy, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_deployments_are_asked_what_they_serve() {
    let mock = MockUpstream::start().await;
    let (base, root) = (mock.base_url(), mock.root_url());
    let config = format!(
        r#"
policy:
  master_key: {MASTER}
model_list:
  - model_name: images
    deployments:
      - {{provider: openai, model: dall-e-2, api_base: "{base}", api_key: k, health_check: image_generation}}
  - model_name: moderation
    deployments:
      - {{provider: openai, model: omni-moderation-latest, api_base: "{base}", api_key: k, health_check: moderation}}
  - model_name: speech
    deployments:
      - {{provider: openai, model: tts-1, api_base: "{base}", api_key: k, health_check: audio_speech}}
  - model_name: transcription
    deployments:
      - {{provider: openai, model: whisper-1, api_base: "{base}", api_key: k, health_check: audio_transcription}}
  - model_name: rerank
    deployments:
      - {{provider: openai, model: BAAI/bge-reranker-v2-m3, api_base: "{base}", api_key: k, health_check: rerank}}
  - model_name: claude-images
    deployments:
      - {{provider: anthropic, model: claude-sonnet-4, api_base: "{root}", api_key: k, health_check: image_generation}}
"#
    );
    let gateway = GatewayProcess::start(Path::new(BIN), &config);
    let report: Value = reqwest::Client::new()
        .get(format!("{}/health", gateway.base_url()))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names = |list: &str| -> Vec<String> {
        let mut names: Vec<String> = report[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["deployment"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        names("healthy_endpoints"),
        ["images/0", "moderation/0", "rerank/0", "speech/0", "transcription/0"],
        "{report}"
    );
    assert_eq!(names("unhealthy_endpoints"), ["claude-images/0"], "{report}");
    assert!(
        report["unhealthy_endpoints"][0]["error"]
            .as_str()
            .unwrap()
            .contains("images"),
        "{report}"
    );
    let sent = mock.requests();
    let at = |path: &str| {
        sent.iter()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("nothing sent to {path}"))
            .body
            .clone()
    };
    let image = at("/v1/images/generations");
    assert_eq!(
        (image["size"].as_str(), image["n"].as_u64()),
        (Some("256x256"), Some(1))
    );
    assert_eq!(at("/v1/moderations")["input"], "health check");
    assert_eq!(at("/v1/audio/speech")["input"], "hi");
    let upload = at("/v1/audio/transcriptions");
    assert_eq!(upload["file"]["bytes"], 44 + 16_000, "{upload}");
    assert_eq!(at("/v1/rerank")["documents"], serde_json::json!(["health check"]));
}
