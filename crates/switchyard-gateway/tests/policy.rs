//! Keys, limits, budgets and spend through the real `switchyard` binary with
//! the local store: the admin API, authentication, model allow-lists, teams,
//! rate limits with OpenAI's headers, budgets under concurrency, and spend
//! that survives `kill -9`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use switchyard_testkit::GatewayProcess;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const MASTER: &str = "sk-master-key-for-tests-0001";

/// Mock deployments priced at $1 per million prompt tokens and $2 per
/// million completion tokens: "hello" costs 1 × 1000 + 3 × 2000 nano-dollars.
fn config(data_dir: &Path, extra_policy: &str, delay_ms: u64) -> String {
    format!(
        r#"
policy:
  master_key: {MASTER}
  data_dir: {dir}
{extra_policy}
model_list:
  - model_name: mock-a
    deployments:
      - provider: mock
        model: mock-a-1
        input_cost_per_token: 0.000001
        output_cost_per_token: 0.000002
        mock:
          delay_ms: {delay_ms}
  - model_name: mock-b
    deployments:
      - provider: mock
        model: mock-b-1
        input_cost_per_token: 0.000001
        output_cost_per_token: 0.000002
"#,
        dir = data_dir.display()
    )
}

const HELLO_COST_NANOS: i64 = 7000;

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }

    fn code(&self) -> &str {
        self.body.pointer("/error/code").and_then(Value::as_str).unwrap_or("")
    }
}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer { status, headers, body }
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn admin(gw: &GatewayProcess, path: &str, body: Value) -> Answer {
    send(
        client()
            .post(format!("{}{path}", gw.base_url()))
            .bearer_auth(MASTER)
            .json(&body),
    )
    .await
}

async fn admin_get(gw: &GatewayProcess, path: &str) -> Answer {
    send(client().get(format!("{}{path}", gw.base_url())).bearer_auth(MASTER)).await
}

async fn chat_with(gw: &GatewayProcess, key: Option<&str>, model: &str) -> Answer {
    let mut request = client()
        .post(format!("{}/v1/chat/completions", gw.base_url()))
        .json(&json!({"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hello"}]}));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    send(request).await
}

async fn generate(gw: &GatewayProcess, body: Value) -> String {
    let answer = admin(gw, "/key/generate", body).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body["key"].as_str().unwrap().to_owned()
}

/// The first spend record `pick` selects, once the gateway has written it
/// (within 10 s).
async fn spend_record(gw: &GatewayProcess, pick: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let logs = admin_get(gw, "/spend/logs").await;
        if let Some(record) = logs.body.as_array().and_then(|all| all.iter().find(|r| pick(r))) {
            return record.clone();
        }
        assert!(std::time::Instant::now() < deadline, "no spend record: {}", logs.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks that `record` charged at least `min_completion` output tokens and
/// an estimated prompt, at the test deployments' prices.
fn assert_charged_output(record: &Value, min_completion: i64) {
    let prompt_tokens = record["usage"]["prompt"].as_i64().unwrap();
    let completion_tokens = record["usage"]["completion"].as_i64().unwrap();
    assert!(prompt_tokens > 0, "{record}");
    assert!(
        completion_tokens >= min_completion,
        "at least {min_completion}: {record}"
    );
    assert_eq!(
        record["cost_nanos"].as_i64().unwrap(),
        prompt_tokens * 1000 + completion_tokens * 2000,
        "{record}"
    );
}

/// [`config`] with a group `name` on the OpenAI mock's `model`, at the test prices.
fn config_with_mock_group(data_dir: &Path, name: &str, mock: &switchyard_testkit::MockUpstream, model: &str) -> String {
    let group = format!(
        "  - model_name: {name}\n    deployments:\n      - provider: openai\n        model: \"{model}\"\n        api_base: {}\n        api_key: k\n        input_cost_per_token: 0.000001\n        output_cost_per_token: 0.000002\n  - model_name: mock-b\n",
        mock.base_url()
    );
    config(data_dir, "", 0).replace("  - model_name: mock-b\n", &group)
}

/// "0.000007000" → 7000.
fn nanos(text: &str) -> i64 {
    let (whole, frac) = text.split_once('.').unwrap();
    whole.parse::<i64>().unwrap() * 1_000_000_000 + frac.parse::<i64>().unwrap()
}

#[tokio::test]
async fn keys_are_required_hashed_scoped_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = config(dir.path(), "", 0);
    let gw = GatewayProcess::start(Path::new(BIN), &yaml);

    // Without or with a wrong key: 401, OpenAI-shaped, naming no other key.
    let missing = chat_with(&gw, None, "mock-a").await;
    assert_eq!(
        (missing.status, missing.code()),
        (401, "missing_api_key"),
        "{}",
        missing.body
    );
    assert_eq!(missing.body["error"]["type"], "authentication_error");
    let wrong = chat_with(&gw, Some("sk-not-a-real-key-000000000"), "mock-a").await;
    assert_eq!((wrong.status, wrong.code()), (401, "invalid_api_key"));

    let key = generate(&gw, json!({"key_alias": "app", "models": ["mock-a"]})).await;
    assert!(key.starts_with("sk-"));
    let other = generate(&gw, json!({"key_alias": "other"})).await;
    assert!(!wrong.body.to_string().contains(&other[3..]));
    assert!(!wrong.body.to_string().contains(&key[3..]));

    // The key works on its model, with each header clients use.
    let ok = chat_with(&gw, Some(&key), "mock-a").await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(nanos(ok.header("x-switchyard-response-cost")), HELLO_COST_NANOS);
    assert!(ok.header("x-switchyard-request-id").starts_with("req-"));
    assert!(
        ok.headers.get("x-litellm-response-cost").is_none(),
        "LiteLLM's headers only when asked for"
    );
    for header in ["x-api-key", "api-key"] {
        let answer = send(
            client()
                .post(format!("{}/v1/chat/completions", gw.base_url()))
                .header(header, &key)
                .json(&json!({"model": "mock-a", "messages": [{"role": "user", "content": "hello"}]})),
        )
        .await;
        assert_eq!(answer.status, 200, "{header}: {}", answer.body);
    }
    // LiteLLM's x-litellm-api-key wins over an Authorization header that
    // carries something else.
    let answer = send(
        client()
            .post(format!("{}/v1/chat/completions", gw.base_url()))
            .header("x-litellm-api-key", format!("Bearer {key}"))
            .bearer_auth("some-other-token")
            .json(&json!({"model": "mock-a", "messages": [{"role": "user", "content": "hello"}]})),
    )
    .await;
    assert_eq!(answer.status, 200, "x-litellm-api-key: {}", answer.body);
    // An empty one says nothing: the Authorization header is read.
    let answer = send(
        client()
            .get(format!("{}/v1/models", gw.base_url()))
            .header("x-litellm-api-key", "")
            .bearer_auth(&key),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.body["data"].as_array().map(Vec::len),
        Some(1),
        "the key's own view"
    );

    // Not on another model, and /v1/models lists only what it may call.
    let denied = chat_with(&gw, Some(&key), "mock-b").await;
    assert_eq!(
        (denied.status, denied.code()),
        (403, "model_not_allowed"),
        "{}",
        denied.body
    );
    // Nor as a fallback the request names, on any route.
    let chat = json!({"model": "mock-a", "fallbacks": ["mock-a", "mock-b"],
        "messages": [{"role": "user", "content": "hello"}]});
    let messages = json!({"model": "mock-a", "max_tokens": 5, "fallbacks": ["mock-b"],
        "messages": [{"role": "user", "content": "hello"}]});
    for (path, body, param) in [
        ("/v1/chat/completions", &chat, "fallbacks[1]"),
        ("/v1/messages", &messages, "fallbacks[0]"),
        ("/v1/messages/count_tokens", &messages, "fallbacks[0]"),
    ] {
        let answer = send(
            client()
                .post(format!("{}{path}", gw.base_url()))
                .bearer_auth(&key)
                .json(body),
        )
        .await;
        assert_eq!(answer.status, 403, "{path}: {}", answer.body);
        assert_eq!(
            answer.body["error"]["type"], "permission_error",
            "{path}: {}",
            answer.body
        );
        // Anthropic's error shape has no `param`: the message names it.
        let message = answer.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("`{param}`")), "{path}: {message}");
        if path == "/v1/chat/completions" {
            assert_eq!(answer.body["error"]["param"], param);
        }
    }
    // A fallback the key may call is accepted (another key, so that the
    // spend counted below stays this key's).
    let narrow = generate(&gw, json!({"key_alias": "narrow", "models": ["mock-a"]})).await;
    let allowed = send(
        client()
            .post(format!("{}/v1/chat/completions", gw.base_url()))
            .bearer_auth(&narrow)
            .json(&json!({"model": "mock-a", "fallbacks": ["mock-a"],
                "messages": [{"role": "user", "content": "hello"}]})),
    )
    .await;
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    let models = send(client().get(format!("{}/v1/models", gw.base_url())).bearer_auth(&key)).await;
    let ids: Vec<&str> = models.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["mock-a"]);
    let info = send(client().get(format!("{}/model/info", gw.base_url())).bearer_auth(&key)).await;
    let names: Vec<&str> = info.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["model_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["mock-a"], "/model/info follows the key's models too");
    // Retrieving one model follows the same list: another model is not found.
    let one = |name: &str| {
        send(
            client()
                .get(format!("{}/v1/models/{name}", gw.base_url()))
                .bearer_auth(&key),
        )
    };
    let allowed = one("mock-a").await;
    assert_eq!((allowed.status, allowed.body["id"].as_str()), (200, Some("mock-a")));
    let hidden = one("mock-b").await;
    assert_eq!(
        (hidden.status, hidden.code()),
        (404, "model_not_found"),
        "{}",
        hidden.body
    );

    // The admin API takes only the master key.
    let as_key = send(client().get(format!("{}/key/list", gw.base_url())).bearer_auth(&key)).await;
    assert_eq!(as_key.status, 403);
    // A key nobody issued is a wrong credential, not a key without rights.
    let unknown = send(
        client()
            .get(format!("{}/key/list", gw.base_url()))
            .bearer_auth("sk-nobody-issued-this-key-0000"),
    )
    .await;
    assert_eq!(
        (unknown.status, unknown.body["error"]["type"].as_str()),
        (401, Some("authentication_error")),
        "{}",
        unknown.body
    );
    // ...except that a key may read its own info, and only its own.
    let info_as = |who: &str, query: &str| {
        send(
            client()
                .get(format!("{}/key/info{query}", gw.base_url()))
                .bearer_auth(who),
        )
    };
    let own = info_as(&key, "").await;
    assert_eq!(own.status, 200, "{}", own.body);
    assert_eq!(own.body["info"]["key_alias"], "app");
    let hash = own.body["key"].as_str().unwrap().to_owned();
    for query in [format!("?key={key}"), format!("?key={hash}")] {
        let named = info_as(&key, &query).await;
        assert_eq!((named.status, &named.body["key"]), (200, &json!(hash)), "{query}");
    }
    let others = info_as(&key, &format!("?key={other}")).await;
    assert_eq!(others.status, 403, "{}", others.body);
    assert!(!others.body.to_string().contains("app"), "{}", others.body);
    let anonymous = send(client().get(format!("{}/key/info", gw.base_url()))).await;
    assert_eq!(anonymous.status, 401);
    let anonymous = send(client().get(format!("{}/admin/deployments", gw.base_url()))).await;
    assert_eq!(anonymous.status, 401);

    // Stored only as hashes: no plaintext anywhere in the data directory.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        assert!(
            !text.contains(&key[3..]) && !text.contains(&other[3..]),
            "plaintext at rest"
        );
    }
    let info = admin_get(&gw, &format!("/key/info?key={key}")).await;
    assert_eq!(info.status, 200);
    assert_eq!(info.body["info"]["key_alias"], "app");
    assert_eq!(
        info.body["info"]["total_spend"],
        json!(0.000028),
        "four requests so far"
    );
    assert!(!info.body.to_string().contains(&key[3..]));

    // Update: blocked → 403; unblocked → 200. Bad field → 400 naming it.
    let blocked = admin(&gw, "/key/update", json!({"key": key, "blocked": true})).await;
    assert_eq!(blocked.status, 200, "{}", blocked.body);
    assert_eq!(chat_with(&gw, Some(&key), "mock-a").await.code(), "key_blocked");
    admin(&gw, "/key/update", json!({"key": key, "blocked": false})).await;
    // LiteLLM's /key/block and /key/unblock do the same.
    let blocked = admin(&gw, "/key/block", json!({"key": key})).await;
    assert_eq!(
        (blocked.status, blocked.body["blocked"].clone()),
        (200, json!(true)),
        "{}",
        blocked.body
    );
    assert_eq!(chat_with(&gw, Some(&key), "mock-a").await.code(), "key_blocked");
    assert_eq!(admin(&gw, "/key/unblock", json!({"key": key})).await.status, 200);
    assert_eq!(admin(&gw, "/key/block", json!({})).await.body["error"]["param"], "key");
    assert_eq!(chat_with(&gw, Some(&key), "mock-a").await.status, 200);
    let bad = admin(&gw, "/key/update", json!({"key": key, "rpm_limit": -1})).await;
    assert_eq!(
        (bad.status, bad.body["error"]["param"].as_str()),
        (400, Some("rpm_limit"))
    );
    let unknown_model = admin(&gw, "/key/generate", json!({"models": ["nope"]})).await;
    assert_eq!(unknown_model.body["error"]["param"], "models[0]");

    // Expiry.
    let short = generate(&gw, json!({"duration": "1s"})).await;
    assert_eq!(chat_with(&gw, Some(&short), "mock-a").await.status, 200);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let expired = chat_with(&gw, Some(&short), "mock-a").await;
    assert_eq!((expired.status, expired.code()), (401, "key_expired"));

    // As in LiteLLM, an update's null `duration` and `budget_duration` (typed
    // clients send their defaults) change nothing; "-1" removes either.
    let dated = generate(
        &gw,
        json!({"duration": "30d", "budget_duration": "1d", "max_budget": 10}),
    )
    .await;
    let info = |key: String| {
        let gw = &gw;
        async move { admin_get(gw, &format!("/key/info?key={key}")).await.body["info"].clone() }
    };
    let before = info(dated.clone()).await;
    assert!(before["expires"].is_string(), "{before}");
    assert!(!before["budget_duration"].is_null(), "{before}");
    let kept = admin(
        &gw,
        "/key/update",
        json!({"key": dated, "duration": null, "budget_duration": null}),
    )
    .await;
    assert_eq!(kept.status, 200, "{}", kept.body);
    let after = info(dated.clone()).await;
    assert_eq!(
        (&after["expires"], &after["budget_duration"]),
        (&before["expires"], &before["budget_duration"]),
        "{after}"
    );
    let cleared = admin(
        &gw,
        "/key/update",
        json!({"key": dated, "duration": "-1", "budget_duration": "-1"}),
    )
    .await;
    assert_eq!(cleared.status, 200, "{}", cleared.body);
    let after = info(dated.clone()).await;
    assert_eq!(
        (&after["expires"], &after["budget_duration"]),
        (&Value::Null, &Value::Null),
        "{after}"
    );
    // LiteLLM's reset of spend is not done here: refused, not ignored; and a
    // limit of 0 is refused rather than taken as nothing.
    for (body, param) in [
        (json!({"key": dated, "spend": 0}), "spend"),
        (json!({"key": dated, "rpm_limit": 0}), "rpm_limit"),
    ] {
        let refused = admin(&gw, "/key/update", body.clone()).await;
        assert_eq!(
            (refused.status, refused.body["error"]["param"].as_str()),
            (400, Some(param)),
            "{body}"
        );
    }
    // A custom key a client could not send in a header is refused.
    let accented = admin(&gw, "/key/generate", json!({"key": "sk-clé-de-production-01"})).await;
    assert_eq!(
        (accented.status, accented.body["error"]["param"].as_str()),
        (400, Some("key"))
    );

    // Regenerate: the old key stops at once, the new one works, spend stays.
    let regenerated = admin(&gw, "/key/regenerate", json!({"key": key})).await;
    assert_eq!(regenerated.status, 200, "{}", regenerated.body);
    let new_key = regenerated.body["key"].as_str().unwrap().to_owned();
    assert_ne!(new_key, key);
    assert_eq!(chat_with(&gw, Some(&key), "mock-a").await.code(), "invalid_api_key");
    assert_eq!(chat_with(&gw, Some(&new_key), "mock-a").await.status, 200);
    let info = admin_get(&gw, &format!("/key/info?key={new_key}")).await;
    assert_eq!(
        nanos(&format!("{:.9}", info.body["info"]["total_spend"].as_f64().unwrap())),
        6 * HELLO_COST_NANOS
    );
    // A new plaintext that a key already has is refused, and both keys keep
    // working: its own (a retried call) and another key's. (Listing models
    // checks a key without spending.)
    let works = |key: String| {
        let url = format!("{}/v1/models", gw.base_url());
        async move { send(client().get(url).bearer_auth(key)).await.status }
    };
    for taken in [&new_key, &other] {
        let again = admin(&gw, "/key/regenerate", json!({"key": new_key, "new_key": taken})).await;
        assert_eq!(again.status, 409, "{}", again.body);
        assert_eq!(works(taken.clone()).await, 200);
    }
    // Unreadable input to the admin API gets the JSON error shape too.
    for (path, content_type, body) in [
        (format!("/key/{new_key}/regenerate"), "text/plain", "x"),
        (format!("/key/{new_key}/regenerate"), "application/json", "{"),
    ] {
        let request = client().post(format!("{}{path}", gw.base_url()));
        let answer = send(
            request
                .bearer_auth(MASTER)
                .header("content-type", content_type)
                .body(body),
        )
        .await;
        assert_eq!(answer.status, 400, "{path}: {}", answer.body);
        assert!(answer.body["error"]["message"].is_string(), "{path}: {}", answer.body);
    }
    let unknown_model = admin(&gw, "/key/regenerate", json!({"key": new_key, "models": ["nope"]})).await;
    assert_eq!(unknown_model.status, 400, "{}", unknown_model.body);
    assert_eq!(works(new_key.clone()).await, 200);

    // Delete.
    let deleted = admin(&gw, "/key/delete", json!({"keys": [other]})).await;
    assert_eq!(deleted.body["deleted_keys"].as_array().unwrap().len(), 1);
    assert_eq!(chat_with(&gw, Some(&other), "mock-a").await.code(), "invalid_api_key");

    // A restart keeps keys and spend.
    drop(gw);
    let gw = GatewayProcess::start(Path::new(BIN), &yaml);
    assert_eq!(chat_with(&gw, Some(&new_key), "mock-a").await.status, 200);
    assert_eq!(chat_with(&gw, Some(&other), "mock-a").await.code(), "invalid_api_key");
    assert_eq!(chat_with(&gw, Some(&key), "mock-a").await.code(), "invalid_api_key");
    let spend = admin_get(&gw, "/spend/keys").await;
    let row = spend
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key_alias"] == "app")
        .unwrap()
        .clone();
    assert_eq!(row["total_spend_nanos"], json!(7 * HELLO_COST_NANOS));
    let logs = admin_get(&gw, &format!("/spend/logs?api_key={new_key}&model=mock-a")).await;
    assert_eq!(logs.body.as_array().unwrap().len(), 7, "{}", logs.body);
}

