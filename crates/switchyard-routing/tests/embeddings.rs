//! The real all-MiniLM-L6-v2 embedder (`cargo xtask models fetch` puts it in
//! `models/`): known-similar sentences score higher than unrelated ones, and
//! embeddings match reference values computed independently in numpy
//! (`tests/fixtures/make_embedding_reference.py`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::path::PathBuf;

use serde_json::Value;
use switchyard_routing::embed::{Embedder, EmbedderConfig, Truncation, dot};

fn model_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").exists(),
        "the embedding model is missing from {}: run `cargo xtask models fetch`",
        dir.display()
    );
    dir
}

fn embedder(truncation: Truncation, max_tokens: usize) -> Embedder {
    Embedder::load(&EmbedderConfig {
        model_dir: model_dir(),
        max_tokens,
        truncation,
        ..EmbedderConfig::default()
    })
    .unwrap()
}

#[test]
fn matches_the_independent_reference_and_ranks_similarity() {
    let e = embedder(Truncation::Tail, 256);
    assert_eq!(e.dims(), 384);
    let reference: Value = serde_json::from_str(include_str!("fixtures/embedding_reference.json")).unwrap();
    let sentences = reference["sentences"].as_array().unwrap();
    let texts: Vec<&str> = sentences.iter().map(|s| s["text"].as_str().unwrap()).collect();
    // Batched (padded to the longest) and one by one must both match.
    let batched = e.embed(&texts).unwrap();
    for (s, got) in sentences.iter().zip(&batched) {
        let want: Vec<f32> = s["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let single = e.embed_one(s["text"].as_str().unwrap()).unwrap();
        for v in [got.as_slice(), &single[..]] {
            let max_diff = v.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(max_diff < 1e-4, "{}: max difference {max_diff}", s["text"]);
            assert!((dot(v, v) - 1.0).abs() < 1e-4, "normalised");
        }
    }

    let v = e
        .embed(&[
            "How do I reset my password?",
            "I forgot my password and need to change it.",
            "The weather in Lisbon is sunny today.",
            "Write a Python function that reverses a list.",
            "Implement list reversal in Python.",
        ])
        .unwrap();
    assert!(dot(&v[0], &v[1]) > dot(&v[0], &v[2]) + 0.3);
    assert!(dot(&v[3], &v[4]) > dot(&v[3], &v[2]) + 0.3);
    assert!(dot(&v[3], &v[4]) > dot(&v[3], &v[0]));
}

#[test]
fn long_prompts_keep_the_configured_end() {
    let filler = "Example question about geography with its answer. ".repeat(60);
    let question = "Which programming language has a borrow checker?";
    let prompt = format!("{filler}{question}");
    let tail = embedder(Truncation::Tail, 64);
    let head = embedder(Truncation::Head, 64);
    let q_tail = tail.embed_one(question).unwrap();
    let q_head = head.embed_one(question).unwrap();
    let tail_sim = dot(&tail.embed_one(&prompt).unwrap(), &q_tail);
    let head_sim = dot(&head.embed_one(&prompt).unwrap(), &q_head);
    assert!(
        tail_sim > head_sim + 0.2,
        "tail keeps the question: {tail_sim} vs {head_sim}"
    );
    assert_ne!(tail.id(), head.id(), "the id records the truncation");
    // Whether a text is cut is known before embedding it.
    assert!(tail.truncates(&prompt).unwrap());
    assert!(!tail.truncates(question).unwrap());
    let just_fits = "word ".repeat(62);
    assert_eq!(tail.token_count(&just_fits).unwrap(), 64);
    assert!(!tail.truncates(&just_fits).unwrap());
    assert!(tail.truncates(&format!("{just_fits}word")).unwrap());
}

/// Two different models in folders of the same name have different ids, so
/// a router is never used with embeddings it was not trained on.
#[test]
fn the_id_tells_models_in_same_named_folders_apart() {
    let original = embedder(Truncation::Tail, 256);
    assert!(original.id().starts_with("all-minilm-l6-v2-"), "{}", original.id());
    let copy = tempfile::tempdir().unwrap();
    let dir = copy.path().join("all-MiniLM-L6-v2");
    std::fs::create_dir(&dir).unwrap();
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(model_dir().join(file), dir.join(file)).unwrap();
    }
    let load = || {
        Embedder::load(&EmbedderConfig {
            model_dir: dir.clone(),
            max_tokens: 256,
            truncation: Truncation::Tail,
            ..EmbedderConfig::default()
        })
        .unwrap()
    };
    assert_eq!(load().id(), original.id(), "the same files: the same id");
    // Other weights: change one value in the middle of the file.
    let mut weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    let middle = weights.len() / 2;
    weights[middle] ^= 0x01;
    std::fs::write(dir.join("model.safetensors"), weights).unwrap();
    assert_ne!(load().id(), original.id());
    // A model with fewer positions than `max_tokens` is refused at load,
    // not at each prompt longer than its positions.
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&config).unwrap();
    config["max_position_embeddings"] = 128.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let err = Embedder::load(&EmbedderConfig {
        model_dir: dir.clone(),
        max_tokens: 256,
        ..EmbedderConfig::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("at most 128 tokens"), "{err}");
}

/// A prompt far past the token limit is cut to the kept end before the
/// tokenizer sees it: the same embedding, at the cost of one at the limit,
/// on a character boundary.
#[test]
fn a_huge_prompt_is_clipped_before_tokenizing() {
    let question = "What is the capital of France?";
    let long = format!("{}{question}", "filler é ".repeat(50_000));
    let tail = embedder(Truncation::Tail, 64);
    let clipped = tail.clip(&long);
    assert!(clipped.len() <= 64 * switchyard_routing::embed::CLIP_BYTES_PER_TOKEN);
    assert!(clipped.ends_with(question));
    assert!(tail.truncates(&long).unwrap());
    assert_eq!(tail.embed_one(&long).unwrap(), tail.embed_one(clipped).unwrap());
    // The clip keeps more than the window: the embedding is that of the
    // whole prompt's kept end.
    let whole = tail.embed(&[long.as_str()]).unwrap().remove(0);
    let clipped_embedding = tail.embed_one(&long).unwrap();
    let gap: f32 = whole
        .iter()
        .zip(clipped_embedding.iter())
        .map(|(a, b)| (a - b).abs())
        .sum();
    assert!(gap < 1e-3, "clipping changed the embedding by {gap}");
    let head = embedder(Truncation::Head, 64);
    assert!(head.clip(&long).starts_with("filler é"));
    assert_eq!(head.clip(question), question, "a short prompt is whole");
}
