//! Claude's extended thinking, as Anthropic's Messages API and Bedrock's
//! Converse check and answer it: the mocks refuse what the real APIs
//! refuse, and answer a thinking request with a signed thinking block first.

use serde_json::Value;

/// The reasoning the mocks answer with.
pub(crate) const TEXT: &str = "mock thinking about it";

/// The signature of the mocks' thinking blocks; a block sent back with
/// another one is refused, as Claude refuses a tampered block.
pub(crate) const SIGNATURE: &str = "mock-thinking-signature";

/// What a request says about thinking, in either API's terms.
pub(crate) struct Asked<'a> {
    /// The model asked (a Bedrock model id, or an Anthropic model name).
    pub model: &'a str,
    /// The `thinking` object (`additionalModelRequestFields.thinking` on Bedrock).
    pub thinking: Option<&'a Value>,
    /// `max_tokens` (`inferenceConfig.maxTokens`).
    pub max_tokens: Option<u64>,
    /// `temperature`.
    pub temperature: Option<f64>,
    /// `top_p` (`topP`).
    pub top_p: Option<f64>,
    /// Whether `tool_choice` forces a tool.
    pub forced: bool,
    /// The assistant message a tool result answers (the last message is a
    /// user message with tool results), if any: whether it starts with a
    /// thinking block, and the signatures of the blocks it sends back.
    pub tool_turn: Option<(bool, Vec<&'a str>)>,
}

/// The assistant turn a conversation's trailing tool results answer, in
/// either API's terms (`result`: a block that is a tool result; `thinking`:
/// a block that is thinking; `signature`: a thinking block's signature):
/// whether it starts with thinking, and the signatures it sends back.
pub(crate) fn tool_turn<'a>(
    messages: &'a [Value],
    result: impl Fn(&Value) -> bool,
    thinking: impl Fn(&Value) -> bool,
    signature: impl Fn(&'a Value) -> Option<&'a str>,
) -> Option<(bool, Vec<&'a str>)> {
    let blocks = |m: &'a Value| {
        m.get("content")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
    };
    let results = |m: &'a Value| blocks(m).iter().any(&result);
    let assistant = |m: &Value| m.get("role").and_then(Value::as_str) == Some("assistant");
    // The turn: the assistant messages since the last user turn (a run of
    // user messages) without tool results. Claude thinks at its start only.
    let mut k = messages.len();
    let mut turn: Option<&'a Value> = None;
    let mut continuing = false;
    while k > 0 {
        if assistant(&messages[k - 1]) {
            turn = Some(&messages[k - 1]);
            k -= 1;
            continue;
        }
        let end = k;
        while k > 0 && !assistant(&messages[k - 1]) {
            k -= 1;
        }
        if !messages[k..end].iter().any(results) {
            break;
        }
        continuing |= end == messages.len();
    }
    if !continuing {
        return None;
    }
    let turn = blocks(turn?);
    let signatures = turn.iter().filter_map(signature).collect();
    Some((turn.first().is_some_and(thinking), signatures))
}

/// Whether to think, or why the request is refused.
pub(crate) fn check(asked: &Asked<'_>) -> Result<bool, String> {
    let Some(thinking) = asked.thinking else {
        return Ok(false);
    };
    match thinking.get("type").and_then(Value::as_str) {
        Some("enabled") => {}
        Some("disabled") => return Ok(false),
        _ => return Err("thinking.type: Input should be 'enabled' or 'disabled'".into()),
    }
    let model = asked.model.to_ascii_lowercase();
    if model.contains("claude-2") || (model.contains("claude-3-") && !model.contains("claude-3-7")) {
        return Err(format!(
            "thinking: this model ({}) does not support extended thinking",
            asked.model
        ));
    }
    let budget = thinking.get("budget_tokens").and_then(Value::as_u64).unwrap_or(0);
    if budget < 1024 {
        return Err("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024".into());
    }
    if asked.max_tokens.is_none_or(|max| max <= budget) {
        return Err("`max_tokens` must be greater than `thinking.budget_tokens`".into());
    }
    if asked.temperature.is_some_and(|t| (t - 1.0).abs() > f64::EPSILON) {
        return Err("`temperature` may only be set to 1 when thinking is enabled".into());
    }
    if asked.top_p.is_some_and(|p| p < 0.95) {
        return Err("`top_p` must be greater than or equal to 0.95 or unset when thinking is enabled".into());
    }
    if asked.forced {
        return Err("Thinking may not be enabled when `tool_choice` forces tool use.".into());
    }
    if let Some((starts_with_thinking, signatures)) = &asked.tool_turn {
        if !starts_with_thinking {
            return Err("Expected `thinking` or `redacted_thinking`, but found `tool_use`. When `thinking` is enabled, a final `assistant` message must start with a thinking block".into());
        }
        if signatures.iter().any(|s| *s != SIGNATURE) {
            return Err("Invalid `signature` in `thinking` block".into());
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn asked(thinking: &Value) -> Asked<'_> {
        Asked {
            model: "claude-sonnet-4",
            thinking: Some(thinking),
            max_tokens: Some(4000),
            temperature: None,
            top_p: None,
            forced: false,
            tool_turn: None,
        }
    }

    #[test]
    fn the_rules_of_the_real_apis() {
        let on = json!({"type": "enabled", "budget_tokens": 2048});
        assert_eq!(check(&asked(&on)), Ok(true));
        assert_eq!(check(&asked(&json!({"type": "disabled"}))), Ok(false));
        let small = json!({"type": "enabled", "budget_tokens": 100});
        assert!(check(&asked(&small)).unwrap_err().contains("budget_tokens"));
        type Change = Box<dyn Fn(&mut Asked<'_>)>;
        let cases: [(&str, Change); 5] = [
            ("max_tokens", Box::new(|a| a.max_tokens = Some(2048))),
            ("temperature", Box::new(|a| a.temperature = Some(0.5))),
            ("top_p", Box::new(|a| a.top_p = Some(0.5))),
            ("forces tool use", Box::new(|a| a.forced = true)),
            (
                "must start with a thinking block",
                Box::new(|a| a.tool_turn = Some((false, Vec::new()))),
            ),
        ];
        for (words, change) in cases {
            let mut a = asked(&on);
            change(&mut a);
            assert!(check(&a).unwrap_err().contains(words), "{words}");
        }
        let mut tampered = asked(&on);
        tampered.tool_turn = Some((true, vec!["other"]));
        assert!(check(&tampered).unwrap_err().contains("signature"));
        let mut signed = asked(&on);
        signed.tool_turn = Some((true, vec![SIGNATURE]));
        assert_eq!(check(&signed), Ok(true));
        let mut old = asked(&on);
        old.model = "anthropic.claude-3-5-sonnet-20240620-v1:0";
        assert!(check(&old).unwrap_err().contains("does not support"));
    }
}