#[tokio::test]
async fn teams_narrow_models_and_share_one_budget() {
    let dir = tempfile::tempdir().unwrap();
    let gw = GatewayProcess::start(Path::new(BIN), &config(dir.path(), "", 0));
    let team = admin(
        &gw,
        "/team/new",
        json!({"team_id": "research", "models": ["mock-b"], "max_budget": 0.00005, "budget_duration": "monthly"}),
    )
    .await;
    assert_eq!(team.status, 200, "{}", team.body);
    let missing_team = admin(&gw, "/key/generate", json!({"team_id": "nobody"})).await;
    assert_eq!(missing_team.body["error"]["param"], "team_id");
    let first = generate(&gw, json!({"team_id": "research"})).await;
    let second = generate(&gw, json!({"team_id": "research"})).await;

    // The team's models apply to a key that names none.
    assert_eq!(chat_with(&gw, Some(&first), "mock-a").await.code(), "model_not_allowed");
    // A blocked team's keys are refused until it is unblocked.
    assert_eq!(
        admin(&gw, "/team/block", json!({"team_id": "research"})).await.status,
        200
    );
    assert_eq!(chat_with(&gw, Some(&first), "mock-b").await.code(), "key_blocked");
    assert_eq!(
        admin(&gw, "/team/unblock", json!({"team_id": "research"})).await.status,
        200
    );
    // A name no group has gets the same answer: the key cannot tell which exist.
    let unknown = chat_with(&gw, Some(&first), "no-such-model").await;
    assert_eq!(
        (unknown.status, unknown.code()),
        (403, "model_not_allowed"),
        "{}",
        unknown.body
    );
    // Budget $0.00005: each request reserves up to 31000 and costs 7000.
    let mut served = 0;
    for key in [&first, &second, &first, &second, &first] {
        let answer = chat_with(&gw, Some(key), "mock-b").await;
        match answer.status {
            200 => served += 1,
            400 => {
                assert_eq!(answer.code(), "budget_exceeded");
                assert_eq!(answer.body["error"]["type"], "budget_exceeded");
                assert!(
                    answer.body["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("max budget $0.000050000")
                );
            }
            other => panic!("{other}: {}", answer.body),
        }
    }
    // 7000 × 3 = 21000 leaves 29000 < 31000: the fourth is refused, whichever key sends it.
    assert_eq!(served, 3);
    let info = admin_get(&gw, "/team/info?team_id=research").await;
    assert_eq!(info.body["team_info"]["spend"], json!(0.000021));
    assert_eq!(info.body["team_info"]["keys"].as_array().unwrap().len(), 2);
    // LiteLLM's shape: the team's keys as objects beside `team_info`.
    let objects = info.body["keys"].as_array().unwrap();
    assert_eq!(objects.len(), 2, "{}", info.body);
    assert!(objects.iter().all(|k| k["team_id"] == "research"), "{}", info.body);
    let refused = admin(&gw, "/team/delete", json!({"team_ids": ["research"]})).await;
    assert_eq!(refused.status, 409);
    // A refusal deletes none of the teams named, even those listed first.
    assert_eq!(admin(&gw, "/team/new", json!({"team_id": "empty"})).await.status, 200);
    let refused = admin(&gw, "/team/delete", json!({"team_ids": ["empty", "research"]})).await;
    assert_eq!(refused.status, 409);
    assert_eq!(admin_get(&gw, "/team/info?team_id=empty").await.status, 200);
    let deleted = admin(&gw, "/team/delete", json!({"team_ids": ["empty", "empty"]})).await;
    assert_eq!(deleted.body["deleted_teams"], json!(["empty"]), "{}", deleted.body);
}

/// A team made again under a deleted team's id starts with nothing spent,
/// before and after a restart; the old team's spend stays listed apart.
#[tokio::test]
async fn a_team_id_used_again_starts_with_no_spend() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = config(dir.path(), "", 0);
    let gw = GatewayProcess::start(Path::new(BIN), &yaml);
    let team = json!({"team_id": "research", "max_budget": 0.000035});
    assert_eq!(admin(&gw, "/team/new", team.clone()).await.status, 200);
    let key = generate(&gw, json!({"team_id": "research"})).await;
    // Each request reserves up to 31000 nano-dollars and costs 7000: the
    // second is refused by the team's budget.
    assert_eq!(chat_with(&gw, Some(&key), "mock-a").await.status, 200);
    assert_eq!(chat_with(&gw, Some(&key), "mock-a").await.code(), "budget_exceeded");
    assert_eq!(admin(&gw, "/key/delete", json!({"keys": [key]})).await.status, 200);
    let deleted = admin(&gw, "/team/delete", json!({"team_ids": ["research"]})).await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);

    assert_eq!(admin(&gw, "/team/new", team).await.status, 200);
    let info = admin_get(&gw, "/team/info?team_id=research").await;
    assert_eq!(info.body["team_info"]["spend"], 0.0, "{}", info.body);
    let key = generate(&gw, json!({"team_id": "research"})).await;
    assert_eq!(chat_with(&gw, Some(&key), "mock-a").await.status, 200);
    drop(gw);

    let gw = GatewayProcess::start(Path::new(BIN), &yaml);
    let info = admin_get(&gw, "/team/info?team_id=research").await;
    assert_eq!(info.body["team_info"]["spend"], 0.000007, "{}", info.body);
    assert!(info.body["team_info"].get("ledger_id").is_none(), "{}", info.body);
    let rows = admin_get(&gw, "/spend/teams").await;
    let rows = rows.body.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|r| r["team_id"] == "research"), "{rows:?}");
    assert_eq!(rows.iter().filter(|r| r["deleted"] == true).count(), 1, "{rows:?}");
}

