//! `POST /v1/responses`, `GET /v1/responses/{id}`,
//! `DELETE /v1/responses/{id}` and `POST /v1/responses/{id}/cancel`:
//! OpenAI's Responses API served from any deployment, in the foreground or
//! in the background.
//!
//! A request is written as a chat completion request and goes through the
//! chat route's own path (keys, limits, budgets, routing, retries,
//! fallbacks, the response cache, spend); the chat answer, or stream, is
//! written back as a response object, or as Responses events. Responses are
//! kept in memory (`server.responses_store_mib`), so that a later request
//! can continue one with `previous_response_id`.

pub mod store;
pub mod stream;
pub mod translate;

use std::convert::Infallible;

use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use eventsource_stream::Eventsource as _;
use futures_util::{StreamExt, stream as futures_stream};
use serde_json::Value;
use switchyard_api::responses::{OutputContent, OutputItem, ResponseError, ResponseObject, ResponsesRequest};
use switchyard_api::{ChatCompletionResponse, ChatMessage, Extra, FunctionCall, MessageContent, Role, ToolCall};
use switchyard_policy::Principal;

pub use store::ResponseStore;
use store::{Stored, owner};
use translate::Echo;

use crate::dispatch::Call;
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::observe::RequestContext;
use crate::routes::SharedState;

/// The largest chat answer read back to be written as a response object.
const MAX_ANSWER_BYTES: usize = 256 * 1024 * 1024;

/// What to keep of a request once it is answered.
struct Keep {
    store: ResponseStore,
    owner: String,
    /// The conversation before the answer (without `instructions`).
    conversation: Vec<ChatMessage>,
    /// Where this request's own input starts in it.
    input_start: usize,
    /// A background response: its answer is kept only while the response
    /// is still unfinished (not cancelled, nor deleted).
    background: bool,
}

impl Keep {
    async fn put(self, response: &ResponseObject, object: Bytes) {
        let mut conversation = self.conversation;
        let input_end = conversation.len();
        conversation.extend(assistant_message(response));
        let stored = Stored {
            owner: self.owner,
            conversation,
            object,
            input_start: self.input_start,
            input_end,
        };
        // The answer is the client's either way; only a continuation of it
        // will not be found.
        let kept = if self.background {
            self.store
                .replace_unfinished(response.id.clone(), stored)
                .await
                .map(|written| {
                    if !written {
                        tracing::debug!(response = %response.id, "a background answer is not kept: the response was cancelled, deleted or is too large");
                    }
                })
        } else {
            self.store.put(response.id.clone(), stored).await
        };
        if let Err(e) = kept {
            tracing::warn!(response = %response.id, error = %e, "a response could not be kept");
        }
    }
}

