//! Static embedders distilled from the real all-MiniLM-L6-v2: a one-token
//! text embeds as BERT embeds it, a sentence as the weighted sum of its
//! tokens' BERT embeddings, and the distilled model (`cargo xtask models
//! distill`) ranks similar sentences above unrelated ones as BERT does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::path::{Path, PathBuf};

use switchyard_routing::embed::{
    DistillParams, EmbedError, Embedder, EmbedderConfig, STATIC_FILE, distill, dot, write_static,
};
use tokenizers::Tokenizer;

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models")
}

fn load(dir: &Path) -> Embedder {
    Embedder::load(&EmbedderConfig {
        model_dir: dir.to_owned(),
        ..EmbedderConfig::default()
    })
    .unwrap_or_else(|e| panic!("{}: {e} (run `cargo xtask models fetch` and `distill`)", dir.display()))
}

const SENTENCES: &[&str] = &[
    "How do I reset my password?",
    "I forgot my password and need to change it.",
    "The weather in Lisbon is sunny today.",
    "Write a Python function that reverses a list.",
    "Implement list reversal in Python.",
];

/// Asserts the similarity ranking that all-MiniLM-L6-v2 gives `SENTENCES`.
fn assert_ranks_like_bert(e: &Embedder) {
    let v = e.embed(SENTENCES).unwrap();
    let name = e.id();
    assert!(dot(&v[0], &v[1]) > dot(&v[0], &v[2]) + 0.2, "{name}");
    assert!(dot(&v[3], &v[4]) > dot(&v[3], &v[2]) + 0.2, "{name}");
    assert!(dot(&v[3], &v[4]) > dot(&v[3], &v[0]), "{name}");
    for x in &v {
        assert!((dot(x, x) - 1.0).abs() < 1e-4, "normalised");
    }
}

#[test]
fn a_static_model_sums_the_berts_own_token_embeddings() {
    let bert = load(&models().join("all-MiniLM-L6-v2"));
    let mut tokenizer = Tokenizer::from_file(models().join("all-MiniLM-L6-v2/tokenizer.json")).unwrap();
    // The file pads to 128 tokens; the embedder pads batches to their longest.
    tokenizer.with_padding(None);
    let (vocabulary, skip) = bert.vocabulary();
    assert_eq!(vocabulary, 30_522);
    for special in ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]", "[unused0]"] {
        let id = tokenizer.token_to_id(special).unwrap();
        assert!(skip.binary_search(&id).is_ok(), "{special} gets no vector");
    }

    // Vectors for the tokens of the test texts only (the rest stay zero).
    let words = ["password", "weather", "python"];
    let texts: Vec<&str> = SENTENCES.iter().chain(&words).copied().collect();
    let mut ids: Vec<u32> = texts
        .iter()
        .flat_map(|t| tokenizer.encode(*t, false).unwrap().get_ids().to_vec())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let mut vectors = vec![vec![0f32; bert.dims()]; vocabulary];
    let mut reported = 0;
    for (id, v) in ids
        .iter()
        .zip(bert.token_vectors(&ids, |done| reported = done).unwrap())
    {
        vectors[*id as usize] = v;
    }
    assert_eq!(reported, ids.len());
    let params = DistillParams {
        center: false,
        sif: Some(1e-4),
    };
    let table = distill(&vectors, &skip, params);
    let dir = tempfile::tempdir().unwrap();
    write_static(&table, &models().join("all-MiniLM-L6-v2/tokenizer.json"), dir.path()).unwrap();
    // Readable by a gateway running as another user (safetensors writes
    // through a private temporary file).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("static.safetensors"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
    }
    let fast = load(dir.path());
    assert!(fast.is_static() && !bert.is_static());
    assert_eq!(fast.dims(), 384);
    assert!(!fast.fits(bert.id()), "routers trained on BERT embeddings are refused");

    // A one-token word embeds exactly as BERT embeds it.
    for word in words {
        assert_eq!(tokenizer.encode(word, false).unwrap().get_ids().len(), 1, "{word}");
        let (a, b) = (fast.embed_one(word).unwrap(), bert.embed_one(word).unwrap());
        let diff = a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-4, "{word}: max difference {diff}");
    }
    // A sentence is the sum of its tokens' vectors, each weighted by
    // a / (a + p(rank)) with p ∝ 1 / (id + 2), then normalised.
    let harmonic: f64 = (0..vocabulary).map(|r| 1.0 / (r as f64 + 2.0)).sum();
    let sentence = SENTENCES[3];
    let mut want = vec![0f64; 384];
    for &id in tokenizer.encode(sentence, true).unwrap().get_ids() {
        if skip.binary_search(&id).is_ok() {
            continue;
        }
        let p = 1.0 / (f64::from(id) + 2.0) / harmonic;
        let weight = 1e-4 / (1e-4 + p);
        for (w, v) in want.iter_mut().zip(&vectors[id as usize]) {
            *w += weight * f64::from(*v);
        }
    }
    let norm = want.iter().map(|v| v * v).sum::<f64>().sqrt();
    let got = fast.embed_one(sentence).unwrap();
    for (g, w) in got.iter().zip(&want) {
        assert!((f64::from(*g) - w / norm).abs() < 1e-5);
    }
    // Frequent tokens weigh less than rare ones.
    let the = tokenizer.token_to_id("the").unwrap() as usize;
    let python = tokenizer.token_to_id("python").unwrap() as usize;
    let scale = |id: usize| dot(&table[id], &table[id]).sqrt() / dot(&vectors[id], &vectors[id]).sqrt();
    assert!(scale(the) < 0.75 * scale(python), "{} vs {}", scale(the), scale(python));

    // Batched and one by one agree.
    let batched = fast.embed(SENTENCES).unwrap();
    for (text, v) in SENTENCES.iter().zip(&batched) {
        assert_eq!(&fast.embed_one(text).unwrap()[..], v.as_slice());
    }

    // Only a BERT model can be distilled.
    assert!(matches!(fast.token_vectors(&[1000], |_| {}), Err(EmbedError::NotBert)));
}