#[tokio::test]
async fn rate_limits_answer_429_with_openai_headers() {
    let dir = tempfile::tempdir().unwrap();
    let gw = GatewayProcess::start(Path::new(BIN), &config(dir.path(), "", 0));
    let key = generate(&gw, json!({"rpm_limit": 3, "tpm_limit": 1000})).await;
    for remaining in ["2", "1", "0"] {
        let ok = chat_with(&gw, Some(&key), "mock-a").await;
        assert_eq!(ok.status, 200, "{}", ok.body);
        assert_eq!(ok.header("x-ratelimit-limit-requests"), "3");
        assert_eq!(ok.header("x-ratelimit-remaining-requests"), remaining);
        assert_eq!(ok.header("x-ratelimit-limit-tokens"), "1000");
        assert!(ok.header("x-ratelimit-reset-requests").ends_with('s'));
    }
    let limited = chat_with(&gw, Some(&key), "mock-a").await;
    assert_eq!(
        (limited.status, limited.code()),
        (429, "rate_limit_exceeded"),
        "{}",
        limited.body
    );
    assert_eq!(limited.body["error"]["type"], "rate_limit_error");
    let retry_after: u64 = limited.header("retry-after").parse().unwrap();
    assert!((1..=20).contains(&retry_after), "{retry_after}");
    assert_eq!(limited.header("x-ratelimit-remaining-requests"), "0");
    // Another key is not affected.
    let other = generate(&gw, json!({"model_rpm_limit": {"mock-a": 1}})).await;
    assert_eq!(chat_with(&gw, Some(&other), "mock-a").await.status, 200);
    assert_eq!(chat_with(&gw, Some(&other), "mock-a").await.status, 429);
    assert_eq!(
        chat_with(&gw, Some(&other), "mock-b").await.status,
        200,
        "per-model limit"
    );
    // A prompt larger than the token limit on its own.
    let small = generate(&gw, json!({"tpm_limit": 5})).await;
    let long = send(
        client()
            .post(format!("{}/v1/chat/completions", gw.base_url()))
            .bearer_auth(&small)
            .json(&json!({"model": "mock-a", "messages": [{"role": "user", "content": "a long prompt that is well over twenty bytes"}]})),
    )
    .await;
    assert_eq!(long.status, 429);
    assert!(
        long.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("alone exceeds")
    );
    // Output beyond the prompt estimate is owed to the token limit, not
    // forgotten once the minute's tokens are used: 300 words of answer
    // against 100 tokens a minute leave about 200 owed, which the next
    // request waits for (before, it waited for its own 2 tokens only).
    let wordy_dir = tempfile::tempdir().unwrap();
    let words = "word ".repeat(300);
    let wordy_yaml = config(wordy_dir.path(), "", 0).replace(
        "        mock:\n          delay_ms: 0\n",
        &format!(
            "        mock:\n          delay_ms: 0\n          reply: \"{}\"\n",
            words.trim()
        ),
    );
    let wordy = GatewayProcess::start(Path::new(BIN), &wordy_yaml);
    let tight = generate(&wordy, json!({"tpm_limit": 100})).await;
    let first = chat_with(&wordy, Some(&tight), "mock-a").await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(first.body["usage"]["completion_tokens"].as_u64().unwrap() >= 300);
    let owed = chat_with(&wordy, Some(&tight), "mock-a").await;
    assert_eq!(
        (owed.status, owed.code()),
        (429, "rate_limit_exceeded"),
        "{}",
        owed.body
    );
    let retry_after: u64 = owed.header("retry-after").parse().unwrap();
    assert!((100..=200).contains(&retry_after), "{retry_after}");
    // Parallel cap.
    let slow_dir = tempfile::tempdir().unwrap();
    let slow = GatewayProcess::start(Path::new(BIN), &config(slow_dir.path(), "", 3000));
    let single = generate(&slow, json!({"max_parallel_requests": 1})).await;
    let (a, b) = tokio::join!(chat_with(&slow, Some(&single), "mock-a"), async {
        // Once the first is running (admitted, its deployment in flight).
        slow.wait_in_flight(Some(MASTER)).await;
        chat_with(&slow, Some(&single), "mock-a").await
    });
    assert_eq!(a.status, 200);
    assert_eq!((b.status, b.code()), (429, "too_many_parallel_requests"));
    assert_eq!(
        chat_with(&slow, Some(&single), "mock-a").await.status,
        200,
        "the slot is free again"
    );
}

#[tokio::test]
async fn a_budget_is_not_overspent_by_50_concurrent_requests() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Arc::new(GatewayProcess::start(Path::new(BIN), &config(dir.path(), "", 100)));
    // $0.0001: 100000 nano-dollars; each request reserves 31000 and costs 7000.
    let key = generate(&gw, json!({"max_budget": 0.0001})).await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (gw, key) = (gw.clone(), key.clone());
        tasks.push(tokio::spawn(async move { chat_with(&gw, Some(&key), "mock-a").await }));
    }
    let mut served = 0i64;
    let mut refused = 0;
    for task in tasks {
        let answer = task.await.unwrap();
        match (answer.status, answer.code()) {
            (200, _) => served += 1,
            (400, "budget_exceeded") => refused += 1,
            other => panic!("{other:?}: {}", answer.body),
        }
    }
    assert_eq!(served + refused, 50);
    assert!(served >= 3, "at least budget / reservation requests pass: {served}");
    let info = admin_get(&gw, &format!("/key/info?key={key}")).await;
    let spend = nanos(&format!("{:.9}", info.body["info"]["spend"].as_f64().unwrap()));
    assert_eq!(spend, served * HELLO_COST_NANOS);
    assert!(spend <= 100_000, "overspent: {spend}");
    // Sequentially, the budget fills up to what reservations allow and no further.
    loop {
        let answer = chat_with(&gw, Some(&key), "mock-a").await;
        if answer.status != 200 {
            assert_eq!(answer.code(), "budget_exceeded");
            break;
        }
    }
    let info = admin_get(&gw, &format!("/key/info?key={key}")).await;
    let spend = nanos(&format!("{:.9}", info.body["info"]["spend"].as_f64().unwrap()));
    assert!(spend <= 100_000 && spend + 31_000 > 100_000, "{spend}");
}

#[tokio::test]
async fn kill_9_mid_load_loses_no_charge() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = config(dir.path(), "  fsync: never", 50);
    let gw = GatewayProcess::start(Path::new(BIN), &yaml);
    let key = generate(&gw, json!({"key_alias": "load"})).await;
    let base = gw.base_url();
    let seen: Arc<std::sync::Mutex<HashMap<String, i64>>> = Arc::default();
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (base, key, seen) = (base.clone(), key.clone(), seen.clone());
        workers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            loop {
                let sent = client
                    .post(format!("{base}/v1/chat/completions"))
                    .bearer_auth(&key)
                    .json(&json!({"model": "mock-a", "messages": [{"role": "user", "content": "hello"}]}))
                    .send()
                    .await;
                let Ok(response) = sent else { return };
                let cost = response
                    .headers()
                    .get("x-switchyard-response-cost")
                    .map(|v| nanos(v.to_str().unwrap()));
                let id = response
                    .headers()
                    .get("x-switchyard-request-id")
                    .map(|v| v.to_str().unwrap().to_owned());
                if response.status() == 200 && response.bytes().await.is_ok() {
                    seen.lock().unwrap().insert(id.unwrap(), cost.unwrap());
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(gw); // SIGKILL
    for worker in workers {
        worker.await.unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() >= 10, "load ran: {}", seen.len());

    let gw = GatewayProcess::start(Path::new(BIN), &yaml);
    let logs = admin_get(&gw, &format!("/spend/logs?api_key={key}&limit=100000")).await;
    let logged: HashMap<String, i64> = logs
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["request_id"].as_str().unwrap().to_owned(),
                r["cost_nanos"].as_i64().unwrap(),
            )
        })
        .collect();
    // Every charge a client saw is recorded, at the price it saw.
    for (id, cost) in &seen {
        assert_eq!(logged.get(id), Some(cost), "charge {id} lost");
    }
    // Anything else was in flight when the process died (at most one per worker).
    assert!(
        logged.len() - seen.len() <= 4,
        "{} logged, {} seen",
        logged.len(),
        seen.len()
    );
    let spend = admin_get(&gw, "/spend/keys").await;
    let total = spend.body[0]["total_spend_nanos"].as_i64().unwrap();
    assert_eq!(total, logged.values().sum::<i64>());
    let seen_total: i64 = seen.values().sum();
    assert!(total - seen_total <= 5 * HELLO_COST_NANOS);
}