/// The answer of a response, as the assistant message a continuation sends.
fn assistant_message(response: &ResponseObject) -> Option<ChatMessage> {
    let mut text = String::new();
    let mut calls = Vec::new();
    let mut thinking = Vec::new();
    let mut reasoning = String::new();
    for item in &response.output {
        match item {
            OutputItem::Message { content, .. } => {
                for part in content {
                    match part {
                        OutputContent::OutputText { text: t, .. } => text.push_str(t),
                        OutputContent::Refusal { refusal } => text.push_str(refusal),
                    }
                }
            }
            OutputItem::FunctionCall {
                call_id,
                name,
                arguments,
                extra_content,
                ..
            } => calls.push(ToolCall {
                id: call_id.clone(),
                kind: "function".into(),
                function: Some(FunctionCall {
                    name: name.clone(),
                    arguments: arguments.clone(),
                }),
                extra: translate::call_extra(extra_content.clone()),
            }),
            // The reasoning goes back with the turn it led to: Claude's
            // signed thinking, and other models' text (DeepSeek and Kimi
            // want it on a turn that called tools; the OpenAI provider
            // leaves it out for servers that refuse it).
            OutputItem::Reasoning {
                encrypted_content,
                content,
                ..
            } => {
                if let Some(sealed) = encrypted_content {
                    thinking.extend(translate::unseal(sealed));
                }
                let before = reasoning.len();
                for part in content {
                    reasoning.push_str(&part.text);
                }
                if reasoning.len() == before
                    && let Some(sealed) = encrypted_content
                {
                    reasoning.push_str(&translate::unseal_text(sealed));
                }
            }
        }
    }
    if text.is_empty() && calls.is_empty() {
        return None;
    }
    let mut extra = Extra::new();
    if !reasoning.is_empty() {
        extra.insert("reasoning_content".into(), Value::String(reasoning));
    }
    if !thinking.is_empty() {
        extra.insert("thinking_blocks".into(), Value::Array(thinking));
    }
    Some(ChatMessage {
        role: Role::Assistant,
        content: (!text.is_empty()).then_some(MessageContent::Text(text)),
        name: None,
        tool_calls: (!calls.is_empty()).then_some(calls),
        tool_call_id: None,
        extra,
    })
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `POST /v1/responses`.
pub(crate) async fn create(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Extension(ctx): Extension<RequestContext>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<ResponsesRequest>,
) -> Response {
    let store = state.responses.clone();
    let owner = owner(&principal);
    let history = match req.previous_response_id.as_deref() {
        Some(id) => {
            match store.get(id, &owner).await {
                Err(e) => return store_down(e),
                Ok(Some(previous)) if unfinished(status_of(&previous).as_deref()) => {
                    return ApiError::InvalidField {
                    param: Some("previous_response_id".into()),
                    message: format!("Response '{id}' is still being answered in the background; continue it once it has finished."),
                }
                .into_response();
                }
                Ok(Some(previous)) => previous.conversation.clone(),
                Ok(None) => {
                    return ApiError::ResponseNotFound {
                        id: id.to_owned(),
                        param: Some("previous_response_id".into()),
                    }
                    .into_response();
                }
            }
        }
        None => Vec::new(),
    };
    let keeps = req.store.unwrap_or(true) && store.enabled();
    let input_start = history.len();
    let skip = usize::from(req.instructions.is_some());
    let mut echo = Echo {
        id: translate::response_id(),
        created_at: now_secs(),
        model: req.model.clone(),
        fields: Extra::new(),
    };
    let mut chat = match translate::to_chat(req, history, &mut echo) {
        Ok(chat) => chat,
        Err(e) => return e.into_response(),
    };
    // What happens, not only what was asked: a gateway that keeps nothing
    // says so.
    echo.fields.insert("store".into(), Value::Bool(keeps));
    let background = echo.fields.get("background") == Some(&Value::Bool(true));
    if background && !keeps {
        return ApiError::InvalidField {
            param: Some("background".into()),
            message: "This gateway keeps no responses (server.responses_store_mib is 0), so it cannot answer one in the background.".into(),
        }
        .into_response();
    }
    let (options, controls) = match crate::routes::gateway_fields(&mut chat.extra, &headers) {
        Ok(fields) => fields,
        Err(e) => return e.into_response(),
    };
    // The Responses `metadata` is the client's own (echoed back, tags read
    // from it above); OpenAI's chat API takes it only with `store`.
    chat.extra.shift_remove("metadata");
    let keep = keeps.then(|| Keep {
        store,
        owner,
        conversation: chat
            .messages
            .get(skip..)
            .map(<[ChatMessage]>::to_vec)
            .unwrap_or_default(),
        input_start,
        background,
    });
    let streaming = chat.is_stream();
    let model = std::mem::take(&mut chat.model);
    // What the answer reports without the upstream's usage: the prompt as
    // admission estimates it.
    let estimated_input = crate::metering::expected_prompt_tokens(&Call::Chat(&mut chat));
    if background && let Some(keep) = keep {
        let job = Job {
            state,
            principal,
            ctx,
            model,
            chat,
            options,
            controls,
            echo,
            keep,
            estimated_input,
        };
        return job.start().await;
    }
    let answer =
        crate::routes::serve_detached(state, principal, ctx, model, chat, |r| Call::Chat(r), options, controls).await;
    if !answer.status().is_success() {
        return answer;
    }
    if streaming {
        events(answer, echo, keep, estimated_input)
    } else {
        object(answer, &echo, keep, estimated_input).await
    }
}

/// A background response (`background: true`): answered on a task of its
/// own while the client polls `GET /v1/responses/{id}`, and cancelled by
/// `POST /v1/responses/{id}/cancel`.
struct Job {
    state: SharedState,
    principal: Principal,
    ctx: RequestContext,
    model: String,
    chat: switchyard_api::ChatCompletionRequest,
    options: crate::dispatch::RequestOptions,
    controls: crate::cache::Controls,
    echo: Echo,
    keep: Keep,
    estimated_input: u64,
}

/// A response's `status`, from its kept object.
fn status_of(stored: &Stored) -> Option<String> {
    serde_json::from_slice::<Value>(&stored.object)
        .ok()?
        .get("status")?
        .as_str()
        .map(str::to_owned)
}

/// Whether a response with this status is still being answered.
fn unfinished(status: Option<&str>) -> bool {
    matches!(status, Some("queued" | "in_progress"))
}

/// Forgets a background task when it ends, however it ends.
struct Untrack {
    store: ResponseStore,
    id: String,
}

impl Drop for Untrack {
    fn drop(&mut self) {
        self.store.finished(&self.id);
    }
}

impl Job {
    /// Keeps the response as `queued`, starts answering it, and returns the
    /// queued object.
    async fn start(self) -> Response {
        let queued = self.echo.object("queued");
        let bytes = match serde_json::to_vec(&queued) {
            Ok(bytes) => Bytes::from(bytes),
            Err(e) => return ApiError::Internal(e.to_string()).into_response(),
        };
        if let Err(e) = self.placeholder(&queued, bytes.clone(), true).await {
            return store_down(e);
        }
        // Kept, or too large for the store: then it could never be read.
        match self.keep.store.get(&queued.id, &self.keep.owner).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                return ApiError::InvalidField {
                    param: Some("input".into()),
                    message: "This request is larger than the store of responses keeps \
                              (server.responses_store_mib), so it cannot be answered in the background."
                        .into(),
                }
                .into_response();
            }
            Err(e) => return store_down(e),
        }
        let store = self.keep.store.clone();
        let id = queued.id.clone();
        // The request's `server.max_concurrent_requests` slot stays taken
        // while the job runs (its charge takes a write guard of its own).
        let slot = crate::metering::REQUEST_SLOT.try_with(std::sync::Arc::clone).ok();
        // The task waits until it is on the books, so that it is never
        // forgotten there when it ends at once.
        let (go, ready) = tokio::sync::oneshot::channel::<()>();
        // The job's spans and log lines stay the request's: under its server
        // span (and the client's trace), with its request id.
        use tracing::Instrument as _;
        let task = tokio::spawn(
            async move {
                if ready.await.is_err() {
                    return;
                }
                let _untrack = Untrack {
                    store: self.keep.store.clone(),
                    id: self.echo.id.clone(),
                };
                match slot {
                    Some(slot) => crate::metering::REQUEST_SLOT.scope(slot, self.run()).await,
                    None => self.run().await,
                }
            }
            .in_current_span(),
        );
        store.running(id, task);
        let _ = go.send(());
        ([(header::CONTENT_TYPE, "application/json")], bytes).into_response()
    }

    /// Keeps `object` (a queued or in-progress response) under its id with
    /// the request's input, so that `GET` and cancel find it.
    /// `first`: the response is new; later, only an unfinished one is
    /// replaced (not a cancel, nor a deletion).
    async fn placeholder(
        &self,
        object: &ResponseObject,
        bytes: Bytes,
        first: bool,
    ) -> Result<bool, store::StoreUnavailable> {
        let stored = Stored {
            owner: self.keep.owner.clone(),
            conversation: self.keep.conversation.clone(),
            object: bytes,
            input_start: self.keep.input_start,
            input_end: self.keep.conversation.len(),
        };
        if first {
            return self.keep.store.put(object.id.clone(), stored).await.map(|()| true);
        }
        self.keep.store.replace_unfinished(object.id.clone(), stored).await
    }

    /// Answers the request, then keeps the response as it ended (completed,
    /// incomplete or failed), unless it was cancelled or deleted meanwhile.
    async fn run(self) {
        // Cancelled on another replica, or deleted, before it started.
        if !still_running(&self.keep, &self.echo.id).await {
            return;
        }
        let in_progress = self.echo.object("in_progress");
        if let Ok(bytes) = serde_json::to_vec(&in_progress) {
            match self.placeholder(&in_progress, Bytes::from(bytes), false).await {
                Ok(true) => {}
                // Cancelled or deleted since (on another replica): no
                // upstream call is made for it.
                Ok(false) if !still_running(&self.keep, &self.echo.id).await => return,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(response = %self.echo.id, error = %e, "a background response could not be marked in progress");
                }
            }
        }
        let Job {
            state,
            principal,
            ctx,
            model,
            chat,
            options,
            controls,
            echo,
            keep,
            estimated_input,
        } = self;
        let answer =
            crate::routes::serve_detached(state, principal, ctx, model, chat, |r| Call::Chat(r), options, controls)
                .await;
        if !still_running(&keep, &echo.id).await {
            return;
        }
        let (store, owner) = (keep.store.clone(), keep.owner.clone());
        let (conversation, input_start) = (keep.conversation.clone(), keep.input_start);
        let failure = if answer.status().is_success() {
            let written = object(answer, &echo, Some(keep), estimated_input).await;
            if written.status().is_success() {
                // Kept, unless too large for the store.
                // Deleted meanwhile, or a store that does not answer:
                // nothing more to write.
                match store.get(&echo.id, &owner).await {
                    Ok(Some(now)) if unfinished(status_of(&now).as_deref()) => ResponseError {
                        code: "server_error".into(),
                        message: "The answer was larger than the store of responses keeps.".into(),
                    },
                    _ => return,
                }
            } else {
                error_of(written).await
            }
        } else {
            error_of(answer).await
        };
        let mut failed = echo.object("failed");
        failed.error = Some(failure);
        if let Ok(bytes) = serde_json::to_vec(&failed) {
            let stored = Stored {
                owner,
                input_end: conversation.len(),
                conversation,
                object: Bytes::from(bytes),
                input_start,
            };
            if let Err(e) = store.replace_unfinished(echo.id.clone(), stored).await {
                tracing::warn!(response = %echo.id, error = %e, "a failed background response could not be kept");
            }
        }
    }
}

