//! Token usage as reported by OpenAI-compatible APIs.

use serde::{Deserialize, Serialize};

use crate::Extra;

/// Token counts of one request (`usage` in responses and final stream chunks).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Tokens generated.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Sum of prompt and completion tokens.
    #[serde(default)]
    pub total_tokens: u64,
    /// Details such as `prompt_tokens_details`, kept verbatim.
    #[serde(flatten)]
    pub extra: Extra,
}

impl Usage {
    /// Usage with the given prompt and completion counts and a computed total.
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
            extra: Extra::new(),
        }
    }

    /// Prompt tokens served from the upstream's prompt cache, when reported.
    pub fn cached_prompt_tokens(&self) -> u64 {
        self.extra
            .get("prompt_tokens_details")
            .and_then(|d| d.get("cached_tokens"))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    }
}
