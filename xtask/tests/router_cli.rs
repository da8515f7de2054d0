//! `cargo xtask train` and `cargo xtask eval` on small generated data with the
//! real embedding model: artifacts are written, the router beats every single
//! model's hull on data where the best model is obvious from the query, and
//! the JSON report and the PNG plot are produced.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

fn model_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").exists(),
        "the embedding model is missing from {}: run `cargo xtask models fetch`",
        dir.display()
    );
    dir.canonicalize().unwrap()
}

/// Poems are written well by `poet`, code by `coder`, arithmetic only by the
/// expensive `big`, which also does everything else.
fn write_data(path: &Path, n: usize, offset: usize) {
    let subjects = [
        "the sea",
        "autumn",
        "a lighthouse",
        "snow",
        "the city at night",
        "a garden",
        "old friends",
    ];
    let tasks = [
        "parse a CSV file",
        "reverse a linked list",
        "sort a vector",
        "read a file",
        "merge two maps",
    ];
    let langs = ["Rust", "Python", "Go", "Java"];
    let mut lines = Vec::new();
    for i in offset..offset + n {
        let (query, scores) = match i % 3 {
            0 => (
                format!("Write a short poem about {}.", subjects[i % subjects.len()]),
                json!({"big": 1.0, "poet": 1.0, "coder": 0.0}),
            ),
            1 => (
                format!(
                    "Write a {} function to {}.",
                    langs[i % langs.len()],
                    tasks[(i / 3) % tasks.len()]
                ),
                json!({"big": 1.0, "poet": 0.0, "coder": 1.0}),
            ),
            _ => (
                format!("What is {} multiplied by {} plus {}?", 17 + i, 23 + 2 * i, i),
                json!({"big": 1.0, "poet": 0.0, "coder": 0.0}),
            ),
        };
        let line = json!({
            "id": format!("q{i}"),
            "query": query,
            "scores": scores,
            "costs": {"big": 0.01, "poet": 0.001, "coder": 0.002},
            "cost_kind": "usd",
            "task": "synthetic",
        });
        lines.push(line.to_string());
    }
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn xtask(args: &[&str]) -> (bool, String) {
    let out = Command::new(XTASK).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn train_and_eval_knn_and_mlp_routers() {
    let dir = tempfile::tempdir().unwrap();
    let train = dir.path().join("train.jsonl");
    let test = dir.path().join("test.jsonl");
    write_data(&train, 90, 0);
    write_data(&test, 30, 1000);
    let model = model_dir();
    let model = model.to_str().unwrap();

    for (kind, extra) in [
        // Trained for a gateway whose embedder keeps 64 tokens from the head;
        // eval embeds with the router's own settings.
        ("knn", vec!["--k", "5", "--max-tokens", "64", "--truncation", "head"]),
        ("mlp", vec!["--hidden", "32", "--max-epochs", "60"]),
    ] {
        let out = dir.path().join(kind);
        let mut args = vec![
            "train",
            "--router",
            kind,
            "--data",
            train.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--model-dir",
            model,
        ];
        args.extend(extra);
        let (ok, log) = xtask(&args);
        assert!(ok, "train {kind} failed:\n{log}");
        let manifest: Value = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["kind"], kind);
        let settings = if kind == "knn" { "/64/head" } else { "/256/tail" };
        assert!(manifest["embedder"].as_str().unwrap().ends_with(settings), "{manifest}");
        assert_eq!(manifest["models"], json!(["big", "coder", "poet"]));
        let hash = format!("{:x}", Sha256::digest(std::fs::read(&train).unwrap()));
        assert_eq!(manifest["data_hash"], hash);
        assert!(
            manifest["metrics"]["validation_aiq"].as_f64().unwrap() > 0.0,
            "{manifest}"
        );

        let report_path = dir.path().join(format!("{kind}.json"));
        let plot_path = dir.path().join(format!("{kind}.png"));
        let (ok, log) = xtask(&[
            "eval",
            "--router",
            out.to_str().unwrap(),
            "--data",
            test.to_str().unwrap(),
            "--model-dir",
            model,
            "--json",
            report_path.to_str().unwrap(),
            "--plot",
            plot_path.to_str().unwrap(),
        ]);
        assert!(ok, "eval {kind} failed:\n{log}");
        // Evaluated on its own training data, it says the figures test nothing.
        let (ok, log) = xtask(&[
            "eval",
            "--router",
            out.to_str().unwrap(),
            "--data",
            train.to_str().unwrap(),
            "--model-dir",
            model,
        ]);
        assert!(ok && log.contains("the data this router was trained on"), "{log}");
        assert!(log.contains("AIQ: router"), "{log}");
        // Data without costs: shares of a $0 model's cost are not applicable.
        if kind == "knn" {
            let free = dir.path().join("free.jsonl");
            let lines: Vec<String> = std::fs::read_to_string(&test)
                .unwrap()
                .lines()
                .map(|l| {
                    let mut v: Value = serde_json::from_str(l).unwrap();
                    v["costs"] = Value::Null;
                    v.to_string()
                })
                .collect();
            std::fs::write(&free, lines.join("\n") + "\n").unwrap();
            let free_plot = dir.path().join("free.png");
            let (ok, log) = xtask(&[
                "eval",
                "--router",
                out.to_str().unwrap(),
                "--data",
                free.to_str().unwrap(),
                "--model-dir",
                model,
                "--plot",
                free_plot.to_str().unwrap(),
            ]);
            assert!(ok && log.contains("95% → n/a (it costs $0)"), "{log}");
            // No cost axis, no plot: said, and the evaluation still succeeds.
            assert!(log.contains("no plot written"), "{log}");
            assert!(!free_plot.exists());
        }
        let report: Value = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
        let aiq = report["aiq"].as_f64().unwrap();
        let zero = report["zero_router_aiq"].as_f64().unwrap();
        assert!(aiq > zero + 0.05, "{kind}: router AIQ {aiq} vs single models {zero}");
        assert_eq!(report["best_single"][0], "big");
        let c100 = report["cost_for_100"].as_f64().unwrap();
        assert!(c100 < 0.8, "{kind}: reaching big's quality costs {c100} of its price");
        let png = std::fs::read(&plot_path).unwrap();
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
            "{} bytes",
            png.len()
        );

        // Data that never scores one of the router's candidates is refused.
        let partial = dir.path().join("partial.jsonl");
        let text = std::fs::read_to_string(&test)
            .unwrap()
            .replace("\"coder\"", "\"coder-v2\"");
        std::fs::write(&partial, text).unwrap();
        let (ok, log) = xtask(&[
            "eval",
            "--router",
            out.to_str().unwrap(),
            "--data",
            partial.to_str().unwrap(),
            "--model-dir",
            model,
        ]);
        assert!(!ok, "{log}");
        assert!(
            log.contains("no scores for the router's candidates [\"coder\"]"),
            "{log}"
        );
    }
}

