//! Learned-router groups through the real `switchyard` binary and the real
//! all-MiniLM-L6-v2 embedder (`cargo xtask models fetch`): the router picks
//! the group predicted to answer best for the price, reports its scores in
//! headers, falls back down its ranking, and hot-reloads new artifacts under
//! load without failing a request while rejecting bad ones — from a local
//! directory and from S3 (a real `moto_server`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use switchyard_routing::embed::{Embedder, EmbedderConfig};
use switchyard_routing::knn::{KnnIndex, KnnParams};
use switchyard_routing::learned::{FORMAT_VERSION, LearnedRouter, Manifest, Predictor, PredictorKind};
use switchyard_testkit::{GatewayProcess, MOTO_ACCESS_KEY_ID, MOTO_SECRET_ACCESS_KEY, MockUpstream, MotoServer};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

const MATH: &[&str] = &[
    "Solve for x: 3x + 7 = 22.",
    "What is the derivative of x^3 + 2x?",
    "Compute the integral of sin(x) from 0 to pi.",
    "Prove that the square root of 2 is irrational.",
    "Find the eigenvalues of the matrix [[2, 1], [1, 2]].",
    "How many prime numbers are there below 50?",
];
const POETRY: &[&str] = &[
    "Write a short poem about autumn leaves.",
    "Compose a haiku about the sea at night.",
    "Write a limerick about a cat who loves cheese.",
    "Give me a sonnet about lost love.",
    "Write a few rhyming lines about spring rain.",
    "A short free-verse poem about city lights, please.",
];
const MATH_QUERY: &str = "Solve the equation 5x - 3 = 12 for x.";
const POETRY_QUERY: &str = "Write a poem about the moon over a quiet lake.";

/// `models/<name>`, which must hold `file` (`command` makes it).
fn models_folder(name: &str, file: &str, command: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models")
        .join(name);
    assert!(
        dir.join(file).exists(),
        "{name} is missing from {}: run `{command}`",
        dir.display()
    );
    dir.canonicalize().unwrap()
}

fn model_dir() -> PathBuf {
    models_folder("all-MiniLM-L6-v2", "model.safetensors", "cargo xtask models fetch")
}

struct Trainer {
    embedder: Embedder,
    embeddings: Vec<Vec<f32>>,
}

/// The static model `cargo xtask models distill` makes.
fn static_model_dir() -> PathBuf {
    models_folder(
        "all-MiniLM-L6-v2-static",
        "static.safetensors",
        "cargo xtask models distill",
    )
}

impl Trainer {
    fn new() -> Self {
        Self::with_model(model_dir())
    }

    fn with_model(model_dir: PathBuf) -> Self {
        let embedder = Embedder::load(&EmbedderConfig {
            model_dir,
            ..EmbedderConfig::default()
        })
        .unwrap();
        let texts: Vec<&str> = MATH.iter().chain(POETRY).copied().collect();
        let embeddings = embedder.embed(&texts).unwrap();
        Trainer { embedder, embeddings }
    }

    /// A KNN router over the math and poetry queries. `math` and `poetry` are
    /// the scores of `models` on each kind of query.
    fn router(&self, tag: &str, models: &[&str], costs: &[f64], math: &[f32], poetry: &[f32]) -> LearnedRouter {
        let scores: Vec<Vec<f32>> = MATH
            .iter()
            .map(|_| math.to_vec())
            .chain(POETRY.iter().map(|_| poetry.to_vec()))
            .collect();
        let params = KnnParams {
            k: 3,
            ..KnnParams::default()
        };
        LearnedRouter {
            manifest: Manifest {
                format_version: FORMAT_VERSION,
                kind: PredictorKind::Knn,
                embedder: self.embedder.id().to_owned(),
                dims: self.embedder.dims(),
                models: models.iter().map(|m| (*m).to_owned()).collect(),
                mean_costs: costs.to_vec(),
                data_hash: tag.to_owned(),
                knn: Some(params),
                mlp: None,
                metrics: json!({"tag": tag}),
                data_file_sha256: None,
            },
            predictor: Predictor::Knn(KnnIndex::build(self.embeddings.clone(), scores, params)),
        }
    }

    /// Math needs the strong model; the cheap one writes poetry as well.
    fn version_a(&self) -> LearnedRouter {
        self.router(
            "version-a",
            &["strong", "cheap"],
            &[10.0, 1.0],
            &[1.0, 0.0],
            &[1.0, 1.0],
        )
    }

    /// Version c: names a model (`mystery`) that no group serves unless
    /// `router.candidates` maps it.
    fn unmapped_version(&self) -> LearnedRouter {
        self.router(
            "version-c",
            &["strong", "mystery"],
            &[10.0, 1.0],
            &[1.0, 0.0],
            &[1.0, 1.0],
        )
    }

    /// The opposite: the cheap model is the one that does math.
    fn version_b(&self) -> LearnedRouter {
        self.router(
            "version-b",
            &["strong", "cheap"],
            &[10.0, 1.0],
            &[0.0, 1.0],
            &[1.0, 1.0],
        )
    }
}

/// Two mock groups (`strong-model`, reached through `router.candidates`, and
/// `cheap`) behind the learned group `switchyard/auto`.
fn config(artifact: &str, router_extra: &str, strong_deployment: &str) -> String {
    format!(
        r#"
router_settings:
  num_retries: 0
  retry_backoff_ms: 10
  allowed_fails: 1
embedder:
  model_dir: "{model_dir}"
model_list:
  - model_name: switchyard/auto
    router:
      artifact: "{artifact}"
      lambda: 0.3
      candidates:
        strong: strong-model
{router_extra}
  - model_name: strong-model
    deployments:
      - {strong_deployment}
  - model_name: cheap
    deployments:
      - {{provider: mock, model: cheap-1, mock: {{reply: "cheap answer"}}}}
"#,
        model_dir = model_dir().display(),
    )
}

