//! Claude's extended thinking for chat-format clients: `reasoning_effort`
//! (or Anthropic's own `thinking` object) asked of Anthropic and of Claude
//! on Bedrock, and thinking blocks handed back on later turns as the
//! assistant message's `thinking_blocks`.

use serde_json::{Value, json};
use switchyard_api::{ChatCompletionRequest, ChatCompletionResponse, ChatMessage, Role};

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

/// The budget of a `thinking` object that enables thinking without one.
const DEFAULT_BUDGET: u64 = 2048;

/// Whether a Claude model can think: not the Claude 3 models before 3.7,
/// Claude 2 or Instant (Bedrock ids and inference profiles included).
pub(crate) fn can_think(model: &str) -> bool {
    let model = model.to_ascii_lowercase();
    let old = model.contains("claude-instant")
        || model.contains("claude-2")
        || (model.contains("claude-3-") && !model.contains("claude-3-7"));
    !old
}

/// Whether the conversation ends with an assistant message to continue (a
/// prefill) that carries no thinking of Claude's: with thinking on, Claude
/// refuses a final assistant message that does not open with its blocks.
fn prefill_without_thinking(req: &ChatCompletionRequest) -> bool {
    req.messages
        .last()
        .is_some_and(|m| m.role == Role::Assistant && !m.content_text().trim().is_empty() && blocks_of(m).is_empty())
}

/// Whether a Claude model takes a final assistant message to continue (a
/// prefill): Claude models of version 4.6 and later refuse one ("the
/// conversation must end with a user message").
pub(crate) fn takes_prefill(model: &str) -> bool {
    match claude_name(model) {
        Some(ClaudeName { version: Some(v), .. }) => v < (4, 6),
        Some(ClaudeName { family, version: None }) => !later_family(&family),
        None => true,
    }
}

/// Whether the conversation ends with tool results whose assistant turn
/// carries no thinking of Claude's to give back: Claude refuses to think
/// on such a turn (the turn was made without thinking, or by another model,
/// or the client dropped the blocks).
///
/// The turn is the assistant messages since the last user message: in a
/// tool loop Claude thinks at its start only, so only the first needs the
/// blocks.
fn tool_turn_without_thinking(req: &ChatCompletionRequest) -> bool {
    // The conversation as Claude sees it: system messages go to `system`,
    // and user text right after tool results joins their user message.
    let seen: Vec<&ChatMessage> = req
        .messages
        .iter()
        .filter(|m| !matches!(m.role, Role::System | Role::Developer))
        .collect();
    let mut k = seen.len();
    while k > 0 && seen[k - 1].role == Role::User {
        k -= 1;
    }
    if k == 0 || seen[k - 1].role != Role::Tool {
        return false;
    }
    // Whether the turn's first assistant message carries blocks: assistant
    // messages in a row are one message as Claude sees it.
    let mut first: Option<bool> = None;
    let mut after_assistant = false;
    while k > 0 {
        let m = seen[k - 1];
        match m.role {
            Role::Assistant => {
                let carries = !blocks_of(m).is_empty();
                first = Some(carries || (after_assistant && first == Some(true)));
                after_assistant = true;
                k -= 1;
                continue;
            }
            Role::Tool => {}
            Role::User if k >= 2 && matches!(seen[k - 2].role, Role::Tool | Role::User) => {}
            _ => break,
        }
        after_assistant = false;
        k -= 1;
    }
    first == Some(false)
}

/// The thinking a chat request asks of Claude.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Thinking {
    /// Claude's `thinking` object (`{"type": "enabled", "budget_tokens": N}`,
    /// `{"type": "adaptive", …}` for the models that take only that, or
    /// whatever the client sent as `thinking`).
    pub config: Value,
    /// The budget, when thinking is enabled with one.
    pub budget: Option<u64>,
    /// Whether the client named it (`thinking`) rather than the gateway
    /// deriving it from `reasoning_effort`.
    pub explicit: bool,
    /// For adaptive thinking, the effort asked for (`output_config.effort`).
    pub effort: Option<&'static str>,
}