#[tokio::test]
async fn streams_are_charged_from_usage_the_client_did_not_ask_for() {
    let dir = tempfile::tempdir().unwrap();
    let gw = GatewayProcess::start(Path::new(BIN), &config(dir.path(), "", 0));
    let key = generate(&gw, json!({"key_alias": "streamer"})).await;
    let response = client()
        .post(format!("{}/v1/chat/completions", gw.base_url()))
        .bearer_auth(&key)
        .json(&json!({"model": "mock-a", "stream": true, "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    // The usage chunk the gateway asked for is not forwarded.
    for data in body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
    {
        let chunk: Value = serde_json::from_str(data).unwrap();
        assert!(
            !chunk["choices"].as_array().unwrap().is_empty(),
            "usage-only chunk leaked: {data}"
        );
    }
    // A client that asked for usage gets it.
    let asked = client()
        .post(format!("{}/v1/chat/completions", gw.base_url()))
        .bearer_auth(&key)
        .json(
            &json!({"model": "mock-a", "stream": true, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "hello"}]}),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(asked.contains("\"completion_tokens\":3"), "{asked}");
    // Both streams are charged (after they end) from the upstream's usage.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let info = admin_get(&gw, &format!("/key/info?key={key}")).await;
        let spend = nanos(&format!("{:.9}", info.body["info"]["total_spend"].as_f64().unwrap()));
        if spend == 2 * HELLO_COST_NANOS {
            break;
        }
        assert!(spend < 2 * HELLO_COST_NANOS, "{spend}");
        assert!(std::time::Instant::now() < deadline, "streams not charged: {spend}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = admin_get(&gw, &format!("/spend/logs?api_key={key}&start_date=2000-01-01")).await;
    let records = logs.body.as_array().unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["usage"]["completion"], 3);
    let none = admin_get(&gw, &format!("/spend/logs?api_key={key}&end_date=2000-01-01")).await;
    assert!(none.body.as_array().unwrap().is_empty());
    let bad = admin_get(&gw, "/spend/logs?start_date=yesterday").await;
    assert_eq!(
        (bad.status, bad.body["error"]["param"].as_str()),
        (400, Some("start_date"))
    );
    // One request's record, by its id; a filter the route does not know is an error.
    let id = records[1]["request_id"].as_str().unwrap();
    let one = admin_get(&gw, &format!("/spend/logs?request_id={id}")).await;
    let one = one.body.as_array().unwrap();
    assert_eq!(one.len(), 1, "{one:?}");
    assert_eq!(one[0]["request_id"], id);
    let unknown = admin_get(&gw, "/spend/logs?organization_id=alice").await;
    assert_eq!(
        (unknown.status, unknown.body["error"]["param"].as_str()),
        (400, Some("organization_id"))
    );
    // A deleted key's records are still found by its `key_id`.
    let info = admin_get(&gw, &format!("/key/info?key={key}")).await;
    let key_id = info.body["info"]["key_id"].as_str().unwrap().to_owned();
    let deleted = admin(&gw, "/key/delete", json!({"keys": [key]})).await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    let kept = admin_get(&gw, &format!("/spend/logs?api_key={key_id}")).await;
    assert_eq!(kept.status, 200, "{}", kept.body);
    assert_eq!(kept.body.as_array().unwrap().len(), 2, "{}", kept.body);
}

#[test]
fn policy_mistakes_in_the_file_name_their_field() {
    let yaml = r#"
policy:
  master_key: short
  redis:
    url: http://localhost
    settled_ttl_hours: 0
  teams:
    - team_id: t
      rpm_limit: 0
    - team_id: t
    - team_id: "a:model:b"
  keys:
    - key: sk-a-long-enough-key-0001
      models: [nope]
      team_id: missing
      budget_duration: fortnightly
model_list:
  - model_name: mock-a
    deployments:
      - provider: mock
        model: m
"#;
    let out = switchyard_testkit::run_check_config(Path::new(BIN), yaml);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    for field in [
        "policy.master_key",
        "policy.redis.url",
        "policy.redis.settled_ttl_hours",
        "policy.teams[0].rpm_limit",
        "policy.teams[1].team_id: `t` is declared twice",
        "policy.keys[0].models[0]",
        "policy.keys[0].team_id",
        "policy.keys[0].budget_duration",
        "policy.teams[2].team_id: may not contain `:`",
    ] {
        assert!(text.contains(field), "{field} not named in: {text}");
    }
    assert!(!text.contains("sk-a-long-enough-key-0001"), "a key reached the output");

    // A key declared with the master key's value would never have its limits.
    let yaml = "policy:\n  master_key: sk-the-master-key-0001\n  keys:\n    - key: sk-the-master-key-0001\n      rpm_limit: 1\nmodel_list:\n  - model_name: m\n    deployments:\n      - {provider: mock, model: m}\n";
    let out = switchyard_testkit::run_check_config(Path::new(BIN), yaml);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("policy.keys[0].key: is the master key"), "{text}");
    assert!(!text.contains("sk-the-master-key-0001"), "a key reached the output");
}

/// A key declared in the file without the `sk-` prefix is found by its
/// value: `/key/info` for the master key and for the key itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_key_without_the_prefix_is_found_by_its_value() {
    let key = "team-alpha-secret-0001";
    let yaml = format!(
        "policy:\n  master_key: {MASTER}\n  keys:\n    - key: {key}\n      key_alias: alpha\nmodel_list:\n  - model_name: m\n    deployments:\n      - {{provider: mock, model: m}}\n"
    );
    let gw = GatewayProcess::start(Path::new(BIN), &yaml);
    let by_master = admin_get(&gw, &format!("/key/info?key={key}")).await;
    assert_eq!(by_master.status, 200, "{}", by_master.body);
    assert_eq!(by_master.body["info"]["key_alias"], "alpha", "{}", by_master.body);
    let by_itself = send(
        client()
            .get(format!("{}/key/info?key={key}", gw.base_url()))
            .bearer_auth(key),
    )
    .await;
    assert_eq!(by_itself.status, 200, "{}", by_itself.body);
}

/// A request's end user and tags (OpenAI's `user`; `tags`, LiteLLM's
/// `metadata.tags` and the tag headers) are on its spend record and filter
/// `/spend/logs`; the tags never reach the upstream, and `metadata` goes on
/// with its string members only, as OpenAI takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_records_carry_the_end_user_and_tags() {
    let mock = switchyard_testkit::MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = config_with_mock_group(dir.path(), "tagged", &mock, "m")
        .replace("policy:\n", "policy:\n  track_tag_spend: true\n");
    let gw = GatewayProcess::start(BIN.as_ref(), &yaml);
    let key = generate(&gw, json!({"key_alias": "tagger"})).await;
    let answer = send(
        client()
            .post(format!("{}/v1/chat/completions", gw.base_url()))
            .bearer_auth(&key)
            .header("x-litellm-tags", "from-header")
            .json(&json!({
                "model": "tagged", "max_tokens": 5, "user": "end-user-9",
                "tags": ["nightly"],
                "metadata": {"tags": ["eval", "nightly"], "generation_name": {"n": 1}, "run": "r-1"},
                "messages": [{"role": "user", "content": "hello"}],
            })),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let sent = mock.last_request().unwrap().body;
    assert!(sent.get("tags").is_none(), "{sent}");
    // OpenAI takes `metadata` only with `store: true`.
    assert!(sent.get("metadata").is_none(), "{sent}");
    assert_eq!(sent["user"], "end-user-9");

    let record = spend_record(&gw, |r| r["key_alias"] == "tagger").await;
    assert_eq!(record["end_user"], "end-user-9", "{record}");
    assert_eq!(record["tags"], json!(["nightly", "eval", "from-header"]), "{record}");
    let plain = chat_with(&gw, Some(&key), "mock-a").await;
    assert_eq!(plain.status, 200);
    spend_record(&gw, |r| r["model"] == "mock-a" && r["key_alias"] == "tagger").await;
    // Spend per tag: the tagged request under each of its tags, and only it.
    let tags = admin_get(&gw, "/spend/tags").await;
    assert_eq!(tags.status, 200, "{}", tags.body);
    let rows = tags.body.as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["tag"].as_str().unwrap()).collect();
    assert_eq!(names, ["eval", "from-header", "nightly"], "{}", tags.body);
    for row in rows {
        assert_eq!(row["total_spend_nanos"], record["cost_nanos"], "{row}");
        assert_eq!(row["individual_request_tag"], row["tag"]);
    }
    // A filter the listing does not apply is refused, not ignored.
    for path in ["/spend/tags", "/spend/models", "/spend/keys", "/spend/teams"] {
        let dated = admin_get(&gw, &format!("{path}?start_date=2026-01-01")).await;
        assert_eq!(dated.status, 400, "{path}: {}", dated.body);
        assert_eq!(dated.body["error"]["param"], "start_date", "{path}: {}", dated.body);
    }
    for (query, expected) in [("tag=eval", 1), ("end_user=end-user-9", 1), ("tag=none", 0)] {
        let found = admin_get(&gw, &format!("/spend/logs?{query}")).await;
        assert_eq!(found.status, 200, "{}", found.body);
        assert_eq!(
            found.body.as_array().unwrap().len(),
            expected,
            "{query}: {}",
            found.body
        );
    }
    let bad = send(
        client()
            .post(format!("{}/v1/chat/completions", gw.base_url()))
            .bearer_auth(&key)
            .json(&json!({"model": "tagged", "tags": "nightly", "messages": [{"role": "user", "content": "hi"}]})),
    )
    .await;
    assert_eq!((bad.status, bad.body["error"]["param"].as_str()), (400, Some("tags")));

    // `record_end_users: false` keeps end users out of the records.
    let quiet_dir = tempfile::tempdir().unwrap();
    let quiet = GatewayProcess::start(BIN.as_ref(), &config(quiet_dir.path(), "  record_end_users: false", 0));
    let answer = send(
        client()
            .post(format!("{}/v1/chat/completions", quiet.base_url()))
            .bearer_auth(MASTER)
            .json(&json!({"model": "mock-a", "user": "end-user-9", "tags": ["kept"],
                "messages": [{"role": "user", "content": "hello"}]})),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let record = spend_record(&quiet, |r| r["model"] == "mock-a").await;
    assert!(record.get("end_user").is_none(), "{record}");
    assert_eq!(record["tags"], json!(["kept"]));
    // Without `track_tag_spend`, tags are on the records but no spend is
    // kept per tag.
    let tags = admin_get(&quiet, "/spend/tags").await;
    assert_eq!((tags.status, &tags.body), (200, &json!([])));
}

/// Web searches Claude ran for a request are charged at $0.01 each, on top
/// of its tokens, for JSON answers and streams alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_web_searches_are_charged() {
    let mock = switchyard_testkit::MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "policy:\n  master_key: {MASTER}\n  data_dir: {}\nmodel_list:\n  - model_name: claude\n    deployments:\n      - {{provider: anthropic, api_base: \"{}\", api_key: k, model: \"claude-sonnet-4-5::web_searches=3\", input_cost_per_token: 0, output_cost_per_token: 0}}\n",
        dir.path().display(),
        mock.root_url()
    );
    let gw = GatewayProcess::start(BIN.as_ref(), &yaml);
    for (alias, stream) in [("searcher-json", false), ("searcher-stream", true)] {
        let key = generate(&gw, json!({"key_alias": alias})).await;
        let answer = send(
            client()
                .post(format!("{}/v1/messages", gw.base_url()))
                .header("x-api-key", &key)
                .header("anthropic-version", "2023-06-01")
                .json(&json!({"model": "claude", "max_tokens": 50, "stream": stream,
                    "messages": [{"role": "user", "content": "what is new today?"}]})),
        )
        .await;
        assert_eq!(answer.status, 200, "{alias}");
        let record = spend_record(&gw, |r| r["key_alias"] == alias).await;
        assert_eq!(record["usage"]["web_searches"], 3, "{record}");
        assert_eq!(
            record["cost_nanos"],
            json!(30_000_000),
            "three searches at $0.01: {record}"
        );
    }
}

