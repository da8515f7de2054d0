//! `cargo xtask export-traces` on request logs written by the gateway's own
//! request-log writer (a rotating file, and a Redis stream on a real
//! `redis-server`), then `cargo xtask train` on what it exported: the loop
//! from traffic to a learned router.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use switchyard_telemetry::{LogSink, Metrics, RequestLog, RequestLogSettings, RequestRecord};
use switchyard_testkit::RedisServer;

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

fn xtask(args: &[&str]) -> (bool, String) {
    let out = Command::new(XTASK).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn model_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/all-MiniLM-L6-v2");
    assert!(dir.join("model.safetensors").exists(), "run `cargo xtask models fetch`");
    dir.canonicalize().unwrap()
}

/// Traffic through a `router` group: poems answered by `poet` (rated well)
/// or `coder` (rated badly), code the other way round; every third request
/// unrated.
async fn write_traffic(log: &RequestLog, n: usize) {
    let subjects = ["the sea", "autumn", "a lighthouse", "snow", "old friends", "a garden"];
    let tasks = [
        "parse a CSV file",
        "reverse a list",
        "sort a vector",
        "merge two maps",
        "read a file",
    ];
    for i in 0..n {
        let poem = i % 2 == 0;
        let prompt = if poem {
            format!(
                "Write a short poem about {} for reader {i}.",
                subjects[i % subjects.len()]
            )
        } else {
            format!("Write a Rust function to {} (exercise {i}).", tasks[i % tasks.len()])
        };
        for (j, model) in ["poet", "coder"].into_iter().enumerate() {
            let id = format!("req-{i}-{j}");
            log.record(RequestRecord {
                request_id: id.clone(),
                endpoint: "chat".into(),
                model: "router".into(),
                served_model: Some(model.into()),
                deployment: Some(format!("{model}/0")),
                status: 200,
                cost_usd: if model == "poet" { 0.001 } else { 0.002 },
                prompt: Some(prompt.clone()),
                ..RequestRecord::default()
            });
            if i % 3 != 2 {
                let good = (model == "poet") == poem;
                log.feedback(&id, if good { 1.0 } else { 0.0 }, None, None);
            }
        }
    }
    log.flush().await;
}

fn samples(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_request_log_exports_to_routing_data_a_router_trains_on() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("requests.jsonl");
    let settings = RequestLogSettings {
        sink: LogSink::File {
            path: log_path.clone(),
            max_bytes: 8192,
            keep: 100,
        },
        include_prompt: true,
        queue: 10_000,
    };
    let log = RequestLog::open(&settings, Metrics::new()).await.unwrap();
    write_traffic(&log, 60).await;
    assert!(dir.path().join("requests.jsonl.1").exists(), "the log rotated");
    // A line torn inside a UTF-8 character (a write cut short) is skipped.
    drop(log);
    let mut live = std::fs::OpenOptions::new().append(true).open(&log_path).unwrap();
    std::io::Write::write_all(&mut live, b"{\"type\":\"request\",\"prompt\":\"caf\xc3").unwrap();
    drop(live);

    let data = dir.path().join("data.jsonl");
    // The rotated file named as well as found is read once.
    let rotated = dir.path().join("requests.jsonl.1");
    let (ok, out) = xtask(&[
        "export-traces",
        "--input",
        log_path.to_str().unwrap(),
        "--input",
        rotated.to_str().unwrap(),
        "--out",
        data.to_str().unwrap(),
        "--model",
        "router",
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("read 120 requests and 80 feedback records"), "{out}");
    let rows = samples(&data);
    // 60 requests, one prompt each, the 20 unrated ones left out.
    assert_eq!(rows.len(), 40, "{out}");
    let poem = rows
        .iter()
        .find(|r| r["query"].as_str().unwrap().starts_with("Write a short poem"))
        .unwrap();
    assert_eq!(poem["scores"]["poet"], 1.0);
    assert_eq!(poem["scores"]["coder"], 0.0);
    assert_eq!(poem["costs"]["coder"], 0.002);
    assert_eq!(poem["cost_kind"], "usd_total_per_query");

    let router = dir.path().join("knn");
    let model = model_dir();
    let (ok, out) = xtask(&[
        "train",
        "--router",
        "knn",
        "--data",
        data.to_str().unwrap(),
        "--out",
        router.to_str().unwrap(),
        "--model-dir",
        model.to_str().unwrap(),
        "--k",
        "5",
    ]);
    assert!(ok, "{out}");
    let manifest: Value = serde_json::from_slice(&std::fs::read(router.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["models"], serde_json::json!(["coder", "poet"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_request_log_exports_too() {
    let redis = RedisServer::start();
    let settings = RequestLogSettings {
        sink: LogSink::Redis {
            url: redis.url(),
            stream: "switchyard:requests".into(),
            max_len: 100_000,
        },
        include_prompt: true,
        queue: 10_000,
    };
    let log = RequestLog::open(&settings, Metrics::new()).await.unwrap();
    write_traffic(&log, 12).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.jsonl");
    let (ok, out) = xtask(&[
        "export-traces",
        "--redis",
        &redis.url(),
        "--out",
        data.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert_eq!(samples(&data).len(), 8, "{out}");

    let (ok, out) = xtask(&["export-traces", "--out", data.to_str().unwrap()]);
    assert!(!ok && out.contains("--input"), "{out}");
    let (ok, out) = xtask(&[
        "export-traces",
        "--input",
        "/no/such/log.jsonl",
        "--out",
        data.to_str().unwrap(),
    ]);
    assert!(!ok && out.contains("no such request log"), "{out}");
}

/// An input with no records fails, naming the file, rather than writing an
/// empty training set.
#[test]
fn an_empty_request_log_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("requests.jsonl");
    std::fs::write(&input, "").unwrap();
    let out = dir.path().join("traces.jsonl");
    let (ok, text) = xtask(&[
        "export-traces",
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("hold no records") && text.contains("requests.jsonl"),
        "{text}"
    );
    assert!(!out.exists(), "{text}");
}