/// Whether background response `id` is still wanted: kept, and neither
/// cancelled nor finished. A store that does not answer is taken as yes.
async fn still_running(keep: &Keep, id: &str) -> bool {
    match keep.store.get(id, &keep.owner).await {
        Ok(Some(now)) => unfinished(status_of(&now).as_deref()),
        Ok(None) => false,
        Err(_) => true,
    }
}

/// The error an unsuccessful answer carries, for a `failed` response.
async fn error_of(answer: Response) -> ResponseError {
    let status = answer.status();
    let body = axum::body::to_bytes(answer.into_body(), 1024 * 1024)
        .await
        .unwrap_or_default();
    let error = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("error").cloned())
        .unwrap_or(Value::Null);
    ResponseError {
        code: error.get("code").and_then(Value::as_str).map_or_else(
            || {
                if status.is_server_error() {
                    "server_error"
                } else {
                    "invalid_request"
                }
                .to_owned()
            },
            str::to_owned,
        ),
        message: error.get("message").and_then(Value::as_str).map_or_else(
            || format!("The request failed with HTTP {}.", status.as_u16()),
            str::to_owned,
        ),
    }
}

/// `POST /v1/responses/{id}/cancel`: stops a background response still
/// being answered and keeps it as `cancelled`; a response already finished
/// is returned as it is.
pub(crate) async fn cancel(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ResponseId(id): ResponseId,
) -> Response {
    let owner = owner(&principal);
    let store = state.responses.clone();
    let found = match store.get(&id, &owner).await {
        Ok(Some(stored)) => stored,
        Ok(None) => return ApiError::ResponseNotFound { id, param: None }.into_response(),
        Err(e) => return store_down(e),
    };
    let background = serde_json::from_slice::<Value>(&found.object)
        .ok()
        .and_then(|v| v.get("background").and_then(Value::as_bool))
        .unwrap_or(false);
    if !background {
        return ApiError::InvalidField {
            param: None,
            message: "Only a background response can be cancelled.".into(),
        }
        .into_response();
    }
    if !unfinished(status_of(&found).as_deref()) {
        // Finished (or cancelled) already: nothing to stop.
        return ([(header::CONTENT_TYPE, "application/json")], found.object.clone()).into_response();
    }
    let mut object: Value = serde_json::from_slice(&found.object).unwrap_or(Value::Null);
    if let Some(fields) = object.as_object_mut() {
        fields.insert("status".into(), Value::String("cancelled".into()));
    }
    let bytes = Bytes::from(object.to_string());
    let cancelled = move || Stored {
        owner: found.owner.clone(),
        conversation: found.conversation.clone(),
        object: bytes.clone(),
        input_start: found.input_start,
        input_end: found.input_end,
    };
    // Marked, only while it is unfinished (the job, here or on another
    // replica, may have finished since it was read: its answer is kept and
    // returned), so that the job finds it and drops its answer, which can
    // then no longer replace it; then stopped here when this replica runs
    // it (the attempt under way ends and is charged; no other starts). On a
    // task of its own: a client that leaves does not cut it short.
    let work = tokio::spawn(async move {
        let stop = |store: &ResponseStore, id: &str| {
            let task = store.finished(id);
            async move {
                if let Some(task) = task {
                    task.abort();
                    let _ = task.await;
                }
            }
        };
        if store.replace_unfinished(id.clone(), cancelled()).await? {
            stop(&store, &id).await;
            return Ok(cancelled().object);
        }
        // Finished since it was read (the job, here or on another replica,
        // wrote its answer): that is returned. Gone (deleted, expired) or
        // still unfinished (the cancelled record could not be written):
        // stopped here all the same when this replica runs it.
        Ok::<Bytes, store::StoreUnavailable>(match store.get(&id, &owner).await? {
            Some(now) if !unfinished(status_of(&now).as_deref()) => now.object.clone(),
            _ => {
                stop(&store, &id).await;
                cancelled().object
            }
        })
    });
    match work.await {
        Ok(Ok(bytes)) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Ok(Err(e)) => store_down(e),
        Err(e) => ApiError::Internal(format!("the cancel did not complete ({e})")).into_response(),
    }
}

