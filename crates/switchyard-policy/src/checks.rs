//! What one request is checked against: the limits of its key and team,
//! turned into named counters every store evaluates the same way.

use std::time::Duration;

use crate::key::KeyView;
use crate::money::{Nanos, from_usd};
use crate::period::BudgetPeriod;
use crate::spend::{subject_end_user, subject_key, subject_team, subject_user};

/// What a request asks for, as far as limits go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    /// The public model name (a model group).
    pub model: String,
    /// The name the request used when it is not `model`'s own: an alias,
    /// or a model a wildcard group serves. A key that lists it may call
    /// `model`; a per-model limit set on it (and not on `model`) counts
    /// requests by that name.
    pub requested_as: Option<String>,
    /// The access groups `model` belongs to: a key that lists one may call
    /// it; a per-model limit set on one applies to each of its models.
    pub access_groups: Vec<String>,
    /// The end user the request is made for, held to the end-user budget.
    pub end_user: Option<String>,
    /// Prompt tokens, estimated before the call (charged to TPM up front).
    pub estimated_tokens: u32,
    /// The most the request can cost (reserved against budgets).
    pub max_cost: Nanos,
    /// Whether nothing prices the model asked for (a wildcard group's
    /// model without a price): refused when a budget holds the request.
    pub unpriced: bool,
    /// The request calls no model (feedback on an earlier answer): the
    /// key's model lists do not apply, only its request limits and budget.
    pub any_model: bool,
    /// The id the gateway gave the request (from [`crate::Policy::request_id`]);
    /// `None`: the ticket makes one.
    pub request_id: Option<String>,
}

/// Requests or tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateKind {
    /// Requests per minute.
    Requests,
    /// Tokens per minute.
    Tokens,
}

impl RateKind {
    /// `requests` or `tokens`, as in the `x-ratelimit-*` headers.
    pub fn as_str(self) -> &'static str {
        match self {
            RateKind::Requests => "requests",
            RateKind::Tokens => "tokens",
        }
    }
}

/// One per-minute limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateCheck {
    /// Counter name, unique per key/team, model and kind.
    pub id: String,
    /// Who it limits, for messages (`key`, `team`, `key for model gpt-4o`).
    pub scope: String,
    /// Requests or tokens.
    pub kind: RateKind,
    /// Allowed per minute.
    pub limit: u32,
    /// What this request takes (1 request, or its estimated tokens).
    pub cost: u32,
}

/// The scope of an end user's checks.
pub(crate) const END_USER_SCOPE: &str = "end user";

/// A budget the request reserves its maximum cost against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetCheck {
    /// Ledger subject (`key:<hash>`, `team:<id>`, `end_user:<id>`).
    pub subject: String,
    /// `key`, `team` or `end user`, for messages.
    pub scope: String,
    /// Allowed spend per period.
    pub limit: Nanos,
    /// The period; `None`: a lifetime budget.
    pub period: Option<BudgetPeriod>,
}

/// A cap on requests in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParallelCheck {
    /// Counter name.
    pub id: String,
    /// `key` or `team`.
    pub scope: String,
    /// Allowed at once.
    pub limit: u32,
}

/// Every check of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checks {
    /// In-flight caps.
    pub parallel: Vec<ParallelCheck>,
    /// Per-minute limits.
    pub rates: Vec<RateCheck>,
    /// Budgets.
    pub budgets: Vec<BudgetCheck>,
}

/// The state of one per-minute limit after a request was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateState {
    /// Allowed per minute.
    pub limit: u32,
    /// Still available now.
    pub remaining: u32,
    /// Until the limit is whole again.
    pub reset: Duration,
}

