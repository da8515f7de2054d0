//! Policy for the Switchyard gateway: virtual keys and teams (stored as
//! SHA-256 hashes only), per-minute request and token limits, in-flight
//! caps, budgets enforced by reserving each request's maximum cost, and spend
//! tracking that survives restarts.
//!
//! Two stores sit behind [`Policy`]: an in-process one (GCRA limits with
//! `governor`, keys and spend in append-only files when a data directory is
//! set) and Redis (one atomic Lua script per admission and per settlement),
//! shared by every replica. The crate does no HTTP; the gateway maps its
//! errors to responses.

pub mod alert;
pub mod checks;
pub mod error;
pub mod journal;
pub mod key;
pub mod local;
pub mod money;
pub mod period;
pub mod policy;
pub mod price;
pub mod redis_store;
pub mod spend;
pub mod spend_log;

pub use alert::{AlertKind, PolicyAlert};
pub use checks::{Demand, RateKind};
pub use error::{Denied, PolicyError};
pub use journal::FsyncPolicy;
pub use key::{EndUserRecord, KeyRecord, KeyView, TeamRecord, UserRecord};
pub use money::{Nanos, format_usd, from_usd, to_usd};
pub use policy::{
    Charge, EndUserBudget, FailureMode, KeySpend, Labels, Policy, PolicySettings, Principal, Ticket, WriteGuard,
};
pub use price::{ImageTable, LongContext, Prices, TokenUsage};
pub use redis_store::RedisSettings;
pub use spend::{LogFilter, SpendRecord};
