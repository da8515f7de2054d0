//! OpenAI's image, moderation and audio endpoints (`/v1/images/generations`,
//! `/v1/images/edits`, `/v1/moderations`, `/v1/audio/speech`, `/v1/audio/transcriptions`,
//! `/v1/audio/translations`): routed, limited and charged like embeddings,
//! answered by OpenAI-format deployments (OpenAI, Azure except moderations,
//! OpenAI-compatible servers, the mock).

use axum::extract::multipart::{MultipartError, MultipartRejection};
use axum::extract::{Extension, Multipart, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use switchyard_api::{ImageGenerationRequest, ModerationRequest, RerankRequest, SpeechRequest};
use switchyard_policy::{Nanos, Principal, TokenUsage};
use switchyard_providers::{TranscriptionRequest, UploadedFile};
use switchyard_routing::DeploymentInfo;

use crate::dispatch::Call;
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::observe::RequestContext;
use crate::routes::{SharedState, gateway_fields, not_a_learned_router, serve_detached};
use crate::state::AppState;

/// The model OpenAI generates images with when a request names none.
const DEFAULT_IMAGE_MODEL: &str = "dall-e-2";

/// The model OpenAI edits images with when a request names none and uses
/// a parameter only GPT image models take.
const DEFAULT_GPT_IMAGE_MODEL: &str = "gpt-image-1";

/// Image edit parameters only GPT image models take.
const GPT_IMAGE_FIELDS: [&str; 4] = ["input_fidelity", "background", "output_format", "output_compression"];

/// The model OpenAI moderates with when a request names none.
const DEFAULT_MODERATION_MODEL: &str = "omni-moderation-latest";

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidField {
        param: Some(param.into()),
        message: message.into(),
    }
}

/// The model a request names, or OpenAI's default for the endpoint when it
/// names none and the gateway serves that name.
fn model_or_default(state: &AppState, model: String, default: &str) -> Result<String, ApiError> {
    if !model.is_empty() {
        return Ok(model);
    }
    let group = state.group_name(default);
    if state.routes.contains_key(group) {
        return Ok(default.to_owned());
    }
    Err(invalid(
        "model",
        format!("'model' is required: OpenAI's default, `{default}`, is not a model this gateway serves."),
    ))
}

/// Serves a request of this module's JSON endpoints like any other: takes
/// the gateway's own fields out of its body, applies OpenAI's default
/// model when it names none (`default_model`), and refuses a learned
/// router's name.
async fn serve<R: Send + 'static>(
    (state, principal, ctx): (SharedState, Principal, RequestContext),
    headers: &HeaderMap,
    mut req: R,
    parts: fn(&mut R) -> (&mut switchyard_api::Extra, &mut String),
    default_model: Option<&str>,
    call: for<'a> fn(&'a mut R) -> Call<'a>,
) -> Response {
    let (extra, model) = parts(&mut req);
    let (options, controls) = match gateway_fields(extra, headers) {
        Ok(fields) => fields,
        Err(e) => return e.into_response(),
    };
    let model = match default_model {
        Some(default) => match model_or_default(&state, std::mem::take(model), default) {
            Ok(model) => model,
            Err(e) => return e.into_response(),
        },
        None => std::mem::take(model),
    };
    if let Err(e) = not_a_learned_router(&state, &principal, &model) {
        return e.into_response();
    }
    serve_detached(state, principal, ctx, model, req, call, options, controls).await
}

/// `POST /v1/images/generations`.
pub(crate) async fn images(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Extension(ctx): Extension<RequestContext>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<ImageGenerationRequest>,
) -> Response {
    if req.prompt.trim().is_empty() {
        return invalid("prompt", "'prompt' must not be empty.").into_response();
    }
    if req.n.is_some_and(|n| !(1..=10).contains(&n)) {
        return invalid("n", "'n' must be from 1 to 10.").into_response();
    }
    if req
        .extra
        .get("stream")
        .is_some_and(|s| !matches!(s, Value::Bool(false) | Value::Null))
    {
        return invalid(
            "stream",
            "Streamed image generation (partial images) is not supported here; leave out 'stream'.",
        )
        .into_response();
    }
    // OpenAI generates with dall-e-2 unless the request uses a parameter
    // of the GPT image models.
    let gpt_only = GPT_IMAGE_FIELDS
        .iter()
        .chain(&["moderation"])
        .any(|name| req.extra.get(*name).is_some_and(|v| !v.is_null()));
    let default = if gpt_only {
        DEFAULT_GPT_IMAGE_MODEL
    } else {
        DEFAULT_IMAGE_MODEL
    };
    serve(
        (state, principal, ctx),
        &headers,
        req,
        |r| (&mut r.extra, &mut r.model),
        Some(default),
        |r| Call::Images(r),
    )
    .await
}

