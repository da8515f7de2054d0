//! Prometheus metrics.

use std::sync::Arc;

use metrics::{counter, gauge, histogram, with_local_recorder};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use metrics_util::MetricKindMask;

/// Request latency buckets, seconds: from a cache hit to a long generation.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// Gateway overhead buckets, seconds (up to half a second: embedding a
/// prompt for a learned router or the semantic cache takes milliseconds to
/// hundreds of them).
const OVERHEAD_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
];

/// The gateway's metrics and their Prometheus rendering.
#[derive(Clone)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    /// The per-key spend series, in a registry of their own: the one
    /// family whose series grow with the number of keys, and the only one
    /// an idle timeout drops (a rarely updated counter of the others must
    /// stay, or `increase` would never see it rise).
    keys: Arc<PrometheusRecorder>,
    keys_handle: PrometheusHandle,
    /// The response cache's counts last added (stores, errors, skipped): a
    /// cache made anew by a reload counts from zero again, and its counts
    /// are added on, so the counters keep rising.
    cache_seen: Arc<std::sync::Mutex<[u64; 3]>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Keeps a request counted as in flight until dropped.
#[derive(Debug)]
pub struct InFlightGuard {
    metrics: Metrics,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.metrics
            .with(|| gauge!("switchyard_in_flight_requests").decrement(1.0));
    }
}

