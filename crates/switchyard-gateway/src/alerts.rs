//! Alerts to an operator's webhook (`telemetry.alerts`): soft budgets
//! crossed and budgets spent (found by the policy), deployments put in
//! cooldown, requests that failed upstream and slow answers (found by the
//! dispatch). Delivered off the request path by one task, each tried up to
//! three times; a full queue drops alerts rather than hold requests. With
//! Redis, replicas claim each alert there first, so that one cause seen by
//! every replica is told of once.

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

/// The shortest time between two alerts of one kind about one deployment
/// (cooldowns, slow answers) or one model group (failed requests).
const ALERT_EVERY: Duration = Duration::from_secs(60);

/// Deployments and groups whose last alert time is kept; past this, those
/// older than [`ALERT_EVERY`] are forgotten.
const REMEMBERED: usize = 4_096;

/// How long after the webhook refused a budget alert it may be sent again.
const REFUSED_RETRY: Duration = Duration::from_secs(3600);
/// Deliveries of one alert, the first included.
const TRIES: u32 = 3;

/// Something to tell the operator.
#[derive(Debug, Clone, PartialEq)]
enum Alert {
    Policy(PolicyAlert),
    Cooldown {
        deployment: String,
        reason: &'static str,
    },
    /// A request to `group` failed upstream; `deployment` answered last.
    Failed {
        group: String,
        deployment: Option<String>,
        class: String,
        status: u16,
    },
    /// `deployment` of `group` took `took` to answer.
    Slow {
        group: String,
        deployment: String,
        took: Duration,
        threshold: Duration,
    },
}

/// When the last alert of one kind was sent about each name.
#[derive(Debug, Default)]
struct Throttle(Mutex<HashMap<String, Instant>>);

impl Throttle {
    /// Whether an alert about `name` may be sent now: when it was admitted
    /// (and noted sent), or `None`.
    fn admit(&self, name: &str) -> Option<Instant> {
        let now = Instant::now();
        let mut last = self.0.lock();
        if last.get(name).is_some_and(|at| now.duration_since(*at) < ALERT_EVERY) {
            return None;
        }
        if last.len() >= REMEMBERED {
            last.retain(|_, at| now.duration_since(*at) < ALERT_EVERY);
            if last.len() >= REMEMBERED {
                return None;
            }
        }
        last.insert(name.to_owned(), now);
        Some(now)
    }

    /// Forgets the alert about `name` admitted `at`: it was not sent (its
    /// queue was full, or the webhook failed), and the next one may go. A
    /// later alert admitted since stays noted.
    fn forget(&self, name: &str, at: Instant) {
        let mut last = self.0.lock();
        if last.get(name) == Some(&at) {
            last.remove(name);
        }
    }
}

/// The throttles of the alerts a request can raise, one per kind.
#[derive(Debug, Default)]
struct Throttles {
    /// When each deployment's last cooldown alert was sent.
    cooldown: Throttle,
    /// When each group's last failure alert was sent.
    failure: Throttle,
    /// When each deployment's last slow-answer alert was sent.
    slow: Throttle,
}

impl Throttles {
    /// Forgets `alert`, admitted `at` and not delivered, so that the next
    /// like it goes at once rather than a minute later.
    fn forget(&self, alert: &Alert, at: Option<Instant>) {
        let Some(at) = at else { return };
        match alert {
            Alert::Policy(_) => {}
            Alert::Cooldown { deployment, .. } => self.cooldown.forget(deployment, at),
            Alert::Failed { group, .. } => self.failure.forget(group, at),
            Alert::Slow { deployment, .. } => self.slow.forget(deployment, at),
        }
    }
}