/// `POST /v1/moderations`.
pub(crate) async fn moderations(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Extension(ctx): Extension<RequestContext>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<ModerationRequest>,
) -> Response {
    let empty = match &req.input {
        Value::String(s) => s.is_empty(),
        Value::Array(items) => items.is_empty(),
        _ => true,
    };
    if empty {
        return invalid("input", "'input' must be a non-empty string or array.").into_response();
    }
    serve(
        (state, principal, ctx),
        &headers,
        req,
        |r| (&mut r.extra, &mut r.model),
        Some(DEFAULT_MODERATION_MODEL),
        |r| Call::Moderations(r),
    )
    .await
}

/// `POST /v1/rerank` (also `/rerank` and Cohere's `/v2/rerank`).
pub(crate) async fn rerank(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Extension(ctx): Extension<RequestContext>,
    headers: HeaderMap,
    JsonBody(mut req): JsonBody<RerankRequest>,
) -> Response {
    if req.query.is_empty() {
        return invalid("query", "'query' must not be empty.").into_response();
    }
    if req.documents.is_empty() {
        return invalid("documents", "'documents' must not be empty.").into_response();
    }
    if req.top_n == Some(0) {
        return invalid("top_n", "'top_n' must be at least 1.").into_response();
    }
    // Cohere's v2 and vLLM take documents as strings: `{"text": …}` objects
    // are sent as their text.
    for doc in &mut req.documents {
        if let Some(text) = doc.get("text").and_then(Value::as_str).map(str::to_owned) {
            *doc = Value::String(text);
        }
    }
    serve(
        (state, principal, ctx),
        &headers,
        req,
        |r| (&mut r.extra, &mut r.model),
        None,
        |r| Call::Rerank(r),
    )
    .await
}

/// Searches a rerank is billed for when the upstream does not say: one per
/// 100 documents (Cohere's unit).
fn searches(req: &RerankRequest) -> u64 {
    (req.documents.len() as u64).div_ceil(100).max(1)
}

/// The most searches a rerank may be billed for: Cohere counts each 500
/// tokens of a document (with the query) as a document of its own, and a
/// token is at least a byte.
fn most_searches(req: &RerankRequest) -> u64 {
    let chunks: u64 = req
        .documents
        .iter()
        .map(|doc| {
            let text = doc
                .as_str()
                .or_else(|| doc.get("text").and_then(Value::as_str))
                .map_or(0, str::len);
            ((req.query.len() + text) as u64).div_ceil(500).max(1)
        })
        .sum();
    chunks.div_ceil(100).max(1)
}

/// `POST /v1/audio/speech`: the audio is passed on as it arrives, with the
/// upstream's media type.
pub(crate) async fn speech(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Extension(ctx): Extension<RequestContext>,
    headers: HeaderMap,
    JsonBody(mut req): JsonBody<SpeechRequest>,
) -> Response {
    if req.input.is_empty() {
        return invalid("input", "'input' must not be empty.").into_response();
    }
    if req.input.chars().count() > MAX_SPEECH_CHARACTERS {
        return invalid(
            "input",
            format!("'input' may hold at most {MAX_SPEECH_CHARACTERS} characters, as OpenAI's does."),
        )
        .into_response();
    }
    if req.extra.get("stream_format").and_then(Value::as_str) == Some("sse") {
        return invalid(
            "stream_format",
            "Speech streamed as server-sent events is not supported here; the audio itself is passed on as it arrives.",
        )
        .into_response();
    }
    let (options, controls) = match gateway_fields(&mut req.extra, &headers) {
        Ok(fields) => fields,
        Err(e) => return e.into_response(),
    };
    // The end user and metadata are the gateway's here: OpenAI's speech
    // endpoint takes neither.
    req.extra.shift_remove("user");
    req.extra.shift_remove("metadata");
    if let Err(e) = not_a_learned_router(&state, &principal, &req.model) {
        return e.into_response();
    }
    let model = std::mem::take(&mut req.model);
    serve_detached(
        state,
        principal,
        ctx,
        model,
        req,
        |r| Call::Speech(r),
        options,
        controls,
    )
    .await
}

/// The longest text `/v1/audio/speech` takes (OpenAI's limit).
const MAX_SPEECH_CHARACTERS: usize = 4_096;

/// `POST /v1/audio/transcriptions`.
pub(crate) async fn transcriptions(
    state: State<SharedState>,
    principal: Extension<Principal>,
    ctx: Extension<RequestContext>,
    headers: HeaderMap,
    form: Result<Multipart, MultipartRejection>,
) -> Response {
    speech_to_text(state, principal, ctx, headers, form, false).await
}

