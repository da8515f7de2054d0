//! OpenAI's `/v1/images/generations` and `/v1/moderations` for the mock
//! upstream, with OpenAI's own checks of each model's parameters.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use crate::openai_mock::{RequestCtx, invalid_request, json_response, non_stream_fault, unix_now, word_count};

/// A transparent one-pixel PNG, base64.
const PIXEL: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";

/// `POST /v1/images/generations`: `n` images as URLs or base64; GPT image
/// models answer base64 with token usage, as OpenAI's do.
pub(crate) fn images_generations(ctx: &RequestCtx<'_>) -> Response {
    let Some(obj) = ctx.body.as_object() else {
        return invalid_request("We could not parse the JSON body of your request.", None);
    };
    let model = ctx.model.as_str();
    if obj
        .get("prompt")
        .and_then(Value::as_str)
        .is_none_or(|p| p.trim().is_empty())
    {
        return invalid_request("Missing required parameter: 'prompt'.", Some("prompt"));
    }
    let n = obj.get("n").map_or(Some(1), Value::as_u64).unwrap_or(0);
    if !(1..=10).contains(&n) {
        return invalid_request("'n' must be an integer from 1 to 10.", Some("n"));
    }
    let gpt_image = model.starts_with("gpt-image");
    let dalle3 = model.starts_with("dall-e-3");
    if dalle3 && n != 1 {
        return invalid_request("You must provide n=1 for this model.", Some("n"));
    }
    let size = obj.get("size").and_then(Value::as_str);
    let sizes: &[&str] = if dalle3 {
        &["1024x1024", "1792x1024", "1024x1792"]
    } else if gpt_image {
        &["1024x1024", "1536x1024", "1024x1536", "auto"]
    } else {
        &["256x256", "512x512", "1024x1024"]
    };
    if size.is_some_and(|s| !sizes.contains(&s)) {
        return invalid_request(
            &format!("Invalid size. Supported sizes are {}.", sizes.join(", ")),
            Some("size"),
        );
    }
    if gpt_image && obj.contains_key("response_format") {
        return invalid_request("Unknown parameter: 'response_format'.", Some("response_format"));
    }
    if let Some(response) = non_stream_fault(ctx.scenario) {
        return response;
    }
    let base64 = gpt_image || obj.get("response_format").and_then(Value::as_str) == Some("b64_json");
    let prompt = obj.get("prompt").and_then(Value::as_str).unwrap_or_default();
    let data: Vec<Value> = (0..n)
        .map(|i| {
            let id = ctx.state.next_id();
            if base64 {
                json!({"b64_json": PIXEL})
            } else {
                json!({"url": format!("https://images.mock.invalid/{id}-{i}.png"), "revised_prompt": prompt})
            }
        })
        .collect();
    let mut body = json!({"created": unix_now(), "data": data});
    if gpt_image {
        let per_image: u64 = match obj.get("quality").and_then(Value::as_str) {
            Some("low") => 272,
            Some("high") => 4160,
            _ => 1056,
        };
        let input = word_count(prompt).max(1) as u64;
        let output = per_image * n;
        body["usage"] = json!({
            "input_tokens": input,
            "output_tokens": output,
            "total_tokens": input + output,
            "input_tokens_details": {"text_tokens": input, "image_tokens": 0},
        });
    }
    json_response(StatusCode::OK, &body)
}

/// `POST /v1/images/edits` (a multipart upload, read by
/// [`crate::audio::form_as_json`]): `n` images, like a generation; GPT
/// image models accept several images (`image[]`) and report the prompt's
/// words plus 272 tokens per input image, and 1,056 per image made.
pub(crate) fn image_edits(ctx: &RequestCtx<'_>) -> Response {
    let Some(obj) = ctx.body.as_object() else {
        return invalid_request("The body must be a multipart form.", None);
    };
    let files = |field: &str| match obj.get(field) {
        Some(Value::Array(items)) => items.len(),
        Some(Value::Object(_)) => 1,
        _ => 0,
    };
    let images = files("image") + files("image[]");
    if images == 0 {
        return invalid_request("Missing required parameter: 'image'.", Some("image"));
    }
    let gpt_image = ctx.model.starts_with("gpt-image");
    if !gpt_image && images > 1 {
        return invalid_request("dall-e-2 edits exactly one image.", Some("image"));
    }
    let prompt = obj.get("prompt").and_then(Value::as_str).unwrap_or_default();
    if prompt.trim().is_empty() {
        return invalid_request("Missing required parameter: 'prompt'.", Some("prompt"));
    }
    let n = match obj.get("n").and_then(Value::as_str).map(str::parse::<u64>) {
        None => 1,
        Some(Ok(n)) if (1..=10).contains(&n) => n,
        Some(_) => return invalid_request("'n' must be an integer from 1 to 10.", Some("n")),
    };
    if let Some(response) = non_stream_fault(ctx.scenario) {
        return response;
    }
    let base64 = gpt_image || obj.get("response_format").and_then(Value::as_str) == Some("b64_json");
    let data: Vec<Value> = (0..n)
        .map(|i| {
            let id = ctx.state.next_id();
            if base64 {
                json!({"b64_json": PIXEL})
            } else {
                json!({"url": format!("https://images.mock.invalid/edit-{id}-{i}.png")})
            }
        })
        .collect();
    let mut body = json!({"created": unix_now(), "data": data});
    if gpt_image {
        let text = word_count(prompt).max(1) as u64;
        let input = text + 272 * images as u64;
        let output = 1056 * n;
        body["usage"] = json!({
            "input_tokens": input,
            "output_tokens": output,
            "total_tokens": input + output,
            "input_tokens_details": {"text_tokens": text, "image_tokens": input - text},
        });
    }
    json_response(StatusCode::OK, &body)
}