/// The handle the dispatch sends cooldown alerts through.
#[derive(Debug, Clone)]
pub struct Alerts {
    /// Alerts to deliver, each with when its throttle admitted it.
    tx: mpsc::Sender<(Alert, Option<Instant>)>,
    cooldowns: bool,
    failures: bool,
    /// Answers slower than this are alerted on, when wanted.
    slow: Option<Duration>,
    /// When the last alert of each kind was sent about each name.
    throttles: Arc<Throttles>,
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
            policy.send_alerts_to(policy_tx, kinds, settings.retry);
            let forward = tx.clone();
            tokio::spawn(async move {
                // Waits while the delivery queue is full: the policy's own
                // queue then fills, and an alert it cannot queue is let go
                // unclaimed, to be found again by a later request. (Dropped
                // here, a claimed alert would be lost for its period.)
                while let Some(alert) = policy_rx.recv().await {
                    if forward.send((Alert::Policy(alert), None)).await.is_err() {
                        return;
                    }
                }
            });
        }
        let throttles = Arc::<Throttles>::default();
        tokio::spawn(deliver(settings.clone(), policy.clone(), rx, throttles.clone()));
        Alerts {
            tx,
            cooldowns: wants(AlertEvent::DeploymentCooldown),
            failures: wants(AlertEvent::RequestFailed),
            slow: wants(AlertEvent::SlowRequest).then_some(settings.slow_request),
            throttles,
        }
    }

    fn send(&self, alert: Alert, admitted: Instant) {
        if let Err(e) = self.tx.try_send((alert, Some(admitted))) {
            tracing::warn!("the alert queue is full: an alert was dropped");
            let (mpsc::error::TrySendError::Full((alert, at)) | mpsc::error::TrySendError::Closed((alert, at))) = e;
            self.throttles.forget(&alert, at);
        }
    }

    /// A request to `group` failed upstream (`class`, answered with
    /// `status`) after its retries and fallbacks, `deployment` answering
    /// last; sent at most once a minute per group.
    pub fn failed(&self, group: &str, deployment: Option<&str>, class: &str, status: u16) {
        if !self.failures {
            return;
        }
        let Some(admitted) = self.throttles.failure.admit(group) else {
            return;
        };
        self.send(
            Alert::Failed {
                group: group.to_owned(),
                deployment: deployment.map(str::to_owned),
                class: class.to_owned(),
                status,
            },
            admitted,
        );
    }

    /// `deployment` of `group` answered in `took`: alerted on when that is
    /// longer than `slow_request_ms`, at most once a minute per deployment.
    pub fn answered(&self, group: &str, deployment: &str, took: Duration) {
        let Some(threshold) = self.slow else {
            return;
        };
        if took <= threshold {
            return;
        }
        let Some(admitted) = self.throttles.slow.admit(deployment) else {
            return;
        };
        self.send(
            Alert::Slow {
                group: group.to_owned(),
                deployment: deployment.to_owned(),
                took,
                threshold,
            },
            admitted,
        );
    }

    /// A deployment was put in cooldown (`reason`: the failure's class);
    /// sent at most once a minute per deployment.
    pub fn cooldown(&self, deployment: &str, reason: &'static str) {
        if !self.cooldowns {
            return;
        }
        let Some(admitted) = self.throttles.cooldown.admit(deployment) else {
            return;
        };
        self.send(
            Alert::Cooldown {
                deployment: deployment.to_owned(),
                reason,
            },
            admitted,
        );
    }
}

impl Alert {
    /// What the replicas claim in Redis before sending this alert, for
    /// [`ALERT_EVERY`]; `None` for the policy's, which it claims itself.
    fn claim(&self) -> Option<String> {
        match self {
            Alert::Policy(_) => None,
            Alert::Cooldown { deployment, .. } => Some(format!("deployment_cooldown:{deployment}")),
            Alert::Failed { group, .. } => Some(format!("request_failed:{group}")),
            Alert::Slow { deployment, .. } => Some(format!("slow_request:{deployment}")),
        }
    }
}

/// Posts each alert to the webhook, in order.
async fn deliver(
    settings: AlertSettings,
    policy: Policy,
    mut rx: mpsc::Receiver<(Alert, Option<Instant>)>,
    throttles: Arc<Throttles>,
) {
    let client = match reqwest::Client::builder().timeout(settings.timeout).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "alerts cannot be sent: no HTTP client");
            return;
        }
    };
    while let Some((alert, admitted)) = rx.recv().await {
        let claim = alert.claim();
        if let Some(claim) = &claim
            && !policy.claim_alert(claim, ALERT_EVERY).await
        {
            continue;
        }
        let body = match settings.format {
            AlertFormat::Json => json_body(&alert),
            AlertFormat::Slack => json!({"text": sentence(&alert)}),
        };
        let mut wait = Duration::from_millis(250);
        let mut delivered = false;
        let mut refused = false;
        for attempt in 1..=TRIES {
            let outcome = client.post(settings.url.expose()).json(&body).send().await;
            let retry = match outcome {
                Ok(r) if r.status().is_success() => {
                    delivered = true;
                    break;
                }
                // The webhook refused the alert: trying again will not help.
                Ok(r) if r.status().is_client_error() && r.status().as_u16() != 429 => {
                    tracing::warn!(status = r.status().as_u16(), "the alert webhook refused an alert");
                    refused = true;
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
        // Not delivered from here: a later request (here or on another
        // replica) that sees the same cause may still tell of it. One the
        // webhook refused would be refused again until its configuration
        // is fixed: a budget alert goes again after an hour, the others
        // (claimed for a minute) when their claim ends.
        if delivered {
            if let Alert::Policy(a) = &alert {
                policy.confirm_policy_alert(a).await;
            }
        } else {
            match (&claim, &alert) {
                (Some(claim), _) if !refused => {
                    policy.release_alert(claim).await;
                    throttles.forget(&alert, admitted);
                }
                (None, Alert::Policy(a)) => {
                    let after = refused.then_some(REFUSED_RETRY);
                    policy.release_policy_alert(&a.claim, after).await;
                }
                _ => {}
            }
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
        Alert::Failed {
            group,
            deployment,
            class,
            status,
        } => json!({
            "event": "request_failed",
            "model": group,
            "deployment": deployment,
            "error": class,
            "status": status,
            "at": now_iso(),
        }),
        Alert::Slow {
            group,
            deployment,
            took,
            threshold,
        } => json!({
            "event": "slow_request",
            "model": group,
            "deployment": deployment,
            "seconds": round_ms(*took),
            "threshold_seconds": round_ms(*threshold),
            "at": now_iso(),
        }),
    }
}

/// Seconds, to the millisecond.
fn round_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// `text` escaped for Slack (`&`, `<`, `>`), backticks made quotes.
fn slack_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '`' => out.push('\''),
            c => out.push(c),
        }
    }
    out
}

