//! Admin endpoints: what the router knows about each deployment, and
//! `GET /health`, which asks each one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use switchyard_providers::Provider as _;
use switchyard_routing::DeploymentInfo;

use crate::config::HealthCheck;
use crate::error::ApiError;
use crate::routes::SharedState;

/// How long `GET /health` waits for one deployment.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(30);

/// How many deployments `GET /health` asks at once.
const HEALTH_CONCURRENCY: usize = 8;

/// `GET /health` (LiteLLM's, master key only: it spends upstream tokens):
/// sends every deployment (or `?model=`'s) its `health_check` (a one-token
/// chat completion, a one-input embedding, one small image, a moderation,
/// two characters of speech, half a second to transcribe, or one
/// document to rerank), concurrently, each within 30 s, and lists the
/// healthy and the unhealthy ones with the error.
/// Deployments with `health_check: none` and wildcard ones are left out.
/// The answers touch no breaker, statistic or spend.
pub async fn health(State(state): State<SharedState>, Query(query): Query<HashMap<String, String>>) -> Response {
    let only = query.get("model").map(|m| state.group_name(m).to_owned());
    if let Some(name) = &only
        && state.registry.group(name).is_err()
    {
        return ApiError::ModelNotFound(name.clone()).into_response();
    }
    // Owned, for the futures below to hold across their awaits.
    let mut targets: Vec<(String, DeploymentInfo)> = Vec::new();
    for name in state.registry.model_names() {
        if only.as_ref().is_some_and(|o| o != name) {
            continue;
        }
        let Ok(group) = state.registry.group(name) else {
            continue;
        };
        for d in group.deployments() {
            if state.health_checks.get(d.id.0).is_some_and(|c| *c != HealthCheck::None) {
                targets.push((name.to_owned(), d.clone()));
            }
        }
    }
    let results: Vec<(Value, bool)> = futures_util::stream::iter(targets)
        .map(|(name, d)| {
            let state = state.clone();
            async move {
                let started = Instant::now();
                let outcome = ask(&state, &d).await;
                let mut entry = json!({
                    "model_name": name,
                    "deployment": d.name,
                    "provider": d.provider,
                    "model": d.model,
                    "latency_ms": started.elapsed().as_millis() as u64,
                });
                let healthy = outcome.is_ok();
                if let Err(error) = outcome {
                    entry["error"] = json!(error);
                }
                (entry, healthy)
            }
        })
        .buffered(HEALTH_CONCURRENCY)
        .collect()
        .await;
    let (healthy, unhealthy): (Vec<_>, Vec<_>) = results.into_iter().partition(|(_, ok)| *ok);
    Json(json!({
        "healthy_count": healthy.len(),
        "unhealthy_count": unhealthy.len(),
        "healthy_endpoints": healthy.into_iter().map(|(e, _)| e).collect::<Vec<_>>(),
        "unhealthy_endpoints": unhealthy.into_iter().map(|(e, _)| e).collect::<Vec<_>>(),
    }))
    .into_response()
}

/// Sends `d` its health check; the error as its message.
async fn ask(state: &SharedState, d: &DeploymentInfo) -> Result<(), String> {
    let Some(client) = state.provider(d.id) else {
        return Err("no client for this deployment".into());
    };
    let check = state.health_checks.get(d.id.0).copied().unwrap_or_default();
    let call = async {
        match check {
            HealthCheck::Embedding => {
                let req = parse(json!({"model": d.model, "input": "health check"}))?;
                client.embeddings(&req).await.map(drop).map_err(|e| e.to_string())
            }
            HealthCheck::ImageGeneration => {
                // The smallest, cheapest image the model makes.
                let mut body = json!({"model": d.model, "prompt": "a white square", "n": 1});
                if d.model.contains("dall-e-2") {
                    body["size"] = json!("256x256");
                } else if d.model.contains("gpt-image") {
                    body["size"] = json!("1024x1024");
                    body["quality"] = json!("low");
                }
                client.images(&parse(body)?).await.map(drop).map_err(|e| e.to_string())
            }
            HealthCheck::Moderation => {
                let req = parse(json!({"model": d.model, "input": "health check"}))?;
                client.moderations(&req).await.map(drop).map_err(|e| e.to_string())
            }
            HealthCheck::AudioSpeech => {
                let req = parse(json!({"model": d.model, "input": "hi", "voice": "alloy"}))?;
                let mut audio = client.speech(&req).await.map_err(|e| e.to_string())?.body;
                // Healthy once all of it has arrived.
                while let Some(piece) = futures_util::StreamExt::next(&mut audio).await {
                    piece.map_err(|e| e.to_string())?;
                }
                Ok(())
            }
            HealthCheck::AudioTranscription => {
                let req = switchyard_providers::TranscriptionRequest {
                    model: d.model.clone(),
                    translate: false,
                    file: switchyard_providers::UploadedFile {
                        filename: "health-check.wav".into(),
                        content_type: Some("audio/wav".into()),
                        bytes: silence_wav(),
                    },
                    fields: Vec::new(),
                    plain_text: false,
                };
                client.transcription(&req).await.map(drop).map_err(|e| e.to_string())
            }
            HealthCheck::Rerank => {
                let req = parse(json!({"model": d.model, "query": "health check", "documents": ["health check"]}))?;
                client.rerank(&req).await.map(drop).map_err(|e| e.to_string())
            }
            HealthCheck::Chat | HealthCheck::None => {
                let req = serde_json::from_value(json!({
                    "model": d.model,
                    "max_tokens": 1,
                    "messages": [{"role": "user", "content": "health check: reply with one word"}],
                }))
                .map_err(|e| e.to_string())?;
                client.chat(&req).await.map(drop).map_err(|e| e.to_string())
            }
        }
    };
    match tokio::time::timeout(HEALTH_TIMEOUT, call).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {} s", HEALTH_TIMEOUT.as_secs())),
    }
}

