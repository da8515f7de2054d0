//! Inputs shared by Switchyard's criterion benchmarks (`cargo bench -p switchyard-benches`).

use switchyard_routing::{DeploymentId, DeploymentInfo, ModelGroup, RoutingError};

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

/// A model group of `n` equally weighted deployments.
pub fn group(n: usize) -> Result<ModelGroup, RoutingError> {
    let deployments = (0..n)
        .map(|i| DeploymentInfo {
            id: DeploymentId(i),
            name: format!("bench/{i}"),
            model: format!("model-{i}"),
            provider: "mock".into(),
            weight: 1.0 + (i % 3) as f64,
            input_cost_per_token: 0.0,
            output_cost_per_token: 0.0,
            rpm: None,
            tpm: None,
        })
        .collect();
    ModelGroup::new("bench", deployments)
}
