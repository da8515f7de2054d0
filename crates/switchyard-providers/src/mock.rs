//! The built-in mock provider: deterministic answers with no network, so the
//! embedded default configuration works on a machine with no account.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use serde::Serialize;
use switchyard_api::{
    ChatChoice, ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, ChatMessage, ChunkChoice,
    ChunkDelta, CompletionChoice, CompletionRequest, CompletionResponse, EmbeddingData, EmbeddingRequest,
    EmbeddingResponse, EmbeddingUsage, EmbeddingVector, Extra, ImageGenerationRequest, ModerationRequest,
    RerankRequest, Role, SpeechRequest, Usage,
};

use crate::{
    ChunkStream, ImageEditRequest, MediaResponse, Provider, ProviderError, ProviderResponse, Result, StreamChunk,
    TranscriptionRequest,
};

/// A transparent one-pixel PNG, base64: the mock's every image.
const ONE_PIXEL_PNG: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";

/// The widest embedding the mock makes (OpenAI's largest model has 3,072).
const MAX_EMBEDDING_DIMS: u64 = 4096;

/// The most texts one embeddings request may hold (OpenAI's limit).
const MAX_EMBEDDING_INPUTS: usize = 2048;

/// Behaviour of a mock deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct MockSettings {
    /// Fixed reply; when unset the mock answers `mock reply: <last user message>`.
    pub reply: Option<String>,
    /// Delay before answering (before the first chunk of a stream).
    pub delay: Duration,
    /// Delay between stream chunks.
    pub chunk_delay: Duration,
    /// Length of mock embedding vectors.
    pub embedding_dims: usize,
}

impl Default for MockSettings {
    fn default() -> Self {
        Self {
            reply: None,
            delay: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            embedding_dims: 16,
        }
    }
}

/// A provider that answers from memory.
#[derive(Debug)]
pub struct MockProvider {
    settings: MockSettings,
    counter: AtomicU64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

fn to_bytes<T: Serialize>(value: &T) -> Result<Bytes> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| ProviderError::InvalidResponse(format!("mock could not encode its answer: {e}")))
}

/// Splits a reply into stream pieces: each word with its following space.
fn pieces(reply: &str) -> Vec<String> {
    let words: Vec<&str> = reply.split(' ').collect();
    let last = words.len().saturating_sub(1);
    words
        .iter()
        .enumerate()
        .map(|(i, w)| if i == last { (*w).to_owned() } else { format!("{w} ") })
        .collect()
}

/// A deterministic unit vector derived from `text` (FNV-1a seeding xorshift).
fn mock_embedding(text: &str, dims: usize) -> Vec<f32> {
    let mut seed: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.as_bytes() {
        seed ^= u64::from(*byte);
        seed = seed.wrapping_mul(0x0100_0000_01b3);
    }
    let mut vector: Vec<f32> = (0..dims)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|v| *v /= norm);
    }
    vector
}

impl MockProvider {
    /// A mock with the given behaviour.
    pub fn new(settings: MockSettings) -> Self {
        Self {
            settings,
            counter: AtomicU64::new(0),
        }
    }

    fn next_id(&self, prefix: &str) -> String {
        format!("{prefix}-mock-{}", self.counter.fetch_add(1, Ordering::Relaxed))
    }

    /// An image generation: `n` one-pixel PNGs, as URLs or base64
    /// (`response_format: b64_json`, and always for `gpt-image` models, which
    /// also report token usage as OpenAI's do).
    pub async fn images(&self, req: &ImageGenerationRequest) -> Result<ProviderResponse> {
        self.wait().await;
        if req.prompt.trim().is_empty() {
            return Err(ProviderError::InvalidRequest {
                message: "'prompt' must not be empty.".into(),
                param: Some("prompt".into()),
            });
        }
        let n = req.n.unwrap_or(1);
        if !(1..=10).contains(&n) {
            return Err(ProviderError::InvalidRequest {
                message: "'n' must be from 1 to 10.".into(),
                param: Some("n".into()),
            });
        }
        let token_priced = req.model.starts_with("gpt-image");
        let base64 = token_priced || req.extra.get("response_format").and_then(|f| f.as_str()) == Some("b64_json");
        let data: Vec<serde_json::Value> = (0..n)
            .map(|_| {
                let id = self.next_id("img");
                if base64 {
                    serde_json::json!({"b64_json": ONE_PIXEL_PNG, "revised_prompt": req.prompt})
                } else {
                    serde_json::json!({"url": format!("https://mock.invalid/{id}.png"), "revised_prompt": req.prompt})
                }
            })
            .collect();
        let mut answer = serde_json::json!({"created": now(), "data": data});
        let mut usage = None;
        if token_priced {
            // OpenAI's output tokens of a square image at each quality.
            let per_image = match req.quality.as_deref() {
                Some("low") => 272,
                Some("high") => 4160,
                _ => 1056,
            };
            let input = words(&req.prompt).max(1);
            let output = per_image * u64::from(n);
            answer["usage"] = serde_json::json!({
                "input_tokens": input,
                "output_tokens": output,
                "total_tokens": input + output,
                "input_tokens_details": {"text_tokens": input, "image_tokens": 0},
            });
            usage = serde_json::from_value(answer["usage"].clone()).ok();
        }
        Ok(ProviderResponse {
            body: to_bytes(&answer)?,
            usage,
        })
    }

