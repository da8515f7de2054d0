//! What a request says about itself for spend attribution: the end user it
//! serves and its tags, read the ways OpenAI and LiteLLM clients send them.
//!
//! - End user: OpenAI's `user` field (left in the body: OpenAI uses it too);
//!   on `/v1/messages`, Anthropic's `metadata.user_id`.
//! - Tags: a top-level `tags` list and LiteLLM's `metadata.tags`, both taken
//!   out of the body, and the `x-switchyard-tags` or `x-litellm-tags`
//!   header (comma-separated).
//!
//! OpenAI's own `metadata` takes string values only, so on OpenAI-format
//! routes the gateway also drops `metadata` members that are not strings
//! (LiteLLM's `generation_name`, trace objects…) before the body goes
//! upstream, and `metadata` itself when nothing is left.

use axum::http::HeaderMap;
use serde_json::Value;
use switchyard_api::Extra;
use switchyard_policy::Labels;

use crate::error::ApiError;

/// The most tags one request's records keep (the first ones).
const MAX_TAGS: usize = 16;
/// The longest tag kept (a longer one is cut).
const MAX_TAG_LEN: usize = 64;
/// The longest end-user id kept (a longer one is cut; Claude Code's JSON
/// `user_id` takes about 190 bytes).
const MAX_USER_LEN: usize = 256;
/// Headers whose value is a comma-separated tag list.
const TAG_HEADERS: [&str; 2] = ["x-switchyard-tags", "x-litellm-tags"];

fn invalid(param: &str, message: String) -> ApiError {
    ApiError::InvalidField {
        param: Some(param.to_owned()),
        message,
    }
}

/// The labels of an OpenAI-format request, taking its tags out of `extra`
/// and leaving `metadata` only as OpenAI accepts it: string members, on a
/// request with `"store": true` (OpenAI refuses `metadata` without it, and
/// LiteLLM clients send theirs for the gateway).
pub(crate) fn take(extra: &mut Extra, headers: &HeaderMap) -> Result<Labels, ApiError> {
    let mut tags = Vec::new();
    if let Some(value) = extra.shift_remove("tags") {
        add_list(&mut tags, value, "tags")?;
    }
    if let Some(Value::Object(metadata)) = extra.get_mut("metadata") {
        match metadata.shift_remove("tags") {
            // OpenAI's metadata holds strings only: there a list of tags is
            // one string, comma-separated as in the tag headers.
            Some(Value::String(list)) => list.split(',').for_each(|tag| push(&mut tags, tag)),
            Some(value) => add_list(&mut tags, value, "metadata.tags")?,
            None => {}
        }
        metadata.retain(|_, v| v.is_string());
        if metadata.is_empty() {
            extra.shift_remove("metadata");
        }
    }
    if extra.get("store") != Some(&Value::Bool(true)) {
        extra.shift_remove("metadata");
    }
    add_headers(&mut tags, headers)?;
    let end_user = match extra.get("user") {
        Some(Value::String(user)) => kept(user, MAX_USER_LEN),
        _ => None,
    };
    Ok(Labels {
        end_user,
        tags,
        tag_spend: false,
        end_user_spend: false,
        hide_end_user: false,
    })
}

/// The labels of a `/v1/messages` request: `metadata.user_id`, the tag
/// headers, and tags in the body (`tags`, `metadata.tags`), taken out of it
/// with every other `metadata` member: Anthropic refuses members it does
/// not define.
pub(crate) fn anthropic(extra: &mut Extra, headers: &HeaderMap) -> Result<Labels, ApiError> {
    let mut tags = Vec::new();
    if let Some(value) = extra.shift_remove("tags") {
        add_list(&mut tags, value, "tags")?;
    }
    let mut emptied = false;
    if let Some(Value::Object(metadata)) = extra.get_mut("metadata") {
        match metadata.shift_remove("tags") {
            Some(Value::String(list)) => list.split(',').for_each(|tag| push(&mut tags, tag)),
            Some(value) => add_list(&mut tags, value, "metadata.tags")?,
            None => {}
        }
        // Anthropic's metadata holds `user_id` alone; LiteLLM clients send
        // trace ids and names there for the gateway.
        metadata.retain(|name, value| name == "user_id" && (value.is_string() || value.is_null()));
        emptied = metadata.is_empty();
    }
    if emptied {
        extra.shift_remove("metadata");
    }
    add_headers(&mut tags, headers)?;
    let end_user = match extra.get("metadata").and_then(|m| m.get("user_id")) {
        Some(Value::String(user)) => kept(user, MAX_USER_LEN),
        _ => None,
    };
    Ok(Labels {
        end_user,
        tags,
        tag_spend: false,
        end_user_spend: false,
        hide_end_user: false,
    })
}