/// A gateway with keys in its file but no master key guards its status
/// routes with those keys; one with no keys at all says at start-up that
/// every route is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_routes_follow_the_configured_keys() {
    let key = "sk-config-key-for-status-0001";
    let models = "model_list:\n  - model_name: m\n    deployments:\n      - {provider: mock, model: m}\n";
    let gw = GatewayProcess::start(Path::new(BIN), &format!("policy:\n  keys:\n    - key: {key}\n{models}"));
    for path in ["/admin/deployments", "/admin/routers"] {
        let anonymous = send(client().get(format!("{}{path}", gw.base_url()))).await;
        assert_eq!(anonymous.status, 401, "{path}: {}", anonymous.body);
        let wrong = send(
            client()
                .get(format!("{}{path}", gw.base_url()))
                .bearer_auth("sk-wrong-key-0000000001"),
        )
        .await;
        assert_eq!(wrong.status, 401, "{path}: {}", wrong.body);
        let with_key = send(client().get(format!("{}{path}", gw.base_url())).bearer_auth(key)).await;
        assert_eq!(with_key.status, 200, "{path}: {}", with_key.body);
    }
    let open = GatewayProcess::start(Path::new(BIN), models);
    let status = send(client().get(format!("{}/admin/deployments", open.base_url()))).await;
    assert_eq!(status.status, 200, "{}", status.body);
    assert!(
        open.wait_for_log("every client route is open", Duration::from_secs(10)),
        "{:?}",
        open.logs()
    );
    // By now the keyed gateway, started first, has logged the same lines.
    assert!(
        !gw.logs().iter().any(|l| l.contains("every client route is open")),
        "a gateway with keys is not open"
    );
}

/// A client that leaves a stream before its final usage chunk is charged
/// the estimated prompt and at least a token per chunk it received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_left_before_its_usage_is_charged_for_what_it_streamed() {
    use futures_util::StreamExt as _;
    let dir = tempfile::tempdir().unwrap();
    let slow = "  - model_name: mock-slow\n    deployments:\n      - provider: mock\n        model: mock-slow-1\n        input_cost_per_token: 0.000001\n        output_cost_per_token: 0.000002\n        mock:\n          chunk_delay_ms: 300\n  - model_name: mock-b\n";
    let yaml = config(dir.path(), "", 0).replace("  - model_name: mock-b\n", slow);
    let gw = GatewayProcess::start(Path::new(BIN), &yaml);
    let prompt = "one two three four five six seven eight nine ten eleven twelve";
    let response = client()
        .post(format!("{}/v1/chat/completions", gw.base_url()))
        .bearer_auth(MASTER)
        .json(&json!({"model": "mock-slow", "stream": true, "messages": [{"role": "user", "content": prompt}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut received = 0;
    while received < 3 {
        let bytes = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("a chunk within 10 s")
            .unwrap()
            .unwrap();
        received += String::from_utf8_lossy(&bytes).matches("data: {").count();
    }
    drop(body);

    let record = spend_record(&gw, |r| r["model"] == "mock-slow").await;
    assert_charged_output(&record, received as i64);
}

/// An upstream that ends a stream cleanly but never reports its usage (some
/// OpenAI-compatible servers ignore `stream_options`) is charged the
/// estimated prompt and at least a token per chunk, not the prompt alone.
#[tokio::test]
async fn a_stream_without_usage_is_charged_for_what_it_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let mock = switchyard_testkit::MockUpstream::start().await;
    let yaml = config_with_mock_group(dir.path(), "quiet", &mock, "mock-model::no_usage");
    let gw = GatewayProcess::start(Path::new(BIN), &yaml);
    let response = client()
        .post(format!("{}/v1/chat/completions", gw.base_url()))
        .bearer_auth(MASTER)
        .json(&json!({"model": "quiet", "stream": true,
            "messages": [{"role": "user", "content": "one two three four five six"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(!text.contains("\"usage\":{"), "the upstream sent usage: {text}");
    let content_chunks = text.matches("\"content\":\"").count() as i64;
    assert!(content_chunks >= 6, "{text}");

    let record = spend_record(&gw, |r| r["model"] == "quiet").await;
    assert_charged_output(&record, content_chunks);
}

/// An `echo: true` completion without usage is charged its answer as
/// output, not the prompt it repeats.
#[tokio::test]
async fn an_echoed_prompt_is_not_charged_as_output() {
    let dir = tempfile::tempdir().unwrap();
    let mock = switchyard_testkit::MockUpstream::start().await;
    let yaml = config_with_mock_group(dir.path(), "quiet", &mock, "mock-model::no_usage");
    let gw = GatewayProcess::start(Path::new(BIN), &yaml);
    let prompt = "word ".repeat(100);
    let answer = send(
        client()
            .post(format!("{}/v1/completions", gw.base_url()))
            .bearer_auth(MASTER)
            .json(&json!({"model": "quiet", "prompt": prompt, "echo": true, "max_tokens": 5})),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body["choices"][0]["text"].as_str().unwrap().starts_with(&prompt));
    let record = spend_record(&gw, |r| r["model"] == "quiet").await;
    // The answer's own text ("mock completion: " and the prompt again) is
    // about 130 tokens at 4 bytes a token; the echoed 500 bytes are not output.
    let output = record["usage"]["completion"].as_u64().unwrap();
    assert!((100..=140).contains(&output), "{record}");
}

/// An Anthropic-format client of an upstream that reports no usage is told
/// the estimates it is charged, not zeros (clients track their context by it).
#[tokio::test]
async fn a_messages_answer_without_upstream_usage_reports_the_estimates() {
    let dir = tempfile::tempdir().unwrap();
    let mock = switchyard_testkit::MockUpstream::start().await;
    let yaml = config_with_mock_group(dir.path(), "quiet", &mock, "mock-model::no_usage");
    let gw = GatewayProcess::start(Path::new(BIN), &yaml);
    let answer = send(
        client()
            .post(format!("{}/v1/messages", gw.base_url()))
            .header("x-api-key", MASTER)
            .json(&json!({"model": "quiet", "max_tokens": 50,
                "messages": [{"role": "user", "content": "one two three four five six seven eight"}]})),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let usage = &answer.body["usage"];
    assert!(usage["input_tokens"].as_u64().unwrap() > 0, "{usage}");
    assert!(usage["output_tokens"].as_u64().unwrap() > 0, "{usage}");
}

/// An upstream answer `/v1/messages` cannot translate is a 502 that is still
/// charged, and says so, with the key's rate-limit headers like any answer.
#[tokio::test]
async fn an_untranslatable_answer_is_charged_and_keeps_the_limit_headers() {
    let dir = tempfile::tempdir().unwrap();
    let mock = switchyard_testkit::MockUpstream::start().await;
    let yaml = config_with_mock_group(dir.path(), "odd", &mock, "mock-model::wrong_shape");
    let gw = GatewayProcess::start(Path::new(BIN), &yaml);
    let key = generate(&gw, json!({"rpm_limit": 10})).await;
    let answer = send(
        client()
            .post(format!("{}/v1/messages", gw.base_url()))
            .header("x-api-key", &key)
            .json(&json!({"model": "odd", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})),
    )
    .await;
    assert_eq!(answer.status, 502, "{}", answer.body);
    assert_eq!(answer.body["type"], "error", "{}", answer.body);
    assert_eq!(answer.header("x-ratelimit-limit-requests"), "10");
    // 3 prompt and 2 completion tokens, as the upstream reported.
    assert_eq!(nanos(answer.header("x-switchyard-response-cost")), 3 * 1000 + 2 * 2000);
}

/// A client that gives up on a JSON answer does not make it free: the
/// upstream call goes on (the provider bills it either way) and is charged.
#[tokio::test]
async fn a_request_its_client_left_is_still_charged() {
    let dir = tempfile::tempdir().unwrap();
    let gw = GatewayProcess::start(Path::new(BIN), &config(dir.path(), "", 3_000));
    let key = generate(&gw, json!({"key_alias": "impatient"})).await;
    leave_mid_request(&gw, &key).await;

    let record = spend_record(&gw, |r| r["key_alias"] == "impatient").await;
    assert_eq!(record["cost_nanos"], json!(HELLO_COST_NANOS), "{record}");
}

/// A request without `max_tokens` reserves what the deployment itself asks
/// for: an Anthropic deployment sends its `default_max_tokens` (here 32,000)
/// upstream, more than `policy.default_max_tokens` (4,096).
#[tokio::test]
async fn the_reservation_covers_a_deployments_own_default_max_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let mock = switchyard_testkit::MockUpstream::start().await;
    let group = format!(
        "  - model_name: claude\n    deployments:\n      - provider: anthropic\n        model: claude-mock\n        api_base: {}\n        api_key: k\n        default_max_tokens: 32000\n        input_cost_per_token: 0.000001\n        output_cost_per_token: 0.000002\n  - model_name: mock-b\n",
        mock.root_url()
    );
    let yaml = config(dir.path(), "", 0).replace("  - model_name: mock-b\n", &group);
    let gw = GatewayProcess::start(Path::new(BIN), &yaml);
    // $0.02: 4,096 output tokens cost $0.008, 32,000 cost $0.064.
    let key = generate(&gw, json!({"max_budget": 0.02})).await;
    let unbounded = send(
        client()
            .post(format!("{}/v1/chat/completions", gw.base_url()))
            .bearer_auth(&key)
            .json(&json!({"model": "claude", "messages": [{"role": "user", "content": "hello"}]})),
    )
    .await;
    assert_eq!(unbounded.status, 400, "{}", unbounded.body);
    assert_eq!(unbounded.code(), "budget_exceeded");
    let bounded = chat_with(&gw, Some(&key), "claude").await;
    assert_eq!(bounded.status, 200, "{}", bounded.body);
}

/// A shutdown right after a client left waits for its request: the upstream
/// still answers it (and bills for it), so the gateway charges it and writes
/// its spend before it exits.
#[tokio::test]
async fn a_shutdown_waits_for_a_request_its_client_left() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!("server:\n  drain_delay_ms: 0\n{}", config(dir.path(), "", 3_000));
    let mut gw = GatewayProcess::start(Path::new(BIN), &yaml);
    let key = generate(&gw, json!({"key_alias": "left-before-shutdown"})).await;
    leave_mid_request(&gw, &key).await;
    // The upstream is still answering; no connection is open any more.
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(15)), Some(0), "{:?}", gw.logs());
    let log = std::fs::read_to_string(dir.path().join("spend.jsonl")).unwrap();
    let record: Value = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["key_alias"] == "left-before-shutdown")
        .unwrap_or_else(|| panic!("not charged: {log}"));
    assert_eq!(record["cost_nanos"], json!(HELLO_COST_NANOS), "{record}");
}

/// Sends a chat request to `mock-a` with `key` over a connection of its own
/// and closes that connection once the request is on its way upstream,
/// before the answer (the server sees the client go, as an HTTP client's
/// timeout may not show it).
async fn leave_mid_request(gw: &GatewayProcess, key: &str) {
    use std::io::Write as _;
    let body = json!({"model": "mock-a", "messages": [{"role": "user", "content": "hello"}]}).to_string();
    let address = gw.base_url().trim_start_matches("http://").to_owned();
    let mut socket = std::net::TcpStream::connect(&address).unwrap();
    write!(
        socket,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    gw.wait_in_flight(Some(MASTER)).await;
    drop(socket);
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// A restart that lost its master key (a missing secret) does not come up
/// open while virtual keys are stored: their limits and budgets could be
/// skipped by leaving the key out.
#[tokio::test]
async fn stored_keys_keep_a_gateway_without_its_master_key_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = config(dir.path(), "", 0);
    let gw = GatewayProcess::start(Path::new(BIN), &yaml);
    generate(&gw, json!({"key_alias": "kept", "max_budget": 1.0})).await;
    drop(gw);
    let without_master = yaml.replace(&format!("  master_key: {MASTER}\n"), "");
    assert_ne!(without_master, yaml);
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, &without_master).unwrap();
    let mut child = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&config_path)
        .args(["--port", "0"])
        .env_remove("SWITCHYARD_MASTER_KEY")
        .env_remove("LITELLM_MASTER_KEY")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the gateway started open although virtual keys are stored");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains("policy.master_key") && stderr.contains("1 virtual key"),
        "{stderr}"
    );
}

/// LiteLLM's admin clients: `/key/generate` and `/team/new` with the
/// fields its typed clients send empty, `/key/list` filtered and paged (or refused when a
/// filter is unknown), `/key/delete` by alias.
#[tokio::test]
async fn litellm_admin_clients_list_page_and_delete_by_alias() {
    let dir = tempfile::tempdir().unwrap();
    let gw = GatewayProcess::start(Path::new(BIN), &config(dir.path(), "", 0));
    let made = admin(
        &gw,
        "/key/generate",
        json!({"key_alias": "first", "user_id": "alice", "api_key": MASTER, "tags": [], "soft_budget": null,
            "aliases": {}, "duration": "1mo"}),
    )
    .await;
    assert_eq!(made.status, 200, "{}", made.body);
    // The defaults LiteLLM's `GenerateKeyRequest` sends (`spend: 0`,
    // `key_type`, `false` flags, newer fields as null) change nothing.
    let typed = admin(
        &gw,
        "/key/generate",
        json!({"spend": 0, "key_type": "default", "auto_rotate": false, "send_invite_email": false,
               "rotation_interval": null, "agent_id": null, "policies": null, "prompts": null,
               "router_settings": null, "access_group_ids": null, "allowed_passthrough_routes": null,
               "rpm_limit_type": null, "tpm_limit_type": null, "project_id": null}),
    )
    .await;
    assert_eq!(typed.status, 200, "{}", typed.body);
    let gone = admin(&gw, "/key/delete", json!({"keys": [typed.body["key"]]})).await;
    assert_eq!(gone.status, 200, "{}", gone.body);
    for (field, value) in [
        ("spend", json!(3)),
        ("key_type", json!("read_only")),
        ("auto_rotate", json!(true)),
    ] {
        let refused = admin(&gw, "/key/generate", json!({field: value})).await;
        assert_eq!(
            (refused.status, refused.body["error"]["param"].as_str()),
            (400, Some(field)),
            "{}",
            refused.body
        );
    }
    // A user without a key: null key fields ask for none.
    let keyless = admin(
        &gw,
        "/user/new",
        json!({"user_id": "nokey", "auto_create_key": false, "key_alias": null, "duration": null,
               "team_id": null, "organizations": null, "password": null, "spend": 0}),
    )
    .await;
    assert_eq!(keyless.status, 200, "{}", keyless.body);
    let refused = admin(&gw, "/key/generate", json!({"aliases": {"gpt": "gpt-4o"}})).await;
    assert_eq!((refused.status, refused.code()), (400, ""), "{}", refused.body);
    assert_eq!(refused.body["error"]["param"], "aliases", "{}", refused.body);
    // Teams too: LiteLLM's defaults sent empty are accepted, a value refused.
    let team = admin(
        &gw,
        "/team/new",
        json!({"team_id": "t1", "members_with_roles": [], "organization_id": null, "metadata": {},
            "tags": null, "api_key": MASTER, "router_settings": null, "access_group_ids": null,
            "policies": null, "allowed_passthrough_routes": null, "secret_manager_settings": null}),
    )
    .await;
    assert_eq!(team.status, 200, "{}", team.body);
    let refused = admin(
        &gw,
        "/team/update",
        json!({"team_id": "t1", "members_with_roles": [{"role": "admin"}]}),
    )
    .await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(refused.body["error"]["param"], "members_with_roles", "{}", refused.body);
    // A padded id is refused, not trimmed into one the client never uses.
    let padded = admin(&gw, "/team/new", json!({"team_id": "ops "})).await;
    assert_eq!(padded.status, 400, "{}", padded.body);
    assert_eq!(padded.body["error"]["param"], "team_id", "{}", padded.body);
    for alias in ["second", "third"] {
        generate(&gw, json!({"key_alias": alias, "user_id": "bob"})).await;
    }
    let list = |query: &'static str| {
        let gw = &gw;
        async move { admin_get(gw, &format!("/key/list{query}")).await }
    };
    let bob = list("?user_id=bob").await;
    assert_eq!(bob.body["total_count"], 2, "{}", bob.body);
    let paged = list("?size=2&page=2").await;
    assert_eq!(
        (
            paged.body["keys"].as_array().unwrap().len(),
            &paged.body["total_pages"],
            &paged.body["current_page"]
        ),
        (1, &json!(2), &json!(2)),
        "{}",
        paged.body
    );
    let unknown = list("?organization_id=o1").await;
    assert_eq!(
        (unknown.status, unknown.body["error"]["param"].as_str()),
        (400, Some("organization_id"))
    );
    let all = list("").await;
    let some_hash = all.body["keys"][0].as_str().unwrap().to_owned();
    let by_hash = admin_get(&gw, &format!("/key/list?key_hash={some_hash}")).await;
    assert_eq!(by_hash.body["keys"], json!([some_hash]), "{}", by_hash.body);
    // `return_full_object` is read as LiteLLM reads a flag; a value that
    // is none is refused rather than ignored.
    for flag in ["true", "True", "1"] {
        let full = admin_get(
            &gw,
            &format!("/key/list?key_hash={some_hash}&return_full_object={flag}"),
        )
        .await;
        assert_eq!(full.body["keys"][0]["token"], json!(some_hash), "{flag}: {}", full.body);
    }
    let hashes = list("?return_full_object=False").await;
    assert!(hashes.body["keys"][0].is_string(), "{}", hashes.body);
    let odd = list("?return_full_object=maybe").await;
    assert_eq!(
        (odd.status, odd.body["error"]["param"].as_str()),
        (400, Some("return_full_object"))
    );

    let deleted = admin(&gw, "/key/delete", json!({"keys": null, "key_aliases": ["second"]})).await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert_eq!(list("?user_id=bob").await.body["total_count"], 1);
    let missing = admin(&gw, "/key/delete", json!({"keys": null, "key_aliases": ["nobody"]})).await;
    assert_eq!(missing.status, 404, "{}", missing.body);
    // An alias names one key: a second key may not take it, by generate or update.
    let taken = admin(&gw, "/key/generate", json!({"key_alias": "first"})).await;
    assert_eq!(
        (taken.status, taken.body["error"]["param"].as_str()),
        (400, Some("key_alias")),
        "{}",
        taken.body
    );
    let other = generate(&gw, json!({"key_alias": "fourth"})).await;
    let renamed = admin(&gw, "/key/update", json!({"key": other, "key_alias": "first"})).await;
    assert_eq!(renamed.body["error"]["param"], "key_alias", "{}", renamed.body);
    let same = admin(&gw, "/key/update", json!({"key": other, "key_alias": "fourth"})).await;
    assert_eq!(same.status, 200, "a key keeps its own alias: {}", same.body);
}

