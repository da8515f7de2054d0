//! `GET /v1/models` response types.

use serde::{Deserialize, Serialize};

/// One model as listed by `/v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelObject {
    /// The public model name clients send.
    pub id: String,
    /// Always `"model"`.
    pub object: String,
    /// Unix time the model was registered.
    pub created: u64,
    /// Owner shown to clients.
    pub owned_by: String,
}

/// The list returned by `/v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    /// Always `"list"`.
    pub object: String,
    /// The models.
    pub data: Vec<ModelObject>,
}

/// One model as Anthropic's `GET /v1/models` lists it (for clients that
/// send `anthropic-version`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnthropicModel {
    /// Always `"model"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The public model name clients send.
    pub id: String,
    /// The name to show; the model name.
    pub display_name: String,
    /// RFC 3339 time the model was registered.
    pub created_at: String,
}

/// A page of Anthropic's `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnthropicModelList {
    /// The models of this page.
    pub data: Vec<AnthropicModel>,
    /// Whether more models follow in the direction of the request.
    pub has_more: bool,
    /// The first id of the page (for `before_id`).
    pub first_id: Option<String>,
    /// The last id of the page (for `after_id`).
    pub last_id: Option<String>,
}