/// Whether a Claude model thinks only adaptively and takes no sampling
/// parameters: Opus 4.7 and the models after it refuse `thinking.type:
/// enabled` ("use thinking.type.adaptive and output_config.effort") and a
/// `temperature`, `top_p` or `top_k` (Bedrock ids and inference profiles
/// included).
pub(crate) fn adaptive_only(model: &str) -> bool {
    match claude_name(model) {
        Some(ClaudeName { version: Some(v), .. }) => v >= (4, 7),
        Some(ClaudeName { family, version: None }) => later_family(&family),
        None => false,
    }
}

/// A Claude model's family and version as a new-style name gives them
/// (`claude-opus-4-7` is `opus`, 4.7; Bedrock ids and inference profiles
/// included); `None` for older names (`claude-3-7-sonnet`, `claude-2`),
/// Claude Instant and other models.
struct ClaudeName {
    family: String,
    /// Major and minor; `None` for a name without one (`claude-mythos-preview`,
    /// `claude-prod`).
    version: Option<(u32, u32)>,
}

fn claude_name(model: &str) -> Option<ClaudeName> {
    let model = model.to_ascii_lowercase();
    let at = model.find("claude-")?;
    let mut parts = model[at + "claude-".len()..].split(['-', '.', ':', '@']);
    // New-style names put the family first (`claude-opus-4-7`); older ones
    // the version (`claude-3-7-sonnet`, `claude-2`).
    let family = parts
        .next()
        .filter(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_alphabetic()) && *f != "instant")?
        .to_owned();
    let version = parts.next().and_then(|p| p.parse::<u32>().ok()).map(|major| {
        // A minor version is one or two digits (`4-7`); a date (`4-20250514`) is none.
        let minor = parts
            .next()
            .filter(|p| (1..=2).contains(&p.len()))
            .and_then(|p| p.parse::<u32>().ok())
            .unwrap_or(0);
        (major, minor)
    });
    Some(ClaudeName { family, version })
}

/// The later families, known without a version (`claude-mythos-preview`);
/// any other name without one (`claude-prod`, an operator's alias) is not.
fn later_family(family: &str) -> bool {
    matches!(family, "mythos" | "fable")
}

/// Whether a Claude model thinks unless told not to: Claude 5 and later
/// (Opus 5, Sonnet 5, Haiku 5.5, Fable, Mythos) think adaptively by default,
/// where earlier models think only when asked.
pub(crate) fn thinks_by_default(model: &str) -> bool {
    match claude_name(model) {
        Some(ClaudeName { family, version }) => later_family(&family) || version.is_some_and(|v| v.0 >= 5),
        None => false,
    }
}

/// Whether a Claude model always thinks: Opus and Sonnet from 5.5, Fable
/// and Mythos refuse `thinking: {"type": "disabled"}` and a forced tool
/// (`tool_choice` `any` or a named tool: "not supported for this model").
/// Opus 5, Sonnet 5 and Haiku 5.5 may still be told not to think.
pub(crate) fn always_thinks(model: &str) -> bool {
    match claude_name(model) {
        Some(ClaudeName { family, version }) => {
            later_family(&family)
                || version.is_some_and(|v| v.0 >= 6 || (v >= (5, 5) && matches!(family.as_str(), "opus" | "sonnet")))
        }
        None => false,
    }
}

/// Whether the request turns thinking off (`thinking: {"type": "disabled"}`,
/// `reasoning_effort: "none"`).
fn turned_off(req: &ChatCompletionRequest) -> bool {
    req.extra
        .get("thinking")
        .and_then(|t| t.get("type"))
        .and_then(Value::as_str)
        == Some("disabled")
        || req.extra.get("reasoning_effort").and_then(Value::as_str) == Some("none")
}

/// The thinking of a model that thinks by default, asked nothing: nothing is
/// sent, and the budget of the `high` effort (their default, or above it)
/// makes room for it in `max_tokens`.
fn default_thinking() -> Thinking {
    Thinking {
        config: json!({"type": "adaptive"}),
        budget: BUDGETS.iter().find(|(name, _)| *name == "high").map(|(_, b)| *b),
        explicit: false,
        effort: None,
    }
}

/// What a Claude request says of thinking, once its tool choice is known.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Decided {
    /// The thinking Claude does: its earlier blocks go back, `max_tokens`
    /// makes room for it, and sampling settings are left out.
    pub thinking: Option<Thinking>,
    /// The `thinking` object sent; `None` leaves it to the model's default.
    pub field: Option<Value>,
    /// `output_config.effort`, when one is sent.
    pub effort: Option<&'static str>,
}