/// `POST /v1/audio/translations`: speech in any language to English text.
pub(crate) async fn translations(
    state: State<SharedState>,
    principal: Extension<Principal>,
    ctx: Extension<RequestContext>,
    headers: HeaderMap,
    form: Result<Multipart, MultipartRejection>,
) -> Response {
    speech_to_text(state, principal, ctx, headers, form, true).await
}

async fn speech_to_text(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Extension(ctx): Extension<RequestContext>,
    headers: HeaderMap,
    form: Result<Multipart, MultipartRejection>,
    translate: bool,
) -> Response {
    // The upload must arrive within the body-read timeout, as JSON bodies must.
    let wait = std::time::Duration::from_millis(state.server.body_read_timeout_ms);
    let read = read_form(form, translate, state.server.max_body_bytes);
    let mut req = match tokio::time::timeout(wait, read).await {
        Ok(Ok(req)) => req,
        Ok(Err(e)) => return e.into_response(),
        Err(_) => return ApiError::BodyTimeout(state.server.body_read_timeout_ms).into_response(),
    };
    let mut extra = gateway_form_fields(&mut req.fields);
    let (options, controls) = match gateway_fields(&mut extra, &headers) {
        Ok(fields) => fields,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = not_a_learned_router(&state, &principal, &req.model) {
        return e.into_response();
    }
    let model = std::mem::take(&mut req.model);
    serve_detached(
        state,
        principal,
        ctx,
        model,
        req,
        |r| Call::Transcription(r),
        options,
        controls,
    )
    .await
}

/// `POST /v1/images/edits`: one or more images (`image`, or `image[]`
/// for GPT image models), an optional `mask` and a `prompt`, as a
/// multipart upload.
pub(crate) async fn image_edits(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Extension(ctx): Extension<RequestContext>,
    headers: HeaderMap,
    form: Result<Multipart, MultipartRejection>,
) -> Response {
    let wait = std::time::Duration::from_millis(state.server.body_read_timeout_ms);
    let read = read_upload(form, &["image", "image[]", "mask"], state.server.max_body_bytes);
    let (model, files, mut fields) = match tokio::time::timeout(wait, read).await {
        Ok(Ok(upload)) => upload,
        Ok(Err(e)) => return e.into_response(),
        Err(_) => return ApiError::BodyTimeout(state.server.body_read_timeout_ms).into_response(),
    };
    let mut req = switchyard_providers::ImageEditRequest {
        model: String::new(),
        files,
        fields: Vec::new(),
    };
    if let Err(e) = check_image_edit(&req, &fields) {
        return e.into_response();
    }
    // OpenAI edits with dall-e-2 unless the request needs a GPT image
    // model: several images, or one of their own parameters.
    let gpt_only = req.images().count() > 1 || fields.iter().any(|(name, _)| GPT_IMAGE_FIELDS.contains(&name.as_str()));
    let default = if gpt_only {
        DEFAULT_GPT_IMAGE_MODEL
    } else {
        DEFAULT_IMAGE_MODEL
    };
    let mut extra = gateway_form_fields(&mut fields);
    // OpenAI reads `user` too (the gateway records it as the end user).
    if let Some(Value::String(user)) = extra.get("user") {
        fields.push(("user".into(), user.clone()));
    }
    req.fields = fields;
    let (options, controls) = match gateway_fields(&mut extra, &headers) {
        Ok(fields) => fields,
        Err(e) => return e.into_response(),
    };
    let model = match model_or_default(&state, model.unwrap_or_default(), default) {
        Ok(model) => model,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = not_a_learned_router(&state, &principal, &model) {
        return e.into_response();
    }
    serve_detached(
        state,
        principal,
        ctx,
        model,
        req,
        |r| Call::ImageEdit(r),
        options,
        controls,
    )
    .await
}

/// An image edit's own checks: an image, a prompt, `n` from 1 to 10, at
/// most one mask, no stream.
fn check_image_edit(req: &switchyard_providers::ImageEditRequest, fields: &[(String, String)]) -> Result<(), ApiError> {
    let field = |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    // What is checked, reserved and charged is what goes upstream: one
    // value of each.
    for name in ["prompt", "n", "size", "quality", "stream", "response_format", "user"] {
        if fields.iter().filter(|(n, _)| n == name).count() > 1 {
            return Err(invalid(name, format!("Send one '{name}'.")));
        }
    }
    if req.images().next().is_none() {
        return Err(invalid("image", "'image' is required: the image to edit."));
    }
    if req.files.iter().filter(|(name, _)| name == "mask").count() > 1 {
        return Err(invalid("mask", "Send at most one 'mask'."));
    }
    if field("prompt").is_none_or(|p| p.trim().is_empty()) {
        return Err(invalid("prompt", "'prompt' is required and must not be empty."));
    }
    if let Some(n) = field("n")
        && n.trim().parse::<u64>().ok().is_none_or(|n| !(1..=10).contains(&n))
    {
        return Err(invalid("n", "'n' must be from 1 to 10."));
    }
    if field("stream").is_some_and(|s| !s.eq_ignore_ascii_case("false")) {
        return Err(invalid(
            "stream",
            "Streamed image edits (partial images) are not supported here; leave out 'stream'.",
        ));
    }
    Ok(())
}

/// Takes the gateway's own fields out of an upload's form, as a JSON body
/// would carry them: `fallbacks` and `tags` (a JSON list, a comma-separated
/// list, or `name[]` fields one item each), `metadata` (a JSON object, or
/// `metadata[key]` fields), `num_retries`, `timeout` and `user`.
fn gateway_form_fields(fields: &mut Vec<(String, String)>) -> switchyard_api::Extra {
    let mut extra = switchyard_api::Extra::new();
    let list = |value: &str| -> Vec<Value> {
        match serde_json::from_str::<Value>(value) {
            Ok(Value::Array(items)) => items,
            Ok(Value::String(one)) => vec![Value::String(one)],
            _ => value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect(),
        }
    };
    fields.retain(|(name, value)| {
        let key = name.strip_suffix("[]").unwrap_or(name);
        match key {
            "fallbacks" | "tags" => {
                let items = list(value);
                // An empty field says nothing (an empty list would turn the
                // group's own fallbacks off).
                if !items.is_empty()
                    && let Value::Array(all) = extra.entry(key).or_insert_with(|| Value::Array(Vec::new()))
                {
                    all.extend(items);
                }
            }
            "metadata" => match serde_json::from_str::<Value>(value) {
                Ok(Value::Object(map)) => {
                    if let Some(all) = metadata_of(&mut extra) {
                        all.extend(map);
                    }
                }
                _ => {
                    extra.insert("metadata".into(), Value::String(value.clone()));
                }
            },
            "num_retries" | "timeout" => {
                let parsed = serde_json::from_str::<Value>(value).unwrap_or_else(|_| Value::String(value.clone()));
                extra.insert(key.to_owned(), parsed);
            }
            "user" => {
                extra.insert("user".into(), Value::String(value.clone()));
            }
            _ => match name.strip_prefix("metadata[").and_then(|k| k.strip_suffix(']')) {
                Some(k) => {
                    if let Some(all) = metadata_of(&mut extra) {
                        match k.strip_suffix("][") {
                            // `metadata[tags][]`, as the SDKs write a list
                            // in a form: each value one more element.
                            Some(list) => {
                                match all.entry(list.to_owned()).or_insert_with(|| Value::Array(Vec::new())) {
                                    Value::Array(items) => items.push(Value::String(value.clone())),
                                    other => *other = Value::Array(vec![other.take(), Value::String(value.clone())]),
                                }
                            }
                            None => drop(all.insert(k.to_owned(), Value::String(value.clone()))),
                        }
                    }
                }
                None => return true,
            },
        }
        false
    });
    extra
}

/// The `metadata` object of `extra`, made when missing (`None` when it is
/// not an object).
fn metadata_of(extra: &mut switchyard_api::Extra) -> Option<&mut serde_json::Map<String, Value>> {
    extra
        .entry("metadata")
        .or_insert_with(|| Value::Object(serde_json::Map::new()))
        .as_object_mut()
}

/// A file name with the extension its media type implies, for an upload
/// that came without one (upstreams read the format from the extension).
fn audio_file_name(content_type: Option<&str>) -> String {
    match audio_extension(content_type) {
        Some(extension) => format!("audio.{extension}"),
        None => "audio".into(),
    }
}

/// A media type without its parameters (a browser's recording is
/// `audio/webm;codecs=opus`), lowercased.
fn essence(content_type: Option<&str>) -> String {
    content_type
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// The extension of an audio media type.
fn audio_extension(content_type: Option<&str>) -> Option<&'static str> {
    Some(match essence(content_type).as_str() {
        "audio/mpeg" | "audio/mp3" => "mp3",
        "audio/wav" | "audio/x-wav" | "audio/wave" => "wav",
        "audio/ogg" | "audio/opus" => "ogg",
        "audio/webm" | "video/webm" => "webm",
        "audio/flac" | "audio/x-flac" => "flac",
        "audio/mp4" | "audio/m4a" | "audio/x-m4a" => "m4a",
        _ => return None,
    })
}

/// An uploaded file's name as sent upstream: the client's, with the
/// extension of its media type added when it has none (a browser's
/// `FormData` names a blob `blob`, and upstreams read the format from the
/// extension); a file's name by its media type when it came without one.
fn sent_file_name(field: &str, given: Option<&str>, content_type: Option<&str>) -> String {
    let Some(given) = given.filter(|n| !n.is_empty()) else {
        return upload_file_name(field, content_type);
    };
    let has_extension = given
        .rsplit(['/', '\\'])
        .next()
        .is_some_and(|base| base.rfind('.').is_some_and(|dot| dot > 0 && dot + 1 < base.len()));
    let extension = match field {
        "file" => audio_extension(content_type),
        _ => image_extension(content_type),
    };
    match extension {
        Some(extension) if !has_extension => format!("{given}.{extension}"),
        _ => given.to_owned(),
    }
}

/// The extension of an image media type.
fn image_extension(content_type: Option<&str>) -> Option<&'static str> {
    Some(match essence(content_type).as_str() {
        "image/jpeg" | "image/jpg" => "jpg",
        "image/webp" => "webp",
        "image/png" => "png",
        _ => return None,
    })
}

/// The parts of a multipart upload: its `model`, its files (the fields
/// named in `file_fields`, each under its field's name, in order) and its
/// other fields as text, in order.
type Upload = (Option<String>, Vec<(String, UploadedFile)>, Vec<(String, String)>);

/// Reads a multipart upload whose files are the fields `file_fields`.
async fn read_upload(
    form: Result<Multipart, MultipartRejection>,
    file_fields: &[&str],
    limit: usize,
) -> Result<Upload, ApiError> {
    let first = file_fields.first().copied().unwrap_or("file");
    let form_error = |e: MultipartError| form_error(e, first, limit);
    let mut form = form.map_err(|e| invalid(first, format!("The body must be a multipart form: {}", e.body_text())))?;
    let (mut model, mut files, mut fields) = (None, Vec::new(), Vec::new());
    loop {
        let field = match form.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return Err(form_error(e)),
        };
        let name = field.name().unwrap_or_default().to_owned();
        if file_fields.contains(&name.as_str()) {
            let content_type = field.content_type().map(str::to_owned);
            let filename = sent_file_name(&name, field.file_name(), content_type.as_deref());
            let bytes = field.bytes().await.map_err(form_error)?;
            if bytes.is_empty() {
                return Err(invalid(&name, format!("'{name}' is empty.")));
            }
            files.push((
                name,
                UploadedFile {
                    filename,
                    content_type,
                    bytes,
                },
            ));
            continue;
        }
        let text = field.text().await.map_err(form_error)?;
        if name == "model" {
            if model.is_some() {
                return Err(invalid("model", "Send one 'model'."));
            }
            model = Some(text);
        } else if !name.is_empty() {
            fields.push((name, text));
        }
    }
    Ok((model.filter(|m| !m.is_empty()), files, fields))
}