/// A request body as the provider's type.
fn parse<T: serde::de::DeserializeOwned>(body: Value) -> Result<T, String> {
    serde_json::from_value(body).map_err(|e| e.to_string())
}

/// Half a second of silence as a WAV file (16 kHz, 16-bit mono), above
/// the shortest audio upstreams take.
fn silence_wav() -> bytes::Bytes {
    const SAMPLES: u32 = 8_000;
    let data = SAMPLES * 2;
    let mut wav = Vec::with_capacity(44 + data as usize);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&16_000u32.to_le_bytes());
    wav.extend_from_slice(&32_000u32.to_le_bytes()); // bytes per second
    wav.extend_from_slice(&2u16.to_le_bytes()); // bytes per frame
    wav.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data.to_le_bytes());
    wav.resize(44 + data as usize, 0);
    bytes::Bytes::from(wav)
}

/// `GET /admin/deployments`: every deployment with its circuit-breaker state
/// (`closed`, `open`, `half_open`, `key_invalid`), the milliseconds left in
/// its cooldown, and its live statistics. Credentials are never included.
pub async fn deployments(State(state): State<SharedState>) -> Json<Value> {
    let now = state.now_ms();
    let breakers = state.cooldowns.snapshot(now);
    let mut out = Vec::new();
    for name in state.registry.model_names() {
        let Ok(group) = state.registry.group(name) else {
            continue;
        };
        for d in group.deployments() {
            let stats = state.stats.deployment(d.id);
            let breaker = breakers.get(d.id.0);
            out.push(json!({
                "model_name": name,
                "deployment": d.name,
                "provider": d.provider,
                "model": d.model,
                "cooldown": {
                    "state": breaker.map_or("closed", |b| b.state.as_str()),
                    "recent_failures": breaker.map_or(0, |b| b.recent_failures),
                    "remaining_ms": breaker.map_or(0, |b| b.remaining_ms),
                },
                "stats": {
                    "in_flight": stats.in_flight(),
                    "successes": stats.successes(),
                    "failures": stats.failures(),
                    "latency_ewma_ms": stats.latency_ewma_us().map(|us| us / 1000.0),
                    "ttft_ewma_ms": stats.ttft_ewma_us().map(|us| us / 1000.0),
                    "rpm_used": stats.rpm_used(now),
                    "tpm_used": stats.tpm_used(now),
                },
            }));
        }
    }
    let policy = state.cooldowns.policy();
    Json(json!({
        "cooldown_policy": {
            "allowed_fails": policy.allowed_fails,
            "allowed_fails_window_ms": policy.window_ms,
            "cooldown_ms": policy.cooldown_ms,
        },
        "deployments": out,
    }))
}

/// `GET /admin/routers`: every learned router with the version serving now
/// (artifact version, training-data hash, candidates, metrics) and its reload
/// status (loads, rejections and the last error).
pub async fn routers(State(state): State<SharedState>) -> Json<Value> {
    let mut names: Vec<&String> = state.learned.keys().collect();
    names.sort();
    let routers: Vec<Value> = names
        .into_iter()
        .filter_map(|name| state.learned.get(name).map(|route| (name, route)))
        .map(|(name, route)| {
            let current = route.current().map(|loaded| {
                let m = &loaded.router.manifest;
                json!({
                    "version": loaded.version,
                    "loaded_at": loaded.loaded_at,
                    "kind": m.kind,
                    "embedder": m.embedder,
                    "data_hash": m.data_hash,
                    "models": m.models,
                    "groups": loaded.groups,
                    "metrics": m.metrics,
                })
            });
            json!({
                "model_name": name,
                "artifact": route.spec.location.to_string(),
                "current": current,
                "status": route.status(),
            })
        })
        .collect();
    Json(json!({ "routers": routers }))
}
