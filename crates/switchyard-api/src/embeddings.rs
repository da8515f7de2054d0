//! Embeddings (`POST /v1/embeddings`).

use serde::{Deserialize, Serialize};

use crate::Extra;

/// The `input` of an embeddings request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    /// One text.
    Text(String),
    /// Several texts.
    Texts(Vec<String>),
    /// One text as token ids.
    Tokens(Vec<u32>),
    /// Several texts as token ids.
    TokenBatches(Vec<Vec<u32>>),
}

impl EmbeddingInput {
    /// The input's size for token estimates, without copying it: the bytes
    /// of its texts, and 4 per token id (so that the usual estimate of 4
    /// bytes a token counts ids exactly).
    pub fn size_in_bytes(&self) -> u64 {
        match self {
            EmbeddingInput::Text(t) => t.len() as u64,
            EmbeddingInput::Texts(ts) => ts.iter().map(|t| t.len() as u64).sum(),
            EmbeddingInput::Tokens(t) => 4 * t.len() as u64,
            EmbeddingInput::TokenBatches(b) => b.iter().map(|t| 4 * t.len() as u64).sum(),
        }
    }

    /// Number of inputs to embed.
    pub fn len(&self) -> usize {
        match self {
            EmbeddingInput::Text(_) | EmbeddingInput::Tokens(_) => 1,
            EmbeddingInput::Texts(v) => v.len(),
            EmbeddingInput::TokenBatches(v) => v.len(),
        }
    }

    /// Whether there is nothing to embed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Input texts, with token inputs rendered as space-separated ids.
    pub fn texts(&self) -> Vec<String> {
        fn ids(t: &[u32]) -> String {
            t.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
        }
        match self {
            EmbeddingInput::Text(t) => vec![t.clone()],
            EmbeddingInput::Texts(ts) => ts.clone(),
            EmbeddingInput::Tokens(t) => vec![ids(t)],
            EmbeddingInput::TokenBatches(b) => b.iter().map(|t| ids(t)).collect(),
        }
    }
}

/// Body of `POST /v1/embeddings`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingRequest {
    /// Public model name.
    pub model: String,
    /// What to embed.
    pub input: EmbeddingInput,
    /// `float` (default) or `base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_format: Option<String>,
    /// Every other parameter (`dimensions`, `user`, …), kept verbatim.
    #[serde(flatten)]
    pub extra: Extra,
}

/// An embedding as floats or as base64 of little-endian f32 bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingVector {
    /// `encoding_format: float`.
    Float(Vec<f32>),
    /// `encoding_format: base64`.
    Base64(String),
}

/// One embedding in a response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingData {
    /// Always `embedding`.
    pub object: String,
    /// Position of the input it embeds.
    pub index: u32,
    /// The vector.
    pub embedding: EmbeddingVector,
    /// Unmodelled fields, kept verbatim.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Response of `POST /v1/embeddings`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingResponse {
    /// Always `list`.
    pub object: String,
    /// One entry per input.
    pub data: Vec<EmbeddingData>,
    /// Model that answered.
    pub model: String,
    /// Token usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<EmbeddingUsage>,
    /// Unmodelled fields, kept verbatim.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Token usage of an embeddings request (prompt tokens only).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingUsage {
    /// Tokens in the input.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Equal to `prompt_tokens`.
    #[serde(default)]
    pub total_tokens: u64,
    /// Unmodelled fields, kept verbatim.
    #[serde(flatten)]
    pub extra: Extra,
}
