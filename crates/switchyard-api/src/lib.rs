//! OpenAI-shaped wire types for Switchyard.
//!
//! Every request and response type keeps the fields it does not model in a
//! flattened `extra` map, so a parameter or response field this crate has
//! never heard of passes through the gateway unchanged. The crate has no I/O
//! and depends only on serde.

pub mod anthropic;
pub mod audio;
pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod error;
pub mod images;
pub mod models;
pub mod rerank;
pub mod responses;
pub mod usage;

pub use audio::SpeechRequest;
pub use chat::{
    ChatChoice, ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, ChatMessage, ChunkChoice,
    ChunkDelta, ContentPart, FunctionCall, MessageContent, Role, StreamOptions, ToolCall,
};
pub use completions::{CompletionChoice, CompletionRequest, CompletionResponse, Prompt};
pub use embeddings::{
    EmbeddingData, EmbeddingInput, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage, EmbeddingVector,
};
pub use error::{ErrorBody, ErrorDetail};
pub use images::{ImageGenerationRequest, ModerationRequest};
pub use models::{AnthropicModel, AnthropicModelList, ModelList, ModelObject};
pub use rerank::RerankRequest;
pub use usage::Usage;

/// Map of fields a type does not model; kept verbatim for pass-through.
pub type Extra = serde_json::Map<String, serde_json::Value>;
