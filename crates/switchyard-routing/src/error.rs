//! Routing failures.

use thiserror::Error;

/// Why no deployment could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RoutingError {
    /// No model group has this name.
    #[error("the model `{0}` does not exist")]
    UnknownModel(String),
    /// The group exists but has no deployment to choose from.
    #[error("the model `{0}` has no available deployment")]
    NoDeployment(String),
    /// The registry could not be built.
    #[error("invalid model group `{group}`: {reason}")]
    InvalidGroup {
        /// The group's name.
        group: String,
        /// What is wrong.
        reason: String,
    },
}