    /// An image edit: `n` one-pixel PNGs, as URLs or base64, like
    /// [`MockProvider::images`]; `gpt-image` models report the prompt's
    /// words and 272 tokens per image sent as input.
    pub async fn image_edit(&self, req: &ImageEditRequest) -> Result<MediaResponse> {
        self.wait().await;
        let prompt = req.field("prompt").unwrap_or_default();
        if prompt.trim().is_empty() {
            return Err(ProviderError::InvalidRequest {
                message: "'prompt' must not be empty.".into(),
                param: Some("prompt".into()),
            });
        }
        let n = req.count();
        let token_priced = req.model.starts_with("gpt-image");
        let base64 = token_priced || req.field("response_format") == Some("b64_json");
        let data: Vec<serde_json::Value> = (0..n)
            .map(|_| {
                let id = self.next_id("img");
                if base64 {
                    serde_json::json!({"b64_json": ONE_PIXEL_PNG})
                } else {
                    serde_json::json!({"url": format!("https://mock.invalid/{id}.png")})
                }
            })
            .collect();
        let mut answer = serde_json::json!({"created": now(), "data": data});
        if token_priced {
            let text = words(prompt).max(1);
            let images = 272 * req.images().count() as u64;
            let output = 1056 * n;
            answer["usage"] = serde_json::json!({
                "input_tokens": text + images,
                "output_tokens": output,
                "total_tokens": text + images + output,
                "input_tokens_details": {"text_tokens": text, "image_tokens": images},
            });
        }
        Ok(MediaResponse {
            body: to_bytes(&answer)?,
            content_type: "application/json".into(),
        })
    }

