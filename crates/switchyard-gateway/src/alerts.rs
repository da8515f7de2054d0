//! Alerts to an operator's webhook (`telemetry.alerts`): soft budgets
//! crossed and budgets spent (found by the policy), deployments put in
//! cooldown (found by the dispatch). Delivered off the request path by one
//! task, each tried up to three times; a full queue drops alerts rather
//! than hold requests.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{Value, json};
use switchyard_policy::{AlertKind, Policy, PolicyAlert, to_usd};
use tokio::sync::mpsc;

use crate::telemetry_config::{AlertEvent, AlertFormat, AlertSettings};

/// Alerts waiting for delivery before new ones are dropped.
const QUEUE: usize = 1_024;

/// The shortest time between two cooldown alerts of one deployment.
const COOLDOWN_ALERT_EVERY: Duration = Duration::from_secs(60);

/// Deliveries of one alert, the first included.
const TRIES: u32 = 3;

/// Something to tell the operator.
#[derive(Debug, Clone, PartialEq)]
enum Alert {
    Policy(PolicyAlert),
    Cooldown { deployment: String, reason: &'static str },
}

/// The handle the dispatch sends cooldown alerts through.
#[derive(Debug, Clone)]
pub struct Alerts {
    tx: mpsc::Sender<Alert>,
    cooldowns: bool,
    /// When each deployment's last cooldown alert was sent.
    last_cooldown: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Alerts {
    /// Starts delivery to `settings`' webhook and asks `policy` for its
    /// alerts when budget alerts are wanted.
    pub fn start(settings: &AlertSettings, policy: &Policy) -> Alerts {
        let (tx, rx) = mpsc::channel(QUEUE);
        let wants = |e: AlertEvent| settings.events.contains(&e);
        let mut kinds = Vec::new();
        if wants(AlertEvent::SoftBudgetCrossed) {
            kinds.push(AlertKind::SoftBudgetCrossed);
        }
        if wants(AlertEvent::BudgetExhausted) {
            kinds.push(AlertKind::BudgetExhausted);
        }
        if !kinds.is_empty() {
            // The policy looks only for the kinds wanted, so it claims no
            // alert that would not be sent.
            let (policy_tx, mut policy_rx) = mpsc::channel::<PolicyAlert>(QUEUE);
            policy.send_alerts_to(policy_tx, kinds);
            let forward = tx.clone();
            tokio::spawn(async move {
                while let Some(alert) = policy_rx.recv().await {
                    if forward.try_send(Alert::Policy(alert)).is_err() {
                        tracing::warn!("the alert queue is full: an alert was dropped");
                    }
                }
            });
        }
        tokio::spawn(deliver(settings.clone(), rx));
        Alerts {
            tx,
            cooldowns: wants(AlertEvent::DeploymentCooldown),
            last_cooldown: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A deployment was put in cooldown (`reason`: the failure's class);
    /// sent at most once a minute per deployment.
    pub fn cooldown(&self, deployment: &str, reason: &'static str) {
        if !self.cooldowns {
            return;
        }
        let now = Instant::now();
        {
            let mut last = self.last_cooldown.lock();
            if last
                .get(deployment)
                .is_some_and(|at| now.duration_since(*at) < COOLDOWN_ALERT_EVERY)
            {
                return;
            }
            last.insert(deployment.to_owned(), now);
        }
        let alert = Alert::Cooldown {
            deployment: deployment.to_owned(),
            reason,
        };
        if self.tx.try_send(alert).is_err() {
            tracing::warn!("the alert queue is full: an alert was dropped");
        }
    }
}

/// Posts each alert to the webhook, in order.
async fn deliver(settings: AlertSettings, mut rx: mpsc::Receiver<Alert>) {
    let client = match reqwest::Client::builder().timeout(settings.timeout).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "alerts cannot be sent: no HTTP client");
            return;
        }
    };
    while let Some(alert) = rx.recv().await {
        let body = match settings.format {
            AlertFormat::Json => json_body(&alert),
            AlertFormat::Slack => json!({"text": sentence(&alert)}),
        };
        let mut wait = Duration::from_millis(250);
        for attempt in 1..=TRIES {
            let outcome = client.post(settings.url.expose()).json(&body).send().await;
            let retry = match outcome {
                Ok(r) if r.status().is_success() => break,
                // The webhook refused the alert: trying again will not help.
                Ok(r) if r.status().is_client_error() && r.status().as_u16() != 429 => {
                    tracing::warn!(status = r.status().as_u16(), "the alert webhook refused an alert");
                    false
                }
                Ok(r) => {
                    tracing::warn!(status = r.status().as_u16(), attempt, "the alert webhook failed");
                    true
                }
                // Without the URL, which may hold a secret.
                Err(e) => {
                    tracing::warn!(error = %e.without_url(), attempt, "the alert webhook cannot be reached");
                    true
                }
            };
            if !retry || attempt == TRIES {
                break;
            }
            tokio::time::sleep(wait).await;
            wait *= 4;
        }
    }
}

fn now_iso() -> String {
    jiff::Timestamp::now().to_string()
}

/// An alert as a JSON object.
fn json_body(alert: &Alert) -> Value {
    match alert {
        Alert::Policy(a) => json!({
            "event": a.kind.as_str(),
            "scope": a.scope,
            "id": a.id,
            "alias": a.alias,
            "spend_usd": to_usd(a.spend),
            "soft_budget_usd": a.soft_budget.map(to_usd),
            "max_budget_usd": a.max_budget.map(to_usd),
            "budget_duration": a.period.map(|p| p.as_str()),
            "at": now_iso(),
        }),
        Alert::Cooldown { deployment, reason } => json!({
            "event": "deployment_cooldown",
            "deployment": deployment,
            "reason": reason,
            "at": now_iso(),
        }),
    }
}

/// An alert as one sentence (Slack's `text`).
fn sentence(alert: &Alert) -> String {
    match alert {
        Alert::Policy(a) => {
            let who = match &a.alias {
                Some(alias) => format!("{} `{alias}` ({})", a.scope, a.id),
                None => format!("{} `{}`", a.scope, a.id),
            };
            let period = match a.period {
                Some(p) => format!(" ({} budget)", p.as_str()),
                None => String::new(),
            };
            let budget = a
                .max_budget
                .map_or_else(String::new, |b| format!(" of a ${} budget", fmt_usd(b)));
            match a.kind {
                AlertKind::SoftBudgetCrossed => format!(
                    "Switchyard: {who} has spent ${}, past its soft budget of ${}{budget}{period}.",
                    fmt_usd(a.spend),
                    fmt_usd(a.soft_budget.unwrap_or_default()),
                ),
                AlertKind::BudgetExhausted => format!(
                    "Switchyard: {who} has spent ${}{budget}{period}; its requests are refused.",
                    fmt_usd(a.spend),
                ),
            }
        }
        Alert::Cooldown { deployment, reason } => {
            format!("Switchyard: deployment `{deployment}` was put in cooldown ({reason}).")
        }
    }
}

fn fmt_usd(nanos: switchyard_policy::Nanos) -> String {
    switchyard_policy::format_usd(nanos)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn alerts_read_as_json_and_as_one_sentence() {
        let alert = Alert::Policy(PolicyAlert {
            kind: AlertKind::SoftBudgetCrossed,
            scope: "key".into(),
            id: "sk-...abcd".into(),
            alias: Some("notebooks".into()),
            spend: 14_000,
            soft_budget: Some(10_000),
            max_budget: Some(30_000),
            period: Some(switchyard_policy::period::BudgetPeriod::Monthly),
        });
        let body = json_body(&alert);
        assert_eq!(body["event"], "soft_budget_crossed");
        assert_eq!(body["spend_usd"], 0.000014);
        assert_eq!(body["budget_duration"], "monthly");
        assert_eq!(
            sentence(&alert),
            "Switchyard: key `notebooks` (sk-...abcd) has spent $0.000014000, past its soft budget of $0.000010000 of a $0.000030000 budget (monthly budget)."
        );
        let cooled = Alert::Cooldown {
            deployment: "gpt-4o-eu".into(),
            reason: "server_error",
        };
        assert_eq!(json_body(&cooled)["deployment"], "gpt-4o-eu");
    }
}
