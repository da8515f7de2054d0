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