    /// A rerank: documents scored by the share of the query's words they
    /// hold, best first, `top_n` of them, with token usage.
    pub async fn rerank(&self, req: &RerankRequest) -> Result<ProviderResponse> {
        self.wait().await;
        if req.documents.is_empty() {
            return Err(ProviderError::InvalidRequest {
                message: "'documents' must not be empty.".into(),
                param: Some("documents".into()),
            });
        }
        let query: Vec<String> = req.query.split_whitespace().map(str::to_lowercase).collect();
        let text = |doc: &serde_json::Value| {
            doc.as_str()
                .or_else(|| doc.get("text").and_then(|t| t.as_str()))
                .unwrap_or_default()
                .to_lowercase()
        };
        let mut scored: Vec<(usize, f64)> = req
            .documents
            .iter()
            .enumerate()
            .map(|(i, doc)| {
                let words: Vec<String> = text(doc).split_whitespace().map(str::to_owned).collect();
                let hits = query.iter().filter(|q| words.contains(q)).count();
                (i, hits as f64 / query.len().max(1) as f64)
            })
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let top = req.top_n.map_or(scored.len(), |n| (n as usize).min(scored.len()));
        let results: Vec<serde_json::Value> = scored[..top]
            .iter()
            .map(|(i, score)| serde_json::json!({"index": i, "relevance_score": score}))
            .collect();
        let tokens = words(&req.query) + req.documents.iter().map(|d| words(&text(d))).sum::<u64>();
        let answer = serde_json::json!({"id": self.next_id("rerank"), "model": req.model, "results": results,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}});
        Ok(ProviderResponse {
            body: to_bytes(&answer)?,
            usage: serde_json::from_value(answer["usage"].clone()).ok(),
        })
    }

    /// A moderation: one result per input text, flagged (as `violence`)
    /// when the text holds the word `violent`.
    pub async fn moderations(&self, req: &ModerationRequest) -> Result<ProviderResponse> {
        self.wait().await;
        let texts: Vec<&str> = match &req.input {
            serde_json::Value::String(s) => vec![s.as_str()],
            serde_json::Value::Array(items) if !items.is_empty() => items
                .iter()
                .map(|item| {
                    item.as_str()
                        .or_else(|| item.get("text").and_then(|t| t.as_str()))
                        .unwrap_or("")
                })
                .collect(),
            _ => {
                return Err(ProviderError::InvalidRequest {
                    message: "'input' must be a string or a non-empty array.".into(),
                    param: Some("input".into()),
                });
            }
        };
        let results: Vec<serde_json::Value> = texts
            .iter()
            .map(|text| {
                let flagged = text.to_lowercase().split(|c: char| !c.is_alphanumeric()).any(|w| w == "violent");
                let score = if flagged { 0.98 } else { 0.001 };
                serde_json::json!({
                    "flagged": flagged,
                    "categories": {"violence": flagged, "hate": false, "harassment": false, "self-harm": false, "sexual": false},
                    "category_scores": {"violence": score, "hate": 0.001, "harassment": 0.001, "self-harm": 0.001, "sexual": 0.001},
                })
            })
            .collect();
        let answer = serde_json::json!({"id": self.next_id("modr"), "model": req.model, "results": results});
        Ok(ProviderResponse {
            body: to_bytes(&answer)?,
            usage: None,
        })
    }

    /// Text to speech: a few bytes of silence per character, in the
    /// format asked for (`mp3` by default), tagged with its media type.
    pub async fn speech(&self, req: &SpeechRequest) -> Result<crate::AudioStream> {
        self.wait().await;
        if req.input.is_empty() {
            return Err(ProviderError::InvalidRequest {
                message: "'input' must not be empty.".into(),
                param: Some("input".into()),
            });
        }
        let format = req
            .extra
            .get("response_format")
            .and_then(|f| f.as_str())
            .unwrap_or("mp3");
        let (magic, content_type): (&[u8], &str) = match format {
            "mp3" => (b"ID3", "audio/mpeg"),
            "wav" => (b"RIFF", "audio/wav"),
            "opus" => (b"OggS", "audio/ogg"),
            "aac" => (b"\xff\xf1", "audio/aac"),
            "flac" => (b"fLaC", "audio/flac"),
            "pcm" => (b"", "audio/pcm"),
            other => {
                return Err(ProviderError::InvalidRequest {
                    message: format!("'response_format' `{other}` is not one of mp3, opus, aac, flac, wav, pcm."),
                    param: Some("response_format".into()),
                });
            }
        };
        let mut body = magic.to_vec();
        body.resize(magic.len() + 16 * req.input.chars().count(), 0);
        Ok(crate::AudioStream::whole(content_type.to_owned(), Bytes::from(body)))
    }

    /// Speech to text: `mock transcript of <file> (<n> bytes)`, as long as
    /// its size at 128 kbit/s, in the format asked for (`json` by default,
    /// with usage in seconds, or in tokens for `gpt-4o` transcription models).
    pub async fn transcription(&self, req: &TranscriptionRequest) -> Result<MediaResponse> {
        self.wait().await;
        let text = format!(
            "mock transcript of {} ({} bytes)",
            req.file.filename,
            req.file.bytes.len()
        );
        let seconds = req.file.bytes.len().div_ceil(16_000).max(1) as u64;
        let usage = if req.model.starts_with("gpt-4o") {
            let audio = seconds * 10;
            let output = words(&text);
            serde_json::json!({"type": "tokens", "input_tokens": audio, "output_tokens": output, "total_tokens": audio + output,
                "input_token_details": {"text_tokens": 0, "audio_tokens": audio}})
        } else {
            serde_json::json!({"type": "duration", "seconds": seconds})
        };
        let task = if req.translate { "translate" } else { "transcribe" };
        let (body, content_type) = match req.field("response_format").unwrap_or("json") {
            "json" => (serde_json::json!({"text": text, "usage": usage}).to_string(), "application/json"),
            "verbose_json" => (
                serde_json::json!({"task": task, "language": "english", "duration": seconds, "text": text, "segments": [], "usage": usage})
                    .to_string(),
                "application/json",
            ),
            "text" => (format!("{text}\n"), "text/plain; charset=utf-8"),
            "srt" => (format!("1\n00:00:00,000 --> 00:00:{seconds:02},000\n{text}\n"), "text/plain; charset=utf-8"),
            "vtt" => (format!("WEBVTT\n\n00:00:00.000 --> 00:00:{seconds:02}.000\n{text}\n"), "text/plain; charset=utf-8"),
            other => {
                return Err(ProviderError::InvalidRequest {
                    message: format!("'response_format' `{other}` is not one of json, text, srt, verbose_json, vtt."),
                    param: Some("response_format".into()),
                });
            }
        };
        Ok(MediaResponse {
            body: Bytes::from(body),
            content_type: content_type.to_owned(),
        })
    }

    fn reply_to(&self, prompt: &str) -> String {
        match &self.settings.reply {
            Some(reply) => reply.clone(),
            None => format!("mock reply: {prompt}"),
        }
    }

    async fn wait(&self) {
        if !self.settings.delay.is_zero() {
            tokio::time::sleep(self.settings.delay).await;
        }
    }

    fn chat_reply(req: &ChatCompletionRequest) -> (String, u64) {
        let last_user = req
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(ChatMessage::content_text)
            .unwrap_or_default();
        let prompt_tokens = req
            .messages
            .iter()
            .map(|m| words(&m.content_text()))
            .sum::<u64>()
            .max(1);
        (last_user, prompt_tokens)
    }

    /// Streams `pieces` as chunks built by `chunk`, then an optional usage chunk.
    fn stream_pieces<F>(
        &self,
        pieces: Vec<String>,
        usage_chunk: Option<Result<Bytes>>,
        usage: Usage,
        chunk: F,
    ) -> ChunkStream
    where
        F: Fn(usize, Option<&str>) -> Result<Bytes> + Send + 'static,
    {
        let delay = self.settings.delay;
        let chunk_delay = self.settings.chunk_delay;
        let count = pieces.len();
        // index 0: opening chunk; 1..=count: pieces; count+1: finish chunk.
        let body = stream::iter(0..count + 2).then(move |i| {
            let piece = i.checked_sub(1).and_then(|p| pieces.get(p).cloned());
            let data = if i == count + 1 {
                chunk(i, None)
            } else {
                chunk(i, piece.as_deref().or(Some("")))
            };
            async move {
                let pause = if i == 0 { delay } else { chunk_delay };
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
                data.map(|data| StreamChunk { data, usage: None })
            }
        });
        let tail = stream::iter(usage_chunk.map(move |data| {
            data.map(|data| StreamChunk {
                data,
                usage: Some(usage),
            })
        }));
        Box::pin(body.chain(tail))
    }
}