#[test]
fn bad_arguments_fail_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let train = dir.path().join("train.jsonl");
    write_data(&train, 12, 0);
    let model = model_dir();
    let out = dir.path().join("r");
    let base = |data: &Path| {
        vec![
            "train".to_owned(),
            "--router".into(),
            "knn".into(),
            "--data".into(),
            data.display().to_string(),
            "--out".into(),
            out.display().to_string(),
            "--model-dir".into(),
            model.display().to_string(),
        ]
    };
    let mut args = base(&train);
    args.extend(["--val-fraction".into(), "0.95".into()]);
    let (ok, log) = xtask(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!ok);
    assert!(log.contains("--val-fraction"), "{log}");
    // Sizes a router may not hold are refused before any work, naming the flag.
    for (flag, value, range) in [
        ("--k", "0", "1..=1000"),
        ("--k", "5000", "1..=1000"),
        ("--hidden", "0", "1..=65536"),
        ("--hidden", "70000", "1..=65536"),
    ] {
        let mut args = base(&train);
        args.extend([flag.into(), value.into()]);
        let (ok, log) = xtask(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(!ok);
        assert!(log.contains(flag) && log.contains(range), "{log}");
        assert!(!log.contains("embedding"), "refused before embedding: {log}");
    }
    let mut args = base(&train);
    args.extend(["--max-epochs".into(), "0".into()]);
    let (ok, log) = xtask(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!ok);
    assert!(log.contains("--max-epochs must be at least 1"), "{log}");
    // The MLP learns scores in [0, 1]; a 1–10 rating must be rescaled.
    let rated = dir.path().join("rated.jsonl");
    let text = std::fs::read_to_string(&train)
        .unwrap()
        .replace("\"big\":1.0", "\"big\":7.0");
    assert!(text.contains("7.0"), "{text}");
    std::fs::write(&rated, text).unwrap();
    let mut args = base(&rated);
    args[2] = "mlp".into();
    let (ok, log) = xtask(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!ok);
    assert!(log.contains("rescale"), "{log}");

    std::fs::write(&train, "{\"id\": 1, \"query\": \"x\"\n").unwrap();
    let (ok, log) = xtask(&base(&train).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!ok);
    assert!(log.contains("train.jsonl"), "{log}");
    assert!(!out.join("manifest.json").exists());
}
