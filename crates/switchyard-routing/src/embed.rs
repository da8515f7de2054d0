//! Sentence embeddings on candle: a BERT encoder (all-MiniLM-L6-v2 by
//! default) loaded from a local directory, mean-pooled over the attention
//! mask and L2-normalised, so that a dot product is a cosine similarity.
//!
//! Long prompts are cut to `max_tokens`. By default the *end* of the prompt is
//! kept ([`Truncation::Tail`]): few-shot prompts put the question last, and
//! the question is what decides which model should answer.

use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use serde::{Deserialize, Serialize};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection, TruncationParams};

/// Why an embedder could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// A model file is missing or unreadable.
    #[error("cannot read `{path}`: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The model failed to load or run.
    #[error("model: {0}")]
    Model(#[from] candle_core::Error),
    /// A setting is out of range.
    #[error("invalid embedder setting `{0}`")]
    InvalidSetting(&'static str),
}

/// Which part of a prompt longer than `max_tokens` is embedded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Truncation {
    /// Keep the beginning.
    Head,
    /// Keep the end (the default: few-shot prompts end with the question).
    #[default]
    Tail,
}

/// Bytes of a prompt read per token of `max_tokens` (WordPiece tokens of
/// real text average about 4 bytes; long runs of white space, which make no
/// token, are where more than this is cut).
pub const CLIP_BYTES_PER_TOKEN: usize = 16;

/// Whether two embedder ids name the same model files and input settings,
/// whatever the folder the files were read from.
pub fn ids_fit(a: &str, b: &str) -> bool {
    fn essence(id: &str) -> Option<(&str, &str)> {
        let (head, settings) = id.split_once('/')?;
        let (_, fingerprint) = head.rsplit_once('-')?;
        Some((fingerprint, settings))
    }
    a == b || essence(a).is_some_and(|e| Some(e) == essence(b))
}

/// How the embedder is loaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EmbedderConfig {
    /// Directory with `config.json`, `tokenizer.json` and `model.safetensors`.
    pub model_dir: PathBuf,
    /// Longest input in tokens, special tokens included (the model allows 512).
    pub max_tokens: usize,
    /// Which end of a long prompt to keep.
    pub truncation: Truncation,
    /// Texts embedded per forward pass.
    pub batch_size: usize,
    /// Embeddings of recent texts kept in memory (0 disables the cache).
    pub cache_entries: u64,
}

impl Default for EmbedderConfig {
    fn default() -> Self {
        Self {
            model_dir: PathBuf::from("models/all-MiniLM-L6-v2"),
            max_tokens: 256,
            truncation: Truncation::Tail,
            batch_size: 32,
            cache_entries: 10_000,
        }
    }
}