impl Provider for MockProvider {
    fn kind(&self) -> &'static str {
        "mock"
    }

    async fn chat(&self, req: &ChatCompletionRequest) -> Result<ProviderResponse> {
        self.wait().await;
        let (prompt, prompt_tokens) = Self::chat_reply(req);
        let reply = self.reply_to(&prompt);
        let usage = Usage::new(prompt_tokens, words(&reply));
        let response = ChatCompletionResponse {
            id: self.next_id("chatcmpl"),
            object: "chat.completion".into(),
            created: now(),
            model: req.model.clone(),
            choices: vec![ChatChoice {
                index: 0,
                message: ChatMessage::text(Role::Assistant, reply),
                finish_reason: Some("stop".into()),
                extra: Extra::new(),
            }],
            usage: Some(usage.clone()),
            extra: Extra::new(),
        };
        Ok(ProviderResponse {
            body: to_bytes(&response)?,
            usage: Some(usage),
        })
    }

    async fn chat_stream(&self, req: &ChatCompletionRequest) -> Result<ChunkStream> {
        let (prompt, prompt_tokens) = Self::chat_reply(req);
        let reply = self.reply_to(&prompt);
        let usage = Usage::new(prompt_tokens, words(&reply));
        let (id, created, model) = (self.next_id("chatcmpl"), now(), req.model.clone());
        let make = move |choices: Vec<ChunkChoice>, usage: Option<Usage>| ChatCompletionChunk {
            id: id.clone(),
            object: "chat.completion.chunk".into(),
            created,
            model: model.clone(),
            choices,
            usage,
            extra: Extra::new(),
        };
        let usage_chunk = req
            .wants_stream_usage()
            .then(|| to_bytes(&make(Vec::new(), Some(usage.clone()))));
        Ok(self.stream_pieces(pieces(&reply), usage_chunk, usage, move |i, piece| {
            let delta = ChunkDelta {
                role: (i == 0).then_some(Role::Assistant),
                content: piece.map(str::to_owned),
                extra: Extra::new(),
            };
            let finish_reason = piece.is_none().then(|| "stop".to_owned());
            to_bytes(&make(
                vec![ChunkChoice {
                    index: 0,
                    delta,
                    finish_reason,
                    extra: Extra::new(),
                }],
                None,
            ))
        }))
    }

    async fn completion(&self, req: &CompletionRequest) -> Result<ProviderResponse> {
        self.wait().await;
        let prompts = req.prompt.texts();
        let prompt_tokens = prompts.iter().map(|p| words(p)).sum::<u64>().max(1);
        let choices: Vec<CompletionChoice> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| CompletionChoice {
                text: self.reply_to(p),
                index: i as u32,
                finish_reason: Some("stop".into()),
                extra: Extra::new(),
            })
            .collect();
        let usage = Usage::new(prompt_tokens, choices.iter().map(|c| words(&c.text)).sum());
        let response = CompletionResponse {
            id: self.next_id("cmpl"),
            object: "text_completion".into(),
            created: now(),
            model: req.model.clone(),
            choices,
            usage: Some(usage.clone()),
            extra: Extra::new(),
        };
        Ok(ProviderResponse {
            body: to_bytes(&response)?,
            usage: Some(usage),
        })
    }

    async fn completion_stream(&self, req: &CompletionRequest) -> Result<ChunkStream> {
        let prompt = req.prompt.texts().join(" ");
        let reply = self.reply_to(&prompt);
        let usage = Usage::new(words(&prompt).max(1), words(&reply));
        let (id, created, model) = (self.next_id("cmpl"), now(), req.model.clone());
        let make = move |choices: Vec<CompletionChoice>, usage: Option<Usage>| CompletionResponse {
            id: id.clone(),
            object: "text_completion".into(),
            created,
            model: model.clone(),
            choices,
            usage,
            extra: Extra::new(),
        };
        let usage_chunk = req
            .wants_stream_usage()
            .then(|| to_bytes(&make(Vec::new(), Some(usage.clone()))));
        Ok(self.stream_pieces(pieces(&reply), usage_chunk, usage, move |_, piece| {
            to_bytes(&make(
                vec![CompletionChoice {
                    text: piece.unwrap_or_default().to_owned(),
                    index: 0,
                    finish_reason: piece.is_none().then(|| "stop".to_owned()),
                    extra: Extra::new(),
                }],
                None,
            ))
        }))
    }

    async fn embeddings(&self, req: &EmbeddingRequest) -> Result<ProviderResponse> {
        self.wait().await;
        let dims = match req.extra.get("dimensions") {
            None | Some(serde_json::Value::Null) => self.settings.embedding_dims,
            Some(d) => match d.as_u64().filter(|d| (1..=MAX_EMBEDDING_DIMS).contains(d)) {
                Some(d) => usize::try_from(d).unwrap_or(self.settings.embedding_dims),
                None => {
                    return Err(ProviderError::InvalidRequest {
                        message: format!("'dimensions' must be an integer from 1 to {MAX_EMBEDDING_DIMS}."),
                        param: Some("dimensions".into()),
                    });
                }
            },
        };
        let base64 = req.encoding_format.as_deref() == Some("base64");
        let texts = req.input.texts();
        if texts.len() > MAX_EMBEDDING_INPUTS {
            return Err(ProviderError::InvalidRequest {
                message: format!("'input' may hold at most {MAX_EMBEDDING_INPUTS} items, as OpenAI's does."),
                param: Some("input".into()),
            });
        }
        let data = texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let vector = mock_embedding(text, dims);
                let embedding = if base64 {
                    let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
                    EmbeddingVector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
                } else {
                    EmbeddingVector::Float(vector)
                };
                EmbeddingData {
                    object: "embedding".into(),
                    index: i as u32,
                    embedding,
                    extra: Extra::new(),
                }
            })
            .collect();
        let tokens = texts.iter().map(|t| words(t)).sum::<u64>().max(1);
        let usage = Usage::new(tokens, 0);
        let response = EmbeddingResponse {
            object: "list".into(),
            data,
            model: req.model.clone(),
            usage: Some(EmbeddingUsage {
                prompt_tokens: tokens,
                total_tokens: tokens,
                extra: Extra::new(),
            }),
            extra: Extra::new(),
        };
        Ok(ProviderResponse {
            body: to_bytes(&response)?,
            usage: Some(usage),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::TryStreamExt;

    fn chat_request(stream_usage: bool) -> ChatCompletionRequest {
        serde_json::from_value(serde_json::json!({
            "model": "mock-1",
            "messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hello there"}],
            "stream": true,
            "stream_options": {"include_usage": stream_usage}
        }))
        .unwrap_or_else(|e| unreachable!("{e}"))
    }

    #[tokio::test]
    async fn embedding_sizes_a_client_asks_for_are_bounded() {
        let mock = MockProvider::new(MockSettings::default());
        let request = |body: serde_json::Value| -> EmbeddingRequest {
            serde_json::from_value(body).unwrap_or_else(|e| unreachable!("{e}"))
        };
        let wide = mock
            .embeddings(&request(
                serde_json::json!({"model": "m", "input": "a", "dimensions": 100_000_000_000u64}),
            ))
            .await;
        assert!(
            matches!(&wide, Err(ProviderError::InvalidRequest { param: Some(p), .. }) if p == "dimensions"),
            "{wide:?}"
        );
        let many = vec!["a"; MAX_EMBEDDING_INPUTS + 1];
        let long = mock
            .embeddings(&request(serde_json::json!({"model": "m", "input": many})))
            .await;
        assert!(
            matches!(&long, Err(ProviderError::InvalidRequest { param: Some(p), .. }) if p == "input"),
            "{long:?}"
        );
        let fine = mock
            .embeddings(&request(
                serde_json::json!({"model": "m", "input": "a", "dimensions": 8}),
            ))
            .await
            .unwrap_or_else(|e| unreachable!("{e}"));
        let parsed: serde_json::Value = serde_json::from_slice(&fine.body).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(parsed["data"][0]["embedding"].as_array().map(Vec::len), Some(8));
    }

    #[tokio::test]
    async fn chat_is_deterministic_and_counts_usage() {
        let mock = MockProvider::new(MockSettings::default());
        let answer = mock.chat(&chat_request(false)).await.map_err(|e| e.to_string());
        let answer = answer.unwrap_or_else(|e| unreachable!("{e}"));
        let parsed: ChatCompletionResponse =
            serde_json::from_slice(&answer.body).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(parsed.choices[0].message.content_text(), "mock reply: hello there");
        assert_eq!(answer.usage, Some(Usage::new(4, 4)));
    }

    #[tokio::test]
    async fn stream_reassembles_to_the_same_text_and_ends_with_usage() {
        let mock = MockProvider::new(MockSettings::default());
        let stream = mock
            .chat_stream(&chat_request(true))
            .await
            .unwrap_or_else(|e| unreachable!("{e}"));
        let chunks: Vec<StreamChunk> = stream.try_collect().await.unwrap_or_else(|e| unreachable!("{e}"));
        let mut text = String::new();
        for chunk in &chunks {
            let parsed: ChatCompletionChunk =
                serde_json::from_slice(&chunk.data).unwrap_or_else(|e| unreachable!("{e}"));
            for choice in parsed.choices {
                text.push_str(choice.delta.content.as_deref().unwrap_or(""));
            }
        }
        assert_eq!(text, "mock reply: hello there");
        let last = chunks.last().and_then(|c| c.usage.clone());
        assert_eq!(last, Some(Usage::new(4, 4)));
        let without = mock
            .chat_stream(&chat_request(false))
            .await
            .unwrap_or_else(|e| unreachable!("{e}"));
        let chunks: Vec<StreamChunk> = without.try_collect().await.unwrap_or_else(|e| unreachable!("{e}"));
        assert!(chunks.iter().all(|c| c.usage.is_none()));
    }

    #[test]
    fn embeddings_are_unit_vectors_and_differ_by_text() {
        let a = mock_embedding("a", 16);
        let b = mock_embedding("b", 16);
        assert_eq!(a, mock_embedding("a", 16));
        assert_ne!(a, b);
        let norm: f32 = a.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }
}