/// Decides thinking for `req` from what it asked (`asked`, from
/// [`requested`]) and whether a tool is forced (`forced`), which a model
/// cannot do while it thinks. Models before Claude 5 think only as asked,
/// and not while a tool is forced. Claude 5 models think unless told not to:
/// those that may be told (Opus 5, Sonnet 5, Haiku 5.5) are sent
/// `thinking: {"type": "disabled"}` when the request turns it off or forces
/// a tool; those that always think (see [`always_thinks`]; a forced tool is
/// refused before this) think as little as they can (`effort: low`) when
/// the request turns it off.
pub(crate) fn decide(req: &ChatCompletionRequest, asked: Option<Thinking>, forced: bool) -> Decided {
    let sent = |thinking: Option<Thinking>| Decided {
        field: thinking.as_ref().map(|t| t.config.clone()),
        effort: thinking.as_ref().and_then(|t| t.effort),
        thinking,
    };
    if !thinks_by_default(&req.model) {
        return sent(asked.filter(|_| !forced));
    }
    if always_thinks(&req.model) {
        if turned_off(req) {
            return Decided {
                thinking: Some(default_thinking()),
                field: None,
                effort: Some("low"),
            };
        }
    } else if turned_off(req) || forced {
        return Decided {
            thinking: None,
            field: Some(json!({"type": "disabled"})),
            effort: None,
        };
    }
    match asked {
        Some(asked) => sent(Some(asked)),
        None => Decided {
            thinking: Some(default_thinking()),
            field: None,
            effort: None,
        },
    }
}

/// Refuses a forced tool (`tool_choice` `required`, or naming a function)
/// for a Claude model that always thinks: it would answer 400 ("type tool
/// and any are not supported for this model"); another deployment may take
/// the request, and a deployment set to `drop_params` sends it as `auto`
/// (see [`without_forced_choice`]).
pub(crate) fn check_tool_choice(req: &ChatCompletionRequest) -> Result<()> {
    if always_thinks(&req.model) && forces_a_tool(req) {
        return Err(invalid(
            format!(
                "`tool_choice` that forces a tool is not supported by `{}`, which always thinks: send `auto` \
                 (ask for the tool in the prompt), or set `drop_params` on the deployment to send it as `auto`",
                req.model
            ),
            "tool_choice",
        ));
    }
    Ok(())
}

/// Whether the request forces a tool (`tool_choice` `required`, or naming
/// a function).
pub(crate) fn forces_a_tool(req: &ChatCompletionRequest) -> bool {
    match req.extra.get("tool_choice") {
        Some(Value::String(s)) => s == "required",
        Some(Value::Object(_)) => true,
        _ => false,
    }
}

/// For a deployment that drops what its model cannot do (`drop_params`): a
/// forced tool choice to a Claude model that always thinks becomes `auto`
/// (the tools stay as they are: Claude's thinking is bound to the
/// conversation they are part of); `None` when nothing changes.
pub(crate) fn without_forced_choice(req: &ChatCompletionRequest) -> Option<ChatCompletionRequest> {
    if !always_thinks(&req.model) || !forces_a_tool(req) {
        return None;
    }
    let mut copy = req.clone();
    copy.extra.insert("tool_choice".into(), Value::String("auto".into()));
    tracing::debug!("a forced tool choice to a model that always thinks is sent as auto (drop_params)");
    Some(copy)
}

/// The `reasoning_effort` that Anthropic's `thinking` and
/// `output_config.effort` ask of a model that takes OpenAI's: the effort
/// named (`max` is `high`), else the one whose budget an enabled
/// thinking's `budget_tokens` reaches (under 2,048 `low`, under 4,096
/// `medium`, else `high`); `None` when thinking is off or left to the
/// model (adaptive without an effort).
pub fn effort_for_thinking(thinking: Option<&Value>, effort: Option<&str>) -> Option<&'static str> {
    let kind = thinking.and_then(|t| t.get("type")).and_then(Value::as_str);
    if kind == Some("disabled") {
        return None;
    }
    if let Some(effort) = effort {
        return Some(match effort {
            "minimal" => "minimal",
            "low" => "low",
            "medium" => "medium",
            _ => "high",
        });
    }
    if kind != Some("enabled") {
        return None;
    }
    let budget = thinking
        .and_then(|t| t.get("budget_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_BUDGET);
    let at = |name: &str| BUDGETS.iter().find(|(n, _)| *n == name).map_or(0, |(_, b)| *b);
    Some(if budget < at("medium") {
        "low"
    } else if budget < at("high") {
        "medium"
    } else {
        "high"
    })
}

/// The adaptive-thinking effort for a `reasoning_effort`.
fn adaptive_effort(effort: &str) -> &'static str {
    match effort {
        "minimal" | "low" => "low",
        "medium" => "medium",
        // `xhigh` too: not every such model takes Anthropic's `xhigh`.
        _ => "high",
    }
}

