//! Inputs shared by Switchyard's criterion benchmarks (`cargo bench -p switchyard-benches`).

use std::time::Duration;

use switchyard_routing::{DeploymentId, DeploymentInfo, InFlight, LiveStats, ModelGroup, Outcome, RoutingError};

/// A realistic chat request body: a system prompt, a few turns, tools and sampling parameters.
pub fn chat_body() -> Vec<u8> {
    let turns: Vec<serde_json::Value> = (0..6)
        .map(|i| {
            serde_json::json!({
                "role": if i % 2 == 0 { "user" } else { "assistant" },
                "content": format!("turn {i}: {}", "the quick brown fox jumps over the lazy dog ".repeat(4))
            })
        })
        .collect();
    let mut messages = vec![serde_json::json!({"role": "system", "content": "You are a helpful assistant."})];
    messages.extend(turns);
    serde_json::to_vec(&serde_json::json!({
        "model": "gpt-4o-mini",
        "messages": messages,
        "temperature": 0.7,
        "max_tokens": 256,
        "stream": true,
        "stream_options": {"include_usage": true},
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}],
        "user": "bench"
    }))
    .unwrap_or_default()
}

/// A model group of `n` deployments with weights 1 to 3, varied prices and
/// quality scores, and rpm and tpm limits.
pub fn group(n: usize) -> Result<ModelGroup, RoutingError> {
    let deployments = (0..n)
        .map(|i| DeploymentInfo {
            id: DeploymentId(i),
            name: format!("bench/{i}"),
            model: format!("model-{i}"),
            provider: "mock".into(),
            weight: 1.0 + (i % 3) as f64,
            input_cost_per_token: 1e-6 * (1 + i % 5) as f64,
            output_cost_per_token: 4e-6 * (1 + i % 5) as f64,
            rpm: Some(10_000),
            tpm: Some(2_000_000),
            quality: Some(0.5 + 0.1 * (i % 5) as f64),
        })
        .collect();
    ModelGroup::new("bench", deployments)
}

/// Live statistics for `n` deployments as a busy gateway would have them at
/// `now_ms`: every deployment with latency and time-to-first-token samples
/// and some usage this minute, and a few requests in flight (held by the
/// returned guards).
pub fn live_stats(n: usize, now_ms: u64) -> (LiveStats, Vec<InFlight>) {
    let stats = LiveStats::new(n);
    let mut held = Vec::new();
    for i in 0..n {
        let id = DeploymentId(i);
        for sample in 0..8u64 {
            let outcome = Outcome {
                latency: Duration::from_millis(200 + 37 * ((i as u64 * 7 + sample) % 11)),
                ttft: Some(Duration::from_millis(40 + 5 * ((i as u64 + sample) % 7))),
                tokens: 300 + 50 * (i as u64 % 4),
            };
            stats.record_success(id, outcome, now_ms);
        }
        held.extend((0..i % 4).map(|_| stats.start(id)));
    }
    (stats, held)
}