/// A chat answer written as a response object.
async fn object(answer: Response, echo: &Echo, keep: Option<Keep>, estimated_input: u64) -> Response {
    let (mut parts, body) = answer.into_parts();
    let body = match axum::body::to_bytes(body, MAX_ANSWER_BYTES).await {
        Ok(body) => body,
        Err(e) => return ApiError::Internal(format!("the answer could not be read ({e})")).into_response(),
    };
    let chat = match serde_json::from_slice::<ChatCompletionResponse>(&body) {
        // Without the upstream's usage: what the request is charged.
        Ok(mut chat) => {
            if chat.usage.is_none() {
                chat.usage = Some(switchyard_api::Usage::new(
                    estimated_input,
                    crate::metering::output_estimate(&body),
                ));
            }
            chat
        }
        Err(e) => return ApiError::Internal(format!("the answer is not a chat completion ({e})")).into_response(),
    };
    let response = translate::from_chat(chat, echo);
    let bytes = match serde_json::to_vec(&response) {
        Ok(bytes) => Bytes::from(bytes),
        Err(e) => return ApiError::Internal(e.to_string()).into_response(),
    };
    if let Some(keep) = keep {
        keep.put(&response, bytes.clone()).await;
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

/// How long a Responses stream goes without writing before an SSE
/// comment (which clients skip) keeps it alive.
const KEEPALIVE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// A chat stream written as Responses events.
fn events(answer: Response, echo: Echo, keep: Option<Keep>, estimated_input: u64) -> Response {
    let (mut parts, body) = answer.into_parts();
    // Told of an event this translation cannot read, so that the chat
    // stream ends as the upstream's failure, not as a client that left.
    let fault = parts.extensions.get::<crate::stream::StreamFault>().cloned();
    let source = body.into_data_stream().eventsource();
    let converter = stream::Converter::new(echo, estimated_input);
    let out = futures_stream::unfold(
        (source, converter, keep, fault),
        |(mut source, mut conv, mut keep, fault)| async move {
            let broken = |why: &str| {
                if let Some(fault) = &fault {
                    let _ = fault.set(why.to_owned());
                }
                malformed(why)
            };
            if conv.is_done() {
                return None;
            }
            let mut out = Vec::new();
            // Output held back (a call's arguments still coming, calls
            // waiting behind it) or a slow upstream: a comment keeps the
            // connection alive through proxies' idle timeouts. The time
            // counts from the last write, not from the last upstream event.
            let deadline = tokio::time::Instant::now() + KEEPALIVE_EVERY;
            while out.is_empty() && !conv.is_done() {
                let Ok(next) = tokio::time::timeout_at(deadline, source.next()).await else {
                    out.push(Bytes::from_static(b": keepalive\n\n"));
                    break;
                };
                match next {
                    Some(Ok(event)) if event.data.trim() == "[DONE]" || event.data.trim().is_empty() => {
                        if event.data.trim() == "[DONE]" {
                            finish(&mut conv, &mut keep, &mut out).await;
                        }
                    }
                    Some(Ok(event)) => match serde_json::from_str::<Value>(&event.data) {
                        Ok(value) if value.get("error").is_some_and(|e| !e.is_null()) => {
                            conv.fail(&value["error"], &mut out);
                        }
                        Ok(value) => match serde_json::from_value(value) {
                            Ok(chunk) => conv.on_chunk(chunk, &mut out),
                            Err(e) => conv.fail(&broken(&e.to_string()), &mut out),
                        },
                        Err(e) => conv.fail(&broken(&e.to_string()), &mut out),
                    },
                    Some(Err(e)) => conv.fail(&malformed(&e.to_string()), &mut out),
                    // The chat stream always ends with `[DONE]` or an error
                    // event; without either it was cut.
                    None => conv.fail(&malformed("the stream ended early"), &mut out),
                }
            }
            let bytes: Bytes = out.concat().into();
            Some((bytes, (source, conv, keep, fault)))
        },
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from_stream(out.map(Ok::<_, Infallible>)))
}

async fn finish(conv: &mut stream::Converter, keep: &mut Option<Keep>, out: &mut Vec<Bytes>) {
    let response = conv.finish(out);
    if let Some(keep) = keep.take()
        && let Ok(bytes) = serde_json::to_vec(&response)
    {
        keep.put(&response, Bytes::from(bytes)).await;
    }
}

/// The 503 for a store that did not answer; the reason goes to the log.
fn store_down(e: store::StoreUnavailable) -> Response {
    tracing::warn!(error = %e, "the store of kept responses did not answer");
    ApiError::ResponseStore(e.0).into_response()
}

fn malformed(why: &str) -> Value {
    serde_json::json!({"message": format!("The answer's stream could not be read: {why}."), "code": "server_error"})
}

/// A response id from the path: one that is not valid (bytes that are not
/// UTF-8) gets an OpenAI-style 400 naming it.
pub(crate) struct ResponseId(String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ResponseId {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Response> {
        match <Path<String> as axum::extract::FromRequestParts<S>>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(ResponseId(id)),
            Err(e) => Err(ApiError::InvalidField {
                param: Some("response_id".into()),
                message: format!("The response id in the path is not valid: {}", e.body_text()),
            }
            .into_response()),
        }
    }
}

/// `GET /v1/responses/{id}`: a kept response, to the key that made it.
pub(crate) async fn retrieve(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ResponseId(id): ResponseId,
) -> Response {
    match state.responses.get(&id, &owner(&principal)).await {
        Ok(Some(stored)) => ([(header::CONTENT_TYPE, "application/json")], stored.object.clone()).into_response(),
        Ok(None) => ApiError::ResponseNotFound { id, param: None }.into_response(),
        Err(e) => store_down(e),
    }
}

/// `GET /v1/responses/{id}/input_items`: the items of a kept response's own
/// input (not those of the response it continued, nor its `instructions`),
/// newest first unless `order=asc`, `limit` (1–100, default 20) at a time
/// after the item `after`.
pub(crate) async fn input_items(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ResponseId(id): ResponseId,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let stored = match state.responses.get(&id, &owner(&principal)).await {
        Ok(Some(stored)) => stored,
        Ok(None) => return ApiError::ResponseNotFound { id, param: None }.into_response(),
        Err(e) => return store_down(e),
    };
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => 20,
        Some(Ok(n)) if (1..=100).contains(&n) => n,
        Some(_) => {
            return ApiError::InvalidField {
                param: Some("limit".into()),
                message: "limit: an integer from 1 to 100 is required".into(),
            }
            .into_response();
        }
    };
    let ascending = match query.get("order").map(String::as_str) {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(_) => {
            return ApiError::InvalidField {
                param: Some("order".into()),
                message: "order: `asc` or `desc` is required".into(),
            }
            .into_response();
        }
    };
    let input = stored
        .conversation
        .get(stored.input_start..stored.input_end)
        .unwrap_or_default();
    let mut items = translate::input_items(input, &id);
    if !ascending {
        items.reverse();
    }
    let start = match query.get("after") {
        None => 0,
        Some(after) => match items.iter().position(|i| i["id"].as_str() == Some(after.as_str())) {
            Some(at) => at + 1,
            None => {
                return ApiError::InvalidField {
                    param: Some("after".into()),
                    message: format!("after: no input item `{after}` in this response"),
                }
                .into_response();
            }
        },
    };
    let has_more = items.len() > start + limit;
    let page: Vec<Value> = items.into_iter().skip(start).take(limit).collect();
    axum::Json(serde_json::json!({
        "object": "list",
        "first_id": page.first().map(|i| i["id"].clone()),
        "last_id": page.last().map(|i| i["id"].clone()),
        "has_more": has_more,
        "data": page,
    }))
    .into_response()
}

/// `DELETE /v1/responses/{id}`.
pub(crate) async fn delete(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ResponseId(id): ResponseId,
) -> Response {
    let owner = owner(&principal);
    let store = state.responses.clone();
    // Removed first, then a background response still being answered here
    // is stopped: its answer, were it to finish meanwhile, finds no record
    // to replace, and a removal that fails leaves it running and findable
    // (never stopped with its record left unfinished). On a task of its
    // own: a client that leaves does not cut it short.
    let work = tokio::spawn(async move {
        let removed = store.remove(&id, &owner).await?;
        if removed && let Some(task) = store.finished(&id) {
            task.abort();
            let _ = task.await;
        }
        Ok::<_, store::StoreUnavailable>((id, removed))
    });
    match work.await {
        Ok(Ok((id, true))) => {
            axum::Json(serde_json::json!({"id": id, "object": "response.deleted", "deleted": true})).into_response()
        }
        Ok(Ok((id, false))) => ApiError::ResponseNotFound { id, param: None }.into_response(),
        Ok(Err(e)) => store_down(e),
        Err(e) => ApiError::Internal(format!("the deletion did not complete ({e})")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use serde_json::json;

    use super::*;

    /// A continuation (`previous_response_id`) sends the answer's
    /// reasoning text back with the turn it led to.
    #[test]
    fn a_continuation_sends_reasoning_text_back() {
        let response = |output: Value| -> ResponseObject {
            serde_json::from_value(json!({"id": "resp_1", "object": "response", "created_at": 1,
                "status": "completed", "model": "m", "output": output}))
            .unwrap()
        };
        let reasoning = json!({"type": "reasoning", "id": "rs_1", "summary": [], "status": "completed",
            "content": [{"type": "reasoning_text", "text": "think"}]});
        let call = json!({"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "f",
            "arguments": "{}", "status": "completed"});
        let text = json!({"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": "done", "annotations": []}]});
        let called = assistant_message(&response(json!([reasoning, call]))).unwrap();
        assert_eq!(called.extra["reasoning_content"], "think", "{:?}", called.extra);
        assert_eq!(called.tool_calls.unwrap()[0].id, "c1");
        let answered = assistant_message(&response(json!([reasoning, text]))).unwrap();
        assert_eq!(answered.extra["reasoning_content"], "think");
        let plain = assistant_message(&response(json!([text]))).unwrap();
        assert!(plain.extra.is_empty(), "{:?}", plain.extra);
    }
}
