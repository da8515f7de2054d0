//! `POST /v1/rerank`: documents ordered by relevance to a query (Cohere's
//! and Jina's shape, which vLLM and Infinity also speak).

use serde::{Deserialize, Serialize};

use crate::Extra;

/// Body of `POST /v1/rerank`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RerankRequest {
    /// Public model name.
    pub model: String,
    /// What the documents are ranked against.
    pub query: String,
    /// The documents: strings, or objects with their text.
    pub documents: Vec<serde_json::Value>,
    /// How many results to return (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_n: Option<u32>,
    /// Every other parameter (`return_documents`, `max_tokens_per_doc`, …), kept verbatim.
    #[serde(flatten)]
    pub extra: Extra,
}

impl RerankRequest {
    /// Bytes of the query and the documents' text.
    pub fn size_in_bytes(&self) -> usize {
        fn text(value: &serde_json::Value) -> usize {
            match value {
                serde_json::Value::String(s) => s.len(),
                serde_json::Value::Array(items) => items.iter().map(text).sum(),
                serde_json::Value::Object(map) => map.values().map(text).sum(),
                _ => 0,
            }
        }
        self.query.len() + self.documents.iter().map(text).sum::<usize>()
    }
}
