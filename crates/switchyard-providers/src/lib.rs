//! Upstream LLM providers behind one [`Provider`] trait.
//!
//! The configured provider is the closed enum [`ProviderClient`]: OpenAI and any
//! OpenAI-compatible server, Azure OpenAI, Anthropic, AWS Bedrock, and the built-in mock. Providers
//! return upstream bytes untouched where the wire format already is OpenAI's,
//! and report usage parsed alongside so the gateway never re-parses a body.

pub mod anthropic;
pub mod audio;
pub mod bedrock;
mod chunks;
pub mod client;
pub mod error;
pub mod http;
pub mod json_mode;
mod media;
pub mod mock;
pub mod openai;
pub mod reasoning;
pub mod secret;
pub mod sse;
pub mod upstream_id;

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;
use switchyard_api::{ChatCompletionRequest, CompletionRequest, EmbeddingRequest, Usage};

pub use anthropic::{AnthropicProvider, AnthropicSettings};
pub use audio::{AudioStream, ImageEditRequest, MediaResponse, TranscriptionRequest, UploadedFile};
pub use bedrock::{BedrockProvider, BedrockSettings, StaticCredentials};
pub use chunks::tool_use_id;
pub use client::ProviderClient;
pub use error::{ProviderError, TimeoutPhase};
pub use http::{HttpSettings, Timeouts};
pub use mock::{MockProvider, MockSettings};
pub use openai::{AzureProvider, OpenAiProvider};
pub use secret::Secret;

/// Result type of provider calls.
pub type Result<T, E = ProviderError> = std::result::Result<T, E>;

/// A complete (non-streaming) upstream answer in OpenAI's wire format.
#[derive(Debug, Clone)]
pub struct ProviderResponse {
    /// The JSON body to return to the client, unchanged from upstream where possible.
    pub body: Bytes,
    /// Usage parsed from the body, when it had one.
    pub usage: Option<Usage>,
}

/// One event of a streaming answer: the JSON payload of an SSE `data:` line.
#[derive(Debug, Clone)]
pub struct StreamChunk {
    /// The chunk's JSON, without SSE framing.
    pub data: Bytes,
    /// Usage carried by the chunk (the final chunk when `include_usage` was asked).
    pub usage: Option<Usage>,
}

/// A stream of chunks that ends after the upstream's `[DONE]`, or with an error.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<StreamChunk>> + Send>>;

/// What every upstream provider can do. Requests arrive with `model` already set
/// to the upstream model name of the chosen deployment.
pub trait Provider {
    /// Short provider name for logs and errors (`openai`, `azure`, `mock`).
    fn kind(&self) -> &'static str;

    /// A non-streaming chat completion.
    fn chat(&self, req: &ChatCompletionRequest) -> impl Future<Output = Result<ProviderResponse>> + Send;

    /// A streaming chat completion. Resolves once the upstream accepted the request.
    fn chat_stream(&self, req: &ChatCompletionRequest) -> impl Future<Output = Result<ChunkStream>> + Send;

    /// A non-streaming legacy completion.
    fn completion(&self, req: &CompletionRequest) -> impl Future<Output = Result<ProviderResponse>> + Send;

    /// A streaming legacy completion.
    fn completion_stream(&self, req: &CompletionRequest) -> impl Future<Output = Result<ChunkStream>> + Send;

    /// Embeddings.
    fn embeddings(&self, req: &EmbeddingRequest) -> impl Future<Output = Result<ProviderResponse>> + Send;
}