/// An alias is served, allowed, limited and charged as the group it names;
/// `/v1/models` lists it unless it is hidden.
#[tokio::test]
async fn an_alias_is_its_group_for_keys_limits_and_spend() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{}router_settings:\n  model_group_alias:\n    old-a: mock-a\n    alias-b: mock-b\n    secret-a: {{model: mock-a, hidden: true}}\n",
        config(dir.path(), "", 0)
    );
    let gw = GatewayProcess::start(Path::new(BIN), &yaml);
    let answer = chat_with(&gw, Some(MASTER), "old-a").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("x-switchyard-model"), "mock-a");
    assert_eq!(answer.header("x-switchyard-deployment"), "mock-a/0");
    // Its spend is the group's.
    let record = spend_record(&gw, |r| r["key_alias"].is_null()).await;
    assert_eq!(record["model"], "mock-a", "{record}");

    let listed = |answer: &Answer| -> Vec<String> {
        answer.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = admin_get(&gw, "/v1/models").await;
    assert_eq!(listed(&all), ["mock-a", "mock-b", "alias-b", "old-a"]);
    assert_eq!(admin_get(&gw, "/v1/models/secret-a").await.status, 200);
    assert_eq!(chat_with(&gw, Some(MASTER), "secret-a").await.status, 200);

    // A key allowed the group may use its aliases, and not the others'.
    let key_a = generate(&gw, json!({"models": ["mock-a"], "model_rpm_limit": {"mock-a": 3}})).await;
    let mine = send(client().get(format!("{}/v1/models", gw.base_url())).bearer_auth(&key_a)).await;
    assert_eq!(listed(&mine), ["mock-a", "old-a"]);
    assert_eq!(chat_with(&gw, Some(&key_a), "old-a").await.status, 200);
    let other = chat_with(&gw, Some(&key_a), "alias-b").await;
    assert_eq!((other.status, other.code()), (403, "model_not_allowed"));
    // Nor through a fallback named by another group's alias.
    let fallback = send(
        client()
            .post(format!("{}/v1/chat/completions", gw.base_url()))
            .bearer_auth(&key_a)
            .json(
                &json!({"model": "mock-a", "fallbacks": ["alias-b"], "messages": [{"role": "user", "content": "hi"}]}),
            ),
    )
    .await;
    assert_eq!(fallback.status, 403, "{}", fallback.body);
    assert_eq!(fallback.body["error"]["param"], "fallbacks[0]");
    // Anthropic's Messages API resolves aliases too.
    let messages = send(
        client()
            .post(format!("{}/v1/messages", gw.base_url()))
            .header("x-api-key", &key_a)
            .header("anthropic-version", "2023-06-01")
            .json(&json!({"model": "old-a", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})),
    )
    .await;
    assert_eq!(messages.status, 200, "{}", messages.body);
    assert_eq!(messages.header("x-switchyard-model"), "mock-a");
    // The group's per-model limit counts requests by either name (two so far).
    assert_eq!(chat_with(&gw, Some(&key_a), "mock-a").await.status, 200);
    let limited = chat_with(&gw, Some(&key_a), "secret-a").await;
    assert_eq!(limited.status, 429, "{}", limited.body);

    // A key that lists the alias may call it, and not the group by its own name.
    let key_b = generate(&gw, json!({"models": ["alias-b"]})).await;
    let answer = chat_with(&gw, Some(&key_b), "alias-b").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("x-switchyard-model"), "mock-b");
    assert_eq!(chat_with(&gw, Some(&key_b), "mock-b").await.code(), "model_not_allowed");
    let mine = send(client().get(format!("{}/v1/models", gw.base_url())).bearer_auth(&key_b)).await;
    assert_eq!(listed(&mine), ["alias-b"]);
}

