//! `POST /v1/audio/speech`: text to speech.

use serde::{Deserialize, Serialize};

use crate::Extra;

/// Body of `POST /v1/audio/speech`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpeechRequest {
    /// Public model name.
    pub model: String,
    /// The text to speak.
    pub input: String,
    /// The voice (`alloy`, `nova`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice: Option<serde_json::Value>,
    /// Every other parameter (`response_format`, `speed`, `instructions`, …), kept verbatim.
    #[serde(flatten)]
    pub extra: Extra,
}