impl Checks {
    /// The checks for `view` calling `demand.model`.
    pub fn for_request(view: &KeyView, demand: &Demand) -> Checks {
        let mut checks = Checks::default();
        let token = &view.key.key_id;
        let model = &demand.model;
        let tokens = demand.estimated_tokens.max(1);
        let key_limits = &view.key.limits;
        // A per-model limit: set on the model's group, else on the name the
        // request used (counted per that name), else on an access group it
        // belongs to (counted per group).
        let per_model = |limits: &std::collections::BTreeMap<String, u32>| -> Option<(String, u32)> {
            if let Some(limit) = limits.get(model) {
                return Some((model.clone(), *limit));
            }
            if let Some((name, limit)) = demand
                .requested_as
                .as_deref()
                .and_then(|n| limits.get(n).map(|l| (n, l)))
            {
                return Some((name.to_owned(), *limit));
            }
            demand
                .access_groups
                .iter()
                .find_map(|g| limits.get(g))
                .map(|limit| (model.clone(), *limit))
        };
        let mut add_rates = |prefix: &str, scope: &str, rpm: Option<u32>, tpm: Option<u32>| {
            if let Some(limit) = rpm {
                checks.rates.push(RateCheck {
                    id: format!("rpm:{prefix}"),
                    scope: scope.to_owned(),
                    kind: RateKind::Requests,
                    limit,
                    cost: 1,
                });
            }
            if let Some(limit) = tpm {
                checks.rates.push(RateCheck {
                    id: format!("tpm:{prefix}"),
                    scope: scope.to_owned(),
                    kind: RateKind::Tokens,
                    limit,
                    cost: tokens,
                });
            }
        };
        for (kind, limits) in [
            ("rpm", &key_limits.model_rpm_limit),
            ("tpm", &key_limits.model_tpm_limit),
        ] {
            if let Some((counted, limit)) = per_model(limits) {
                let (rpm, tpm) = if kind == "rpm" {
                    (Some(limit), None)
                } else {
                    (None, Some(limit))
                };
                add_rates(
                    &format!("key:{token}:model:{counted}"),
                    &format!("key for model {counted}"),
                    rpm,
                    tpm,
                );
            }
        }
        add_rates(
            &format!("key:{token}"),
            "key",
            key_limits.rpm_limit,
            key_limits.tpm_limit,
        );
        // The team's and the user's limits, each counted under its ledger id.
        let owners: Vec<(&str, &str, &crate::key::Limits)> = view
            .team
            .as_ref()
            .map(|t| ("team", t.ledger(), &t.limits))
            .into_iter()
            .chain(view.user.as_ref().map(|u| ("user", u.ledger_id.as_str(), &u.limits)))
            .collect();
        for (kind_of, ledger, l) in &owners {
            for (kind, limits) in [("rpm", &l.model_rpm_limit), ("tpm", &l.model_tpm_limit)] {
                if let Some((counted, limit)) = per_model(limits) {
                    let (rpm, tpm) = if kind == "rpm" {
                        (Some(limit), None)
                    } else {
                        (None, Some(limit))
                    };
                    add_rates(
                        &format!("{kind_of}:{ledger}:model:{counted}"),
                        &format!("{kind_of} for model {counted}"),
                        rpm,
                        tpm,
                    );
                }
            }
            add_rates(&format!("{kind_of}:{ledger}"), kind_of, l.rpm_limit, l.tpm_limit);
        }
        if let Some(limit) = key_limits.max_parallel_requests {
            checks.parallel.push(ParallelCheck {
                id: format!("parallel:key:{token}"),
                scope: "key".into(),
                limit,
            });
        }
        if let Some(budget) = key_limits.max_budget {
            checks.budgets.push(BudgetCheck {
                subject: subject_key(token),
                scope: "key".into(),
                limit: from_usd(budget),
                period: key_limits.budget_duration,
            });
        }
        for (kind_of, ledger, l) in &owners {
            if let Some(limit) = l.max_parallel_requests {
                checks.parallel.push(ParallelCheck {
                    id: format!("parallel:{kind_of}:{ledger}"),
                    scope: (*kind_of).into(),
                    limit,
                });
            }
            if let Some(budget) = l.max_budget {
                checks.budgets.push(BudgetCheck {
                    subject: if *kind_of == "team" {
                        subject_team(ledger)
                    } else {
                        subject_user(ledger)
                    },
                    scope: (*kind_of).into(),
                    limit: from_usd(budget),
                    period: l.budget_duration,
                });
            }
        }
        checks
    }

    /// Adds an end user's checks: its own record's per-minute limits,
    /// in-flight cap and budget, or else `default_budget`
    /// (`policy.end_user_budget`: USD and period).
    pub fn add_end_user(
        &mut self,
        user: &str,
        own: Option<&crate::key::Limits>,
        default_budget: Option<(f64, Option<BudgetPeriod>)>,
        estimated_tokens: u32,
    ) {
        let scope = END_USER_SCOPE;
        if let Some(limits) = own {
            for (kind, limit, cost) in [
                (RateKind::Requests, limits.rpm_limit, 1),
                (RateKind::Tokens, limits.tpm_limit, estimated_tokens.max(1)),
            ] {
                if let Some(limit) = limit {
                    let prefix = if kind == RateKind::Requests { "rpm" } else { "tpm" };
                    self.rates.push(RateCheck {
                        id: format!("{prefix}:{}", subject_end_user(user)),
                        scope: scope.into(),
                        kind,
                        limit,
                        cost,
                    });
                }
            }
            if let Some(limit) = limits.max_parallel_requests {
                self.parallel.push(ParallelCheck {
                    id: format!("parallel:{}", subject_end_user(user)),
                    scope: scope.into(),
                    limit,
                });
            }
        }
        let budget = match own.and_then(|l| l.max_budget) {
            Some(usd) => Some((usd, own.and_then(|l| l.budget_duration))),
            None => default_budget,
        };
        if let Some((usd, period)) = budget {
            self.budgets.push(BudgetCheck {
                subject: subject_end_user(user),
                scope: scope.into(),
                limit: from_usd(usd),
                period,
            });
        }
    }

    /// The token limits charged up front, to correct with the real usage.
    pub fn token_rates(&self) -> impl Iterator<Item = &RateCheck> {
        self.rates.iter().filter(|r| r.kind == RateKind::Tokens)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use crate::key::{KeyRecord, KeyView};

    #[test]
    fn per_model_limits_are_found_and_counted_by_kind() {
        let mut key = KeyRecord::new("sk-test-per-model-limits", 0, false);
        key.limits.model_rpm_limit.insert("old-name".into(), 1);
        key.limits.model_tpm_limit.insert("beta".into(), 10);
        let view = KeyView {
            key,
            team: None,
            user: None,
        };
        let demand = Demand {
            model: "group".into(),
            requested_as: Some("old-name".into()),
            access_groups: vec!["beta".into()],
            end_user: None,
            unpriced: false,
            any_model: false,
            estimated_tokens: 3,
            max_cost: 0,
            request_id: None,
        };
        let checks = Checks::for_request(&view, &demand);
        let ids: Vec<(&str, u32)> = checks.rates.iter().map(|r| (r.id.as_str(), r.limit)).collect();
        let token = &view.key.key_id;
        // The rpm limit set on the name used counts that name; the tpm
        // limit set on the access group counts the group.
        assert_eq!(
            ids,
            [
                (format!("rpm:key:{token}:model:old-name").as_str(), 1),
                (format!("tpm:key:{token}:model:group").as_str(), 10),
            ]
        );
    }
}
