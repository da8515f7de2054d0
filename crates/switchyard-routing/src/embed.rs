//! Sentence embeddings on candle: a BERT encoder (all-MiniLM-L6-v2 by
//! default) loaded from a local directory, mean-pooled over the attention
//! mask and L2-normalised, so that a dot product is a cosine similarity.
//!
//! Long prompts are cut to `max_tokens`. By default the *end* of the prompt is
//! kept ([`Truncation::Tail`]): few-shot prompts put the question last, and
//! the question is what decides which model should answer.
//!
//! A model directory holding `static.safetensors` instead of
//! `model.safetensors` is a *static* embedder distilled from a BERT one
//! ([`distill`]): one vector per token, summed and L2-normalised. It needs
//! no forward pass, so a prompt embeds in microseconds.

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
    /// `max_tokens` is more than the model has positions for.
    #[error("invalid embedder setting `max_tokens`: {max_tokens}, and the model takes at most {positions} tokens")]
    TooManyTokens {
        /// The setting.
        max_tokens: usize,
        /// The model's `max_position_embeddings`.
        positions: usize,
    },
    /// A static model's table does not fit its tokenizer.
    #[error("static model: {0}")]
    Static(String),
    /// Distillation needs a BERT embedder.
    #[error("only a BERT embedder can be distilled")]
    NotBert,
}

/// File name of a static model's token table.
pub const STATIC_FILE: &str = "static.safetensors";
/// Name of the token table inside [`STATIC_FILE`].
const STATIC_TENSOR: &str = "embeddings";

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
    /// Directory with `config.json`, `tokenizer.json` and `model.safetensors`
    /// (a BERT model), or `tokenizer.json` and `static.safetensors` (a static
    /// model made by `cargo xtask models distill`).
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
    encoder: Encoder,
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

