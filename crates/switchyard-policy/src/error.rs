//! Why a request is refused, and why an admin operation failed.

use std::time::Duration;

use crate::checks::RateKind;
use crate::key::FieldError;
use crate::money::{Nanos, format_usd};

/// A request the policy refuses. Messages never name another key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Denied {
    /// No key was sent and one is required.
    #[error("Missing API key: send it as `Authorization: Bearer <key>`, `x-api-key: <key>` or `api-key: <key>`.")]
    MissingKey,
    /// The key is not known.
    #[error("Invalid API key.")]
    InvalidKey,
    /// The key has expired.
    #[error("This API key has expired.")]
    Expired,
    /// The key, or its team, is blocked.
    #[error("This API key's {scope} is blocked.")]
    Blocked {
        /// `key` or `team`.
        scope: &'static str,
    },
    /// The end user the request names is blocked (`/customer/block`).
    #[error("The end user `{user}` is blocked.")]
    EndUserBlocked {
        /// The request's `user`.
        user: String,
    },
    /// The key belongs to a team that no longer exists (removed from the
    /// configuration, or deleted while the key was being made): its team's
    /// models, budget and limits cannot be applied, so it is refused.
    #[error(
        "This API key's team `{team}` does not exist; ask an administrator to move the key to a team or out of one."
    )]
    TeamMissing {
        /// The team the key names.
        team: String,
    },
    /// The key may not call this model.
    #[error("This API key is not allowed to call model `{model}`.")]
    ModelNotAllowed {
        /// The model asked for.
        model: String,
    },
    /// A per-minute limit is reached.
    #[error("Rate limit reached for {scope}: {limit} {} per minute.{}", kind.as_str(), retry_message(*retry_after))]
    RateLimited {
        /// Which limit.
        scope: String,
        /// Requests or tokens.
        kind: RateKind,
        /// The limit.
        limit: u32,
        /// When a retry can pass; `None`: this request alone exceeds the limit.
        retry_after: Option<Duration>,
    },
    /// Too many requests of the key or team are in flight.
    #[error("Too many requests in flight for this {scope}: the limit is {limit} at once.")]
    TooManyParallel {
        /// `key` or `team`.
        scope: String,
        /// The limit.
        limit: u32,
    },
    /// The budget would be exceeded by this request's maximum cost. An end
    /// user's figures are left out of the message: any key may name any end
    /// user, so they would tell one tenant another's spend.
    #[error("{}", budget_message(scope, *spend, *limit, *reserved, *requested))]
    BudgetExceeded {
        /// `key` or `team`.
        scope: String,
        /// Spend in the current period.
        spend: Nanos,
        /// Reserved by requests in flight.
        reserved: Nanos,
        /// The budget.
        limit: Nanos,
        /// This request's maximum cost.
        requested: Nanos,
    },
    /// A budget holds the request, and nothing prices its model.
    #[error(
        "`{model}` has no known price, and a budget holds this request: set prices on the deployments of `{group}`."
    )]
    Unpriced {
        /// The model asked for.
        model: String,
        /// Its group.
        group: String,
    },
    /// The shared store is down and the policy fails closed.
    #[error("The rate-limit and budget store is unavailable; try again shortly.")]
    Unavailable,
}

fn budget_message(scope: &str, spend: Nanos, limit: Nanos, reserved: Nanos, requested: Nanos) -> String {
    if scope == "end user" {
        return format!(
            "Budget exceeded for this end user: this request may cost up to ${}.",
            format_usd(requested)
        );
    }
    format!(
        "Budget exceeded for this {scope}: spend ${} of max budget ${} (${} reserved by requests in flight; this request may cost up to ${}).",
        format_usd(spend),
        format_usd(limit),
        format_usd(reserved),
        format_usd(requested)
    )
}

fn retry_message(after: Option<Duration>) -> String {
    match after {
        Some(d) => format!(" Try again in {:.3}s.", d.as_secs_f64()),
        None => " This request alone exceeds the limit.".into(),
    }
}

/// An admin operation or a store write that failed.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A field of the request is wrong.
    #[error(transparent)]
    Field(#[from] FieldError),
    /// The key, team or end user does not exist.
    #[error("{what} not found.")]
    NotFound {
        /// `Key`, `Team` or `End user`.
        what: &'static str,
    },
    /// The id is taken.
    #[error("{0}")]
    Conflict(String),
    /// Keys and teams from the configuration file are changed there.
    #[error("This {0} is declared in the configuration file; change it there.")]
    FromConfig(&'static str),
    /// The store failed.
    #[error("policy store error: {0}")]
    Store(String),
    /// The shared store is unreachable.
    #[error("The policy store is unavailable: {0}")]
    Unavailable(String),
}

impl From<std::io::Error> for PolicyError {
    fn from(e: std::io::Error) -> Self {
        PolicyError::Store(e.to_string())
    }
}