/// A file name for an upload that came without one (upstreams read the
/// format from the extension).
fn upload_file_name(field: &str, content_type: Option<&str>) -> String {
    match field {
        "file" => audio_file_name(content_type),
        _ => format!("image.{}", image_extension(content_type).unwrap_or("png")),
    }
}

/// Reads an audio upload: `file` and `model` are required; every other
/// field is kept as text, in order.
async fn read_form(
    form: Result<Multipart, MultipartRejection>,
    translate: bool,
    limit: usize,
) -> Result<TranscriptionRequest, ApiError> {
    let (model, mut files, mut fields) = read_upload(form, &["file"], limit).await?;
    if files.len() > 1 {
        return Err(invalid("file", "Send one 'file' per request."));
    }
    let file = files.pop().map(|(_, file)| file);
    let file = file.ok_or_else(|| invalid("file", "'file' is required: the audio to transcribe."))?;
    let model = model.ok_or_else(|| invalid("model", "'model' is required."))?;
    if fields
        .iter()
        .any(|(name, value)| name == "stream" && !value.eq_ignore_ascii_case("false"))
    {
        return Err(invalid(
            "stream",
            "Streamed transcripts are not supported here; leave out 'stream'.",
        ));
    }
    // A plain-text transcript reports no usage: the upstream is asked for
    // JSON, whose `text` goes back as text.
    let mut plain_text = false;
    for (name, value) in &mut fields {
        if name == "response_format" && value == "text" {
            *value = "json".into();
            plain_text = true;
        }
    }
    Ok(TranscriptionRequest {
        model,
        translate,
        file,
        fields,
        plain_text,
    })
}