/// What turns token ids into a vector.
enum Encoder {
    /// A transformer forward pass, then a mean over the attention mask.
    Bert(Box<BertModel>),
    /// A sum of per-token rows (`vocabulary × dims`, row-major).
    Static(Vec<f32>),
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
        let (encoder, dims, fingerprint) = if dir.join(STATIC_FILE).exists() {
            let bytes = read(&dir.join(STATIC_FILE))?;
            let fingerprint = fingerprint(&[&read(&dir.join("tokenizer.json"))?, &bytes]);
            let tensors = candle_core::safetensors::load_buffer(&bytes, &device)?;
            let table = tensors
                .get(STATIC_TENSOR)
                .ok_or_else(|| EmbedError::Static(format!("no `{STATIC_TENSOR}` tensor in {STATIC_FILE}")))?;
            let (rows, dims) = table.dims2()?;
            let vocabulary = tokenizer.get_vocab_size(true);
            if rows < vocabulary || dims == 0 {
                return Err(EmbedError::Static(format!(
                    "{rows}×{dims} table for a tokenizer of {vocabulary} tokens"
                )));
            }
            let table = table.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            // One bad row would make every prompt holding its token an
            // embedding of NaN, which no index or network can rank.
            if let Some(at) = table.iter().position(|v| !v.is_finite()) {
                return Err(EmbedError::Static(format!(
                    "row {} of the table holds a value that is not a finite number",
                    at / dims
                )));
            }
            (Encoder::Static(table), dims, fingerprint)
        } else {
            let bert: BertConfig =
                serde_json::from_slice(&read(&dir.join("config.json"))?).map_err(|e| EmbedError::Read {
                    path: dir.join("config.json"),
                    reason: e.to_string(),
                })?;
            // Positions past the model's are an error at each long prompt.
            if config.max_tokens > bert.max_position_embeddings {
                return Err(EmbedError::TooManyTokens {
                    max_tokens: config.max_tokens,
                    positions: bert.max_position_embeddings,
                });
            }
            let weights = read(&dir.join("model.safetensors"))?;
            let fingerprint = fingerprint(&[
                &read(&dir.join("config.json"))?,
                &read(&dir.join("tokenizer.json"))?,
                &weights,
            ]);
            let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)?;
            (
                Encoder::Bert(Box::new(BertModel::load(vb, &bert)?)),
                bert.hidden_size,
                fingerprint,
            )
        };
        let name = dir
            .file_name()
            .map_or_else(|| "embedder".into(), |n| n.to_string_lossy().into_owned());
        let cache = (config.cache_entries > 0).then(|| moka::sync::Cache::new(config.cache_entries));
        Ok(Self {
            encoder,
            tokenizer,
            device,
            dims,
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

    /// Whether this is a static (distilled) embedder rather than a BERT one.
    pub fn is_static(&self) -> bool {
        matches!(self.encoder, Encoder::Static(_))
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

    /// Whether the embedding of `text` stands for all of it: nothing is
    /// cut ([`Embedder::truncates`]), and no part of it is a token the
    /// vocabulary does not know (emoji and most symbols are `[UNK]`
    /// alike, so texts that differ only there embed alike).
    pub fn sees_whole(&self, text: &str) -> Result<bool, EmbedError> {
        if self.truncates(text)? {
            return Ok(false);
        }
        let Some(unknown) = self.tokenizer.token_to_id("[UNK]") else {
            return Ok(true);
        };
        self.tokenizer
            .encode(self.clip(text), true)
            .map(|e| !e.get_ids().contains(&unknown))
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
        let model = match &self.encoder {
            Encoder::Bert(model) => model,
            Encoder::Static(table) => return texts.iter().map(|text| self.embed_static(table, text)).collect(),
        };
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
        let hidden = model.forward(&ids, &types, Some(&mask))?;
        // Mean over the real tokens, then L2 normalisation.
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let counts = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
        let normalised = mean.broadcast_div(&norm)?.to_vec2::<f32>()?;
        // Weights that make NaN (a damaged model file) are refused here,
        // not passed to an index or a network that cannot rank them.
        if normalised.iter().flatten().any(|v| !v.is_finite()) {
            return Err(EmbedError::Static(
                "the model made an embedding that is not finite numbers".into(),
            ));
        }
        Ok(normalised)
    }

    /// A static embedding: the sum of the tokens' rows (special tokens' rows
    /// are zero), L2-normalised.
    fn embed_static(&self, table: &[f32], text: &str) -> Result<Vec<f32>, EmbedError> {
        // `encode_fast` skips the character offsets, which nothing here reads.
        let encoding = self
            .tokenizer
            .encode_fast(text, true)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        let mut sum = vec![0f32; self.dims];
        for &id in encoding.get_ids() {
            let start = id as usize * self.dims;
            if let Some(row) = table.get(start..start + self.dims) {
                sum.iter_mut().zip(row).for_each(|(s, r)| *s += r);
            }
        }
        let norm = dot(&sum, &sum).sqrt().max(1e-12);
        sum.iter_mut().for_each(|v| *v /= norm);
        Ok(sum)
    }

    /// Each token's own embedding by the BERT model, `[CLS] token [SEP]`
    /// mean-pooled and not normalised, for the token ids `ids`, `batch_size`
    /// at a time; `progress` is told how many are done.
    pub fn token_vectors(&self, ids: &[u32], mut progress: impl FnMut(usize)) -> Result<Vec<Vec<f32>>, EmbedError> {
        let Encoder::Bert(model) = &self.encoder else {
            return Err(EmbedError::NotBert);
        };
        let special = |name: &str| {
            self.tokenizer
                .token_to_id(name)
                .ok_or_else(|| EmbedError::Tokenizer(format!("the tokenizer has no `{name}` token")))
        };
        let (cls, sep) = (special("[CLS]")?, special("[SEP]")?);
        let mut out = Vec::with_capacity(ids.len());
        for batch in ids.chunks(self.batch_size.max(256)) {
            let tokens: Vec<u32> = batch.iter().flat_map(|&id| [cls, id, sep]).collect();
            let shape = (batch.len(), 3);
            let tokens = Tensor::from_vec(tokens, shape, &self.device)?;
            let types = Tensor::zeros(shape, DType::U32, &self.device)?;
            let mask = Tensor::ones(shape, DType::U32, &self.device)?;
            let hidden = model.forward(&tokens, &types, Some(&mask))?;
            out.extend(hidden.mean(1)?.to_vec2::<f32>()?);
            progress(out.len());
        }
        Ok(out)
    }

    /// The tokenizer's vocabulary size and the ids of its special and unused
    /// tokens (`[PAD]`, `[CLS]`, `[unused0]`…), which a static model gives no
    /// vector.
    pub fn vocabulary(&self) -> (usize, Vec<u32>) {
        let mut special: Vec<u32> = self
            .tokenizer
            .get_vocab(true)
            .into_iter()
            .filter(|(token, _)| token.starts_with('[') && token.ends_with(']'))
            .map(|(_, id)| id)
            .collect();
        special.sort_unstable();
        (self.tokenizer.get_vocab_size(true), special)
    }
}

/// How [`distill`] turns token vectors into a static model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DistillParams {
    /// Subtract the mean token vector, so that what every token shares does
    /// not dominate a sum.
    pub center: bool,
    /// Down-weight frequent tokens by smooth inverse frequency, with the
    /// token's id as its frequency rank (WordPiece vocabularies are ordered
    /// by frequency): `a / (a + p(rank))`, `p ∝ 1 / rank`. `None` leaves
    /// every token at weight 1.
    pub sif: Option<f32>,
}

impl Default for DistillParams {
    fn default() -> Self {
        Self {
            center: true,
            sif: Some(1e-4),
        }
    }
}

/// Makes a static model's table from each token's own BERT embedding
/// ([`Embedder::token_vectors`]): `vectors` holds one row per token of the
/// vocabulary (`vocabulary` rows), `skip` the ids that get a zero row.
pub fn distill(vectors: &[Vec<f32>], skip: &[u32], params: DistillParams) -> Vec<Vec<f32>> {
    let dims = vectors.first().map_or(0, Vec::len);
    let kept = |id: usize| skip.binary_search(&(id as u32)).is_err();
    let mut mean = vec![0f64; dims];
    let mut n = 0usize;
    if params.center {
        for (id, row) in vectors.iter().enumerate() {
            if kept(id) {
                mean.iter_mut().zip(row).for_each(|(m, &v)| *m += f64::from(v));
                n += 1;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n.max(1) as f64);
    }
    // Ranks start at 2, as in smooth inverse frequency over a Zipf law.
    let harmonic: f64 = (0..vectors.len()).map(|rank| 1.0 / (rank as f64 + 2.0)).sum();
    vectors
        .iter()
        .enumerate()
        .map(|(id, row)| {
            if !kept(id) {
                return vec![0.0; dims];
            }
            let weight = params.sif.map_or(1.0, |a| {
                let p = 1.0 / (id as f64 + 2.0) / harmonic;
                f64::from(a) / (f64::from(a) + p)
            });
            row.iter()
                .zip(&mean)
                .map(|(&v, m)| ((f64::from(v) - m) * weight) as f32)
                .collect()
        })
        .collect()
}

/// Writes a static model: the table as [`STATIC_FILE`] and the BERT model's
/// `tokenizer.json`, into `out`.
pub fn write_static(table: &[Vec<f32>], tokenizer_json: &Path, out: &Path) -> Result<(), EmbedError> {
    let dims = table.first().map_or(0, Vec::len);
    let flat: Vec<f32> = table.iter().flatten().copied().collect();
    let tensor = Tensor::from_vec(flat, (table.len(), dims), &Device::Cpu)?;
    let io = |path: &Path, e: std::io::Error| EmbedError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    let target = out.join(STATIC_FILE);
    candle_core::safetensors::save(&std::collections::HashMap::from([(STATIC_TENSOR, tensor)]), &target)?;
    readable_by_all(&target).map_err(|e| io(&target, e))?;
    std::fs::copy(tokenizer_json, out.join("tokenizer.json")).map_err(|e| io(tokenizer_json, e))?;
    Ok(())
}

/// Makes a file written through a private temporary file (safetensors
/// writes one, mode 0600) readable by every user, as model files are: a
/// gateway running as another user (a container's, systemd's
/// `DynamicUser`) must read it.
pub(crate) fn readable_by_all(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
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

    #[test]
    fn distilling_centres_weights_and_zeroes_special_tokens() {
        let vectors = vec![vec![9.0, 9.0], vec![1.0, 2.0], vec![3.0, 4.0], vec![5.0, 0.0]];
        let plain = distill(
            &vectors,
            &[0],
            DistillParams {
                center: true,
                sif: None,
            },
        );
        // The mean of the kept rows (3, 2) is taken off; the skipped row is zero.
        assert_eq!(
            plain,
            vec![vec![0.0, 0.0], vec![-2.0, 0.0], vec![0.0, 2.0], vec![2.0, -2.0]]
        );
        let weighted = distill(&vectors, &[0], DistillParams::default());
        // Later ids (rarer tokens) keep more of their vector.
        let scale = |id: usize| weighted[id][0] / plain[id][0];
        assert!(scale(1) > 0.0 && scale(1) < scale(3) && scale(3) < 1.0);
        assert_eq!(weighted[0], vec![0.0, 0.0]);
    }
}