fn invalid(message: impl Into<String>, param: &str) -> ProviderError {
    ProviderError::InvalidRequest {
        message: message.into(),
        param: Some(param.to_owned()),
    }
}

/// Whether Claude would take thinking for `req`: not for a model that
/// cannot think, nor on a turn that answers tool calls made without it.
fn possible(req: &ChatCompletionRequest) -> bool {
    // A model that thinks by default takes a turn without blocks (it thinks
    // then anyway).
    if can_think(&req.model)
        && (thinks_by_default(&req.model) || !(tool_turn_without_thinking(req) || prefill_without_thinking(req)))
    {
        return true;
    }
    tracing::debug!(model = %req.model, "thinking asked where Claude would refuse it: the request goes without");
    false
}

/// The thinking `req` asks for: its `thinking` object, or a budget for its
/// `reasoning_effort` (`none`: no thinking). Either is ignored for a model
/// that cannot think, on a turn that answers tool calls made without
/// thinking, and on an assistant message to continue that carries none
/// (Claude would refuse it).
pub(crate) fn requested(req: &ChatCompletionRequest) -> Result<Option<Thinking>> {
    match req.extra.get("thinking") {
        None | Some(Value::Null) => {}
        Some(Value::Object(object)) => {
            let kind = object.get("type").and_then(Value::as_str);
            if kind == Some("disabled") {
                return Ok(None);
            }
            let mut config = object.clone();
            let mut budget = config.get("budget_tokens").and_then(Value::as_u64);
            if kind == Some("enabled") && adaptive_only(&req.model) {
                // The models that think only adaptively refuse `enabled`:
                // the same request, as they take it (its budget still
                // makes room in `max_tokens`), its thinking shown as
                // `enabled` shows it (their default shows none).
                config.insert("type".into(), json!("adaptive"));
                config.remove("budget_tokens");
                config.entry("display").or_insert_with(|| json!("summarized"));
                budget = Some(budget.unwrap_or(DEFAULT_BUDGET));
            } else if kind == Some("enabled") && budget.is_none() {
                // `{"type": "enabled"}` alone (as some clients write it) gets
                // a budget, which Claude requires.
                config.insert("budget_tokens".into(), json!(DEFAULT_BUDGET));
                budget = Some(DEFAULT_BUDGET);
            }
            let thinking = Thinking {
                config: Value::Object(config),
                budget,
                explicit: true,
                effort: None,
            };
            return Ok(possible(req).then_some(thinking));
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
    if !possible(req) {
        return Ok(None);
    }
    if adaptive_only(&req.model) {
        // Summarised thinking comes back (their default shows none); the
        // effort's budget is not sent, but makes room in `max_tokens`.
        return Ok(Some(Thinking {
            config: json!({"type": "adaptive", "display": "summarized"}),
            budget: Some(*budget),
            explicit: false,
            effort: Some(adaptive_effort(effort)),
        }));
    }
    Ok(Some(Thinking {
        config: json!({"type": "enabled", "budget_tokens": budget}),
        budget: Some(*budget),
        explicit: false,
        effort: None,
    }))
}

/// The most output a chat request may be given by a Claude deployment
/// that thinks: `max_tokens` with the budget added where it is not above it
/// (see [`max_tokens_with`]). For reservations made before the deployment
/// is chosen: a request that asks for reasoning is counted as if it went
/// to Claude.
pub fn output_ceiling(req: &ChatCompletionRequest, max_tokens: u64) -> u64 {
    output_ceiling_for(req, max_tokens, Thinkers::of(&req.model))
}

/// Which of the Claude models a request may reach think without being
/// asked to (see [`output_ceiling_for`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Thinkers {
    /// One thinks unless the request turns thinking off (Claude 5 and later).
    pub by_default: bool,
    /// One thinks even when the request turns thinking off.
    pub always: bool,
}

impl Thinkers {
    /// What upstream model `model` does.
    pub fn of(model: &str) -> Thinkers {
        Thinkers {
            by_default: thinks_by_default(model),
            always: always_thinks(model),
        }
    }

    /// Either's models.
    pub fn or(self, other: Thinkers) -> Thinkers {
        Thinkers {
            by_default: self.by_default || other.by_default,
            always: self.always || other.always,
        }
    }
}

/// [`output_ceiling`] for a request that may reach the Claude models
/// `thinkers` describes, whatever name it asked for (a group, an alias):
/// the reservation is made before the upstream model is known.
pub fn output_ceiling_for(req: &ChatCompletionRequest, max_tokens: u64, thinkers: Thinkers) -> u64 {
    let thinking = match requested(req) {
        Ok(Some(thinking)) => Some(thinking),
        // Models that always think do so even turned off (at the least effort).
        Ok(None) if thinkers.by_default && (thinkers.always || !turned_off(req)) => Some(default_thinking()),
        _ => None,
    };
    match thinking {
        Some(Thinking {
            budget: Some(budget), ..
        }) if max_tokens <= budget => budget.max(MIN_BUDGET).saturating_add(max_tokens),
        _ => max_tokens,
    }
}

/// `max_tokens` with room for the thinking budget: Claude needs it above the
/// budget (it counts thinking as output, as OpenAI's reasoning models count
/// reasoning), so one at or under it gets the budget added — no further
/// than the most `model` writes, which Claude refuses to pass, while that
/// still leaves room above the budget.
pub(crate) fn max_tokens_with(thinking: &Thinking, max_tokens: u32, model: &str) -> u32 {
    match thinking.budget {
        Some(budget) if u64::from(max_tokens) <= budget => {
            let raised =
                u32::try_from(budget.max(MIN_BUDGET).saturating_add(u64::from(max_tokens))).unwrap_or(u32::MAX);
            match claude_output_cap(model) {
                Some(cap) if raised > cap && u64::from(cap) > budget.max(MIN_BUDGET) => cap,
                _ => raised,
            }
        }
        _ => max_tokens,
    }
}

/// `max_tokens` no higher than the most `model` writes, for the Claude
/// models whose limit is known: Anthropic and Bedrock refuse a larger one
/// with a 400 (a request sized for another model of its group, 32,000 to
/// Claude 3.5 Haiku, would fail where it can be served).
pub(crate) fn within_claude_output(max_tokens: u32, model: &str) -> u32 {
    claude_output_cap(model).map_or(max_tokens, |cap| max_tokens.min(cap))
}

/// The most output tokens a Claude model writes (Anthropic's documented
/// limits), by its name or Bedrock id; `None` for others.
fn claude_output_cap(model: &str) -> Option<u32> {
    const CAPS: &[(&str, u32)] = &[
        ("claude-3-haiku", 4_096),
        ("claude-3-sonnet", 4_096),
        ("claude-3-opus", 4_096),
        ("claude-3-5-haiku", 8_192),
        ("claude-3-7-sonnet", 64_000),
        ("claude-sonnet-4", 64_000),
        ("claude-sonnet-4-5", 64_000),
        ("claude-haiku-4-5", 64_000),
        ("claude-opus-4", 32_000),
        ("claude-opus-4-1", 32_000),
        ("claude-opus-4-5", 64_000),
    ];
    let name = &model[model.find("claude-")?..];
    // The name itself, or with a version after it (a date, `-v…`, `@…`,
    // `-latest`): `claude-opus-4-6` is another model, with no cap here.
    let versioned = |rest: &str| {
        rest.is_empty()
            || rest.starts_with('@')
            || rest.starts_with("-v")
            || rest.starts_with("-latest")
            || rest
                .strip_prefix('-')
                .is_some_and(|r| r.len() >= 8 && r.bytes().take(8).all(|b| b.is_ascii_digit()))
    };
    CAPS.iter()
        .filter(|(prefix, _)| name.strip_prefix(prefix).is_some_and(versioned))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, cap)| *cap)
}

