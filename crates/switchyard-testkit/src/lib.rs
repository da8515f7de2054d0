#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support crate"
)]
//! Test support for Switchyard.
//!
//! * [`MockUpstream`]: an in-process OpenAI-compatible server (JSON and SSE)
//!   with per-request fault injection driven by [`Scenario`] directives.
//! * [`GatewayProcess`]: runs a gateway binary against a YAML config for
//!   end-to-end tests and captures its output.
//!
//! # Fault injection
//!
//! Directives come from the `x-mock-scenario` header or from the model name
//! after `::`, e.g. model `"gpt-4o::status=429,retry_after=2"`. See
//! [`Scenario`] for the full list.

mod embeddings;
mod harness;
mod openai_mock;
mod scenario;
mod server;
mod sse;

pub use embeddings::{DEFAULT_EMBEDDING_DIMS, encode_base64_embedding, mock_embedding};
pub use harness::{GatewayProcess, run_check_config};
pub use scenario::{SCENARIO_HEADER, Scenario};
pub use server::{MockUpstream, RecordedRequest};
pub use sse::StreamStats;