/// A multipart form that could not be read: too large (413, past
/// `server.max_body_bytes`), or malformed (400).
fn form_error(e: MultipartError, param: &str, limit: usize) -> ApiError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::BodyTooLarge(limit);
    }
    invalid(
        param,
        format!("The multipart form could not be read: {}", e.body_text()),
    )
}

/// An image answer's tokens (GPT image models report `input_tokens` and
/// `output_tokens`; DALL·E reports none) and the number of images in it.
fn image_usage(body: &[u8], asked: u64) -> (TokenUsage, u64) {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(default)]
        data: Vec<serde::de::IgnoredAny>,
        usage: Option<Value>,
    }
    let Ok(answer) = serde_json::from_slice::<Answer>(body) else {
        return (TokenUsage::default(), asked);
    };
    let count = |field: &str| {
        answer
            .usage
            .as_ref()
            .and_then(|u| u.get(field))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let cached = answer
        .usage
        .as_ref()
        .and_then(|u| u.pointer("/input_tokens_details/cached_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let usage = TokenUsage {
        prompt: count("input_tokens"),
        completion: count("output_tokens"),
        cache_read: cached,
        ..TokenUsage::default()
    };
    (usage, answer.data.len() as u64)
}

/// An image answer's charge: its tokens and its images at the price of
/// their size and quality. A token-priced image model that reported no
/// usage is charged the estimated prompt and the most output an image bills.
fn image_charge(
    prices: &switchyard_policy::Prices,
    body: &[u8],
    asked: u64,
    (size, quality): (Option<&str>, Option<&str>),
    estimated_prompt: u64,
) -> (TokenUsage, Nanos) {
    let (mut tokens, images) = image_usage(body, asked);
    let image_tokens = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|a| {
            a.pointer("/usage/input_tokens_details/image_tokens")
                .and_then(Value::as_u64)
        })
        .unwrap_or(0);
    let cost = image_cost(prices, size, quality, images).saturating_add(prices.image_input_surcharge(image_tokens));
    if tokens == TokenUsage::default() && cost == 0 {
        tokens = TokenUsage {
            prompt: estimated_prompt,
            completion: crate::metering::IMAGE_TOKENS.saturating_mul(images),
            ..TokenUsage::default()
        };
    }
    (tokens, cost)
}

