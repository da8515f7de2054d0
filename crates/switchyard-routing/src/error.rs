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
    /// No routing strategy is registered under this name.
    #[error("the routing strategy `{0}` does not exist")]
    UnknownStrategy(String),
    /// A routing strategy is already registered under this name.
    #[error("a routing strategy named `{0}` is already registered")]
    DuplicateStrategy(String),
    /// A strategy or statistics parameter is out of range.
    #[error("invalid value for `{parameter}`: {reason}")]
    InvalidParameter {
        /// The parameter's name, e.g. `tolerance`.
        parameter: String,
        /// What is wrong.
        reason: String,
    },
}