/// `POST /v1/moderations`: one result per input, flagged for violence when
/// the text holds the word `violent`.
pub(crate) fn moderations(ctx: &RequestCtx<'_>) -> Response {
    let Some(input) = ctx.body.get("input") else {
        return invalid_request("Missing required parameter: 'input'.", Some("input"));
    };
    let texts: Vec<String> = match input {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|item| match item {
                Value::String(s) => s.clone(),
                other => other.get("text").and_then(Value::as_str).unwrap_or_default().to_owned(),
            })
            .collect(),
        _ => return invalid_request("'input' must be a string or a non-empty array.", Some("input")),
    };
    if let Some(response) = non_stream_fault(ctx.scenario) {
        return response;
    }
    let results: Vec<Value> = texts
        .iter()
        .map(|text| {
            let flagged = text.to_lowercase().split(|c: char| !c.is_alphanumeric()).any(|w| w == "violent");
            json!({
                "flagged": flagged,
                "categories": {"violence": flagged, "hate": false, "harassment": false, "self-harm": false, "sexual": false},
                "category_scores": {"violence": if flagged { 0.97 } else { 0.002 }, "hate": 0.001, "harassment": 0.001, "self-harm": 0.001, "sexual": 0.001},
            })
        })
        .collect();
    let model = if ctx.model.is_empty() {
        "omni-moderation-latest"
    } else {
        ctx.model.as_str()
    };
    json_response(
        StatusCode::OK,
        &json!({"id": format!("modr-{}", ctx.state.next_id()), "model": model, "results": results}),
    )
}

/// `POST /v1/rerank` (vLLM's and Jina's answer, with token usage) or
/// Cohere's `/v2/rerank` (with `meta.billed_units.search_units`, one per
/// 100 documents): documents scored by the share of the query's words
/// they hold, best first.
pub(crate) fn rerank(ctx: &RequestCtx<'_>, cohere: bool) -> Response {
    let Some(query) = ctx.body.get("query").and_then(Value::as_str).filter(|q| !q.is_empty()) else {
        return invalid_request("Missing required parameter: 'query'.", Some("query"));
    };
    let Some(documents) = ctx
        .body
        .get("documents")
        .and_then(Value::as_array)
        .filter(|d| !d.is_empty())
    else {
        return invalid_request("Missing required parameter: 'documents'.", Some("documents"));
    };
    if let Some(response) = non_stream_fault(ctx.scenario) {
        return response;
    }
    let text = |doc: &Value| {
        doc.as_str()
            .or_else(|| doc.get("text").and_then(Value::as_str))
            .unwrap_or_default()
            .to_lowercase()
    };
    let words: Vec<String> = query.split_whitespace().map(str::to_lowercase).collect();
    let mut scored: Vec<(usize, f64)> = documents
        .iter()
        .enumerate()
        .map(|(i, doc)| {
            let own = text(doc);
            let hits = words
                .iter()
                .filter(|w| own.split_whitespace().any(|o| o == w.as_str()))
                .count();
            (i, hits as f64 / words.len().max(1) as f64)
        })
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let top = ctx
        .body
        .get("top_n")
        .and_then(Value::as_u64)
        .map_or(scored.len(), |n| (n as usize).min(scored.len()));
    let results: Vec<Value> = scored[..top]
        .iter()
        .map(|(i, score)| json!({"index": i, "relevance_score": score}))
        .collect();
    let tokens = word_count(query) + documents.iter().map(|d| word_count(&text(d))).sum::<usize>();
    let body = if cohere {
        json!({"id": format!("rr-{}", ctx.state.next_id()), "results": results,
            // Each 500 words of a document (with the query) is a document of its own.
            "meta": {"billed_units": {"search_units": documents
                .iter()
                .map(|d| (word_count(query) + word_count(&text(d))).div_ceil(500).max(1))
                .sum::<usize>()
                .div_ceil(100)}}})
    } else {
        json!({"id": format!("rerank-{}", ctx.state.next_id()), "model": ctx.model, "results": results,
            "usage": {"total_tokens": tokens}})
    };
    json_response(StatusCode::OK, &body)
}
