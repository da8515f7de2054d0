//! The closed set of configured providers.

use switchyard_api::{
    ChatCompletionRequest, CompletionRequest, EmbeddingRequest, ImageGenerationRequest, ModerationRequest,
    RerankRequest, SpeechRequest,
};

use crate::{
    AnthropicProvider, AzureProvider, BedrockProvider, ChunkStream, ImageEditRequest, MediaResponse, MockProvider,
    OpenAiProvider, Provider, ProviderError, ProviderResponse, Result, TranscriptionRequest,
};

/// A configured upstream: matched once per call, no dynamic dispatch.
#[derive(Debug)]
pub enum ProviderClient {
    /// OpenAI or an OpenAI-compatible server.
    OpenAi(OpenAiProvider),
    /// Azure OpenAI.
    Azure(AzureProvider),
    /// Anthropic's Messages API.
    Anthropic(AnthropicProvider),
    /// AWS Bedrock.
    Bedrock(BedrockProvider),
    /// The built-in mock.
    Mock(MockProvider),
}

macro_rules! dispatch {
    ($self:ident, $p:ident => $call:expr) => {
        match $self {
            ProviderClient::OpenAi($p) => $call,
            ProviderClient::Azure($p) => $call,
            ProviderClient::Anthropic($p) => $call,
            ProviderClient::Bedrock($p) => $call,
            ProviderClient::Mock($p) => $call,
        }
    };
}

impl ProviderClient {
    /// Whether the deployment takes OpenAI's `reasoning_effort` for
    /// `model`: an OpenAI or Azure deployment of a reasoning family (o1,
    /// o3, o4, GPT-5; by name or `base_model`). Anthropic and Bedrock read
    /// it as Claude's thinking, through their own translation.
    pub fn takes_reasoning_effort(&self, model: &str) -> bool {
        match self {
            ProviderClient::OpenAi(p) => p.reasons(model),
            ProviderClient::Azure(p) => p.reasons(model),
            ProviderClient::Anthropic(_) | ProviderClient::Bedrock(_) | ProviderClient::Mock(_) => false,
        }
    }

    /// The deployment's first-byte timeout; `None` for the built-in mock,
    /// which has no timeouts.
    pub fn first_byte_timeout(&self) -> Option<std::time::Duration> {
        match self {
            ProviderClient::OpenAi(p) => Some(p.first_byte_timeout()),
            ProviderClient::Azure(p) => Some(p.first_byte_timeout()),
            ProviderClient::Anthropic(p) => Some(p.first_byte_timeout()),
            ProviderClient::Bedrock(p) => Some(p.first_byte_timeout()),
            ProviderClient::Mock(_) => None,
        }
    }

    /// How long a stream may stay silent once it has begun (its first
    /// output passed); `None` for the built-in mock.
    pub fn idle_timeout(&self) -> Option<std::time::Duration> {
        match self {
            ProviderClient::OpenAi(p) => Some(p.idle_timeout()),
            ProviderClient::Azure(p) => Some(p.idle_timeout()),
            ProviderClient::Anthropic(p) => Some(p.idle_timeout()),
            ProviderClient::Bedrock(p) => Some(p.idle_timeout()),
            ProviderClient::Mock(_) => None,
        }
    }
}

impl ProviderClient {
    /// An image generation (OpenAI, Azure and the mock; others cannot).
    pub async fn images(&self, req: &ImageGenerationRequest) -> Result<ProviderResponse> {
        match self {
            ProviderClient::OpenAi(p) => p.images(req).await,
            ProviderClient::Azure(p) => p.images(req).await,
            ProviderClient::Mock(p) => p.images(req).await,
            ProviderClient::Anthropic(_) | ProviderClient::Bedrock(_) => Err(ProviderError::Unsupported {
                provider: self.kind(),
                operation: "images",
            }),
        }
    }

