//! Routing strategies by name.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::{CostBased, LatencyBased, LeastBusy, PowerOfTwo, RoutingError, RoutingStrategy, SimpleShuffle, UsageBased};

/// Routing strategies by name: the built-in ones and any a user registers.
#[derive(Debug, Clone, Default)]
pub struct StrategyRegistry {
    strategies: BTreeMap<String, Arc<dyn RoutingStrategy>>,
}

impl StrategyRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry of every built-in strategy with its default parameters,
    /// each under its own name (`simple-shuffle`, `least-busy`,
    /// `latency-based`, `cost-based`, `usage-based`, `power-of-two`).
    pub fn with_builtins() -> Self {
        let builtins: [Arc<dyn RoutingStrategy>; 6] = [
            Arc::new(SimpleShuffle),
            Arc::new(LeastBusy),
            Arc::new(LatencyBased::default()),
            Arc::new(CostBased::default()),
            Arc::new(UsageBased),
            Arc::new(PowerOfTwo),
        ];
        Self {
            strategies: builtins.into_iter().map(|s| (s.name().to_owned(), s)).collect(),
        }
    }

    /// Adds `strategy` under `name`; fails if the name is taken.
    pub fn register(
        &mut self,
        name: impl Into<String>,
        strategy: Arc<dyn RoutingStrategy>,
    ) -> Result<(), RoutingError> {
        let name = name.into();
        if self.strategies.contains_key(&name) {
            return Err(RoutingError::DuplicateStrategy(name));
        }
        self.strategies.insert(name, strategy);
        Ok(())
    }

    /// Puts `strategy` under `name`, returning the one it replaces, e.g. a
    /// built-in configured with other parameters.
    pub fn replace(
        &mut self,
        name: impl Into<String>,
        strategy: Arc<dyn RoutingStrategy>,
    ) -> Option<Arc<dyn RoutingStrategy>> {
        self.strategies.insert(name.into(), strategy)
    }

    /// The strategy registered under `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn RoutingStrategy>> {
        self.strategies.get(name).cloned()
    }

    /// The strategy registered under `name`, or [`RoutingError::UnknownStrategy`].
    pub fn require(&self, name: &str) -> Result<Arc<dyn RoutingStrategy>, RoutingError> {
        self.get(name)
            .ok_or_else(|| RoutingError::UnknownStrategy(name.to_owned()))
    }

    /// Registered names, in alphabetical order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.strategies.keys().map(String::as_str)
    }

    /// Number of registered strategies.
    pub fn len(&self) -> usize {
        self.strategies.len()
    }

    /// Whether no strategy is registered.
    pub fn is_empty(&self) -> bool {
        self.strategies.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_registered_under_their_names() {
        let registry = StrategyRegistry::with_builtins();
        assert_eq!(
            registry.names().collect::<Vec<_>>(),
            vec![
                "cost-based",
                "latency-based",
                "least-busy",
                "power-of-two",
                "simple-shuffle",
                "usage-based"
            ]
        );
        for name in registry.names() {
            assert_eq!(registry.get(name).unwrap().name(), name);
        }
        assert_eq!(registry.len(), 6);
        assert!(StrategyRegistry::new().is_empty());
    }

    #[test]
    fn duplicates_and_unknown_names_are_errors() {
        let mut registry = StrategyRegistry::with_builtins();
        assert_eq!(
            registry.register(LeastBusy::NAME, Arc::new(LeastBusy)),
            Err(RoutingError::DuplicateStrategy("least-busy".into()))
        );
        assert!(registry.get("fastest").is_none());
        assert_eq!(
            registry.require("fastest").unwrap_err(),
            RoutingError::UnknownStrategy("fastest".into())
        );
        registry.register("fastest", Arc::new(LatencyBased::default())).unwrap();
        assert_eq!(registry.require("fastest").unwrap().name(), "latency-based");
    }

    #[test]
    fn replace_swaps_in_a_configured_builtin() {
        let mut registry = StrategyRegistry::with_builtins();
        let wide = Arc::new(LatencyBased::new(0.5).unwrap());
        let old = registry.replace(LatencyBased::NAME, wide);
        assert!(old.is_some());
        let now = registry.get(LatencyBased::NAME).unwrap();
        assert!(format!("{now:?}").contains("0.5"));
        assert!(registry.replace("new", Arc::new(LeastBusy)).is_none());
    }
}