/// A key or team that lists an access group may call every model in it,
/// and only those.
#[tokio::test]
async fn an_access_group_in_a_keys_models_allows_its_members() {
    let dir = tempfile::tempdir().unwrap();
    // `broken` answers nothing (nothing listens on port 9).
    let yaml = config(dir.path(), "", 0)
        .replace("  - model_name: mock-a\n", "  - model_name: mock-a\n    access_groups: [beta]\n")
        .replace(
            "  - model_name: mock-b\n",
            "  - model_name: broken\n    access_groups: [beta]\n    deployments:\n      - {provider: openai, model: x, api_base: \"http://127.0.0.1:9/v1\", api_key: k}\n  - model_name: mock-b\n    access_groups: [beta, cheap]\n",
        )
        + "router_settings:\n  model_group_alias: {b-alias: mock-b}\n";
    let gw = GatewayProcess::start(Path::new(BIN), &yaml);
    let listed = |answer: &Answer| -> Vec<String> {
        answer.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let models = |key: String| {
        let url = format!("{}/v1/models", gw.base_url());
        async move { send(client().get(url).bearer_auth(key)).await }
    };

    let beta = generate(&gw, json!({"models": ["beta"]})).await;
    for model in ["mock-a", "mock-b"] {
        let answer = chat_with(&gw, Some(&beta), model).await;
        assert_eq!(answer.status, 200, "{model}: {}", answer.body);
    }
    assert_eq!(
        listed(&models(beta.clone()).await),
        ["mock-a", "broken", "mock-b", "b-alias"]
    );
    // A per-model limit set on the access group applies to each of its models.
    let limited = generate(&gw, json!({"models": ["beta"], "model_rpm_limit": {"beta": 1}})).await;
    assert_eq!(chat_with(&gw, Some(&limited), "mock-a").await.status, 200);
    assert_eq!(chat_with(&gw, Some(&limited), "mock-a").await.status, 429);
    assert_eq!(chat_with(&gw, Some(&limited), "mock-b").await.status, 200);

    let cheap = generate(&gw, json!({"models": ["cheap"]})).await;
    assert_eq!(chat_with(&gw, Some(&cheap), "mock-b").await.status, 200);
    let refused = chat_with(&gw, Some(&cheap), "mock-a").await;
    assert_eq!((refused.status, refused.code()), (403, "model_not_allowed"));
    assert_eq!(listed(&models(cheap.clone()).await), ["mock-b", "b-alias"]);
    // A fallback outside the access group is refused as the model itself is.
    let fallback = send(
        client()
            .post(format!("{}/v1/chat/completions", gw.base_url()))
            .bearer_auth(&cheap)
            .json(
                &json!({"model": "mock-b", "fallbacks": ["mock-a"], "messages": [{"role": "user", "content": "hi"}]}),
            ),
    )
    .await;
    assert_eq!(
        (fallback.status, fallback.body["error"]["param"].clone()),
        (403, json!("fallbacks[0]"))
    );

    // A team's access group narrows its keys' models like a name would.
    let team = admin(&gw, "/team/new", json!({"team_id": "budget-team", "models": ["cheap"]})).await;
    assert_eq!(team.status, 200, "{}", team.body);
    let member = generate(&gw, json!({"team_id": "budget-team", "models": ["beta"]})).await;
    assert_eq!(chat_with(&gw, Some(&member), "mock-b").await.status, 200);
    assert_eq!(
        chat_with(&gw, Some(&member), "mock-a").await.code(),
        "model_not_allowed"
    );

    // A key and its team may name the same models differently: the key
    // lists `broken` and `mock-b`, its team the access group holding them,
    // and a fallback to `mock-b` (named by its alias) is taken.
    let team = admin(&gw, "/team/new", json!({"team_id": "beta-team", "models": ["beta"]})).await;
    assert_eq!(team.status, 200, "{}", team.body);
    let member = generate(&gw, json!({"team_id": "beta-team", "models": ["broken", "mock-b"]})).await;
    let rescued = send(
        client()
            .post(format!("{}/v1/chat/completions", gw.base_url()))
            .bearer_auth(&member)
            .json(&json!({"model": "broken", "fallbacks": ["b-alias"], "num_retries": 0, "messages": [{"role": "user", "content": "hi"}]})),
    )
    .await;
    assert_eq!(rescued.status, 200, "{}", rescued.body);
    assert_eq!(rescued.header("x-switchyard-model"), "mock-b");

    // Names that are neither a model nor an access group are refused.
    let unknown = admin(&gw, "/key/generate", json!({"models": ["gamma"]})).await;
    assert_eq!(
        (unknown.status, unknown.body["error"]["param"].clone()),
        (400, json!("models[0]"))
    );
}

/// `policy.end_user_budget` holds every end user (a request's `user`) to a
/// budget, whoever's key pays; other end users and requests naming none
/// are not held by it.
#[tokio::test]
async fn each_end_user_has_a_budget_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = config(
        dir.path(),
        "  end_user_budget: {max_budget: 0.00005, budget_duration: monthly}\n",
        0,
    );
    let gw = GatewayProcess::start(Path::new(BIN), &yaml);
    let key = generate(&gw, json!({})).await;
    let ask = |user: Option<&str>, key: String| {
        let mut body = json!({"model": "mock-a", "max_tokens": 5, "messages": [{"role": "user", "content": "hello"}]});
        if let Some(user) = user {
            body["user"] = json!(user);
        }
        let url = format!("{}/v1/chat/completions", gw.base_url());
        async move { send(client().post(url).bearer_auth(key).json(&body)).await }
    };
    // Each request reserves up to 31000 nano-dollars and costs 7000: the
    // fourth would pass $0.00005.
    for _ in 0..3 {
        assert_eq!(ask(Some("alice"), key.clone()).await.status, 200);
    }
    let refused = ask(Some("alice"), MASTER.to_owned()).await;
    assert_eq!(
        (refused.status, refused.code()),
        (400, "budget_exceeded"),
        "{}",
        refused.body
    );
    // Any key may name any end user: the refusal tells nothing of the end
    // user's spend or budget.
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("end user"), "{}", refused.body);
    assert!(
        !message.contains("spend") && !message.contains("0.00005"),
        "{}",
        refused.body
    );
    assert_eq!(ask(Some("bob"), key.clone()).await.status, 200);
    assert_eq!(ask(None, key.clone()).await.status, 200);
    let mistake = config(dir.path(), "  end_user_budget: {max_budget: -1}\n", 0);
    let out = switchyard_testkit::run_check_config(Path::new(BIN), &mistake);
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && text.contains("policy.end_user_budget.max_budget"),
        "{text}"
    );
}

/// Sends "hello" to mock-a as end user `user`, with the master key.
async fn chat_as(gw: &GatewayProcess, user: &str) -> Answer {
    send(
        client()
            .post(format!("{}/v1/chat/completions", gw.base_url()))
            .bearer_auth(MASTER)
            .json(&json!({"model": "mock-a", "max_tokens": 5, "user": user, "messages": [{"role": "user", "content": "hello"}]})),
    )
    .await
}

/// End users with a record (LiteLLM's `/customer/*`): their own budget
/// replaces `policy.end_user_budget`, their own per-minute limit holds them
/// whichever key pays, a block refuses them, and all of it survives a
/// restart; deleting the record puts them back under the default budget,
/// with their spend kept.
#[tokio::test]
async fn end_users_have_their_own_budget_limits_and_block() {
    let dir = tempfile::tempdir().unwrap();
    // The default holds 3 requests (each reserves up to 31000 nano-dollars
    // and costs 7000).
    let yaml = config(dir.path(), "  end_user_budget: {max_budget: 0.00005}\n", 0);
    let gw = GatewayProcess::start(Path::new(BIN), &yaml);

    let made = admin(
        &gw,
        "/customer/new",
        json!({"user_id": "vip", "alias": "Very Important", "max_budget": 0.0001, "budget_id": null}),
    )
    .await;
    assert_eq!(made.status, 200, "{}", made.body);
    assert_eq!(made.body["litellm_budget_table"]["max_budget"], 0.0001, "{}", made.body);
    // LiteLLM's other prefix serves the same routes.
    let capped = admin(
        &gw,
        "/end_user/new",
        json!({"user_id": "capped", "rpm_limit": 2, "max_budget": 1}),
    )
    .await;
    assert_eq!(capped.status, 200, "{}", capped.body);
    let again = admin(&gw, "/customer/new", json!({"user_id": "vip"})).await;
    assert_eq!((again.status, again.code()), (409, "conflict"), "{}", again.body);
    for (body, param) in [
        (json!({"user_id": "x", "models": ["mock-a"]}), "models"),
        (json!({"user_id": "x", "max_budget": -1}), "max_budget"),
        (json!({"user_id": "x", "default_model": "mock-a"}), "default_model"),
        (json!({"alias": "nobody"}), "user_id"),
        (json!({"user_id": " padded"}), "user_id"),
    ] {
        let refused = admin(&gw, "/customer/new", body).await;
        assert_eq!(refused.status, 400, "{}", refused.body);
        assert_eq!(refused.body["error"]["param"], param, "{}", refused.body);
    }
    // Another key may not manage end users.
    let key = generate(&gw, json!({})).await;
    let not_admin = send(
        client()
            .post(format!("{}/customer/block", gw.base_url()))
            .bearer_auth(&key)
            .json(&json!({"user_ids": ["vip"]})),
    )
    .await;
    assert!(matches!(not_admin.status, 401 | 403), "{}", not_admin.body);

    // vip's own budget, not the default, holds vip: a fourth request passes.
    for _ in 0..4 {
        let answer = chat_as(&gw, "vip").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    // The default still holds an end user without a record.
    for _ in 0..3 {
        assert_eq!(chat_as(&gw, "plain").await.status, 200);
    }
    let refused = chat_as(&gw, "plain").await;
    assert_eq!(refused.code(), "budget_exceeded", "{}", refused.body);

    // capped's own rpm limit, across keys.
    assert_eq!(chat_as(&gw, "capped").await.status, 200);
    assert_eq!(chat_with_user(&gw, &key, "capped").await.status, 200);
    let limited = chat_with_user(&gw, &key, "capped").await;
    assert_eq!(
        (limited.status, limited.code()),
        (429, "rate_limit_exceeded"),
        "{}",
        limited.body
    );
    assert!(
        limited.body["error"]["message"].as_str().unwrap().contains("end user"),
        "{}",
        limited.body
    );

    // vip's spend: 4 requests of 7000 nano-dollars, in its own record.
    let info = admin_get(&gw, "/customer/info?end_user_id=vip").await;
    assert_eq!(info.status, 200, "{}", info.body);
    assert_eq!(
        info.body["spend"].as_f64().unwrap(),
        4.0 * HELLO_COST_NANOS as f64 / 1e9,
        "{}",
        info.body
    );
    assert_eq!(info.body["alias"], "Very Important");
    assert_eq!(info.body["budget_source"], "end_user");
    // An end user without a record but with spend is shown under the default.
    let plain = admin_get(&gw, "/end_user/info?end_user_id=plain").await;
    assert_eq!(plain.status, 200, "{}", plain.body);
    assert_eq!(
        (plain.body["budget_source"].as_str(), plain.body["blocked"].as_bool()),
        (Some("default"), Some(false))
    );
    assert_eq!(admin_get(&gw, "/customer/info?end_user_id=nobody").await.status, 404);

    // An id no request could carry is refused, named as the body holds it.
    let bad = admin(&gw, "/customer/block", json!({"user_ids": ["vip", " padded"]})).await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(bad.body["error"]["param"], "user_ids[1]", "{}", bad.body);
    // Blocking: vip (with a record) and stranger (without one: it gets one).
    let blocked = admin(&gw, "/customer/block", json!({"user_ids": ["vip", "stranger"]})).await;
    assert_eq!(blocked.status, 200, "{}", blocked.body);
    assert_eq!(
        blocked.body["blocked_users"].as_array().unwrap().len(),
        2,
        "{}",
        blocked.body
    );
    for user in ["vip", "stranger"] {
        let refused = chat_with_user(&gw, &key, user).await;
        assert_eq!(
            (refused.status, refused.code()),
            (403, "end_user_blocked"),
            "{}",
            refused.body
        );
        assert_eq!(refused.body["error"]["param"], "user", "{}", refused.body);
    }
    let listed = admin_get(&gw, "/customer/list").await;
    let ids: Vec<(&str, bool)> = listed
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["user_id"].as_str().unwrap(), u["blocked"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        ids,
        [("vip", true), ("capped", false), ("stranger", true)],
        "{}",
        listed.body
    );

    // Everything survives a restart on the same data directory.
    drop(gw);
    let gw = GatewayProcess::start(Path::new(BIN), &yaml);
    let refused = chat_as(&gw, "stranger").await;
    assert_eq!(refused.code(), "end_user_blocked", "{}", refused.body);
    let unblocked = admin(&gw, "/customer/unblock", json!({"user_ids": ["vip", "never-seen"]})).await;
    assert_eq!(unblocked.status, 200, "{}", unblocked.body);
    assert_eq!(
        unblocked.body["unblocked_users"].as_array().unwrap().len(),
        1,
        "{}",
        unblocked.body
    );
    assert_eq!(chat_as(&gw, "vip").await.status, 200);
    let info = admin_get(&gw, "/customer/info?end_user_id=vip").await;
    assert_eq!(
        info.body["spend"].as_f64().unwrap(),
        5.0 * HELLO_COST_NANOS as f64 / 1e9,
        "{}",
        info.body
    );

    // The limit holds after the restart too, and an update takes it away.
    for _ in 0..2 {
        assert_eq!(chat_as(&gw, "capped").await.status, 200);
    }
    assert_eq!(chat_as(&gw, "capped").await.code(), "rate_limit_exceeded");
    let updated = admin(&gw, "/customer/update", json!({"user_id": "capped", "rpm_limit": null})).await;
    assert_eq!(updated.status, 200, "{}", updated.body);
    let answer = chat_as(&gw, "capped").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let missing = admin(&gw, "/customer/update", json!({"user_id": "nobody", "alias": "x"})).await;
    assert_eq!(missing.status, 404, "{}", missing.body);

    // Deleted, vip is held by the default budget again, its spend kept
    // (35000 spent leaves too little of $0.00005 for another request).
    let refused = admin(&gw, "/customer/delete", json!({"user_ids": ["vip", "nobody"]})).await;
    assert_eq!(
        refused.status, 404,
        "a delete naming an unknown end user deletes none: {}",
        refused.body
    );
    let deleted = admin(&gw, "/customer/delete", json!({"user_ids": ["vip"]})).await;
    assert_eq!(deleted.body["deleted_customers"], 1, "{}", deleted.body);
    let refused = chat_as(&gw, "vip").await;
    assert_eq!(refused.code(), "budget_exceeded", "{}", refused.body);
}

async fn chat_with_user(gw: &GatewayProcess, key: &str, user: &str) -> Answer {
    send(
        client()
            .post(format!("{}/v1/chat/completions", gw.base_url()))
            .bearer_auth(key)
            .json(&json!({"model": "mock-a", "max_tokens": 5, "user": user, "messages": [{"role": "user", "content": "hello"}]})),
    )
    .await
}

/// With `policy.record_end_users: false` no end user is written to spend
/// records, yet an end user's record (its block, limits and budget) still
/// holds requests that name it.
#[tokio::test]
async fn end_user_records_hold_when_end_users_are_not_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let gw = GatewayProcess::start(Path::new(BIN), &config(dir.path(), "  record_end_users: false", 0));
    let made = admin(
        &gw,
        "/customer/new",
        json!({"user_id": "metered", "max_budget": 0.00005}),
    )
    .await;
    assert_eq!(made.status, 200, "{}", made.body);
    let blocked = admin(&gw, "/customer/block", json!({"user_ids": ["banned"]})).await;
    assert_eq!(blocked.status, 200, "{}", blocked.body);
    let refused = chat_as(&gw, "banned").await;
    assert_eq!(refused.code(), "end_user_blocked", "{}", refused.body);
    // Three requests fit metered's budget, the fourth does not.
    for _ in 0..3 {
        assert_eq!(chat_as(&gw, "metered").await.status, 200);
    }
    assert_eq!(chat_as(&gw, "metered").await.code(), "budget_exceeded");
    // An end user without a record is left out of the spend records; one
    // with a record is named (its spend is counted under it).
    assert_eq!(chat_as(&gw, "anonymous-visitor").await.status, 200);
    spend_record(&gw, |r| r["end_user"].is_null()).await;
    let logs = admin_get(&gw, "/spend/logs").await;
    let users: Vec<&Value> = logs.body.as_array().unwrap().iter().map(|r| &r["end_user"]).collect();
    assert_eq!(users.len(), 4, "{}", logs.body);
    assert_eq!(users.iter().filter(|u| **u == "metered").count(), 3, "{}", logs.body);
    assert!(!logs.body.to_string().contains("anonymous-visitor"), "{}", logs.body);
}

