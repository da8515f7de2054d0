//! Request bodies: read once within the size limit, parsed once, with errors
//! that name the offending field.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::error::Category;

use crate::error::ApiError;
use crate::routes::SharedState;

/// A JSON body parsed into `T`; rejections are OpenAI-style errors.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<SharedState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &SharedState) -> Result<Self, Self::Rejection> {
        let bytes = read_body(req, state).await?;
        parse(&bytes).map(JsonBody)
    }
}

/// Reads a request's whole body within `server.max_body_bytes` and
/// `server.body_read_timeout_ms`, so a client trickling its body in cannot
/// hold a connection and its buffer for long.
pub(crate) async fn read_body(req: Request, state: &SharedState) -> Result<Bytes, ApiError> {
    let limit = state.server.max_body_bytes;
    let timeout_ms = state.server.body_read_timeout_ms;
    match tokio::time::timeout(
        std::time::Duration::from_millis(timeout_ms),
        Bytes::from_request(req, state),
    )
    .await
    {
        Ok(read) => read.map_err(|e| reject(e, limit)),
        Err(_) => Err(ApiError::BodyTimeout(timeout_ms)),
    }
}

/// The error for a body that could not be read.
pub(crate) fn reject(err: BytesRejection, limit: usize) -> ApiError {
    if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::BodyTooLarge(limit)
    } else {
        ApiError::InvalidField {
            param: None,
            message: format!("The request body could not be read: {err}"),
        }
    }
}

/// Parses `bytes` as `T`, mapping serde errors to 400s naming the field.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // A UTF-8 byte-order mark, which some clients write, is not JSON's.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        into_api_error(&path, err.into_inner())
    })?;
    de.end().map_err(|e| into_api_error(".", e))?;
    Ok(value)
}

fn into_api_error(path: &str, err: serde_json::Error) -> ApiError {
    match err.classify() {
        Category::Syntax | Category::Eof | Category::Io => ApiError::InvalidJson(err.to_string()),
        Category::Data => {
            let text = err.to_string();
            let detail = text.split(" at line ").next().unwrap_or(&text).to_owned();
            let base = (path != ".").then(|| path.to_owned());
            let param = match missing_field(&detail) {
                Some(field) => Some(match &base {
                    Some(base) => format!("{base}.{field}"),
                    None => field.to_owned(),
                }),
                None => base,
            };
            let message = match &param {
                Some(p) if detail.starts_with("missing field") => format!("Missing required parameter: '{p}'."),
                Some(p) => format!("Invalid value for '{p}': {detail}."),
                None => format!("Invalid request body: {detail}."),
            };
            ApiError::InvalidField { param, message }
        }
    }
}

fn missing_field(detail: &str) -> Option<&str> {
    detail.strip_prefix("missing field `")?.strip_suffix('`')
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_api::ChatCompletionRequest;

    #[test]
    fn a_byte_order_mark_is_not_an_error() {
        let body = b"\xEF\xBB\xBF{\"model\": \"m\", \"messages\": []}";
        assert!(parse::<ChatCompletionRequest>(body).is_ok());
    }

    fn err(body: &str) -> (Option<String>, String) {
        match parse::<ChatCompletionRequest>(body.as_bytes()) {
            Err(ApiError::InvalidField { param, message }) => (param, message),
            Err(other) => (None, format!("other: {other}")),
            Ok(_) => (None, "parsed".into()),
        }
    }

    #[test]
    fn names_missing_and_invalid_fields() {
        assert_eq!(err(r#"{"model":"m"}"#).0.as_deref(), Some("messages"));
        assert_eq!(err(r#"{"messages":[]}"#).0.as_deref(), Some("model"));
        let (param, message) = err(r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#);
        assert_eq!(param.as_deref(), Some("messages[0].role"));
        assert!(message.contains("wizard"), "{message}");
        assert_eq!(
            err(r#"{"model":"m","messages":[{"content":"x"}]}"#).0.as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(err(r#"{"model":5,"messages":[]}"#).0.as_deref(), Some("model"));
        assert_eq!(err(r#"[1,2]"#).0, None);
    }

    #[test]
    fn malformed_json_is_its_own_error() {
        for body in ["{", "{\"model\": }", "", "{\"model\":\"m\",\"messages\":[]} x", "\u{0}"] {
            assert!(
                matches!(
                    parse::<ChatCompletionRequest>(body.as_bytes()),
                    Err(ApiError::InvalidJson(_))
                ),
                "{body:?}"
            );
        }
    }
}