    /// Image edits (OpenAI, Azure and the mock).
    pub async fn image_edit(&self, req: &ImageEditRequest) -> Result<MediaResponse> {
        match self {
            ProviderClient::OpenAi(p) => p.image_edit(req).await,
            ProviderClient::Azure(p) => p.image_edit(req).await,
            ProviderClient::Mock(p) => p.image_edit(req).await,
            ProviderClient::Anthropic(_) | ProviderClient::Bedrock(_) => Err(ProviderError::Unsupported {
                provider: self.kind(),
                operation: "image edits",
            }),
        }
    }

    /// Text to speech (OpenAI, Azure and the mock).
    pub async fn speech(&self, req: &SpeechRequest) -> Result<crate::AudioStream> {
        match self {
            ProviderClient::OpenAi(p) => p.speech(req).await,
            ProviderClient::Azure(p) => p.speech(req).await,
            ProviderClient::Mock(p) => p.speech(req).await,
            ProviderClient::Anthropic(_) | ProviderClient::Bedrock(_) => Err(ProviderError::Unsupported {
                provider: self.kind(),
                operation: "speech",
            }),
        }
    }

    /// Speech to text (OpenAI, Azure and the mock).
    pub async fn transcription(&self, req: &TranscriptionRequest) -> Result<MediaResponse> {
        match self {
            ProviderClient::OpenAi(p) => p.transcription(req).await,
            ProviderClient::Azure(p) => p.transcription(req).await,
            ProviderClient::Mock(p) => p.transcription(req).await,
            ProviderClient::Anthropic(_) | ProviderClient::Bedrock(_) => Err(ProviderError::Unsupported {
                provider: self.kind(),
                operation: if req.translate {
                    "translations"
                } else {
                    "transcriptions"
                },
            }),
        }
    }

    /// A rerank (OpenAI-compatible servers that have one: vLLM, Cohere's
    /// `/v2`, Jina; and the mock).
    pub async fn rerank(&self, req: &RerankRequest) -> Result<ProviderResponse> {
        match self {
            ProviderClient::OpenAi(p) => p.rerank(req).await,
            ProviderClient::Mock(p) => p.rerank(req).await,
            ProviderClient::Azure(_) | ProviderClient::Anthropic(_) | ProviderClient::Bedrock(_) => {
                Err(ProviderError::Unsupported {
                    provider: self.kind(),
                    operation: "rerank",
                })
            }
        }
    }

    /// A moderation (OpenAI and OpenAI-compatible servers, and the mock).
    pub async fn moderations(&self, req: &ModerationRequest) -> Result<ProviderResponse> {
        match self {
            ProviderClient::OpenAi(p) => p.moderations(req).await,
            ProviderClient::Azure(p) => p.moderations(req).await,
            ProviderClient::Mock(p) => p.moderations(req).await,
            ProviderClient::Anthropic(_) | ProviderClient::Bedrock(_) => Err(ProviderError::Unsupported {
                provider: self.kind(),
                operation: "moderations",
            }),
        }
    }
}

impl Provider for ProviderClient {
    fn kind(&self) -> &'static str {
        dispatch!(self, p => p.kind())
    }

    async fn chat(&self, req: &ChatCompletionRequest) -> Result<ProviderResponse> {
        dispatch!(self, p => p.chat(req).await)
    }

    async fn chat_stream(&self, req: &ChatCompletionRequest) -> Result<ChunkStream> {
        dispatch!(self, p => p.chat_stream(req).await)
    }

    async fn completion(&self, req: &CompletionRequest) -> Result<ProviderResponse> {
        dispatch!(self, p => p.completion(req).await)
    }

    async fn completion_stream(&self, req: &CompletionRequest) -> Result<ChunkStream> {
        dispatch!(self, p => p.completion_stream(req).await)
    }

    async fn embeddings(&self, req: &EmbeddingRequest) -> Result<ProviderResponse> {
        dispatch!(self, p => p.embeddings(req).await)
    }
}
