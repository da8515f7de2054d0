//! The routing core of Switchyard, as a library.
//!
//! A [`Registry`] maps public model names to [`ModelGroup`]s of deployments;
//! a [`RoutingStrategy`] picks one deployment of a group per request, reading
//! the [`LiveStats`] the gateway records as requests start and finish.
//! The registry and the strategies do no I/O, read no clock and take no
//! lock: a decision is a few arithmetic operations on configuration and
//! atomics. The learned routers' parts (the embedder, the KNN and MLP
//! routers) read their files when loaded, and a prediction is CPU work for
//! a blocking thread, not an async worker.
//!
//! Built-in strategies, by name (see [`StrategyRegistry::with_builtins`]):
//! [`SimpleShuffle`] (`simple-shuffle`), [`LeastBusy`] (`least-busy`),
//! [`LatencyBased`] (`latency-based`), [`CostBased`] (`cost-based`),
//! [`UsageBased`] (`usage-based`) and [`PowerOfTwo`] (`power-of-two`).

mod cells;
pub mod cooldown;
pub mod cost;
pub mod dataset;
pub mod embed;
pub mod error;
pub mod eval;
pub mod knn;
pub mod latency;
pub mod learned;
pub mod least_busy;
pub mod mlp;
pub mod power_of_two;
pub mod registry;
pub mod retry;
pub mod shuffle;
pub mod stats;
pub mod strategy;
pub mod strategy_registry;
pub mod usage;
pub mod vector;

pub use cooldown::{BreakerState, Claim, CooldownPolicy, CooldownStatus, Cooldowns};
pub use cost::CostBased;
pub use error::RoutingError;
pub use latency::LatencyBased;
pub use least_busy::LeastBusy;
pub use power_of_two::PowerOfTwo;
pub use registry::{DeploymentId, DeploymentInfo, ModelGroup, Registry};
pub use retry::{RetryPolicy, Wait};
pub use shuffle::SimpleShuffle;
pub use stats::{DEFAULT_EWMA_ALPHA, DeploymentStats, ErrorClass, InFlight, LiveStats, Outcome};
pub use strategy::{Candidate, RouteContext, RoutingStrategy};
pub use strategy_registry::StrategyRegistry;
pub use usage::UsageBased;
