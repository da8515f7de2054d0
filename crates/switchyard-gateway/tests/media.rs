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
      - {{provider: azure, model: dall-e-3, api_base: "{root}", api_version: 2024-10-21, api_key: k}}
  - model_name: gpt-image-1
    deployments:
      - {{provider: openai, model: gpt-image-1, api_base: "{base}", api_key: k}}
  - model_name: flat-priced
    deployments:
      - {{provider: openai, model: my-diffusion, api_base: "{base}", api_key: k, output_cost_per_image: 0.5}}
  - model_name: omni-moderation-latest
    deployments:
      - {{provider: openai, model: omni-moderation-latest, api_base: "{base}", api_key: k}}
  - model_name: claude
    deployments:
      - {{provider: anthropic, model: claude-sonnet-4, api_base: "{root}", api_key: k}}
  - model_name: failing-images
    fallbacks: [dall-e-3]
    deployments:
      - {{provider: openai, model: "dall-e-3::status=500", api_base: "{base}", api_key: k}}
"#
    )
}

struct Answer {
    status: u16,
    cost: Option<String>,
    request_id: String,
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
    let (cost, request_id) = (
        header("x-switchyard-response-cost"),
        header("x-switchyard-request-id").unwrap_or_default(),
    );
    Answer {
        status: response.status().as_u16(),
        cost,
        request_id,
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
    assert_eq!(sent.path, "/openai/deployments/dall-e-3/images/generations");
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

    // A configured per-image price holds whatever the size.
    let flat = post(
        &gateway,
        "/v1/images/generations",
        json!({"model": "flat-priced", "prompt": "a map", "n": 3, "size": "512x512"}),
    )
    .await;
    assert_eq!(flat.status, 200, "{}", flat.body);
    assert_eq!(flat.cost.as_deref(), Some("1.500000000"));

    // A failing deployment falls back like any request.
    let rescued = post(
        &gateway,
        "/v1/images/generations",
        json!({"model": "failing-images", "prompt": "a boat"}),
    )
    .await;
    assert_eq!(rescued.status, 200, "{}", rescued.body);
    assert_eq!(rescued.cost.as_deref(), Some("0.040000000"));

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
        // No model, and OpenAI's default (dall-e-2) is not served here.
        (json!({"prompt": "x"}), "model"),
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
    // Moderation is free: charged nothing.
    assert_eq!(charged(&gateway, &many.request_id).await["cost_nanos"], 0);

    let empty = post(&gateway, "/v1/moderations", json!({"input": []})).await;
    assert_eq!(
        (empty.status, empty.body["error"]["param"].clone()),
        (400, json!("input"))
    );
    // Azure has no moderation endpoint; Anthropic neither.
    let claude = post(&gateway, "/v1/moderations", json!({"model": "claude", "input": "x"})).await;
    assert_eq!(claude.status, 400, "{}", claude.body);
}