/// What `images` images from `deployment` cost at the request's size and
/// quality, in nano-dollars.
fn image_cost(prices: &switchyard_policy::Prices, size: Option<&str>, quality: Option<&str>, images: u64) -> Nanos {
    let per_image = prices.per_image(size, quality);
    switchyard_policy::from_usd(per_image * images as f64)
}

/// Seconds of audio in `bytes` at 128 kbit/s, what a transcript that
/// reports neither its duration nor its tokens is charged for.
fn estimated_seconds(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(16_000).max(1)
}

/// The most seconds `bytes` of audio may hold: at 8 kbit/s, below any
/// speech codec upstreams take.
fn longest_seconds(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(1_000).max(1)
}

/// Audio tokens per second of speech a GPT-4o transcription model may bill.
const AUDIO_TOKENS_PER_SECOND: u64 = 50;

/// Text tokens per second of speech a transcript may hold.
const TEXT_TOKENS_PER_SECOND: u64 = 10;

/// What an answer from a deployment charging `prices` to a request of this
/// module's endpoints is charged: its tokens, and nano-dollars on top
/// (images, characters spoken, seconds transcribed). `None` for other
/// requests.
pub(crate) fn charge(
    prices: &switchyard_policy::Prices,
    call: &Call<'_>,
    body: &[u8],
    estimated_prompt: u64,
) -> Option<(TokenUsage, Nanos)> {
    let prompt_only = TokenUsage {
        prompt: estimated_prompt,
        ..TokenUsage::default()
    };
    Some(match call {
        Call::Images(req) => image_charge(
            prices,
            body,
            req.count(),
            (req.size.as_deref(), req.quality.as_deref()),
            estimated_prompt,
        ),
        Call::ImageEdit(req) => image_charge(
            prices,
            body,
            req.count(),
            (req.field("size"), req.field("quality")),
            estimated_prompt,
        ),
        Call::Moderations(_) => (prompt_only, 0),
        Call::Rerank(req) => {
            let answer: Value = serde_json::from_slice(body).unwrap_or_default();
            let tokens = ["prompt_tokens", "total_tokens"]
                .iter()
                .filter_map(|field| answer.pointer(&format!("/usage/{field}")).and_then(Value::as_u64))
                .max()
                .unwrap_or(estimated_prompt);
            let searches = answer
                .pointer("/meta/billed_units/search_units")
                .and_then(Value::as_u64)
                .unwrap_or_else(|| searches(req));
            let usage = TokenUsage {
                prompt: tokens,
                ..TokenUsage::default()
            };
            (
                usage,
                switchyard_policy::from_usd(prices.per_query.unwrap_or(0.0) * searches as f64),
            )
        }
        Call::Speech(req) => {
            let chars = req.input.chars().count() as f64;
            let per_character = prices.per_character.unwrap_or(0.0);
            (prompt_only, switchyard_policy::from_usd(per_character * chars))
        }
        Call::Transcription(req) => {
            let (tokens, mut seconds) = transcript_usage(body, req.file.bytes.len());
            let per_second = prices.per_second.unwrap_or(0.0);
            // A per-second price on a model that reported tokens only.
            if seconds == 0 && per_second > 0.0 {
                seconds = estimated_seconds(req.file.bytes.len());
            }
            (tokens, switchyard_policy::from_usd(per_second * seconds as f64))
        }
        _ => return None,
    })
}

