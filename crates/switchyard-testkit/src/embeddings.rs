//! Deterministic embeddings for the mock upstream: OpenAI `/v1/embeddings`
//! and Bedrock `InvokeModel` for Titan and Cohere embedding models.

use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine as _;
use serde_json::{Value, json};

use crate::bedrock_mock::validation_error;
use crate::openai_mock::{RequestCtx, invalid_request, json_response, non_stream_fault, word_count};

/// Embedding dimensions used when neither the request nor the scenario sets them.
pub const DEFAULT_EMBEDDING_DIMS: usize = 16;

/// The deterministic unit-length vector the mock returns for one input item.
///
/// `item` is one element of the request's `input` (a string, or an array of
/// token ids); the vector is seeded from the FNV-1a hash of its JSON text.
pub fn mock_embedding(item: &Value, dims: usize) -> Vec<f32> {
    let mut seed = fnv1a(item.to_string().as_bytes());
    if seed == 0 {
        seed = 0x9E37_79B9_7F4A_7C15;
    }
    let mut values: Vec<f32> = (0..dims)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // 53 random bits mapped onto [-1, 1].
            let unit = (seed >> 11) as f64 / (1_u64 << 53) as f64;
            (unit * 2.0 - 1.0) as f32
        })
        .collect();
    let norm = values.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        for v in &mut values {
            *v /= norm;
        }
    }
    values
}