const STRONG_MOCK: &str = r#"{provider: mock, model: strong-1, mock: {reply: "strong answer"}}"#;

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// `group=score` pairs of `x-switchyard-router-scores`.
    fn scores(&self) -> Vec<(String, f64)> {
        self.header("x-switchyard-router-scores")
            .split(';')
            .filter(|s| !s.is_empty())
            .map(|pair| {
                let (g, s) = pair.split_once('=').unwrap();
                (g.to_owned(), s.parse().unwrap())
            })
            .collect()
    }
}

async fn post(client: &reqwest::Client, gw: &str, path: &str, body: Value) -> Answer {
    let response = client.post(format!("{gw}{path}")).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.text().await.unwrap();
    Answer { status, headers, body }
}

async fn ask(client: &reqwest::Client, gw: &str, query: &str) -> Answer {
    let body = json!({"model": "switchyard/auto", "messages": [{"role": "user", "content": query}]});
    post(client, gw, "/v1/chat/completions", body).await
}

async fn routers(gw: &str) -> Value {
    reqwest::get(format!("{gw}/admin/routers"))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["routers"][0]
        .clone()
}

/// Polls `/admin/routers` until `check` holds (the gateway polls the artifact every 100 ms).
async fn wait_for(gw: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = routers(gw).await;
        if check(&state) {
            return state;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {state}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_each_prompt_to_the_best_trade_off_and_reports_the_scores() {
    let trainer = Trainer::new();
    let dir = tempfile::tempdir().unwrap();
    trainer.version_a().save(dir.path()).unwrap();
    let log_dir = tempfile::tempdir().unwrap();
    let log_path = log_dir.path().join("requests.jsonl");
    let yaml = format!(
        "telemetry:\n  request_log:\n    path: {}\n{}",
        log_path.display(),
        config(&dir.path().display().to_string(), "", STRONG_MOCK)
    );
    let gw = GatewayProcess::start(Path::new(BIN), &yaml);
    let base = gw.base_url();
    let client = reqwest::Client::new();

    let math = ask(&client, &base, MATH_QUERY).await;
    assert_eq!(math.status, 200, "{}", math.body);
    assert_eq!(math.json()["choices"][0]["message"]["content"], "strong answer");
    assert_eq!(math.header("x-switchyard-model"), "strong-model");
    assert_eq!(math.header("x-switchyard-router"), "switchyard/auto");
    assert_eq!(math.header("x-switchyard-router-choice"), "strong-model");
    let scores = math.scores();
    assert_eq!(scores.len(), 2, "{scores:?}");
    assert_eq!(scores[0].0, "strong-model");
    assert_eq!(scores[1].0, "cheap");
    assert!(scores[0].1 > 0.9 && scores[1].1 < 0.5, "{scores:?}");

    // Both models write poetry; the cheap one is chosen.
    let poem = ask(&client, &base, POETRY_QUERY).await;
    assert_eq!(poem.status, 200, "{}", poem.body);
    assert_eq!(poem.json()["choices"][0]["message"]["content"], "cheap answer");
    assert_eq!(poem.header("x-switchyard-model"), "cheap");
    assert!(poem.scores().iter().all(|(_, s)| *s > 0.9), "{:?}", poem.scores());

    // Streams, completions and Anthropic messages are routed the same way.
    let stream = post(
        &client,
        &base,
        "/v1/chat/completions",
        json!({"model": "switchyard/auto", "stream": true, "messages": [{"role": "user", "content": MATH_QUERY}]}),
    )
    .await;
    assert_eq!(stream.status, 200, "{}", stream.body);
    assert_eq!(stream.header("x-switchyard-model"), "strong-model");
    assert!(stream.body.contains("strong"), "{}", stream.body);
    let completion = post(
        &client,
        &base,
        "/v1/completions",
        json!({"model": "switchyard/auto", "prompt": POETRY_QUERY}),
    )
    .await;
    assert_eq!(completion.status, 200, "{}", completion.body);
    assert_eq!(completion.header("x-switchyard-model"), "cheap");
    let message = post(
        &client,
        &base,
        "/v1/messages",
        json!({"model": "switchyard/auto", "max_tokens": 50, "messages": [{"role": "user", "content": MATH_QUERY}]}),
    )
    .await;
    assert_eq!(message.status, 200, "{}", message.body);
    assert_eq!(message.header("x-switchyard-model"), "strong-model");
    assert_eq!(message.json()["content"][0]["text"], "strong answer");

    // Embeddings have no prompt to judge: a clear 400 naming the field.
    let embed = post(
        &client,
        &base,
        "/v1/embeddings",
        json!({"model": "switchyard/auto", "input": "hello"}),
    )
    .await;
    assert_eq!(embed.status, 400, "{}", embed.body);
    assert_eq!(embed.json()["error"]["param"], "model");
    // Nor has a completion whose prompt is token ids.
    let tokens = post(
        &client,
        &base,
        "/v1/completions",
        json!({"model": "switchyard/auto", "prompt": [1, 2, 3]}),
    )
    .await;
    assert_eq!(tokens.status, 400, "{}", tokens.body);
    assert_eq!(tokens.json()["error"]["param"], "model");

    // The router group is listed with the others, and its state is visible.
    let models: Value = reqwest::get(format!("{base}/v1/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"switchyard/auto"), "{ids:?}");
    let state = routers(&base).await;
    assert_eq!(state["current"]["data_hash"], "version-a", "{state}");
    assert_eq!(state["current"]["groups"], json!(["strong-model", "cheap"]));
    assert_eq!(state["status"]["loads"], 1);

    // The request log keeps the router's decision, for training the next one.
    let id = math.header("x-request-id").to_owned();
    let mut record = Value::Null;
    for _ in 0..100 {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(&id)) {
            record = serde_json::from_str(line).unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(record["model"], "switchyard/auto", "{record}");
    assert_eq!(record["served_model"], "strong-model");
    assert_eq!(record["router"], "switchyard/auto");
    assert_eq!(record["deployment"], "strong-model/0");
    let predicted = &record["predicted"];
    assert!(predicted["strong-model"].as_f64().unwrap() > 0.9, "{record}");
    assert!(predicted["cheap"].as_f64().unwrap() < 0.5, "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falls_back_down_the_ranking_when_the_choice_fails() {
    let trainer = Trainer::new();
    let dir = tempfile::tempdir().unwrap();
    trainer.version_a().save(dir.path()).unwrap();
    // Nothing listens on port 9: the strong model's only deployment fails to connect.
    let broken = r#"{provider: openai, model: strong-1, api_key: k, api_base: "http://127.0.0.1:9/v1"}"#;
    let gw = GatewayProcess::start(Path::new(BIN), &config(&dir.path().display().to_string(), "", broken));
    let client = reqwest::Client::new();
    let answer = ask(&client, &gw.base_url(), MATH_QUERY).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("x-switchyard-router-choice"), "strong-model");
    assert_eq!(answer.header("x-switchyard-model"), "cheap");
    assert_eq!(answer.header("x-switchyard-attempts"), "2");

    // One failure puts the strong deployment in cooldown (allowed_fails: 1):
    // the router no longer chooses it, and nothing is sent to it.
    let answer = ask(&client, &gw.base_url(), MATH_QUERY).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("x-switchyard-router-choice"), "cheap");
    assert_eq!(answer.header("x-switchyard-attempts"), "1");
    // The scores still show what the router predicted for every candidate.
    assert!(answer.scores()[0].1 > 0.9, "{:?}", answer.scores());
}

/// When every candidate is cooling down, the router ranks them all and the
/// request is tried on them anyway, rather than refused for the cooldown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_candidate_cooling_down_the_ranking_is_tried_anyway() {
    let trainer = Trainer::new();
    let dir = tempfile::tempdir().unwrap();
    trainer.version_a().save(dir.path()).unwrap();
    let mock = MockUpstream::start().await;
    // The mock counts `fail_first` per directive list: each model has its own.
    let flaky = |model: &str, spec: &str| {
        format!(
            r#"{{provider: openai, model: "{model}::{spec}", api_key: k, api_base: "{}"}}"#,
            mock.base_url()
        )
    };
    let yaml = config(
        &dir.path().display().to_string(),
        "",
        &flaky("strong-1", "fail_first=1,status=500"),
    )
    .replace(
        r#"{provider: mock, model: cheap-1, mock: {reply: "cheap answer"}}"#,
        &flaky("cheap-1", "status=500,fail_first=1"),
    );
    let gw = GatewayProcess::start(Path::new(BIN), &yaml);
    let client = reqwest::Client::new();
    // Both fail once (allowed_fails: 1): both are cooling down.
    let failed = ask(&client, &gw.base_url(), MATH_QUERY).await;
    assert_eq!(failed.status, 502, "{}", failed.body);
    assert_eq!(failed.header("x-switchyard-attempts"), "2");
    let answer = ask(&client, &gw.base_url(), MATH_QUERY).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("x-switchyard-router-choice"), "strong-model");
    assert_eq!(answer.header("x-switchyard-model"), "strong-model");
}

/// A key that may call the router alone still falls back down the ranking:
/// the candidates are the router's, not fallbacks the key lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_limited_to_the_router_falls_back_down_the_ranking() {
    let trainer = Trainer::new();
    let dir = tempfile::tempdir().unwrap();
    trainer.version_a().save(dir.path()).unwrap();
    let master = "sk-master-key-for-learned-fallbacks";
    let broken = r#"{provider: openai, model: strong-1, api_key: k, api_base: "http://127.0.0.1:9/v1"}"#;
    let yaml = format!(
        "policy:\n  master_key: {master}\n{}",
        config(&dir.path().display().to_string(), "", broken)
    );
    let gw = GatewayProcess::start(Path::new(BIN), &yaml);
    let client = reqwest::Client::new();
    let made: Value = client
        .post(format!("{}/key/generate", gw.base_url()))
        .bearer_auth(master)
        .json(&json!({"models": ["switchyard/auto"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = made["key"].as_str().unwrap();
    let response = client
        .post(format!("{}/v1/chat/completions", gw.base_url()))
        .bearer_auth(key)
        .json(&json!({"model": "switchyard/auto", "messages": [{"role": "user", "content": MATH_QUERY}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let header = |name: &str| response.headers()[name].to_str().unwrap().to_owned();
    assert_eq!(header("x-switchyard-router-choice"), "strong-model");
    assert_eq!(header("x-switchyard-model"), "cheap");
}

/// With tag-based routing, a tagged request is ranked among the groups its
/// tags leave a deployment in: the strong model, tagged `premium` only, is
/// not chosen for a `budget` request, however well it would answer.
#[tokio::test]
async fn a_tagged_request_is_ranked_among_the_groups_its_tags_allow() {
    let trainer = Trainer::new();
    let dir = tempfile::tempdir().unwrap();
    trainer.version_a().save(dir.path()).unwrap();
    let strong = r#"{provider: mock, model: strong-1, tags: [premium], mock: {reply: "strong answer"}}"#;
    let yaml = config(&dir.path().display().to_string(), "", strong)
        .replace("router_settings:\n", "router_settings:\n  enable_tag_filtering: true\n")
        .replace("model: cheap-1,", "model: cheap-1, tags: [default],");
    let gw = GatewayProcess::start(Path::new(BIN), &yaml);
    let client = reqwest::Client::new();
    let tagged = |tag: &'static str| {
        client
            .post(format!("{}/v1/chat/completions", gw.base_url()))
            .header("x-switchyard-tags", tag)
            .json(&json!({"model": "switchyard/auto", "messages": [{"role": "user", "content": MATH_QUERY}]}))
            .send()
    };
    let budget = tagged("budget").await.unwrap();
    assert_eq!(budget.status(), 200);
    assert_eq!(budget.headers()["x-switchyard-router-choice"], "cheap");
    // The premium tag leaves the strong model in, and it is chosen.
    let premium = tagged("premium").await.unwrap();
    assert_eq!(premium.status(), 200);
    assert_eq!(premium.headers()["x-switchyard-router-choice"], "strong-model");
}

/// Tags never widen what a key may call: a key allowed the router and the
/// cheap model is ranked among those, whatever tags it sends.
#[tokio::test]
async fn tags_do_not_widen_a_keys_candidates() {
    let trainer = Trainer::new();
    let dir = tempfile::tempdir().unwrap();
    trainer.version_a().save(dir.path()).unwrap();
    let master = "sk-master-key-for-learned-tags";
    let strong = r#"{provider: mock, model: strong-1, tags: [premium], mock: {reply: "strong answer"}}"#;
    let yaml = format!(
        "policy:\n  master_key: {master}\n{}",
        config(&dir.path().display().to_string(), "", strong)
            .replace("router_settings:\n", "router_settings:\n  enable_tag_filtering: true\n")
            .replace("model: cheap-1,", "model: cheap-1, tags: [default],")
    );
    let gw = GatewayProcess::start(Path::new(BIN), &yaml);
    let client = reqwest::Client::new();
    let made: Value = client
        .post(format!("{}/key/generate", gw.base_url()))
        .bearer_auth(master)
        .json(&json!({"models": ["switchyard/auto", "cheap"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = made["key"].as_str().unwrap();
    let answer = client
        .post(format!("{}/v1/chat/completions", gw.base_url()))
        .bearer_auth(key)
        .header("x-switchyard-tags", "premium")
        .json(&json!({"model": "switchyard/auto", "messages": [{"role": "user", "content": MATH_QUERY}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["x-switchyard-router-choice"], "cheap");
    assert_eq!(answer.headers()["x-switchyard-model"], "cheap");
}

/// A budget reservation for a router request covers its priciest candidate,
/// including one the artifact names and `router.candidates` does not map.
#[tokio::test]
async fn a_router_request_reserves_the_price_of_its_priciest_candidate() {
    let trainer = Trainer::new();
    let dir = tempfile::tempdir().unwrap();
    trainer.version_a().save(dir.path()).unwrap();
    let master = "sk-master-key-for-learned-budgets";
    let yaml = format!(
        "policy:\n  master_key: {master}\n{}",
        config(&dir.path().display().to_string(), "", STRONG_MOCK)
            .replace("model: cheap-1,", "model: cheap-1, output_cost_per_token: 0.001,")
    );
    let gw = GatewayProcess::start(Path::new(BIN), &yaml);
    let client = reqwest::Client::new();
    let made: Value = client
        .post(format!("{}/key/generate", gw.base_url()))
        .bearer_auth(master)
        .json(&json!({"max_budget": 0.5}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = made["key"].as_str().unwrap();
    let send = |max_tokens: u32| {
        client
            .post(format!("{}/v1/chat/completions", gw.base_url()))
            .bearer_auth(key)
            .json(&json!({
                "model": "switchyard/auto",
                "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": POETRY_QUERY}],
            }))
            .send()
    };
    // 1,000 tokens at $0.001 from `cheap`: up to $1, over the $0.50 budget.
    let refused = send(1000).await.unwrap();
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
    // 100 tokens: up to $0.10, served.
    let served = send(100).await.unwrap();
    assert_eq!(served.status(), 200);

    // A router is no fallback and embeds nothing; both say so.
    let fallback: Value = client
        .post(format!("{}/v1/chat/completions", gw.base_url()))
        .bearer_auth(key)
        .json(&json!({"model": "cheap", "max_tokens": 1, "fallbacks": ["switchyard/auto"], "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fallback["error"]["param"], "fallbacks[0]", "{fallback}");
    assert!(
        fallback["error"]["message"]
            .as_str()
            .unwrap()
            .contains("learned router"),
        "{fallback}"
    );
    let embedded: Value = client
        .post(format!("{}/v1/embeddings", gw.base_url()))
        .bearer_auth(key)
        .json(&json!({"model": "switchyard/auto", "input": "hi"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(embedded["error"]["param"], "model", "{embedded}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_at_its_rate_limit_is_not_chosen() {
    let trainer = Trainer::new();
    let dir = tempfile::tempdir().unwrap();
    trainer.version_a().save(dir.path()).unwrap();
    let limited = r#"{provider: mock, model: strong-1, rpm: 2, mock: {reply: "strong answer"}}"#;
    let gw = GatewayProcess::start(Path::new(BIN), &config(&dir.path().display().to_string(), "", limited));
    let client = reqwest::Client::new();
    for _ in 0..2 {
        let a = ask(&client, &gw.base_url(), MATH_QUERY).await;
        assert_eq!(a.header("x-switchyard-model"), "strong-model", "{}", a.body);
    }
    // Its two requests this minute are used: the next one goes to the other candidate.
    let a = ask(&client, &gw.base_url(), MATH_QUERY).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-switchyard-router-choice"), "cheap");
}

#[tokio::test]
async fn a_key_limited_to_some_candidates_is_routed_among_those() {
    let trainer = Trainer::new();
    let dir = tempfile::tempdir().unwrap();
    trainer.version_a().save(dir.path()).unwrap();
    let master = "sk-master-key-for-learned-tests";
    // With the response cache on: an answer one key's allow-list routed
    // reaches only keys allowed the same models.
    let yaml = format!(
        "policy:\n  master_key: {master}\ncache:\n  enabled: true\n{}",
        config(&dir.path().display().to_string(), "", STRONG_MOCK)
    );
    let gw = GatewayProcess::start(Path::new(BIN), &yaml);
    let client = reqwest::Client::new();
    let generate = |models: Value| {
        let client = client.clone();
        let url = format!("{}/key/generate", gw.base_url());
        async move {
            let made: Value = client
                .post(url)
                .bearer_auth(master)
                .json(&json!({"models": models}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            made["key"].as_str().unwrap().to_owned()
        }
    };
    let last_scores = std::sync::Mutex::new(String::new());
    let ask_as = |key: String| {
        let client = client.clone();
        let last_scores = &last_scores;
        let url = format!("{}/v1/chat/completions", gw.base_url());
        async move {
            let body = json!({"model": "switchyard/auto", "messages": [{"role": "user", "content": MATH_QUERY}]});
            let response = client.post(url).bearer_auth(key).json(&body).send().await.unwrap();
            let status = response.status().as_u16();
            let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
            let (choice, scores, cache) = (
                header("x-switchyard-router-choice"),
                header("x-switchyard-router-scores"),
                header("x-switchyard-cache"),
            );
            if let Some(scores) = &scores {
                last_scores.lock().unwrap().clone_from(scores);
            }
            let text: Value = response.json().await.unwrap_or_default();
            let text = text["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            // A cached answer names no router choice: its text says who answered.
            let choice = match (cache.as_deref(), text.as_str()) {
                (Some("hit"), "strong answer") => Some("strong-model (cached)".to_owned()),
                (Some("hit"), "cheap answer") => Some("cheap (cached)".to_owned()),
                _ => choice,
            };
            (status, choice)
        }
    };
    // Math goes to the strong model for a key that may call the router alone…
    let any = generate(json!(["switchyard/auto"])).await;
    assert_eq!(ask_as(any).await, (200, Some("strong-model".to_owned())));
    // …and to the cheap one for a key limited to it.
    let cheap = generate(json!(["switchyard/auto", "cheap"])).await;
    assert_eq!(ask_as(cheap).await, (200, Some("cheap".to_owned())));
    // Its scores header names only what it may call.
    let scores = last_scores.lock().unwrap().clone();
    assert!(
        scores.starts_with("cheap=") && !scores.contains("strong-model"),
        "{scores}"
    );
    // Each answer is cached for keys allowed the same models only.
    let any_again = generate(json!(["switchyard/auto"])).await;
    assert_eq!(ask_as(any_again).await, (200, Some("strong-model (cached)".to_owned())));
    let cheap_again = generate(json!(["cheap", "switchyard/auto"])).await;
    assert_eq!(ask_as(cheap_again).await, (200, Some("cheap (cached)".to_owned())));
    // A key without the router gets 403.
    let direct = generate(json!(["cheap"])).await;
    assert_eq!(ask_as(direct).await.0, 403);

    // A team's list is read on its own: a team allowed the router alone
    // leaves its key's narrowing to the cheap model in force…
    let admin = |path: &str, body: Value| {
        let client = client.clone();
        let url = format!("{}{path}", gw.base_url());
        async move {
            let response = client.post(url).bearer_auth(master).json(&body).send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or_default();
            (status, body)
        }
    };
    let (status, body) = admin("/team/new", json!({"team_id": "open", "models": ["switchyard/auto"]})).await;
    assert_eq!(status, 200, "{body}");
    let (status, made) = admin(
        "/key/generate",
        json!({"team_id": "open", "models": ["switchyard/auto", "cheap"]}),
    )
    .await;
    assert_eq!(status, 200, "{made}");
    let in_team = made["key"].as_str().unwrap().to_owned();
    assert_eq!(ask_as(in_team).await, (200, Some("cheap".to_owned())));
    // …and a key and team that allow no candidate in common get 403.
    let (status, body) = admin(
        "/team/new",
        json!({"team_id": "strong", "models": ["switchyard/auto", "strong-model"]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, made) = admin(
        "/key/generate",
        json!({"team_id": "strong", "models": ["switchyard/auto", "cheap"]}),
    )
    .await;
    assert_eq!(status, 200, "{made}");
    let crossed = made["key"].as_str().unwrap().to_owned();
    assert_eq!(ask_as(crossed).await, (403, None));

    // /v1/messages routes a limited key among its candidates too.
    let limited = generate(json!(["switchyard/auto", "cheap"])).await;
    let response = client
        .post(format!("{}/v1/messages", gw.base_url()))
        .header("x-api-key", limited)
        .json(&json!({"model": "switchyard/auto", "max_tokens": 50,
            "messages": [{"role": "user", "content": MATH_QUERY}], "cache": {"no-cache": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-switchyard-router-choice"], "cheap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_artifact_is_swapped_in_under_load_and_bad_ones_are_rejected() {
    let trainer = Trainer::new();
    let dir = tempfile::tempdir().unwrap();
    trainer.version_a().save(dir.path()).unwrap();
    let gw = GatewayProcess::start(
        Path::new(BIN),
        &config(
            &dir.path().display().to_string(),
            "      poll_interval_ms: 100",
            STRONG_MOCK,
        ),
    );
    let base = gw.base_url();

    // Clients keep asking math questions throughout; every answer must succeed.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok, base) = (stop.clone(), ok.clone(), base.clone());
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let a = ask(&client, &base, MATH_QUERY).await;
                if a.status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures.push(format!("{}: {}", a.status, a.body));
                }
            }
            failures
        }));
    }
    let client = reqwest::Client::new();
    while ok.load(Ordering::Relaxed) < 20 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        ask(&client, &base, MATH_QUERY).await.header("x-switchyard-model"),
        "strong-model"
    );

    // A new version: now the cheap model does math.
    trainer.version_b().save(dir.path()).unwrap();
    wait_for(&base, "version b", |s| s["current"]["data_hash"] == "version-b").await;
    let after = ask(&client, &base, MATH_QUERY).await;
    assert_eq!(after.header("x-switchyard-model"), "cheap", "{:?}", after.scores());

    // A version naming a model the configuration lacks is rejected; b keeps serving.
    trainer.unmapped_version().save(dir.path()).unwrap();
    let state = wait_for(&base, "the rejection", |s| s["status"]["rejected"] == 1).await;
    let error = state["status"]["last_error"].as_str().unwrap();
    assert!(error.contains("mystery"), "{error}");
    assert_eq!(state["current"]["data_hash"], "version-b");

    // A truncated data file is rejected too.
    let mut manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap()).unwrap();
    manifest["data_hash"] = json!("version-d");
    manifest["models"] = json!(["strong", "cheap"]);
    std::fs::write(dir.path().join("knn.safetensors"), b"not a safetensors file").unwrap();
    std::fs::write(dir.path().join("manifest.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
    let state = wait_for(&base, "the second rejection", |s| s["status"]["rejected"] == 2).await;
    assert_eq!(state["current"]["data_hash"], "version-b", "{state}");
    assert_eq!(state["status"]["loads"], 2, "{state}");

    // A configuration reload keeps the router the route has loaded: the
    // broken version in the store does not make the reload fail.
    gw.signal("HUP");
    for _ in 0..200 {
        let logs = gw.logs();
        if logs.iter().any(|l| l.contains("configuration reloaded")) {
            break;
        }
        assert!(!logs.iter().any(|l| l.contains("configuration rejected")), "{logs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let state = wait_for(&base, "the reloaded route", |s| {
        s["current"]["data_hash"] == "version-b"
    })
    .await;
    assert_eq!(state["status"]["rejected"], 2, "the rejection carries over: {state}");

    let before_stop = ok.load(Ordering::Relaxed);
    while ok.load(Ordering::Relaxed) < before_stop + 10 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let failures = c.await.unwrap();
        assert!(failures.is_empty(), "requests failed during reloads: {failures:?}");
    }
    assert_eq!(
        ask(&client, &base, MATH_QUERY).await.header("x-switchyard-model"),
        "cheap"
    );
    assert!(gw.logs().iter().any(|l| l.contains("new router artifact not loaded")));
}

/// A version rejected because the configuration did not map one of its
/// models is loaded once a reload adds the mapping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_the_configuration_did_not_fit_loads_once_it_does() {
    let trainer = Trainer::new();
    let dir = tempfile::tempdir().unwrap();
    trainer.version_a().save(dir.path()).unwrap();
    let artifact = dir.path().display().to_string();
    let gw = GatewayProcess::start(
        Path::new(BIN),
        &config(&artifact, "      poll_interval_ms: 100", STRONG_MOCK),
    );
    let base = gw.base_url();
    trainer.unmapped_version().save(dir.path()).unwrap();
    let state = wait_for(&base, "the rejection", |s| s["status"]["rejected"] == 1).await;
    assert_eq!(state["current"]["data_hash"], "version-a", "{state}");
    std::fs::write(
        gw.config_path(),
        config(
            &artifact,
            "        mystery: cheap\n      poll_interval_ms: 100",
            STRONG_MOCK,
        ),
    )
    .unwrap();
    gw.signal("HUP");
    wait_for(&base, "version c", |s| s["current"]["data_hash"] == "version-c").await;
}

/// A router that is not polled reads its artifact at each configuration
/// reload; a broken one there leaves the router it had serving, and the
/// reload itself succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpolled_router_is_read_at_each_reload_and_a_bad_read_keeps_it() {
    let trainer = Trainer::new();
    let dir = tempfile::tempdir().unwrap();
    trainer.version_a().save(dir.path()).unwrap();
    let mut gw = GatewayProcess::start(
        Path::new(BIN),
        &config(
            &dir.path().display().to_string(),
            "      poll_interval_ms: 0",
            STRONG_MOCK,
        ),
    );
    let base = gw.base_url();
    let reloads = |gw: &GatewayProcess| {
        gw.logs()
            .iter()
            .filter(|l| l.contains("configuration reloaded"))
            .count()
    };
    let reload_once = async |gw: &mut GatewayProcess| {
        let before = reloads(gw);
        gw.signal("HUP");
        for _ in 0..200 {
            if reloads(gw) > before {
                return;
            }
            assert!(
                !gw.logs().iter().any(|l| l.contains("configuration rejected")),
                "{:?}",
                gw.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no reload: {:?}", gw.logs());
    };
    // Serving: the SIGHUP handler is installed before the listener serves.
    assert_eq!(routers(&base).await["current"]["data_hash"], "version-a");
    std::fs::write(dir.path().join("knn.safetensors"), b"not a safetensors file").unwrap();
    reload_once(&mut gw).await;
    let state = routers(&base).await;
    assert_eq!(state["current"]["data_hash"], "version-a", "{state}");
    trainer.version_b().save(dir.path()).unwrap();
    reload_once(&mut gw).await;
    let state = routers(&base).await;
    assert_eq!(state["current"]["data_hash"], "version-b", "{state}");
}

/// Runs `switchyard check-config PATH`, asserts that it fails and returns
/// what it printed on stderr.
fn check_config_fails(path: &Path) -> String {
    let checked = std::process::Command::new(BIN)
        .arg("check-config")
        .arg(path)
        .output()
        .unwrap();
    assert!(!checked.status.success());
    String::from_utf8_lossy(&checked.stderr).into_owned()
}

#[test]
fn start_up_fails_on_an_artifact_that_does_not_fit_the_configuration() {
    let trainer = Trainer::new();
    let dir = tempfile::tempdir().unwrap();
    trainer
        .router("bad", &["strong", "mystery"], &[10.0, 1.0], &[1.0, 0.0], &[1.0, 1.0])
        .save(dir.path())
        .unwrap();
    let config_dir = tempfile::tempdir().unwrap();
    let path = config_dir.path().join("config.yaml");
    std::fs::write(&path, config(&dir.path().display().to_string(), "", STRONG_MOCK)).unwrap();
    let out = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .args(["--port", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("mystery") && stderr.contains("rejected"), "{stderr}");
    // `check-config` finds it too, before a rollout.
    let stderr = check_config_fails(&path);
    assert!(stderr.contains("mystery"), "{stderr}");

    // Two candidates mapped to one group would rank it twice.
    trainer.version_a().save(dir.path()).unwrap();
    std::fs::write(
        &path,
        config(
            &dir.path().display().to_string(),
            "        cheap: strong-model",
            STRONG_MOCK,
        ),
    )
    .unwrap();
    let stderr = check_config_fails(&path);
    assert!(stderr.contains("both map to the group `strong-model`"), "{stderr}");
}

/// `min_score` is on the router's scale: a KNN router trained on ratings
/// from 1 to 10 takes `min_score: 7`; an MLP router, whose predictions are
/// probabilities, refuses it when its artifact is loaded.
#[test]
fn a_threshold_is_checked_against_the_routers_scale() {
    let trainer = Trainer::new();
    let knn_dir = tempfile::tempdir().unwrap();
    trainer
        .router("ratings", &["strong", "cheap"], &[10.0, 1.0], &[9.0, 2.0], &[8.0, 8.0])
        .save(knn_dir.path())
        .unwrap();
    let mlp_dir = tempfile::tempdir().unwrap();
    let rows: Vec<Vec<f32>> = MATH
        .iter()
        .map(|_| vec![1.0, 0.0])
        .chain(POETRY.iter().map(|_| vec![1.0, 1.0]))
        .collect();
    let all: Vec<usize> = (0..rows.len()).collect();
    let params = switchyard_routing::mlp::MlpParams {
        hidden: 8,
        max_epochs: 2,
        ..switchyard_routing::mlp::MlpParams::default()
    };
    let (mlp, _) = switchyard_routing::mlp::Mlp::train(&trainer.embeddings, &rows, &all, &[], &params).unwrap();
    let mut manifest = trainer.version_a().manifest;
    manifest.kind = PredictorKind::Mlp;
    manifest.knn = None;
    manifest.mlp = Some(params);
    LearnedRouter {
        manifest,
        predictor: Predictor::Mlp(mlp),
    }
    .save(mlp_dir.path())
    .unwrap();
    let config_dir = tempfile::tempdir().unwrap();
    let path = config_dir.path().join("config.yaml");
    let threshold = |dir: &Path| {
        config(&dir.display().to_string(), "", STRONG_MOCK).replace(
            "      lambda: 0.3\n",
            "      objective: threshold\n      min_score: 7\n",
        )
    };
    let yaml = threshold(knn_dir.path());
    assert!(yaml.contains("min_score: 7"), "{yaml}");
    std::fs::write(&path, yaml).unwrap();
    let checked = std::process::Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(checked.status.success(), "{}", String::from_utf8_lossy(&checked.stderr));
    std::fs::write(&path, threshold(mlp_dir.path())).unwrap();
    let stderr = check_config_fails(&path);
    assert!(
        stderr.contains("MLP router") && stderr.contains("min_score"),
        "{stderr}"
    );
}

/// A replica that starts while a new version is being published (its data
/// file already replaced, its manifest not yet) reads it again rather than
/// failing at once; one whose artifact stays unreadable fails after a few reads.
#[test]
fn start_up_reads_again_an_artifact_caught_half_published() {
    use std::io::BufRead as _;
    let trainer = Trainer::new();
    let dir = tempfile::tempdir().unwrap();
    trainer.version_a().save(dir.path()).unwrap();
    let data = dir.path().join("knn.safetensors");
    let whole = std::fs::read(&data).unwrap();
    let mut landing = whole.clone();
    landing.extend_from_slice(b"a newer version's bytes");
    std::fs::write(&data, &landing).unwrap();
    let config_dir = tempfile::tempdir().unwrap();
    let path = config_dir.path().join("config.yaml");
    std::fs::write(&path, config(&dir.path().display().to_string(), "", STRONG_MOCK)).unwrap();
    let mut child = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .args(["--port", "0"])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let mut restored = false;
    let ready = loop {
        let Some(Ok(line)) = lines.next() else {
            break false;
        };
        if line.contains("listening on http://") {
            break true;
        }
        if !restored && line.contains("router artifact not read; reading it again") {
            // The manifest naming this data lands: the next read loads it.
            std::fs::write(&data, &whole).unwrap();
            restored = true;
        }
        seen.push(line);
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(restored, "no second read: {seen:#?}");
    assert!(ready, "did not start: {seen:#?}");

    // Never published whole: start-up fails, after reading it again.
    std::fs::write(&data, &landing).unwrap();
    let out = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .args(["--port", "0"])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("reading it again").count(), 3, "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not the data its manifest was written with"),
        "{stderr}"
    );
}

/// With the static embedder distilled from all-MiniLM-L6-v2 the gateway
/// routes as with the BERT one, and refuses routers trained on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_embedder_routes_and_refuses_routers_of_the_bert_one() {
    let trainer = Trainer::with_model(static_model_dir());
    assert!(trainer.embedder.is_static());
    let dir = tempfile::tempdir().unwrap();
    trainer.version_a().save(dir.path()).unwrap();
    let on_static = |artifact: &Path| {
        config(&artifact.display().to_string(), "", STRONG_MOCK).replace(
            &format!("model_dir: \"{}\"", model_dir().display()),
            &format!("model_dir: \"{}\"", static_model_dir().display()),
        )
    };
    let yaml = on_static(dir.path());
    assert!(yaml.contains("-static"), "{yaml}");
    let gw = GatewayProcess::start(Path::new(BIN), &yaml);
    let base = gw.base_url();
    let client = reqwest::Client::new();
    let math = ask(&client, &base, MATH_QUERY).await;
    assert_eq!(math.status, 200, "{}", math.body);
    assert_eq!(math.header("x-switchyard-model"), "strong-model");
    let poem = ask(&client, &base, POETRY_QUERY).await;
    assert_eq!(poem.status, 200, "{}", poem.body);
    assert_eq!(poem.header("x-switchyard-model"), "cheap");
    drop(gw);

    // A router trained on BERT embeddings does not fit the static embedder.
    let bert_dir = tempfile::tempdir().unwrap();
    Trainer::new().version_a().save(bert_dir.path()).unwrap();
    let config_dir = tempfile::tempdir().unwrap();
    let path = config_dir.path().join("config.yaml");
    std::fs::write(&path, on_static(bert_dir.path())).unwrap();
    let stderr = check_config_fails(&path);
    assert!(stderr.contains("trained with the embedder"), "{stderr}");
}

fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            MOTO_ACCESS_KEY_ID,
            MOTO_SECRET_ACCESS_KEY,
            None,
            None,
            "test",
        ))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Publishes an artifact the way a training job should: data first, manifest last.
async fn publish(client: &aws_sdk_s3::Client, router: &LearnedRouter) {
    let dir = tempfile::tempdir().unwrap();
    router.save(dir.path()).unwrap();
    for file in ["knn.safetensors", "manifest.json"] {
        let body = std::fs::read(dir.path().join(file)).unwrap();
        client
            .put_object()
            .bucket("routers")
            .key(format!("prod/auto/{file}"))
            .body(body.into())
            .send()
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_load_and_reload_from_s3() {
    let trainer = Trainer::new();
    let moto = MotoServer::start();
    let s3 = s3_client(&moto.endpoint());
    s3.create_bucket().bucket("routers").send().await.unwrap();
    publish(&s3, &trainer.version_a()).await;

    let extra = format!(
        "      poll_interval_ms: 100\n      s3: {{endpoint_url: \"{}\", region: us-east-1, force_path_style: true}}",
        moto.endpoint()
    );
    let gw = GatewayProcess::start_with(
        Path::new(BIN),
        &config("s3://routers/prod/auto/", &extra, STRONG_MOCK),
        &[],
        &[
            ("AWS_ACCESS_KEY_ID", MOTO_ACCESS_KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", MOTO_SECRET_ACCESS_KEY),
        ],
    );
    let base = gw.base_url();
    let client = reqwest::Client::new();
    let state = routers(&base).await;
    assert_eq!(state["artifact"], "s3://routers/prod/auto");
    assert_eq!(state["current"]["data_hash"], "version-a", "{state}");
    assert_eq!(
        ask(&client, &base, MATH_QUERY).await.header("x-switchyard-model"),
        "strong-model"
    );

    publish(&s3, &trainer.version_b()).await;
    wait_for(&base, "version b from S3", |s| s["current"]["data_hash"] == "version-b").await;
    assert_eq!(
        ask(&client, &base, MATH_QUERY).await.header("x-switchyard-model"),
        "cheap"
    );

    // A manifest that is not JSON is rejected; version b keeps serving.
    s3.put_object()
        .bucket("routers")
        .key("prod/auto/manifest.json")
        .body(b"{ not json".to_vec().into())
        .send()
        .await
        .unwrap();
    let state = wait_for(&base, "the rejection", |s| s["status"]["rejected"] == 1).await;
    assert!(
        state["status"]["last_error"]
            .as_str()
            .unwrap()
            .contains("manifest.json"),
        "{state}"
    );
    assert_eq!(state["current"]["data_hash"], "version-b");
    assert_eq!(ask(&client, &base, MATH_QUERY).await.status, 200);
}