/// A transcript's tokens (GPT-4o transcription models: `usage.type:
/// tokens`) and seconds (whisper: `usage.type: duration`, or a verbose
/// answer's `duration`); a transcript in text, SRT or WebVTT reports
/// neither, and is charged the seconds its file holds at 128 kbit/s.
fn transcript_usage(body: &[u8], file_bytes: usize) -> (TokenUsage, u64) {
    let Ok(answer) = serde_json::from_slice::<Value>(body) else {
        // Subtitles: the end of the last cue.
        let seconds = last_cue_end(&String::from_utf8_lossy(body)).unwrap_or_else(|| estimated_seconds(file_bytes));
        return (TokenUsage::default(), seconds);
    };
    let usage = answer.get("usage");
    let count = |field: &str| usage.and_then(|u| u.get(field)).and_then(Value::as_u64).unwrap_or(0);
    match usage.and_then(|u| u.get("type")).and_then(Value::as_str) {
        Some("tokens") => (
            TokenUsage {
                prompt: count("input_tokens"),
                completion: count("output_tokens"),
                ..TokenUsage::default()
            },
            0,
        ),
        Some("duration") => {
            let seconds = usage
                .and_then(|u| u.get("seconds"))
                .and_then(Value::as_f64)
                .unwrap_or(0.0);
            (TokenUsage::default(), seconds.max(0.0).ceil() as u64)
        }
        _ => match answer.get("duration").and_then(Value::as_f64) {
            Some(seconds) => (TokenUsage::default(), seconds.max(0.0).ceil() as u64),
            None => (TokenUsage::default(), estimated_seconds(file_bytes)),
        },
    }
}

/// The end of the last cue of SRT or WebVTT subtitles, in whole seconds
/// (rounded up).
fn last_cue_end(subtitles: &str) -> Option<u64> {
    subtitles
        .lines()
        .filter_map(|line| line.split_once("-->").map(|(_, end)| end.trim()))
        .filter_map(|end| {
            let time = end.split_whitespace().next()?.replace(',', ".");
            let mut parts = time.rsplit(':');
            let seconds: f64 = parts.next()?.parse().ok()?;
            let minutes: f64 = parts.next().map_or(Some(0.0), |m| m.parse().ok())?;
            let hours: f64 = parts.next().map_or(Some(0.0), |h| h.parse().ok())?;
            Some((hours * 3600.0 + minutes * 60.0 + seconds).ceil() as u64)
        })
        .max()
}

/// The body and media type a client gets: a plain-text transcript asked
/// for as JSON (see [`TranscriptionRequest::plain_text`]) is its `text`.
pub(crate) fn delivered(call: &Call<'_>, answer: switchyard_providers::MediaResponse) -> (bytes::Bytes, String) {
    if let Call::Transcription(req) = call
        && req.plain_text
        && let Ok(json) = serde_json::from_slice::<Value>(&answer.body)
        && let Some(text) = json.get("text").and_then(Value::as_str)
    {
        return (
            bytes::Bytes::from(format!("{text}\n")),
            "text/plain; charset=utf-8".into(),
        );
    }
    (answer.body, answer.content_type)
}