/// A loaded sentence embedder. Cheap to share behind an `Arc`; `embed` may be
/// called from many threads.
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    dims: usize,
    id: String,
    batch_size: usize,
    max_tokens: usize,
    truncation: Truncation,
    cache: Option<moka::sync::Cache<u64, Arc<[f32]>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("id", &self.id)
            .field("dims", &self.dims)
            .finish()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, EmbedError> {
    std::fs::read(path).map_err(|e| EmbedError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// A stable 64-bit fingerprint (FNV-1a) of the model's files, so that two
/// different models in folders of the same name have different ids: small
/// files whole, and of large ones their length and 64 slices of 4 KiB spread
/// evenly (different weights differ there), so a load does not hash 90 MB.
fn fingerprint(files: &[&[u8]]) -> u64 {
    const SLICES: usize = 64;
    const SLICE: usize = 4096;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for file in files {
        feed(&(file.len() as u64).to_le_bytes());
        if file.len() <= SLICES * SLICE {
            feed(file);
        } else {
            for i in 0..SLICES {
                let start = file.len() / SLICES * i;
                feed(file.get(start..start + SLICE).unwrap_or_default());
            }
        }
    }
    hash
}

impl Embedder {
    /// Loads the model in `config.model_dir` on the CPU.
    pub fn load(config: &EmbedderConfig) -> Result<Self, EmbedError> {
        if config.max_tokens < 8 || config.max_tokens > 512 {
            return Err(EmbedError::InvalidSetting("max_tokens"));
        }
        if config.batch_size == 0 {
            return Err(EmbedError::InvalidSetting("batch_size"));
        }
        let dir = &config.model_dir;
        let bert: BertConfig =
            serde_json::from_slice(&read(&dir.join("config.json"))?).map_err(|e| EmbedError::Read {
                path: dir.join("config.json"),
                reason: e.to_string(),
            })?;
        let mut tokenizer = Tokenizer::from_bytes(read(&dir.join("tokenizer.json"))?)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..PaddingParams::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: config.max_tokens,
                direction: match config.truncation {
                    Truncation::Head => TruncationDirection::Right,
                    Truncation::Tail => TruncationDirection::Left,
                },
                ..TruncationParams::default()
            }))
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        let device = Device::Cpu;
        let weights = read(&dir.join("model.safetensors"))?;
        let fingerprint = fingerprint(&[
            &read(&dir.join("config.json"))?,
            &read(&dir.join("tokenizer.json"))?,
            &weights,
        ]);
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)?;
        let model = BertModel::load(vb, &bert)?;
        let name = dir
            .file_name()
            .map_or_else(|| "embedder".into(), |n| n.to_string_lossy().into_owned());
        let cache = (config.cache_entries > 0).then(|| moka::sync::Cache::new(config.cache_entries));
        Ok(Self {
            model,
            tokenizer,
            device,
            dims: bert.hidden_size,
            id: format!(
                "{name}-{fingerprint:016x}/{}/{:?}",
                config.max_tokens, config.truncation
            )
            .to_lowercase(),
            batch_size: config.batch_size,
            max_tokens: config.max_tokens,
            truncation: config.truncation,
            cache,
            hasher: std::collections::hash_map::RandomState::new(),
        })
    }

    /// Length of every embedding.
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Identifies the model and input settings; routers record it so that a
    /// router is never used with embeddings it was not trained on.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether a router trained with embedder `id` fits this one: the same
    /// model files and input settings, wherever the files lie (the folder's
    /// name, at the start of an id, does not count).
    pub fn fits(&self, id: &str) -> bool {
        ids_fit(id, &self.id)
    }

    /// The input settings an embedder `id` was made with (`max_tokens` and
    /// truncation), for making an embedder that fits it.
    pub fn settings_of(id: &str) -> Option<(usize, Truncation)> {
        let (_, settings) = id.split_once('/')?;
        let (max_tokens, truncation) = settings.split_once('/')?;
        let truncation = match truncation {
            "head" => Truncation::Head,
            "tail" => Truncation::Tail,
            _ => return None,
        };
        Some((max_tokens.parse().ok()?, truncation))
    }

    /// Tokens of `text` that are embedded (special tokens included, after truncation).
    pub fn token_count(&self, text: &str) -> Result<usize, EmbedError> {
        self.tokenizer
            .encode(text, true)
            .map(|e| e.get_ids().len())
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))
    }

    /// Whether `text` is longer than `max_tokens`, so that part of it is cut
    /// before embedding (texts that differ only there embed alike).
    pub fn truncates(&self, text: &str) -> Result<bool, EmbedError> {
        // Every token covers at least one byte; `[CLS]` and `[SEP]` are added.
        if text.len().saturating_add(2) <= self.max_tokens {
            return Ok(false);
        }
        if text.len() > self.max_tokens.saturating_mul(CLIP_BYTES_PER_TOKEN) {
            return Ok(true);
        }
        self.tokenizer
            .encode(text, true)
            .map(|e| !e.get_overflowing().is_empty())
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))
    }

    /// The part of `text` the tokenizer is given: at most
    /// [`CLIP_BYTES_PER_TOKEN`] bytes per token of `max_tokens`, from the end
    /// truncation keeps, so that a long prompt costs no more to embed than
    /// one at the limit.
    pub fn clip<'t>(&self, text: &'t str) -> &'t str {
        let limit = self.max_tokens.saturating_mul(CLIP_BYTES_PER_TOKEN);
        if text.len() <= limit {
            return text;
        }
        match self.truncation {
            Truncation::Head => {
                let mut end = limit;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                &text[..end]
            }
            Truncation::Tail => {
                let mut start = text.len() - limit;
                while !text.is_char_boundary(start) {
                    start += 1;
                }
                &text[start..]
            }
        }
    }

    /// Embeds one text, from the cache when it was seen recently.
    pub fn embed_one(&self, text: &str) -> Result<Arc<[f32]>, EmbedError> {
        let text = self.clip(text);
        let key = self.hasher.hash_one(text);
        if let Some(hit) = self.cache.as_ref().and_then(|c| c.get(&key)) {
            return Ok(hit);
        }
        let embedding: Arc<[f32]> = self.embed_batch(&[text])?.into_iter().next().unwrap_or_default().into();
        if let Some(cache) = &self.cache {
            cache.insert(key, Arc::clone(&embedding));
        }
        Ok(embedding)
    }

    /// Embeds many texts, `batch_size` at a time.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut out = Vec::with_capacity(texts.len());
        for batch in texts.chunks(self.batch_size) {
            out.extend(self.embed_batch(batch)?);
        }
        Ok(out)
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        let len = encodings.first().map_or(0, |e| e.get_ids().len());
        let mut ids = Vec::with_capacity(texts.len() * len);
        let mut mask = Vec::with_capacity(texts.len() * len);
        let mut types = Vec::with_capacity(texts.len() * len);
        for e in &encodings {
            ids.extend_from_slice(e.get_ids());
            mask.extend_from_slice(e.get_attention_mask());
            types.extend_from_slice(e.get_type_ids());
        }
        let shape = (texts.len(), len);
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        let types = Tensor::from_vec(types, shape, &self.device)?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?;
        // Mean over the real tokens, then L2 normalisation.
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let counts = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
        let normalised = mean.broadcast_div(&norm)?;
        Ok(normalised.to_vec2::<f32>()?)
    }
}

/// Dot product of two embeddings (their cosine similarity when normalised).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_fit_wherever_the_files_lie_but_not_across_settings() {
        let id = "all-minilm-l6-v2-00112233445566ff/256/tail";
        assert!(ids_fit(id, "minilm-00112233445566ff/256/tail"), "another folder");
        assert!(
            !ids_fit(id, "all-minilm-l6-v2-00112233445566fe/256/tail"),
            "other files"
        );
        assert!(!ids_fit(id, "all-minilm-l6-v2-00112233445566ff/64/tail"));
        assert!(!ids_fit(id, "all-minilm-l6-v2-00112233445566ff/256/head"));
        assert_eq!(Embedder::settings_of(id), Some((256, Truncation::Tail)));
        assert_eq!(Embedder::settings_of("m-1/64/head"), Some((64, Truncation::Head)));
        assert_eq!(Embedder::settings_of("m-1/64/middle"), None);
    }
}