/// Puts Claude's thinking on a chat answer as OpenAI-compatible servers
/// return reasoning (`reasoning_content`), with the blocks themselves,
/// signed, as `thinking_blocks` for the client to send back on its next turn.
pub(crate) fn attach(response: &mut ChatCompletionResponse, reasoning: String, blocks: Vec<Value>) {
    let Some(choice) = response.choices.first_mut() else {
        return;
    };
    if !reasoning.is_empty() {
        choice
            .message
            .extra
            .insert("reasoning_content".into(), Value::String(reasoning));
    }
    if !blocks.is_empty() {
        choice
            .message
            .extra
            .insert("thinking_blocks".into(), Value::Array(blocks));
    }
}

/// The thinking blocks an assistant message carries back
/// (`thinking_blocks`: `thinking` blocks with their `signature`, and
/// `redacted_thinking` blocks), which Claude needs again on a turn that
/// continues a tool call. Blocks without a signature (another model's
/// reasoning) are left out: Claude refuses them.
/// Only the fields Claude takes are kept (a streamed block's `index`, which
/// stream accumulators need, is not one).
pub(crate) fn blocks_of(message: &ChatMessage) -> Vec<Value> {
    let Some(Value::Array(blocks)) = message.extra.get("thinking_blocks") else {
        return Vec::new();
    };
    let text = |b: &Value, key: &str| b.get(key).and_then(Value::as_str).map(str::to_owned);
    blocks
        .iter()
        .filter_map(|b| match b.get("type").and_then(Value::as_str) {
            Some("thinking") => {
                let signature = text(b, "signature").filter(|s| !s.is_empty())?;
                Some(json!({"type": "thinking", "thinking": text(b, "thinking").unwrap_or_default(), "signature": signature}))
            }
            Some("redacted_thinking") => Some(json!({"type": "redacted_thinking", "data": text(b, "data")?})),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn anthropic_thinking_is_an_openai_effort() {
        let enabled = |budget: u64| json!({"type": "enabled", "budget_tokens": budget});
        assert_eq!(effort_for_thinking(Some(&enabled(1024)), None), Some("low"));
        assert_eq!(effort_for_thinking(Some(&enabled(3000)), None), Some("medium"));
        assert_eq!(effort_for_thinking(Some(&enabled(32_000)), None), Some("high"));
        assert_eq!(
            effort_for_thinking(Some(&json!({"type": "enabled"})), None),
            Some("medium")
        );
        let adaptive = json!({"type": "adaptive"});
        assert_eq!(effort_for_thinking(Some(&adaptive), None), None);
        assert_eq!(effort_for_thinking(Some(&adaptive), Some("max")), Some("high"));
        assert_eq!(effort_for_thinking(None, Some("low")), Some("low"));
        let disabled = json!({"type": "disabled"});
        assert_eq!(effort_for_thinking(Some(&disabled), Some("high")), None);
        assert_eq!(effort_for_thinking(None, None), None);
    }

    fn request(extra: Value) -> ChatCompletionRequest {
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn raised_max_tokens_stay_within_what_the_model_writes() {
        let own = requested(&request(
            json!({"thinking": {"type": "enabled", "budget_tokens": 20_000}}),
        ))
        .unwrap()
        .unwrap();
        // 40,000 is past Opus 4's 32,000: capped there, still above the budget.
        assert_eq!(max_tokens_with(&own, 20_000, "claude-opus-4-20250514"), 32_000);
        assert_eq!(
            max_tokens_with(&own, 20_000, "us.anthropic.claude-opus-4-1-20250805-v1:0"),
            32_000
        );
        assert_eq!(max_tokens_with(&own, 20_000, "claude-opus-4-5"), 40_000);
        // Sonnet 4.5 writes up to 64,000, by its name or its Bedrock id.
        let big = requested(&request(
            json!({"thinking": {"type": "enabled", "budget_tokens": 40_000}}),
        ))
        .unwrap()
        .unwrap();
        assert_eq!(max_tokens_with(&big, 30_000, "claude-sonnet-4-5-20250929"), 64_000);
        assert_eq!(
            max_tokens_with(&big, 30_000, "anthropic.claude-sonnet-4-5-20250929-v1:0"),
            64_000
        );
        assert_eq!(max_tokens_with(&own, 20_000, "some-other-model"), 40_000);
        // A later model the table does not know is left alone.
        assert_eq!(max_tokens_with(&own, 20_000, "claude-opus-4-6"), 40_000);
        // A budget the cap cannot hold is left for the upstream to refuse.
        let huge = requested(&request(
            json!({"thinking": {"type": "enabled", "budget_tokens": 40_000}}),
        ))
        .unwrap()
        .unwrap();
        assert_eq!(max_tokens_with(&huge, 1_000, "claude-opus-4"), 41_000);
    }

    /// Opus 4.7 and later think only adaptively, with an effort.
    #[test]
    fn later_claude_models_think_adaptively() {
        for model in [
            "claude-opus-4-7",
            "claude-opus-4-8-20260601",
            "us.anthropic.claude-opus-4-7-v1:0",
            "claude-sonnet-5",
            "claude-opus-4.7",
            "claude-fable-5",
            "global.anthropic.claude-fable-5",
            "claude-mythos-preview",
            "claude-opus-4-7@20260101",
        ] {
            assert!(adaptive_only(model), "{model}");
        }
        for model in [
            "claude-opus-4-6",
            "claude-sonnet-4-5-20250929",
            "claude-sonnet-4-20250514",
            "claude-3-7-sonnet-20250219",
            "anthropic.claude-opus-4-1-20250805-v1:0",
            "claude-instant-1",
            "claude-2",
            "claude-haiku-4-5",
            "claude-prod",
            "claude-mock",
            "my-claude-proxy",
            "claude-3-5-sonnet-v2@20241022",
            "gpt-5",
        ] {
            assert!(!adaptive_only(model), "{model}");
        }
        let opus = |extra: Value| {
            let mut req = request(extra);
            req.model = "claude-opus-4-7".into();
            requested(&req).unwrap().unwrap()
        };
        let effort = opus(json!({"reasoning_effort": "xhigh"}));
        assert_eq!(effort.config, json!({"type": "adaptive", "display": "summarized"}));
        assert_eq!(effort.effort, Some("high"));
        // The budget is not sent, but makes room for the thinking.
        assert_eq!(max_tokens_with(&effort, 4096, "claude-opus-4-7"), 8192 + 4096);
        assert_eq!(opus(json!({"reasoning_effort": "minimal"})).effort, Some("low"));
        let own = opus(json!({"thinking": {"type": "enabled", "budget_tokens": 4000}}));
        assert_eq!(own.config, json!({"type": "adaptive", "display": "summarized"}));
        assert_eq!((own.explicit, own.budget), (true, Some(4000)));
    }

    /// Which Claude models think by default, and which always do.
    #[test]
    fn claude_5_models_think_by_default_and_some_always() {
        for (model, by_default, always) in [
            ("claude-opus-4-7", false, false),
            ("claude-sonnet-4-5-20250929", false, false),
            ("claude-3-7-sonnet-20250219", false, false),
            ("claude-opus-5", true, false),
            ("us.anthropic.claude-opus-5-v1:0", true, false),
            ("claude-sonnet-5", true, false),
            ("claude-haiku-5-5", true, false),
            ("claude-opus-5-5", true, true),
            ("global.anthropic.claude-opus-5-5-v1:0", true, true),
            ("claude-sonnet-5-5", true, true),
            ("claude-fable-5-1", true, true),
            ("claude-mythos-preview", true, true),
            ("claude-opus-6", true, true),
            ("claude-prod", false, false),
            ("gpt-5", false, false),
        ] {
            assert_eq!(
                (thinks_by_default(model), always_thinks(model)),
                (by_default, always),
                "{model}"
            );
        }
        // What a request reserves counts the thinking the model will do:
        // by default, and turned off on a model that always thinks.
        let ceiling = |model: &str, extra: Value| {
            let mut req = request(extra);
            req.model = model.into();
            output_ceiling(&req, 100)
        };
        assert_eq!(ceiling("claude-opus-5", json!({})), 4196);
        assert_eq!(ceiling("claude-opus-5", json!({"reasoning_effort": "none"})), 100);
        assert_eq!(ceiling("claude-opus-5-5", json!({"reasoning_effort": "none"})), 4196);
        assert_eq!(ceiling("claude-opus-4-6", json!({})), 100);
    }

    #[test]
    fn efforts_become_budgets_and_thinking_objects_pass() {
        let high = requested(&request(json!({"reasoning_effort": "high"})))
            .unwrap()
            .unwrap();
        assert_eq!(high.config, json!({"type": "enabled", "budget_tokens": 4096}));
        assert!(!high.explicit);
        assert_eq!(max_tokens_with(&high, 100, "claude-sonnet-4"), 4196);
        assert_eq!(max_tokens_with(&high, 10_000, "claude-sonnet-4"), 10_000);
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
    fn old_models_and_unthought_tool_turns_get_no_thinking_from_an_effort() {
        for (model, thinks) in [
            ("claude-sonnet-4-5", true),
            ("claude-3-7-sonnet-20250219", true),
            ("us.anthropic.claude-opus-4-1-20250805-v1:0", true),
            ("claude-3-5-sonnet-20241022", false),
            ("anthropic.claude-3-haiku-20240307-v1:0", false),
            ("anthropic.claude-instant-v1", false),
        ] {
            let mut req = request(json!({"reasoning_effort": "low"}));
            req.model = model.into();
            assert_eq!(requested(&req).unwrap().is_some(), thinks, "{model}");
        }
        let turn = |blocks: Value| {
            request(json!({"reasoning_effort": "low", "messages": [
                {"role": "user", "content": "go"},
                {"role": "assistant", "content": null, "thinking_blocks": blocks,
                 "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c", "content": "done"}
            ]}))
        };
        assert!(requested(&turn(json!([]))).unwrap().is_none());
        assert!(
            requested(&turn(json!([{"type": "thinking", "thinking": "t", "signature": "s"}])))
                .unwrap()
                .is_some()
        );
        // A later step of a loop that thought at its start carries no
        // blocks of its own: the turn had thinking.
        let mut looped = turn(json!([{"type": "thinking", "thinking": "t", "signature": "s"}]));
        looped.messages.extend([
            serde_json::from_value(json!({"role": "assistant", "content": null,
                "tool_calls": [{"id": "d", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}))
            .unwrap(),
            serde_json::from_value(json!({"role": "tool", "tool_call_id": "d", "content": "done"})).unwrap(),
        ]);
        assert!(requested(&looped).unwrap().is_some());
        // User text after the results joins their user message for Claude,
        // and system messages go to `system`: still the unthought turn.
        let mut after = turn(json!([]));
        after.messages.extend([
            serde_json::from_value(json!({"role": "system", "content": "reminder"})).unwrap(),
            serde_json::from_value(json!({"role": "user", "content": "go on"})).unwrap(),
        ]);
        assert!(requested(&after).unwrap().is_none());
        // The client's own `thinking` gets the same care; one without a
        // budget gets the default.
        let own = requested(&request(json!({"thinking": {"type": "enabled"}})))
            .unwrap()
            .unwrap();
        assert_eq!(own.config, json!({"type": "enabled", "budget_tokens": 2048}));
        let mut old = request(json!({"thinking": {"type": "enabled", "budget_tokens": 1024}}));
        old.model = "claude-3-5-haiku-20241022".into();
        assert!(requested(&old).unwrap().is_none());
        assert_eq!(output_ceiling(&request(json!({"reasoning_effort": "high"})), 100), 4196);
        assert_eq!(output_ceiling(&request(json!({})), 100), 100);
    }

    #[test]
    fn only_signed_or_redacted_blocks_go_back() {
        let message: ChatMessage = serde_json::from_value(json!({
            "role": "assistant", "content": "x",
            "thinking_blocks": [
                {"type": "thinking", "thinking": "a", "signature": "sig"},
                {"type": "thinking", "thinking": "b", "signature": ""},
                {"type": "redacted_thinking", "data": "opaque", "index": 2},
                {"type": "other"}
            ]
        }))
        .unwrap();
        assert_eq!(
            blocks_of(&message)[1],
            json!({"type": "redacted_thinking", "data": "opaque"})
        );
        let blocks = blocks_of(&message);
        let kept: Vec<&str> = blocks.iter().map(|b| b["type"].as_str().unwrap()).collect();
        assert_eq!(kept, ["thinking", "redacted_thinking"]);
    }
}
