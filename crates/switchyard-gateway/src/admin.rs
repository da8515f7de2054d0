//! Admin endpoints: what the router knows about each deployment.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::routes::SharedState;

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
