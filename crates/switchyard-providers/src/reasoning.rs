//! Claude's extended thinking for chat-format clients: `reasoning_effort`
//! (or Anthropic's own `thinking` object) asked of Anthropic and of Claude
//! on Bedrock, and thinking blocks handed back on later turns as the
//! assistant message's `thinking_blocks`.

use serde_json::{Value, json};
use switchyard_api::{ChatCompletionRequest, ChatMessage};

use crate::{ProviderError, Result};

/// Thinking budgets, in tokens, for each `reasoning_effort`.
const BUDGETS: &[(&str, u64)] = &[
    ("minimal", 1024),
    ("low", 1024),
    ("medium", 2048),
    ("high", 4096),
    ("xhigh", 8192),
];

/// The smallest budget Claude takes.
const MIN_BUDGET: u64 = 1024;

/// The thinking a chat request asks of Claude.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Thinking {
    /// Claude's `thinking` object (`{"type": "enabled", "budget_tokens": N}`,
    /// or whatever the client sent as `thinking`).
    pub config: Value,
    /// The budget, when thinking is enabled with one.
    pub budget: Option<u64>,
    /// Whether the client named it (`thinking`) rather than the gateway
    /// deriving it from `reasoning_effort`.
    pub explicit: bool,
}

fn invalid(message: impl Into<String>, param: &str) -> ProviderError {
    ProviderError::InvalidRequest {
        message: message.into(),
        param: Some(param.to_owned()),
    }
}

/// The thinking `req` asks for: its `thinking` object, or a budget for its
/// `reasoning_effort` (`none`: no thinking).
pub(crate) fn requested(req: &ChatCompletionRequest) -> Result<Option<Thinking>> {
    match req.extra.get("thinking") {
        None | Some(Value::Null) => {}
        Some(config @ Value::Object(object)) => {
            let budget = object.get("budget_tokens").and_then(Value::as_u64);
            let enabled = object.get("type").and_then(Value::as_str) != Some("disabled");
            return Ok(enabled.then(|| Thinking {
                config: config.clone(),
                budget,
                explicit: true,
            }));
        }
        Some(_) => return Err(invalid("`thinking` must be an object", "thinking")),
    }
    let effort = match req.extra.get("reasoning_effort") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(effort)) => effort.as_str(),
        Some(_) => return Err(invalid("`reasoning_effort` must be a string", "reasoning_effort")),
    };
    if effort == "none" {
        return Ok(None);
    }
    let Some((_, budget)) = BUDGETS.iter().find(|(name, _)| *name == effort) else {
        return Err(invalid(
            format!("`reasoning_effort` must be none, minimal, low, medium, high or xhigh, not `{effort}`"),
            "reasoning_effort",
        ));
    };
    Ok(Some(Thinking {
        config: json!({"type": "enabled", "budget_tokens": budget}),
        budget: Some(*budget),
        explicit: false,
    }))
}

/// `max_tokens` with room for the thinking budget: Claude needs it above the
/// budget, so a smaller one gets the budget added (the answer keeps the
/// room the client asked for).
pub(crate) fn max_tokens_with(thinking: &Thinking, max_tokens: u32) -> u32 {
    match thinking.budget {
        Some(budget) if u64::from(max_tokens) <= budget => {
            u32::try_from(budget.max(MIN_BUDGET).saturating_add(u64::from(max_tokens))).unwrap_or(u32::MAX)
        }
        _ => max_tokens,
    }
}

/// The thinking blocks an assistant message carries back
/// (`thinking_blocks`: `thinking` blocks with their `signature`, and
/// `redacted_thinking` blocks), which Claude needs again on a turn that
/// continues a tool call. Blocks without a signature (another model's
/// reasoning) are left out: Claude refuses them.
pub(crate) fn blocks_of(message: &ChatMessage) -> Vec<&Value> {
    let Some(Value::Array(blocks)) = message.extra.get("thinking_blocks") else {
        return Vec::new();
    };
    blocks
        .iter()
        .filter(|b| match b.get("type").and_then(Value::as_str) {
            Some("thinking") => b
                .get("signature")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty()),
            Some("redacted_thinking") => b.get("data").and_then(Value::as_str).is_some(),
            _ => false,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn request(extra: Value) -> ChatCompletionRequest {
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn efforts_become_budgets_and_thinking_objects_pass() {
        let high = requested(&request(json!({"reasoning_effort": "high"})))
            .unwrap()
            .unwrap();
        assert_eq!(high.config, json!({"type": "enabled", "budget_tokens": 4096}));
        assert!(!high.explicit);
        assert_eq!(max_tokens_with(&high, 100), 4196);
        assert_eq!(max_tokens_with(&high, 10_000), 10_000);
        assert_eq!(requested(&request(json!({"reasoning_effort": "none"}))).unwrap(), None);
        let own = requested(&request(
            json!({"thinking": {"type": "enabled", "budget_tokens": 2000}, "reasoning_effort": "low"}),
        ))
        .unwrap()
        .unwrap();
        assert_eq!((own.budget, own.explicit), (Some(2000), true));
        assert_eq!(
            requested(&request(json!({"thinking": {"type": "disabled"}}))).unwrap(),
            None
        );
        for bad in [
            json!({"reasoning_effort": "extreme"}),
            json!({"reasoning_effort": 3}),
            json!({"thinking": "on"}),
        ] {
            assert!(matches!(
                requested(&request(bad)),
                Err(ProviderError::InvalidRequest { .. })
            ));
        }
    }

    #[test]
    fn only_signed_or_redacted_blocks_go_back() {
        let message: ChatMessage = serde_json::from_value(json!({
            "role": "assistant", "content": "x",
            "thinking_blocks": [
                {"type": "thinking", "thinking": "a", "signature": "sig"},
                {"type": "thinking", "thinking": "b", "signature": ""},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "other"}
            ]
        }))
        .unwrap();
        let kept: Vec<&str> = blocks_of(&message)
            .iter()
            .map(|b| b["type"].as_str().unwrap())
            .collect();
        assert_eq!(kept, ["thinking", "redacted_thinking"]);
    }
}
