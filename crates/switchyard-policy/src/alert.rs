//! What the policy tells an operator about: a soft budget crossed, a budget
//! spent. Each is sent once per budget period, across replicas when they
//! share Redis; the gateway delivers them (webhooks).

use crate::money::Nanos;
use crate::period::BudgetPeriod;

/// An event for the operator. Keys are named by alias and display name
/// (`sk-...abcd`), never by value.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyAlert {
    /// What happened.
    pub kind: AlertKind,
    /// `key`, `team`, `user` or `end user`.
    pub scope: String,
    /// The key's display name, or the team's, user's or end user's id.
    pub id: String,
    /// The key's or team's alias, if it has one.
    pub alias: Option<String>,
    /// Spend in the current period (in total without one).
    pub spend: Nanos,
    /// The soft budget, for [`AlertKind::SoftBudgetCrossed`].
    pub soft_budget: Option<Nanos>,
    /// The budget.
    pub max_budget: Option<Nanos>,
    /// The budget's period; `None`: in total.
    pub period: Option<BudgetPeriod>,
    /// What the policy claimed to send it once: given back with
    /// [`crate::Policy::release_policy_alert`] when it could not be delivered.
    pub claim: String,
    /// How long the claim lasts once the alert is delivered, milliseconds
    /// ([`crate::Policy::confirm_policy_alert`]); 0 when it was not claimed.
    pub lasts_ms: u64,
}

/// The kinds of [`PolicyAlert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertKind {
    /// Spend reached the soft budget.
    SoftBudgetCrossed,
    /// A request was refused because the budget is spent.
    BudgetExhausted,
}

impl AlertKind {
    /// The event's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::SoftBudgetCrossed => "soft_budget_crossed",
            AlertKind::BudgetExhausted => "budget_exhausted",
        }
    }
}
