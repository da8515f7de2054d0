//! Token usage as reported by OpenAI-compatible APIs.

use serde::{Deserialize, Serialize};

use crate::Extra;

/// Token counts of one request (`usage` in responses and final stream chunks).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    #[serde(default, deserialize_with = "count")]
    pub prompt_tokens: u64,
    /// Tokens generated.
    #[serde(default, deserialize_with = "count")]
    pub completion_tokens: u64,
    /// Sum of prompt and completion tokens.
    #[serde(default, deserialize_with = "count")]
    pub total_tokens: u64,
    /// Details such as `prompt_tokens_details`, kept verbatim.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A token count as servers send it: an integer, or `null` or a float
/// (`5.0`) from some OpenAI-compatible servers, read as 0 and rounded. A
/// count is never a reason to refuse an answer.
fn count<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    Ok(match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::Number(n) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite() && *f > 0.0)
                    .map(|f| f.round() as u64)
            })
            .unwrap_or(0),
        _ => 0,
    })
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

    /// Prompt tokens written to the upstream's prompt cache, when reported:
    /// `prompt_tokens_details.cache_creation_tokens`, OpenRouter's
    /// `prompt_tokens_details.cache_write_tokens`, or, as Anthropic's and
    /// Bedrock's answers translated to OpenAI's format carry them,
    /// `cache_creation_input_tokens`. The first that holds a count is read (a
    /// `null` one gives way to the next).
    pub fn cache_write_tokens(&self) -> u64 {
        let details = self.extra.get("prompt_tokens_details");
        [
            details.and_then(|d| d.get("cache_creation_tokens")),
            details.and_then(|d| d.get("cache_write_tokens")),
            self.extra.get("cache_creation_input_tokens"),
        ]
        .into_iter()
        .find_map(|count| count.and_then(serde_json::Value::as_u64))
        .unwrap_or(0)
    }

    /// Prompt tokens served from the upstream's prompt cache, when reported.
    pub fn cached_prompt_tokens(&self) -> u64 {
        self.extra
            .get("prompt_tokens_details")
            .and_then(|d| d.get("cached_tokens"))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    }

    /// Reasoning tokens (`completion_tokens_details.reasoning_tokens`), when reported.
    pub fn reasoning_tokens(&self) -> u64 {
        self.extra
            .get("completion_tokens_details")
            .and_then(|d| d.get("reasoning_tokens"))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    }

    /// Tokens generated, reasoning included. OpenAI counts reasoning inside
    /// `completion_tokens`; some servers (xAI's, Gemini's OpenAI-compatible
    /// API) count it outside, in `total_tokens` only: their total then
    /// exceeds prompt and completion by at least the reasoning, which is
    /// added here.
    pub fn generated_tokens(&self) -> u64 {
        let reasoning = self.reasoning_tokens();
        let outside = self
            .total_tokens
            .saturating_sub(self.prompt_tokens.saturating_add(self.completion_tokens));
        if reasoning > 0 && outside >= reasoning {
            self.completion_tokens.saturating_add(reasoning)
        } else {
            self.completion_tokens
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn cache_writes_are_read_in_each_reported_shape() {
        let usage = |json: &str| serde_json::from_str::<Usage>(json).unwrap();
        // OpenRouter's usage accounting.
        let openrouter = usage(
            r#"{"prompt_tokens":194,"completion_tokens":2,"total_tokens":196,
                "prompt_tokens_details":{"cached_tokens":0,"cache_write_tokens":100,"audio_tokens":0}}"#,
        );
        assert_eq!(openrouter.cache_write_tokens(), 100);
        assert_eq!(openrouter.cached_prompt_tokens(), 0);
        let details = usage(
            r#"{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12,
                "prompt_tokens_details":{"cache_creation_tokens":7}}"#,
        );
        assert_eq!(details.cache_write_tokens(), 7);
        // A null count gives way to the next place it may be.
        let null_first = usage(
            r#"{"prompt_tokens":60,"completion_tokens":2,"total_tokens":62,
                "prompt_tokens_details":{"cache_creation_tokens":null},
                "cache_creation_input_tokens":50}"#,
        );
        assert_eq!(null_first.cache_write_tokens(), 50);
        assert_eq!(
            usage(r#"{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}"#).cache_write_tokens(),
            0
        );
    }

    #[test]
    fn reasoning_counted_outside_completion_tokens_is_generated() {
        let usage = |json: &str| serde_json::from_str::<Usage>(json).unwrap();
        // xAI: reasoning in the total only.
        let xai = usage(
            r#"{"prompt_tokens":32,"completion_tokens":9,"total_tokens":135,"completion_tokens_details":{"reasoning_tokens":94}}"#,
        );
        assert_eq!(xai.generated_tokens(), 103);
        // OpenAI: reasoning inside completion_tokens.
        let openai = usage(
            r#"{"prompt_tokens":32,"completion_tokens":103,"total_tokens":135,"completion_tokens_details":{"reasoning_tokens":94}}"#,
        );
        assert_eq!(openai.generated_tokens(), 103);
        // A total that is off for another reason is not taken for reasoning.
        let other = usage(r#"{"prompt_tokens":32,"completion_tokens":9,"total_tokens":60}"#);
        assert_eq!(other.generated_tokens(), 9);
        let no_total =
            usage(r#"{"prompt_tokens":32,"completion_tokens":9,"completion_tokens_details":{"reasoning_tokens":5}}"#);
        assert_eq!(no_total.generated_tokens(), 9);
    }

    #[test]
    fn counts_sent_as_null_or_floats_are_read_not_refused() {
        let usage: Usage = serde_json::from_str(
            r#"{"prompt_tokens": 5.0, "completion_tokens": null, "total_tokens": 5, "prompt_tokens_details": {"cached_tokens": 2}}"#,
        )
        .unwrap();
        assert_eq!(
            (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens),
            (5, 0, 5)
        );
        assert_eq!(usage.cached_prompt_tokens(), 2);
        let odd: Usage = serde_json::from_str(r#"{"prompt_tokens": -3, "completion_tokens": "7"}"#).unwrap();
        assert_eq!((odd.prompt_tokens, odd.completion_tokens, odd.total_tokens), (0, 0, 0));
    }
}
