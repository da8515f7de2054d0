//! `POST /v1/images/generations` and `POST /v1/moderations`: requests the
//! gateway routes and meters, answers it passes through as they come.

use serde::{Deserialize, Serialize};

use crate::Extra;

/// Body of `POST /v1/images/generations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageGenerationRequest {
    /// Public model name (empty when the client left it out or sent `null`).
    #[serde(default, deserialize_with = "crate::chat::string_or_null")]
    pub model: String,
    /// What to draw.
    pub prompt: String,
    /// Images to generate (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// `1024x1024`, `1792x1024`, … (the model's default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// `standard`, `hd`, `low`, `medium`, `high`, `auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<String>,
    /// Every other parameter (`response_format`, `style`, `user`, …), kept verbatim.
    #[serde(flatten)]
    pub extra: Extra,
}

impl ImageGenerationRequest {
    /// The number of images asked for.
    pub fn count(&self) -> u64 {
        u64::from(self.n.unwrap_or(1).max(1))
    }
}

/// Body of `POST /v1/moderations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModerationRequest {
    /// Public model name (empty when the client left it out or sent `null`).
    #[serde(default, deserialize_with = "crate::chat::string_or_null")]
    pub model: String,
    /// A string, an array of strings, or an array of text and image parts.
    pub input: serde_json::Value,
    /// Every other parameter, kept verbatim.
    #[serde(flatten)]
    pub extra: Extra,
}