/// Internal users (LiteLLM's `/user/*`): every key whose `user_id` names a
/// user shares its budget and model list, a blocked user's keys are
/// refused, and users survive a restart.
#[tokio::test]
async fn keys_of_one_user_share_its_budget_and_models() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = config(dir.path(), "", 0);
    let gw = GatewayProcess::start(Path::new(BIN), &yaml);
    // $0.00005 holds 3 requests (each reserves up to 31000 nano-dollars
    // and costs 7000).
    let made = admin(
        &gw,
        "/user/new",
        json!({"user_id": "ana", "user_email": "ana@example.com", "user_role": "internal_user",
               "max_budget": 0.00005, "models": ["mock-a"], "key_alias": "ana-laptop", "teams": [],
               "send_invite_email": false}),
    )
    .await;
    assert_eq!(made.status, 200, "{}", made.body);
    assert_eq!(made.body["key_alias"], "ana-laptop", "{}", made.body);
    assert!(made.body.get("ledger_id").is_none(), "{}", made.body);
    let first = made.body["key"].as_str().unwrap().to_owned();
    let second = generate(&gw, json!({"user_id": "ana"})).await;
    for (body, param) in [
        (json!({"user_id": "x", "user_role": "proxy_admin"}), "user_role"),
        (json!({"user_id": "a:b"}), "user_id"),
        (json!({"user_id": "x", "models": ["no-such-model"]}), "models[0]"),
        (
            json!({"user_id": "x", "auto_create_key": false, "key_alias": "k"}),
            "key_alias",
        ),
    ] {
        let refused = admin(&gw, "/user/new", body).await;
        assert_eq!(refused.status, 400, "{}", refused.body);
        assert_eq!(refused.body["error"]["param"], param, "{}", refused.body);
    }
    // A mistake in the key's fields leaves no user behind.
    for (body, param) in [
        (json!({"user_id": "cy", "duration": "soon"}), "duration"),
        (json!({"user_id": "cy", "key_alias": "ana-laptop"}), "key_alias"),
    ] {
        let refused = admin(&gw, "/user/new", body).await;
        assert_eq!(refused.status, 400, "{}", refused.body);
        assert_eq!(refused.body["error"]["param"], param, "{}", refused.body);
    }
    assert_eq!(admin_get(&gw, "/user/info?user_id=cy").await.status, 404);
    let keyless = admin(
        &gw,
        "/user/new",
        json!({"user_id": "bo", "auto_create_key": false, "rpm_limit": 1}),
    )
    .await;
    assert_eq!(keyless.status, 200, "{}", keyless.body);
    assert!(keyless.body.get("key").is_none(), "{}", keyless.body);
    // A key made later for bo is held by bo's limit.
    let bos = generate(&gw, json!({"user_id": "bo"})).await;
    assert_eq!(chat_with(&gw, Some(&bos), "mock-b").await.status, 200);
    let limited = chat_with(&gw, Some(&bos), "mock-b").await;
    assert_eq!(limited.code(), "rate_limit_exceeded", "{}", limited.body);
    assert!(
        limited.body["error"]["message"].as_str().unwrap().contains("user"),
        "{}",
        limited.body
    );

    // The user's model list bounds both keys.
    let denied = chat_with(&gw, Some(&second), "mock-b").await;
    assert_eq!(
        (denied.status, denied.code()),
        (403, "model_not_allowed"),
        "{}",
        denied.body
    );
    // One budget for both keys: the fourth request is refused, naming the user.
    for key in [&first, &second, &first] {
        let answer = chat_with(&gw, Some(key), "mock-a").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let refused = chat_with(&gw, Some(&second), "mock-a").await;
    assert_eq!(refused.code(), "budget_exceeded", "{}", refused.body);
    assert!(
        refused.body["error"]["message"].as_str().unwrap().contains("this user"),
        "{}",
        refused.body
    );

    let info = admin_get(&gw, "/user/info?user_id=ana").await;
    assert_eq!(info.status, 200, "{}", info.body);
    assert_eq!(
        info.body["user_info"]["spend"].as_f64().unwrap(),
        3.0 * HELLO_COST_NANOS as f64 / 1e9,
        "{}",
        info.body
    );
    assert_eq!(info.body["keys"].as_array().unwrap().len(), 2, "{}", info.body);
    let logs = admin_get(&gw, "/spend/logs?user_id=ana").await;
    assert_eq!(logs.body.as_array().unwrap().len(), 3, "{}", logs.body);
    assert!(logs.body[0].get("user_ledger").is_none(), "{}", logs.body);

    // Users survive a restart; a raised budget and a block reach every key.
    drop(gw);
    let gw = GatewayProcess::start(Path::new(BIN), &yaml);
    let listed = admin_get(&gw, "/user/list").await;
    let ids: Vec<&str> = listed.body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["ana", "bo"], "{}", listed.body);
    // Pages, and filters this gateway does not apply refused rather than
    // answered with everyone.
    let second_page = admin_get(&gw, "/user/list?page=2&page_size=1").await;
    assert_eq!(
        (
            &second_page.body["users"][0]["user_id"],
            &second_page.body["total"],
            &second_page.body["total_pages"]
        ),
        (&json!("bo"), &json!(2), &json!(2)),
        "{}",
        second_page.body
    );
    for path in [
        "/user/list?role=internal_user",
        "/team/list?organization_id=acme",
        "/user/list?page=0",
    ] {
        let refused = admin_get(&gw, path).await;
        assert_eq!(refused.status, 400, "{path}: {}", refused.body);
    }
    assert_eq!(admin_get(&gw, "/team/list").await.status, 200);
    let raised = admin(&gw, "/user/update", json!({"user_id": "ana", "max_budget": 1})).await;
    assert_eq!(raised.status, 200, "{}", raised.body);
    assert_eq!(chat_with(&gw, Some(&first), "mock-a").await.status, 200);
    let blocked = admin(&gw, "/user/update", json!({"user_id": "ana", "blocked": true})).await;
    assert_eq!(blocked.status, 200, "{}", blocked.body);
    for key in [&first, &second] {
        let refused = chat_with(&gw, Some(key), "mock-a").await;
        assert_eq!(
            (refused.status, refused.code()),
            (403, "key_blocked"),
            "{}",
            refused.body
        );
    }

    // A user is deleted only once no key names it.
    let kept = admin(&gw, "/user/delete", json!({"user_ids": ["ana"]})).await;
    assert_eq!((kept.status, kept.code()), (409, "conflict"), "{}", kept.body);
    let gone = admin(&gw, "/key/delete", json!({"keys": [first, second, bos]})).await;
    assert_eq!(gone.status, 200, "{}", gone.body);
    let deleted = admin(&gw, "/user/delete", json!({"user_ids": ["ana", "bo"]})).await;
    assert_eq!(deleted.body["deleted_users"], json!(["ana", "bo"]), "{}", deleted.body);
    assert_eq!(admin_get(&gw, "/user/info?user_id=ana").await.status, 404);
}