#[test]
fn a_table_that_does_not_cover_the_vocabulary_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let table = vec![vec![0.5f32; 8]; 100];
    write_static(&table, &models().join("all-MiniLM-L6-v2/tokenizer.json"), dir.path()).unwrap();
    let error = Embedder::load(&EmbedderConfig {
        model_dir: dir.path().to_owned(),
        ..EmbedderConfig::default()
    })
    .unwrap_err();
    assert!(matches!(error, EmbedError::Static(_)), "{error}");
    assert!(error.to_string().contains("100×8"), "{error}");
    // A table with a value that is not a finite number is refused, naming
    // its row.
    let mut table = vec![vec![0.5f32; 8]; 30_522];
    table[1_234][3] = f32::NAN;
    write_static(&table, &models().join("all-MiniLM-L6-v2/tokenizer.json"), dir.path()).unwrap();
    let error = Embedder::load(&EmbedderConfig {
        model_dir: dir.path().to_owned(),
        ..EmbedderConfig::default()
    })
    .unwrap_err();
    assert!(error.to_string().contains("row 1234"), "{error}");
    // A missing table is a missing file, named.
    std::fs::remove_file(dir.path().join(STATIC_FILE)).unwrap();
    let error = Embedder::load(&EmbedderConfig {
        model_dir: dir.path().to_owned(),
        ..EmbedderConfig::default()
    })
    .unwrap_err();
    assert!(error.to_string().contains("config.json"), "{error}");
}

/// The model `cargo xtask models distill` made from the whole vocabulary.
#[test]
fn the_distilled_model_ranks_similarity_as_bert_does() {
    let bert = load(&models().join("all-MiniLM-L6-v2"));
    let fast = load(&models().join("all-MiniLM-L6-v2-static"));
    assert!(fast.is_static());
    assert_ranks_like_bert(&bert);
    assert_ranks_like_bert(&fast);
    // Long prompts are cut the same way, to the same tokens.
    let long = "Explain the difference. ".repeat(200);
    assert_eq!(fast.token_count(&long).unwrap(), 256);
    assert_eq!(fast.truncates(&long).unwrap(), bert.truncates(&long).unwrap());
}
