//! Legacy Completions (`POST /v1/completions`).

use serde::{Deserialize, Serialize};

use crate::chat::StreamOptions;
use crate::{Extra, Usage};

/// The `prompt` of a completion request: text, several texts, or token ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// One prompt.
    Text(String),
    /// Several prompts.
    Texts(Vec<String>),
    /// One prompt as token ids.
    Tokens(Vec<u32>),
    /// Several prompts as token ids.
    TokenBatches(Vec<Vec<u32>>),
}

impl Prompt {
    /// The prompt's size for token estimates, without copying it: the
    /// bytes of its texts, and 4 per token id (so that the usual estimate
    /// of 4 bytes a token counts ids exactly).
    pub fn size_in_bytes(&self) -> u64 {
        match self {
            Prompt::Text(t) => t.len() as u64,
            Prompt::Texts(ts) => ts.iter().map(|t| t.len() as u64).sum(),
            Prompt::Tokens(t) => 4 * t.len() as u64,
            Prompt::TokenBatches(b) => b.iter().map(|t| 4 * t.len() as u64).sum(),
        }
    }

    /// Whether the prompt is token ids rather than text.
    pub fn is_tokens(&self) -> bool {
        matches!(self, Prompt::Tokens(_) | Prompt::TokenBatches(_))
    }

    /// Prompt texts, with token prompts rendered as space-separated ids.
    pub fn texts(&self) -> Vec<String> {
        fn ids(t: &[u32]) -> String {
            t.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
        }
        match self {
            Prompt::Text(t) => vec![t.clone()],
            Prompt::Texts(ts) => ts.clone(),
            Prompt::Tokens(t) => vec![ids(t)],
            Prompt::TokenBatches(b) => b.iter().map(|t| ids(t)).collect(),
        }
    }
}

/// Body of `POST /v1/completions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    /// Public model name.
    pub model: String,
    /// The prompt.
    pub prompt: Prompt,
    /// Stream the answer as server-sent events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Options for streaming.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Every other parameter, kept verbatim.
    #[serde(flatten)]
    pub extra: Extra,
}

impl CompletionRequest {
    /// Whether the client asked for a stream.
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// Whether the client asked for a final usage chunk.
    pub fn wants_stream_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }
}

/// One choice of a completion response or chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionChoice {
    /// Generated text (or a piece of it, in a chunk).
    pub text: String,
    /// Position of the choice.
    pub index: u32,
    /// Why generation stopped.
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// Unmodelled fields (`logprobs`, …), kept verbatim.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A completion response (also the shape of each stream chunk).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionResponse {
    /// Response id.
    pub id: String,
    /// Always `text_completion`.
    pub object: String,
    /// Unix time of creation.
    pub created: u64,
    /// Model that answered.
    pub model: String,
    /// The choices.
    pub choices: Vec<CompletionChoice>,
    /// Token usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Unmodelled fields, kept verbatim.
    #[serde(flatten)]
    pub extra: Extra,
}
