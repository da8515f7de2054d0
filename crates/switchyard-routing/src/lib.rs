//! The routing core of Switchyard, as a library.
//!
//! A [`Registry`] maps public model names to [`ModelGroup`]s of deployments;
//! a strategy picks one deployment of a group per request. Nothing here does
//! I/O or knows about HTTP: a decision is a few arithmetic operations on data
//! built once at configuration time.

pub mod error;
pub mod registry;
pub mod shuffle;

pub use error::RoutingError;
pub use registry::{DeploymentId, DeploymentInfo, ModelGroup, Registry};
pub use shuffle::SimpleShuffle;