/// An alert as one sentence (Slack's `text`).
fn sentence(alert: &Alert) -> String {
    match alert {
        Alert::Policy(a) => {
            // Ids and aliases may be chosen by clients (an end user's id):
            // they cannot close the code span or write Slack markup.
            let (id, alias) = (slack_text(&a.id), a.alias.as_deref().map(slack_text));
            let who = match alias {
                Some(alias) => format!("{} `{alias}` ({id})", a.scope),
                None => format!("{} `{id}`", a.scope),
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
        Alert::Failed {
            group,
            deployment,
            class,
            status,
        } => {
            let last = deployment
                .as_ref()
                .map_or_else(String::new, |d| format!(", deployment `{d}` answering last"));
            format!("Switchyard: a request to `{group}` failed upstream ({class}, HTTP {status}{last}).")
        }
        Alert::Slow {
            group,
            deployment,
            took,
            threshold,
        } => format!(
            "Switchyard: deployment `{deployment}` of `{group}` took {}s to answer (threshold {}s).",
            round_ms(*took),
            round_ms(*threshold)
        ),
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
            claim: String::new(),
            lasts_ms: 0,
        });
        let body = json_body(&alert);
        assert_eq!(body["event"], "soft_budget_crossed");
        assert_eq!(body["spend_usd"], 0.000014);
        assert_eq!(body["budget_duration"], "monthly");
        assert_eq!(
            sentence(&alert),
            "Switchyard: key `notebooks` (sk-...abcd) has spent $0.000014000, past its soft budget of $0.000010000 of a $0.000030000 budget (monthly budget)."
        );
        // An end user's id is the client's: no markup reaches Slack.
        let forged = Alert::Policy(PolicyAlert {
            kind: AlertKind::BudgetExhausted,
            scope: "end user".into(),
            id: "x` <!channel> <https://evil|Reset budget> & `y".into(),
            alias: None,
            spend: 14_000,
            soft_budget: None,
            max_budget: None,
            period: None,
            claim: String::new(),
            lasts_ms: 0,
        });
        let text = sentence(&forged);
        assert_eq!(
            text,
            "Switchyard: end user `x' &lt;!channel&gt; &lt;https://evil|Reset budget&gt; &amp; 'y` has spent $0.000014000; its requests are refused."
        );
        let cooled = Alert::Cooldown {
            deployment: "gpt-4o-eu".into(),
            reason: "server_error",
        };
        assert_eq!(json_body(&cooled)["deployment"], "gpt-4o-eu");
        let failed = Alert::Failed {
            group: "gpt-4o".into(),
            deployment: Some("gpt-4o/0".into()),
            class: "upstream_error".into(),
            status: 502,
        };
        assert_eq!(json_body(&failed)["event"], "request_failed");
        assert_eq!(
            sentence(&failed),
            "Switchyard: a request to `gpt-4o` failed upstream (upstream_error, HTTP 502, deployment `gpt-4o/0` answering last)."
        );
        let slow = Alert::Slow {
            group: "gpt-4o".into(),
            deployment: "gpt-4o/0".into(),
            took: Duration::from_millis(1_234),
            threshold: Duration::from_secs(1),
        };
        let body = json_body(&slow);
        assert_eq!(
            (body["seconds"].as_f64(), body["threshold_seconds"].as_f64()),
            (Some(1.234), Some(1.0))
        );
    }

    #[test]
    fn one_alert_a_minute_per_name_and_the_memory_is_bounded() {
        let throttle = Throttle::default();
        let first = throttle.admit("a").unwrap();
        assert!(throttle.admit("a").is_none(), "the same name within a minute");
        assert!(throttle.admit("b").is_some());
        for i in 0..REMEMBERED * 2 {
            throttle.admit(&format!("n{i}"));
        }
        assert!(throttle.0.lock().len() <= REMEMBERED);
        assert!(throttle.admit("a").is_none(), "still remembered while recent");
        // One that was not sent is forgotten: the next goes at once; a
        // failure of an older one leaves a newer one noted.
        throttle.forget("a", first);
        let second = throttle.admit("a").unwrap();
        throttle.forget("a", first);
        assert!(throttle.admit("a").is_none(), "the newer one stays noted");
        throttle.forget("a", second);
        assert!(throttle.admit("a").is_some());
    }
}