/// The most a request of this module's endpoints may cost on any
/// deployment `groups` (the requested one and a request's own fallbacks)
/// may reach, through fallbacks of every kind, beyond its
/// prompt's tokens, in nano-dollars: its images, its characters, or its
/// audio's longest duration (with the tokens a GPT-4o model may bill for it).
pub(crate) fn media_ceiling<'a>(
    state: &AppState,
    groups: impl IntoIterator<Item = &'a str>,
    call: &Call<'_>,
    requested: &str,
) -> Nanos {
    let cost = |d: &DeploymentInfo| -> Nanos {
        let p = state.prices_for(d.id, requested);
        match call {
            Call::Images(req) => image_cost(&p, req.size.as_deref(), req.quality.as_deref(), req.count()),
            Call::ImageEdit(req) => image_cost(&p, req.field("size"), req.field("quality"), req.count())
                .saturating_add(p.image_input_surcharge(crate::metering::edit_image_tokens(req))),
            Call::Rerank(req) => switchyard_policy::from_usd(p.per_query.unwrap_or(0.0) * most_searches(req) as f64),
            Call::Speech(req) => {
                switchyard_policy::from_usd(p.per_character.unwrap_or(0.0) * req.input.chars().count() as f64)
            }
            Call::Transcription(req) => {
                let seconds = longest_seconds(req.file.bytes.len());
                switchyard_policy::from_usd(p.per_second.unwrap_or(0.0) * seconds as f64).saturating_add(p.ceiling(
                    seconds.saturating_mul(AUDIO_TOKENS_PER_SECOND),
                    seconds.saturating_mul(TEXT_TOKENS_PER_SECOND),
                ))
            }
            _ => 0,
        }
    };
    let mut reached: Vec<&str> = Vec::new();
    for name in groups {
        let name = state.group_name(name);
        match state.reach.get(name) {
            Some(all) => reached.extend(all.iter().map(String::as_str)),
            None => reached.push(name),
        }
    }
    reached.sort_unstable();
    reached.dedup();
    reached
        .into_iter()
        .filter_map(|name| state.registry.group(name).ok())
        .flat_map(|group| group.deployments())
        .map(cost)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn subtitles_are_as_long_as_their_last_cue() {
        let srt = "1\n00:00:00,000 --> 00:00:04,000\nhello\n\n2\n00:00:04,000 --> 00:01:02,500\nworld\n";
        assert_eq!(last_cue_end(srt), Some(63));
        let vtt = "WEBVTT\n\n00:00.000 --> 00:07.250 align:start\nhi\n\n01:00:00.000 --> 01:00:01.000\nlate\n";
        assert_eq!(last_cue_end(vtt), Some(3601));
        assert_eq!(last_cue_end("just text\n"), None);
        // Neither usage nor cues: the file's length at 128 kbit/s.
        assert_eq!(transcript_usage(b"just text\n", 160_000).1, 10);
        assert_eq!(
            transcript_usage(br#"{"text":"x","usage":{"type":"duration","seconds":2.2}}"#, 1).1,
            3
        );
        assert_eq!(transcript_usage(br#"{"text":"x","duration":7.0}"#, 1).1, 7);
        let (tokens, seconds) = transcript_usage(
            br#"{"text":"x","usage":{"type":"tokens","input_tokens":40,"output_tokens":2}}"#,
            1,
        );
        assert_eq!((tokens.prompt, tokens.completion, seconds), (40, 2, 0));
    }

    #[test]
    fn an_uploads_gateway_fields_are_taken_as_a_json_body_would_carry_them() {
        let mut fields: Vec<(String, String)> = [
            ("language", "en"),
            ("fallbacks[]", "a"),
            ("fallbacks[]", "b"),
            ("tags", "x, y"),
            ("metadata[trace]", "t-1"),
            ("metadata[tags][]", "team-a"),
            ("metadata[tags][]", "x"),
            ("user", "12345"),
            ("num_retries", "2"),
            ("timestamp_granularities[]", "word"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let extra = gateway_form_fields(&mut fields);
        assert_eq!(
            fields,
            [
                ("language".to_owned(), "en".to_owned()),
                ("timestamp_granularities[]".to_owned(), "word".to_owned())
            ]
        );
        assert_eq!(
            Value::Object(extra.clone()),
            serde_json::json!({"fallbacks": ["a", "b"], "tags": ["x", "y"], "metadata": {"trace": "t-1", "tags": ["team-a", "x"]}, "user": "12345", "num_retries": 2})
        );
        // The list reaches the labels as a JSON body's `metadata.tags` does.
        let mut extra = extra;
        let labels = crate::labels::take(&mut extra, &axum::http::HeaderMap::new()).unwrap();
        assert_eq!(labels.tags, ["x", "y", "team-a"]);
        assert_eq!(audio_file_name(Some("audio/mpeg")), "audio.mp3");
        assert_eq!(audio_file_name(None), "audio");
    }

    /// Upstreams read an upload's format from its name: a browser's
    /// recording (`audio/webm;codecs=opus`, named `blob` or nothing) gets
    /// the extension of its media type; a name with one keeps it.
    #[test]
    fn uploads_are_named_with_the_extension_of_their_type() {
        let webm = Some("audio/webm;codecs=opus");
        assert_eq!(sent_file_name("file", None, webm), "audio.webm");
        assert_eq!(sent_file_name("file", Some(""), webm), "audio.webm");
        assert_eq!(sent_file_name("file", Some("blob"), webm), "blob.webm");
        assert_eq!(sent_file_name("file", Some("talk.mp3"), webm), "talk.mp3");
        assert_eq!(
            sent_file_name("file", Some("dir.v2/blob"), Some("Audio/MPEG")),
            "dir.v2/blob.mp3"
        );
        assert_eq!(sent_file_name("file", Some(".hidden"), webm), ".hidden.webm");
        assert_eq!(
            sent_file_name("file", Some("blob"), Some("application/octet-stream")),
            "blob"
        );
        assert_eq!(sent_file_name("image", Some("blob"), Some("image/jpeg")), "blob.jpg");
        assert_eq!(sent_file_name("image[]", None, Some("image/webp; q=1")), "image.webp");
        assert_eq!(sent_file_name("mask", None, None), "image.png");
    }
}