/// A tag or user id as recorded: control characters left out, cut to `max`
/// bytes at a character boundary, trimmed (after the cut too, so that the
/// admin API, which refuses ids with surrounding spaces, can name it); blank
/// is none. A label never fails a request.
fn kept(text: &str, max: usize) -> Option<String> {
    let mut out = String::new();
    let visible: String = text.chars().filter(|c| !c.is_control()).collect();
    for c in visible.trim().chars() {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    let out = out.trim_end();
    (!out.is_empty()).then(|| out.to_owned())
}

fn push(tags: &mut Vec<String>, tag: &str) {
    if let Some(tag) = kept(tag, MAX_TAG_LEN)
        && tags.len() < MAX_TAGS
        && !tags.contains(&tag)
    {
        tags.push(tag);
    }
}

fn add_list(tags: &mut Vec<String>, value: Value, param: &str) -> Result<(), ApiError> {
    // A typed client's unset field.
    if value.is_null() {
        return Ok(());
    }
    let Value::Array(items) = value else {
        return Err(invalid(param, format!("'{param}' must be a list of strings.")));
    };
    for (i, item) in items.iter().enumerate() {
        let here = format!("{param}[{i}]");
        let Value::String(tag) = item else {
            return Err(invalid(&here, format!("'{here}' must be a string.")));
        };
        push(tags, tag);
    }
    Ok(())
}

fn add_headers(tags: &mut Vec<String>, headers: &HeaderMap) -> Result<(), ApiError> {
    for name in TAG_HEADERS {
        for value in headers.get_all(name) {
            // UTF-8 tags (`équipe`) are read as such; bytes that are not
            // text never fail a request.
            let text = String::from_utf8_lossy(value.as_bytes());
            for tag in text.split(',') {
                push(tags, tag);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use axum::http::HeaderValue;
    use serde_json::json;

    fn extra(body: Value) -> Extra {
        match body {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    /// An id cut where a space falls ends without it.
    #[test]
    fn a_cut_label_is_trimmed() {
        let long = format!("{} {}", "a".repeat(255), "b".repeat(44));
        assert_eq!(kept(&long, 256), Some("a".repeat(255)));
        assert_eq!(kept("  x  ", 256).as_deref(), Some("x"));
    }

    /// `/v1/messages`: body tags are read and taken out (Anthropic refuses
    /// members it does not define).
    #[test]
    fn message_tags_are_taken_out_of_the_body() {
        let mut body = extra(json!({"tags": ["a"], "metadata": {"user_id": "u-1", "tags": ["b"]}}));
        let labels = anthropic(&mut body, &HeaderMap::new()).unwrap();
        assert_eq!(labels.tags, ["a", "b"]);
        assert_eq!(labels.end_user.as_deref(), Some("u-1"));
        assert_eq!(Value::Object(body), json!({"metadata": {"user_id": "u-1"}}));
        let mut only = extra(json!({"metadata": {"tags": "x"}}));
        anthropic(&mut only, &HeaderMap::new()).unwrap();
        assert!(only.is_empty(), "{only:?}");
        // LiteLLM's members are the gateway's, not Anthropic's.
        let mut litellm = extra(json!({"metadata": {"user_id": "u", "trace_id": "t", "generation_name": {"a": 1}}}));
        anthropic(&mut litellm, &HeaderMap::new()).unwrap();
        assert_eq!(Value::Object(litellm), json!({"metadata": {"user_id": "u"}}));
        let mut traced = extra(json!({"max_tokens": 5, "metadata": {"trace_id": "t"}}));
        anthropic(&mut traced, &HeaderMap::new()).unwrap();
        assert_eq!(Value::Object(traced), json!({"max_tokens": 5}));
    }

    /// OpenAI's `metadata` holds strings only: its `tags` may be one string.
    #[test]
    fn metadata_tags_may_be_one_comma_separated_string() {
        let mut body = extra(json!({"store": true, "metadata": {"tags": "prod, team-a", "trace": "t"}}));
        let labels = take(&mut body, &HeaderMap::new()).unwrap();
        assert_eq!(labels.tags, ["prod", "team-a"]);
        assert_eq!(body["metadata"], json!({"trace": "t"}));
        let mut odd = extra(json!({"metadata": {"tags": 7}}));
        assert!(take(&mut odd, &HeaderMap::new()).is_err());
    }

    #[test]
    fn tags_come_from_the_body_and_headers_and_metadata_keeps_only_strings() {
        let mut body = extra(json!({
            "user": "user-42",
            "tags": ["a", "b"],
            "metadata": {"tags": ["b", "c"], "generation_name": {"x": 1}, "trace": "t-1"},
        }));
        let mut headers = HeaderMap::new();
        headers.insert("x-litellm-tags", "d, a".parse().unwrap());
        let labels = take(&mut body, &headers).unwrap();
        assert_eq!(labels.end_user.as_deref(), Some("user-42"));
        assert_eq!(labels.tags, ["a", "b", "c", "d"]);
        assert_eq!(Value::Object(body), json!({"user": "user-42"}));
        // Kept, its string members, for a completion OpenAI stores.
        let mut stored = extra(json!({"store": true, "metadata": {"trace": "t-1", "n": 1}}));
        take(&mut stored, &HeaderMap::new()).unwrap();
        assert_eq!(
            Value::Object(stored),
            json!({"store": true, "metadata": {"trace": "t-1"}})
        );

        let mut only_tags = extra(json!({"metadata": {"tags": ["x"]}}));
        take(&mut only_tags, &HeaderMap::new()).unwrap();
        assert!(only_tags.is_empty(), "an emptied metadata is not sent: {only_tags:?}");
    }

    #[test]
    fn bad_tags_are_refused_by_name() {
        for (body, param) in [
            (json!({"tags": "a"}), "tags"),
            (json!({"tags": ["a", 1]}), "tags[1]"),
            (json!({"metadata": {"tags": [{"a": 1}]}}), "metadata.tags[0]"),
        ] {
            let err = take(&mut extra(body.clone()), &HeaderMap::new()).unwrap_err();
            assert_eq!(err.parts().2.as_deref(), Some(param), "{body}");
        }
        // A null list is none; a UTF-8 header is read as text.
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-litellm-tags",
            HeaderValue::from_bytes("équipe, b".as_bytes()).unwrap(),
        );
        let labels = take(&mut extra(json!({"tags": null, "metadata": {"tags": null}})), &headers).unwrap();
        assert_eq!(labels.tags, ["équipe", "b"]);
        // Sizes never fail a request: labels are cut to fit.
        let many: Vec<String> = (0..=MAX_TAGS).map(|i| format!("t{i}")).collect();
        let long = "é".repeat(MAX_TAG_LEN);
        let mut body = extra(json!({"tags": many, "user": format!("a\nb{}", "u".repeat(300))}));
        body["tags"].as_array_mut().unwrap().insert(0, json!(long));
        let labels = take(&mut body, &HeaderMap::new()).unwrap();
        assert_eq!(labels.tags.len(), MAX_TAGS);
        assert_eq!(labels.tags[0], "é".repeat(MAX_TAG_LEN / 2));
        let user = labels.end_user.unwrap();
        assert!(user.starts_with("abuuu") && user.len() == MAX_USER_LEN, "{user}");
    }

    #[test]
    fn anthropic_requests_name_their_user_in_metadata() {
        // Claude Code's user_id is a JSON object in a string.
        let claude_code = format!(
            r#"{{"device_id":"{}","account_uuid":"{}","session_id":"{}"}}"#,
            "d".repeat(64),
            "a".repeat(36),
            "s".repeat(36)
        );
        let labels = anthropic(
            &mut extra(json!({"metadata": {"user_id": claude_code}})),
            &HeaderMap::new(),
        )
        .unwrap();
        assert_eq!(labels.end_user.as_deref(), Some(claude_code.as_str()));
        let mut body = extra(json!({"metadata": {"user_id": "u-1"}}));
        let mut headers = HeaderMap::new();
        headers.insert("x-switchyard-tags", "nightly".parse().unwrap());
        let labels = anthropic(&mut body, &headers).unwrap();
        assert_eq!(
            (labels.end_user.as_deref(), labels.tags.as_slice()),
            (Some("u-1"), &["nightly".to_owned()][..])
        );
    }
}
