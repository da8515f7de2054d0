#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support crate"
)]
//! Test support for Switchyard.
//!
//! * [`MockUpstream`]: an in-process mock upstream with per-request fault
//!   injection driven by [`Scenario`] directives.
//! * [`GatewayProcess`]: runs a gateway binary against a YAML config for
//!   end-to-end tests and captures its output.
//!
//! # Protocols
//!
//! One [`MockUpstream`] (one port) speaks:
//!
//! * OpenAI: `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
//!   `/v1/models` (JSON and SSE; bearer auth optional), and the Azure OpenAI
//!   form `/openai/deployments/{name}/...` (`api-key`, `api-version`).
//! * Anthropic Messages: `/v1/messages` (JSON and SSE) and
//!   `/v1/messages/count_tokens`; needs `x-api-key` and `anthropic-version`.
//! * AWS Bedrock Runtime (REST-JSON, as the AWS SDK sends it with its endpoint
//!   URL set to [`MockUpstream::root_url`]): `/model/{id}/converse`,
//!   `/model/{id}/converse-stream` (AWS event-stream frames) and
//!   `/model/{id}/invoke` for Titan and Cohere embeddings; needs a SigV4
//!   `authorization` header.
//! * Claude on Bedrock in Anthropic's format: `/model/{id}/invoke` and
//!   `/model/{id}/invoke-with-response-stream` for `anthropic.` model ids with
//!   an Anthropic Messages body without `model` and `stream`, plus
//!   `"anthropic_version": "bedrock-2023-05-31"`. Replies are the Anthropic
//!   mock's; streamed events travel base64-encoded in event-stream `chunk` frames.
//!
//! Anthropic and Bedrock replies echo the last user message, call tools when
//! the request forces tool use, and report [`MOCK_CACHE_READ_TOKENS`] and
//! [`MOCK_CACHE_WRITE_TOKENS`] when the request marks a cache point.
//!
//! # Fault injection
//!
//! Directives come from the `x-mock-scenario` header or from the model name
//! (or Bedrock model id) after `::`, e.g. model
//! `"gpt-4o::status=429,retry_after=2"`. Errors take each protocol's shape.
//! See [`Scenario`] for the full list.

mod anthropic_mock;
mod audio;
mod bedrock_claude;
mod bedrock_mock;
mod embeddings;
mod harness;
mod images;
mod moto;
mod openai_mock;
mod otlp;
mod redis;
mod reply;
mod scenario;
mod server;
mod sse;
mod thinking;
mod webhook;

pub use embeddings::{DEFAULT_EMBEDDING_DIMS, encode_base64_embedding, mock_embedding};
pub use harness::{GatewayProcess, run_check_config, signal_process};
pub use moto::{MOTO_ACCESS_KEY_ID, MOTO_SECRET_ACCESS_KEY, MotoServer};
pub use otlp::{OtlpReceiver, ReceivedSpan};
pub use redis::RedisServer;
pub use reply::{MOCK_CACHE_READ_TOKENS, MOCK_CACHE_WRITE_TOKENS};
pub use scenario::{REDIRECT_TARGET, SCENARIO_HEADER, Scenario};
pub use server::{MockUpstream, RecordedRequest};
pub use sse::StreamStats;
pub use webhook::WebhookReceiver;