/// Encodes a vector the way OpenAI does for `encoding_format: "base64"`:
/// standard base64 of the little-endian `f32` bytes.
pub fn encode_base64_embedding(values: &[f32]) -> String {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Splits `input` into items, with the token count of each.
fn input_items(input: Option<&Value>) -> Option<Vec<(Value, usize)>> {
    match input? {
        Value::String(s) => Some(vec![(Value::String(s.clone()), word_count(s))]),
        Value::Array(items) if items.is_empty() => None,
        Value::Array(items) if items.iter().all(Value::is_u64) => {
            Some(vec![(Value::Array(items.clone()), items.len())])
        }
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Some((item.clone(), word_count(s))),
                Value::Array(tokens) if tokens.iter().all(Value::is_u64) => Some((item.clone(), tokens.len())),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// `POST /v1/embeddings`.
pub(crate) fn embeddings(ctx: &RequestCtx<'_>) -> Response {
    let Some(obj) = ctx.body.as_object() else {
        return invalid_request(
            "We could not parse the JSON body of your request: expected a JSON object.",
            None,
        );
    };
    if !ctx.azure && !obj.get("model").is_some_and(Value::is_string) {
        return invalid_request("you must provide a model parameter", Some("model"));
    }
    let Some(items) = input_items(obj.get("input")) else {
        return invalid_request(
            "'input' must be a string, an array of strings, an array of tokens or an array of token arrays",
            Some("input"),
        );
    };
    let dims = match obj.get("dimensions") {
        None | Some(Value::Null) => ctx.scenario.embedding_dims.unwrap_or(DEFAULT_EMBEDDING_DIMS),
        Some(value) => match value.as_u64().and_then(|d| usize::try_from(d).ok()) {
            Some(d) => d,
            None => {
                return invalid_request("'dimensions' must be a positive integer", Some("dimensions"));
            }
        },
    };
    if dims == 0 || dims > 65_536 {
        return invalid_request("'dimensions' must be between 1 and 65536", Some("dimensions"));
    }
    let base64 = match obj.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(_) => {
            return invalid_request("'encoding_format' must be 'float' or 'base64'", Some("encoding_format"));
        }
    };
    if let Some(response) = non_stream_fault(ctx.scenario) {
        return response;
    }
    let prompt_tokens = items.iter().map(|(_, t)| t).sum::<usize>().max(1);
    let data: Vec<Value> = items
        .iter()
        .enumerate()
        .map(|(index, (item, _))| {
            let vector = mock_embedding(item, dims);
            let embedding = if base64 {
                Value::String(encode_base64_embedding(&vector))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let mut body = json!({
        "object": "list",
        "data": data,
        "model": ctx.model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    });
    if ctx.scenario.no_usage
        && let Some(obj) = body.as_object_mut()
    {
        obj.remove("usage");
    }
    if ctx.scenario.partial_usage
        && let Some(usage) = body.get_mut("usage").and_then(Value::as_object_mut)
    {
        usage.remove("prompt_tokens");
    }
    json_response(StatusCode::OK, &body)
}

/// Embedding dimensions for a Bedrock request: its `field`, else the scenario's, else the default.
fn bedrock_dims(ctx: &RequestCtx<'_>, field: &str) -> Result<usize, Box<Response>> {
    let dims = match ctx.body.get(field) {
        None | Some(Value::Null) => ctx.scenario.embedding_dims.unwrap_or(DEFAULT_EMBEDDING_DIMS),
        Some(value) => value.as_u64().and_then(|d| usize::try_from(d).ok()).unwrap_or(0),
    };
    if dims == 0 || dims > 65_536 {
        let message = format!("{field}: must be an integer between 1 and 65536");
        return Err(Box::new(validation_error(&message)));
    }
    Ok(dims)
}

/// `POST /model/{modelId}/invoke` for Titan (`amazon.titan-embed-*`) and
/// Cohere (`cohere.embed-*`) embedding models.
pub(crate) fn bedrock_invoke(ctx: &RequestCtx<'_>) -> Response {
    let model = ctx.model.split("::").next().unwrap_or_default();
    let response = if model.contains("titan-embed") {
        titan(ctx)
    } else if model.contains("cohere.embed") {
        cohere(ctx)
    } else {
        Err(Box::new(validation_error(
            "The mock serves InvokeModel only for Titan and Cohere embedding models.",
        )))
    };
    response.unwrap_or_else(|response| *response)
}

fn titan(ctx: &RequestCtx<'_>) -> Result<Response, Box<Response>> {
    let Some(text) = ctx.body.get("inputText").and_then(Value::as_str) else {
        return Err(Box::new(validation_error("inputText: must be a string")));
    };
    let dims = bedrock_dims(ctx, "dimensions")?;
    if let Some(response) = non_stream_fault(ctx.scenario) {
        return Ok(response);
    }
    let body = json!({
        "embedding": mock_embedding(&Value::String(text.to_owned()), dims),
        "inputTextTokenCount": word_count(text).max(1),
    });
    Ok(json_response(StatusCode::OK, &body))
}

/// The most texts Cohere Embed takes on Bedrock in one call.
const COHERE_MAX_TEXTS: usize = 96;

/// The longest text Cohere Embed takes on Bedrock without truncation.
const COHERE_MAX_CHARS: usize = 2048;

fn cohere(ctx: &RequestCtx<'_>) -> Result<Response, Box<Response>> {
    let texts: Option<Vec<&str>> = ctx
        .body
        .get("texts")
        .and_then(Value::as_array)
        .filter(|texts| !texts.is_empty())
        .and_then(|texts| texts.iter().map(Value::as_str).collect());
    let Some(texts) = texts else {
        return Err(Box::new(validation_error(
            "texts: must be a non-empty array of strings",
        )));
    };
    if texts.len() > COHERE_MAX_TEXTS {
        return Err(Box::new(validation_error(&format!(
            "texts: expected maxLength: {COHERE_MAX_TEXTS}, actual: {}",
            texts.len()
        ))));
    }
    let truncate = ctx.body.get("truncate").and_then(Value::as_str).unwrap_or("NONE");
    if truncate == "NONE" && texts.iter().any(|t| t.chars().count() > COHERE_MAX_CHARS) {
        return Err(Box::new(validation_error(&format!(
            "texts: a text is longer than {COHERE_MAX_CHARS} characters and `truncate` is NONE"
        ))));
    }
    if !matches!(
        ctx.body.get("input_type").and_then(Value::as_str),
        Some("search_document" | "search_query" | "classification" | "clustering")
    ) {
        return Err(Box::new(validation_error(
            "input_type: must be one of search_document, search_query, classification, clustering",
        )));
    }
    if !ctx.model.contains("embed-v4") && ctx.body.get("output_dimension").is_some() {
        return Err(Box::new(validation_error(
            "extraneous key [output_dimension] is not permitted",
        )));
    }
    let dims = bedrock_dims(ctx, "output_dimension")?;
    if let Some(response) = non_stream_fault(ctx.scenario) {
        return Ok(response);
    }
    let embeddings: Vec<Vec<f32>> = texts
        .iter()
        .map(|text| mock_embedding(&Value::String((*text).to_owned()), dims))
        .collect();
    // Embed v4 answers a list of vectors per embedding type.
    let body = if ctx.model.contains("embed-v4") {
        json!({
            "id": format!("embed-mock-{}", ctx.state.next_id()),
            "embeddings": {"float": embeddings},
            "texts": texts,
            "response_type": "embeddings_by_type",
        })
    } else {
        json!({
            "id": format!("embed-mock-{}", ctx.state.next_id()),
            "embeddings": embeddings,
            "texts": texts,
            "response_type": "embeddings_floats",
        })
    };
    Ok(json_response(StatusCode::OK, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedding_is_deterministic_and_normalised() {
        let a = mock_embedding(&json!("hello"), 32);
        let b = mock_embedding(&json!("hello"), 32);
        let c = mock_embedding(&json!("world"), 32);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 32);
        let norm: f32 = a.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        assert!(a.iter().all(|v| (-1.0..=1.0).contains(v)));
    }

    #[test]
    fn input_shapes() {
        assert_eq!(input_items(Some(&json!("a b"))).unwrap().len(), 1);
        assert_eq!(input_items(Some(&json!(["a", "b"]))).unwrap().len(), 2);
        assert_eq!(input_items(Some(&json!([1, 2, 3]))).unwrap()[0].1, 3);
        assert_eq!(input_items(Some(&json!([[1, 2], [3]]))).unwrap().len(), 2);
        assert!(input_items(Some(&json!([]))).is_none());
        assert!(input_items(Some(&json!([{"x": 1}]))).is_none());
        assert!(input_items(None).is_none());
    }
}