/// The builder with histogram buckets (a summary is the fallback).
fn bucketed() -> Result<PrometheusBuilder, metrics_exporter_prometheus::BuildError> {
    PrometheusBuilder::new()
        .with_recommended_naming(true)
        .set_buckets_for_metric(Matcher::Full("switchyard_overhead_seconds".into()), OVERHEAD_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
}

impl Metrics {
    /// A fresh registry with every metric described.
    pub fn new() -> Self {
        Self::expiring(None)
    }

    /// [`Metrics::new`] whose per-key spend series are dropped once
    /// nothing has updated them for `idle`.
    pub fn expiring(idle: Option<std::time::Duration>) -> Self {
        let keys = PrometheusBuilder::new()
            .with_recommended_naming(true)
            .idle_timeout(MetricKindMask::COUNTER, idle)
            .build_recorder();
        let keys_handle = keys.handle();
        with_local_recorder(&keys, || {
            metrics::describe_counter!(
                "switchyard_key_spend_nanousd",
                "Spend in billionths of a USD, by virtual key (its reference and alias) and team."
            );
        });
        let builder = bucketed().unwrap_or_else(|_| PrometheusBuilder::new().with_recommended_naming(true));
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let metrics = Self {
            recorder: Arc::new(recorder),
            handle,
            keys: Arc::new(keys),
            keys_handle,
            cache_seen: Arc::default(),
        };
        metrics.with(|| {
            use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
            describe_counter!(
                "switchyard_requests",
                "Requests answered, by route, model group, deployment and status."
            );
            describe_histogram!(
                "switchyard_request_duration_seconds",
                Unit::Seconds,
                "Time from the request to the response head (for streams, the first event)."
            );
            describe_histogram!(
                "switchyard_stream_duration_seconds",
                Unit::Seconds,
                "Time from sending a stream's request to the upstream to the stream's end."
            );
            describe_histogram!(
                "switchyard_time_to_first_token_seconds",
                Unit::Seconds,
                "Time from sending to the upstream to its first streamed event."
            );
            describe_histogram!(
                "switchyard_overhead_seconds",
                Unit::Seconds,
                "Time spent in the gateway itself, upstream time excluded."
            );
            describe_counter!(
                "switchyard_tokens",
                "Tokens, by model group, deployment and direction (input, output)."
            );
            describe_counter!(
                "switchyard_config_reloads",
                "Configuration reloads, by result (applied, rejected)."
            );
            describe_counter!(
                "switchyard_cache_skipped",
                "Cache lookups and stores not sent to a Redis cache that kept failing."
            );
            describe_counter!(
                "switchyard_cost_nanousd",
                "Spend in billionths of a USD (exact, as charged), by model group and whether it was a cache hit."
            );
            describe_counter!(
                "switchyard_cache_lookups",
                "Response cache lookups, by model group and result."
            );
            describe_counter!(
                "switchyard_routing_decisions",
                "Deployments chosen, by strategy, model group and deployment."
            );
            describe_counter!(
                "switchyard_upstream_attempts",
                "Upstream attempts, by deployment and outcome."
            );
            describe_counter!(
                "switchyard_stream_errors",
                "Streams that failed after their first event, by model group, deployment and error class."
            );
            describe_counter!("switchyard_retries", "Retries after a failed attempt, by model group.");
            describe_counter!("switchyard_fallbacks", "Fallbacks from one model group to another.");
            describe_counter!(
                "switchyard_cooldowns",
                "Deployments put in cooldown by their circuit breaker."
            );
            describe_counter!(
                "switchyard_rate_limited",
                "Requests refused by a rate limit or budget, by reason."
            );
            describe_gauge!("switchyard_in_flight_requests", "Requests being served now.");
            describe_counter!("switchyard_cache_stores", "Answers written to the response cache.");
            describe_counter!(
                "switchyard_cache_errors",
                "Response-cache store failures (each served as a miss or left unstored)."
            );
            describe_gauge!(
                "switchyard_cache_entries",
                "Answers held by the in-process response cache."
            );
            describe_counter!(
                "switchyard_request_log_dropped",
                "Request-log records dropped because the writer fell behind."
            );
        });
        metrics
    }

    fn with<T>(&self, f: impl FnOnce() -> T) -> T {
        with_local_recorder(&*self.recorder, f)
    }

    /// Folds recorded histogram samples into their buckets every `every`, on
    /// the current Tokio runtime. Without it, samples wait for the next
    /// scrape: memory grows with traffic when nothing scrapes `/metrics`.
    pub fn start_upkeep(&self, every: std::time::Duration) {
        let (handle, keys) = (self.handle.clone(), self.keys_handle.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                handle.run_upkeep();
                keys.run_upkeep();
            }
        });
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = self.handle.render();
        text.push_str(&self.keys_handle.render());
        text
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn in_flight(&self) -> InFlightGuard {
        self.with(|| gauge!("switchyard_in_flight_requests").increment(1.0));
        InFlightGuard { metrics: self.clone() }
    }

    /// A request answered (or refused) with `status` after `seconds`.
    pub fn request(&self, route: &str, model: &str, deployment: &str, status: u16, seconds: f64) {
        self.with(|| {
            counter!(
                "switchyard_requests",
                "route" => route.to_owned(),
                "model" => model.to_owned(),
                "deployment" => deployment.to_owned(),
                "status" => status.to_string()
            )
            .increment(1);
            histogram!("switchyard_request_duration_seconds", "route" => route.to_owned(), "model" => model.to_owned())
                .record(seconds);
        });
    }

    /// Time the gateway itself spent on a request.
    pub fn overhead(&self, seconds: f64) {
        self.with(|| histogram!("switchyard_overhead_seconds").record(seconds));
    }

    /// A stream ended after `seconds`.
    pub fn stream(&self, model: &str, deployment: &str, seconds: f64) {
        self.with(|| {
            histogram!("switchyard_stream_duration_seconds", "model" => model.to_owned(), "deployment" => deployment.to_owned())
                .record(seconds);
        });
    }

    /// A stream's time to its first event, recorded when that event comes
    /// (a stream the client abandons later counts too).
    pub fn first_token(&self, model: &str, deployment: &str, seconds: f64) {
        self.with(|| {
            histogram!("switchyard_time_to_first_token_seconds", "model" => model.to_owned(), "deployment" => deployment.to_owned())
                .record(seconds);
        });
    }

    /// Tokens used upstream (none for a cache hit) and what was charged, in
    /// nano-dollars (counted exactly: a request cheaper than a micro-dollar
    /// still counts).
    pub fn usage(&self, model: &str, deployment: &str, input: u64, output: u64, cost_nanos: i64, cache_hit: bool) {
        self.with(|| {
            let counts = [("input", input), ("output", output)];
            let upstream = if cache_hit { &counts[..0] } else { &counts[..] };
            for &(direction, n) in upstream {
                counter!(
                    "switchyard_tokens",
                    "model" => model.to_owned(),
                    "deployment" => deployment.to_owned(),
                    "direction" => direction
                )
                .increment(n);
            }
            let cache = if cache_hit { "hit" } else { "miss" };
            counter!("switchyard_cost_nanousd", "model" => model.to_owned(), "cache" => cache)
                .increment(u64::try_from(cost_nanos).unwrap_or(0));
        });
    }

    /// What a virtual key (`key`: its reference, never its value) was
    /// charged, in nano-dollars, with its alias and team (empty when none).
    /// Nothing charged makes no series: a key has one once it spends.
    pub fn key_spend(&self, key: &str, alias: &str, team: &str, cost_nanos: i64) {
        if cost_nanos <= 0 {
            return;
        }
        with_local_recorder(&*self.keys, || {
            counter!(
                "switchyard_key_spend_nanousd",
                "key" => key.to_owned(),
                "key_alias" => alias.to_owned(),
                "team" => team.to_owned()
            )
            .increment(u64::try_from(cost_nanos).unwrap_or(0));
        });
    }

    /// A cache lookup: `hit`, `semantic_hit` or `miss`.
    pub fn cache(&self, model: &str, result: &'static str) {
        self.with(|| {
            counter!("switchyard_cache_lookups", "model" => model.to_owned(), "result" => result).increment(1);
        });
    }

    /// A routing decision.
    pub fn routed(&self, strategy: &str, model: &str, deployment: &str) {
        self.with(|| {
            counter!(
                "switchyard_routing_decisions",
                "strategy" => strategy.to_owned(),
                "model" => model.to_owned(),
                "deployment" => deployment.to_owned()
            )
            .increment(1);
        });
    }

    /// An upstream attempt's outcome (`ok` or an error class).
    pub fn attempt(&self, deployment: &str, outcome: &str) {
        self.with(|| {
            counter!("switchyard_upstream_attempts", "deployment" => deployment.to_owned(), "outcome" => outcome.to_owned())
                .increment(1);
        });
    }

    /// A stream failed after its first event (`error` is a failure class).
    pub fn stream_error(&self, model: &str, deployment: &str, error: &str) {
        self.with(|| {
            counter!(
                "switchyard_stream_errors",
                "model" => model.to_owned(),
                "deployment" => deployment.to_owned(),
                "error" => error.to_owned()
            )
            .increment(1);
        });
    }

    /// A retry within a model group.
    pub fn retry(&self, model: &str) {
        self.with(|| counter!("switchyard_retries", "model" => model.to_owned()).increment(1));
    }

    /// A fallback between model groups.
    pub fn fallback(&self, from: &str, to: &str) {
        self.with(|| {
            counter!("switchyard_fallbacks", "from" => from.to_owned(), "to" => to.to_owned()).increment(1);
        });
    }

    /// A deployment put in cooldown.
    pub fn cooldown(&self, deployment: &str) {
        self.with(|| counter!("switchyard_cooldowns", "deployment" => deployment.to_owned()).increment(1));
    }

    /// A request refused by policy (`rate_limit`, `budget`, …).
    pub fn refused(&self, reason: &'static str) {
        self.with(|| counter!("switchyard_rate_limited", "reason" => reason).increment(1));
    }

    /// The response cache's own counts: answers stored, store failures, and
    /// entries held in process (`None` for Redis).
    pub fn cache_store(&self, stores: u64, errors: u64, skipped: u64, entries: Option<u64>) {
        let deltas = {
            let mut seen = self
                .cache_seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = [stores, errors, skipped];
            // Lower than before: a new cache, whose counts are all new.
            let deltas: [u64; 3] = std::array::from_fn(|i| now[i].checked_sub(seen[i]).unwrap_or(now[i]));
            *seen = now;
            deltas
        };
        self.with(|| {
            counter!("switchyard_cache_stores").increment(deltas[0]);
            counter!("switchyard_cache_errors").increment(deltas[1]);
            counter!("switchyard_cache_skipped").increment(deltas[2]);
            if let Some(n) = entries {
                gauge!("switchyard_cache_entries").set(n as f64);
            }
        });
    }

    /// The response cache was replaced (a reload changed its settings): its
    /// final counts are taken in, and the next cache's count from zero.
    pub fn cache_replaced(&self, stores: u64, errors: u64, skipped: u64) {
        self.cache_store(stores, errors, skipped, Some(0));
        *self
            .cache_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = [0; 3];
    }

    /// The configuration watch could not read its file or object (a missing
    /// file, S3 refusing the gateway's credentials): changes stop reaching
    /// this replica until it can.
    pub fn config_unreachable(&self) {
        self.with(|| counter!("switchyard_config_reloads", "result" => "unreachable").increment(1));
    }

    /// A configuration reload applied (`true`) or refused.
    pub fn config_reload(&self, applied: bool) {
        let result = if applied { "applied" } else { "rejected" };
        self.with(|| counter!("switchyard_config_reloads", "result" => result).increment(1));
    }

    /// A request-log record dropped.
    pub fn log_dropped(&self) {
        self.with(|| counter!("switchyard_request_log_dropped").increment(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_as_prometheus_text_with_labels() {
        let m = Metrics::new();
        m.request("chat", "gpt", "gpt/0", 200, 0.012);
        m.request("chat", "gpt", "gpt/0", 200, 0.020);
        m.cache("gpt", "hit");
        // An embedding call costing 0.4 micro-dollars, twice: 800 nano-dollars.
        m.usage("embed", "embed/0", 20, 0, 400, false);
        m.usage("embed", "embed/0", 20, 0, 400, false);
        assert!(
            m.render()
                .contains(r#"switchyard_cost_nanousd_total{model="embed",cache="miss"} 800"#),
            "{}",
            m.render()
        );
        {
            let _guard = m.in_flight();
            assert!(m.render().contains("switchyard_in_flight_requests 1"));
        }
        let text = m.render();
        assert!(
            text.contains(r#"switchyard_requests_total{route="chat",model="gpt",deployment="gpt/0",status="200"} 2"#),
            "{text}"
        );
        assert!(text.contains("switchyard_request_duration_seconds_bucket"), "{text}");
        assert!(
            text.contains(r#"switchyard_cache_lookups_total{model="gpt",result="hit"} 1"#),
            "{text}"
        );
        assert!(text.contains("switchyard_in_flight_requests 0"), "{text}");
        assert!(text.contains("# HELP switchyard_requests_total"), "{text}");
        m.config_reload(true);
        m.config_unreachable();
        let text = m.render();
        assert!(text.contains("# HELP switchyard_config_reloads_total"));
        assert!(
            text.contains(r#"switchyard_config_reloads_total{result="unreachable"} 1"#),
            "{text}"
        );
    }

    /// With an idle timeout, a key's spend series that nothing updated for
    /// that long is dropped; series updated since, and the other families
    /// (a rare error's count among them), stay.
    #[test]
    fn idle_series_are_dropped_when_asked() {
        let idle = std::time::Duration::from_secs(2);
        let m = Metrics::expiring(Some(idle));
        let kept = Metrics::new();
        for metrics in [&m, &kept] {
            metrics.key_spend("key-gone", "", "", 1_000);
            metrics.request("chat", "gpt", "gpt/0", 503, 0.1);
            let _guard = metrics.in_flight();
        }
        assert!(m.render().contains(r#"key="key-gone""#));
        std::thread::sleep(idle + std::time::Duration::from_millis(500));
        m.key_spend("key-active", "", "", 1_000);
        let text = m.render();
        assert!(!text.contains(r#"key="key-gone""#), "{text}");
        assert!(text.contains(r#"key="key-active""#), "{text}");
        assert!(text.contains("switchyard_in_flight_requests 0"), "{text}");
        assert!(text.contains(r#"status="503"} 1"#), "{text}");
        assert!(text.contains("# HELP switchyard_key_spend_nanousd_total"), "{text}");
        assert!(
            kept.render().contains(r#"key="key-gone""#),
            "without a timeout nothing is dropped"
        );
    }

    /// A key that was charged nothing (a cache hit, a free model) has no
    /// series: one per key that ever spent, as documented.
    #[test]
    fn a_key_charged_nothing_has_no_series() {
        let m = Metrics::new();
        m.key_spend("k-free", "", "", 0);
        m.key_spend("k-paid", "", "", 25);
        let text = m.render();
        assert!(!text.contains("k-free"), "{text}");
        assert!(text.contains("k-paid"), "{text}");
    }

    /// The cache's counts keep rising across a reload that makes a new
    /// cache, whose own counts start again from zero.
    #[test]
    fn cache_counts_keep_rising_when_the_cache_is_made_anew() {
        let m = Metrics::new();
        m.cache_store(10, 5_000, 7, None);
        m.cache_store(12, 5_000, 7, None);
        // A reload: the new cache has stored 3 answers and failed twice.
        m.cache_store(3, 2, 0, None);
        let text = m.render();
        for expected in [
            "switchyard_cache_stores_total 15",
            "switchyard_cache_errors_total 5002",
            "switchyard_cache_skipped_total 7",
        ] {
            assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
        }
    }

    /// A replaced cache's counts since the last scrape are taken in when it
    /// is replaced, and the new cache's counts are all new, even once they
    /// pass the old ones.
    #[test]
    fn a_replaced_cache_loses_no_counts() {
        let m = Metrics::new();
        m.cache_store(10, 0, 0, Some(4));
        m.cache_replaced(14, 1, 0);
        m.cache_store(20, 0, 0, None);
        let text = m.render();
        for expected in [
            "switchyard_cache_stores_total 34",
            "switchyard_cache_errors_total 1",
            "switchyard_cache_entries 0",
        ] {
            assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
        }
    }
}
