//! The running gateway's lifecycle: configuration reloads without a restart
//! (file changes, `SIGHUP`, `POST /config/reload`, an S3 object's new ETag)
//! and the drain before shutdown.
//!
//! A reload reads and validates the whole configuration and starts what it
//! needs (learned routers' artifacts) before anything changes; then the new
//! state is swapped in at once. Requests already running keep the state they
//! started with, streams included; a rejected configuration changes nothing.
//! Keys, limits, budgets and spend, metrics, the request log, and a cache
//! whose settings did not change carry over; `server`, `policy` and
//! `telemetry` changes take effect at the next restart (a warning says so).

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sha2::{Digest, Sha256};
use tower::ServiceExt as _;

use crate::config::{self, Config, ConfigError, EnvSource, Overrides, Source};
use crate::error::ApiError;
use crate::state::AppState;

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub enum Origin {
    /// The embedded default (never changes).
    Embedded,
    /// A file, watched for changes.
    File(PathBuf),
    /// An S3 object, polled by ETag.
    S3 {
        /// The client.
        client: aws_sdk_s3::Client,
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
    },
}

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The configuration could not be read.
    #[error("cannot read the configuration: {0}")]
    Fetch(String),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Something the configuration needs could not start.
    #[error("cannot start the new configuration: {0}")]
    Start(String),
    /// Something the configuration needs could not be read now (its store
    /// did not answer); the same configuration may start later.
    #[error("cannot start the new configuration yet: {0}")]
    Unavailable(String),
}

/// One configuration text and its fingerprint (content hash or ETag).
#[derive(Debug, Clone)]
pub struct Fetched {
    /// YAML text (`None`: the embedded default).
    pub text: Option<String>,
    /// Changes when the text does.
    pub fingerprint: String,
}

impl Origin {
    /// Parses `--config`: a path or `s3://bucket/key`.
    pub async fn from_arg(arg: Option<&PathBuf>, s3: &config::S3Entry) -> Result<Self, ReloadError> {
        let Some(path) = arg else { return Ok(Origin::Embedded) };
        let text = path.to_string_lossy();
        let Some(rest) = text.strip_prefix("s3://") else {
            return Ok(Origin::File(path.clone()));
        };
        let (bucket, key) = rest
            .split_once('/')
            .filter(|(b, k)| !b.is_empty() && !k.is_empty())
            .ok_or_else(|| ReloadError::Fetch(format!("`{text}` is not s3://bucket/key")))?;
        Ok(Origin::S3 {
            client: crate::learned::s3_client(s3).await,
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        })
    }

    /// Reads the configuration.
    pub async fn fetch(&self) -> Result<Fetched, ReloadError> {
        match self {
            Origin::Embedded => Ok(Fetched {
                text: None,
                fingerprint: "embedded".into(),
            }),
            Origin::File(path) => {
                let bytes = tokio::fs::read(path)
                    .await
                    .map_err(|e| ReloadError::Fetch(format!("{}: {e}", path.display())))?;
                let fingerprint = hex::encode(Sha256::digest(&bytes));
                // Read, but not a configuration: rejected, not unreachable.
                let text = String::from_utf8(bytes)
                    .map_err(|_| ReloadError::Config(ConfigError::Parse(format!("{} is not UTF-8", path.display()))))?;
                Ok(Fetched {
                    text: Some(text),
                    fingerprint,
                })
            }
            Origin::S3 { client, bucket, key } => {
                // Bounded: a read that stalls must not hold reloads (and
                // start-up) for ever; the SDK bounds only connecting.
                let read = async {
                    let object = client.get_object().bucket(bucket).key(key).send().await.map_err(|e| {
                        ReloadError::Fetch(format!("s3://{bucket}/{key}: {}", crate::learned::aws_reason(&e)))
                    })?;
                    let etag =
                        crate::learned::object_version(object.e_tag(), object.last_modified(), object.content_length());
                    let bytes = object
                        .body
                        .collect()
                        .await
                        .map_err(|e| ReloadError::Fetch(format!("s3://{bucket}/{key}: {e}")))?
                        .into_bytes();
                    // Read, but not a configuration: rejected, not unreachable.
                    let text = String::from_utf8(bytes.to_vec()).map_err(|_| {
                        ReloadError::Config(ConfigError::Parse(format!("s3://{bucket}/{key} is not UTF-8")))
                    })?;
                    Ok(Fetched {
                        text: Some(text),
                        fingerprint: etag,
                    })
                };
                tokio::time::timeout(S3_READ_TIMEOUT, read).await.map_err(|_| {
                    ReloadError::Fetch(format!(
                        "s3://{bucket}/{key}: no answer within {} s",
                        S3_READ_TIMEOUT.as_secs()
                    ))
                })?
            }
        }
    }

    /// The fingerprint only, when it is cheaper than the text (S3: `HeadObject`).
    async fn fingerprint(&self) -> Result<String, ReloadError> {
        match self {
            Origin::S3 { client, bucket, key } => {
                let head = client.head_object().bucket(bucket).key(key).send();
                match tokio::time::timeout(S3_READ_TIMEOUT, head).await {
                    Ok(Ok(h)) => Ok(crate::learned::object_version(
                        h.e_tag(),
                        h.last_modified(),
                        h.content_length(),
                    )),
                    Ok(Err(e)) => Err(ReloadError::Fetch(format!(
                        "s3://{bucket}/{key}: {}",
                        crate::learned::aws_reason(&e)
                    ))),
                    Err(_) => Err(ReloadError::Fetch(format!(
                        "s3://{bucket}/{key}: no answer within {} s",
                        S3_READ_TIMEOUT.as_secs()
                    ))),
                }
            }
            Origin::File(path) => tokio::fs::read(path)
                .await
                .map(|bytes| hex::encode(Sha256::digest(&bytes)))
                .map_err(|e| ReloadError::Fetch(format!("{}: {e}", path.display()))),
            Origin::Embedded => Ok("embedded".into()),
        }
    }

    /// Whether it can change while the gateway runs.
    fn watchable(&self) -> bool {
        !matches!(self, Origin::Embedded)
    }
}

/// Parses a fetched configuration.
pub fn parse(fetched: &Fetched, overrides: &Overrides) -> Result<Config, ConfigError> {
    match &fetched.text {
        None => config::load(Source::Embedded, overrides),
        Some(text) => config::load(Source::Text(text), overrides),
    }
}

/// The gateway's current state and everything needed to replace it.
pub struct Live {
    origin: Origin,
    overrides: Overrides,
    env: Arc<dyn EnvSource + Send + Sync>,
    state: ArcSwap<AppState>,
    router: ArcSwap<Router>,
    config: parking_lot::Mutex<(Config, String)>,
    /// The sections read at start-up that a reload does not apply
    /// (`server`, `policy`, `telemetry`), to tell what waits for a restart.
    booted: (
        crate::config::ServerConfig,
        crate::policy_config::PolicyConfig,
        crate::telemetry_config::TelemetryConfig,
    ),
    /// Those of them the configuration now in use changed.
    pending_restart: parking_lot::Mutex<Vec<&'static str>>,
    /// The last configuration refused: its fingerprint, when, and whether
    /// the failure may pass by itself (something it needs could not be
    /// read, e.g. an artifact store that did not answer). The watch does not retry
    /// an invalid one; one that failed to start it retries after
    /// [`RETRY_START_AFTER`], twice as long at each failure in a row.
    refused: parking_lot::Mutex<Option<Refused>>,
    /// A changed version the watch read once: applied when the next poll
    /// reads it again.
    settling: parking_lot::Mutex<Option<String>>,
    reloading: tokio::sync::Mutex<()>,
    draining: AtomicBool,
    reloads: AtomicU64,
    rejected: AtomicU64,
}

/// A configuration version the watch does not apply again as it is.
#[derive(Debug, Clone)]
struct Refused {
    fingerprint: String,
    at: std::time::Instant,
    may_pass: bool,
    /// Failures of this version in a row.
    failures: u32,
}

/// How long the watch waits before it tries again a configuration whose
/// start failed (its learned routers could not be loaded); doubled at each
/// failure of the same version, up to [`RETRY_START_AT_MOST`], since each try
/// may download and build its artifacts again.
const RETRY_START_AFTER: Duration = Duration::from_secs(30);

/// The longest wait before a configuration whose start failed is tried again.
const RETRY_START_AT_MOST: Duration = Duration::from_secs(3600);

/// The longest a configuration read from S3 may take, answer included.
const S3_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether a version that failed with `e` may be tried again as it is,
/// later: an artifact may be replaced to fit, its store come back, or the
/// embedding model it names be put in place (a model directory filled after
/// the configuration that needs it); only an invalid file waits for a change.
fn may_pass_later(e: &ReloadError) -> bool {
    match e {
        ReloadError::Unavailable(_) | ReloadError::Start(_) => true,
        ReloadError::Config(ConfigError::Invalid(issues)) => {
            !issues.is_empty() && issues.iter().all(|i| i.path == crate::state::EMBEDDER_UNREADABLE)
        }
        ReloadError::Config(_) | ReloadError::Fetch(_) => false,
    }
}

impl Refused {
    /// Whether the watch should leave `fingerprint` alone now.
    fn holds(&self, fingerprint: &str) -> bool {
        self.fingerprint == fingerprint && (!self.may_pass || self.at.elapsed() < self.wait())
    }

    /// How long after `at` the version may be tried again.
    fn wait(&self) -> Duration {
        let doublings = self.failures.saturating_sub(1).min(16);
        RETRY_START_AFTER
            .saturating_mul(1 << doublings)
            .min(RETRY_START_AT_MOST)
    }
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("origin", &self.origin)
            .field("reloads", &self.reloads.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Live {
    /// Wraps a started state built from `config` (fetched with `fingerprint`).
    pub fn new(
        origin: Origin,
        overrides: Overrides,
        env: Box<dyn EnvSource + Send + Sync>,
        config: Config,
        fingerprint: String,
        state: AppState,
    ) -> Arc<Self> {
        let state = Arc::new(state);
        let router = crate::routes::router(state.clone());
        Arc::new(Self {
            origin,
            overrides,
            env: env.into(),
            state: ArcSwap::new(state),
            router: ArcSwap::from_pointee(router),
            booted: (config.server.clone(), config.policy.clone(), config.telemetry.clone()),
            pending_restart: parking_lot::Mutex::new(Vec::new()),
            config: parking_lot::Mutex::new((config, fingerprint)),
            refused: parking_lot::Mutex::new(None),
            settling: parking_lot::Mutex::new(None),
            reloading: tokio::sync::Mutex::new(()),
            draining: AtomicBool::new(false),
            reloads: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        })
    }

    /// The state new requests get.
    pub fn state(&self) -> Arc<AppState> {
        self.state.load_full()
    }

    /// Reloads if the configuration changed (or always, with `force`);
    /// `Ok(false)` when there was nothing new.
    pub async fn reload(&self, trigger: &str, force: bool) -> Result<bool, ReloadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let mut expected = None;
        if !force {
            let fingerprint = match self.origin.fingerprint().await {
                Ok(fingerprint) => fingerprint,
                Err(e) => {
                    self.state().metrics.config_unreachable();
                    return Err(e);
                }
            };
            if fingerprint == self.config.lock().1
                || self.refused.lock().as_ref().is_some_and(|r| r.holds(&fingerprint))
            {
                return Ok(false);
            }
            // A change is applied once two polls in a row read the same
            // version: a file being rewritten in place (a bind mount edited
            // where it lies) may be read half written, and still parse.
            let mut settling = self.settling.lock();
            if settling.as_deref() != Some(fingerprint.as_str()) {
                *settling = Some(fingerprint);
                return Ok(false);
            }
            *settling = None;
            expected = Some(fingerprint);
        }
        let mut tried = None;
        let result = self.apply(&mut tried, expected.as_deref()).await;
        match &result {
            Ok(false) => return Ok(false),
            Ok(true) => {
                *self.refused.lock() = None;
                *self.settling.lock() = None;
                self.reloads.fetch_add(1, Ordering::Relaxed);
                self.state().metrics.config_reload(true);
                tracing::info!(trigger, "configuration reloaded");
            }
            Err(e) => {
                // The version that was read and failed, not whatever the
                // source holds by now; one that could not be read is not
                // marked, so the watch tries again.
                if let Some(fingerprint) = tried {
                    let mut refused = self.refused.lock();
                    let failures = match refused.as_ref() {
                        Some(before) if before.fingerprint == fingerprint => before.failures.saturating_add(1),
                        _ => 1,
                    };
                    *refused = Some(Refused {
                        fingerprint,
                        at: std::time::Instant::now(),
                        may_pass: may_pass_later(e),
                        failures,
                    });
                }
                if matches!(e, ReloadError::Fetch(_)) {
                    // Read failed (the file went away between the poll and
                    // the read, S3 failed after it answered the poll): the
                    // source is unreachable, not the configuration wrong.
                    // The watch logs it once until it changes.
                    self.state().metrics.config_unreachable();
                    if trigger != "watch" {
                        tracing::warn!(trigger, error = %e, "configuration could not be read; the previous one keeps serving");
                    }
                } else {
                    self.rejected.fetch_add(1, Ordering::Relaxed);
                    self.state().metrics.config_reload(false);
                    tracing::error!(trigger, error = %e, "configuration rejected; the previous one keeps serving");
                }
            }
        }
        result
    }

    /// Reads, validates, starts and swaps in the configuration; `tried`
    /// gets the fingerprint of the version read. `Ok(false)`: the version
    /// read is not the `expected` one the watch saw settle (the file is
    /// changing still), and is left for the next poll.
    async fn apply(&self, tried: &mut Option<String>, expected: Option<&str>) -> Result<bool, ReloadError> {
        let fetched = match self.origin.fetch().await {
            Ok(fetched) => fetched,
            // Read, and not a configuration (not UTF-8): the version the
            // poll saw is refused until it changes.
            Err(e @ ReloadError::Config(_)) => {
                *tried = expected.map(str::to_owned);
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        if expected.is_some_and(|e| e != fetched.fingerprint) {
            *self.settling.lock() = Some(fetched.fingerprint);
            return Ok(false);
        }
        *tried = Some(fetched.fingerprint.clone());
        let config = parse(&fetched, &self.overrides)?;
        let old = self.state.load_full();
        // The same embedder settings: the model loaded already serves on
        // (reading and building it again would hold a runtime thread, and
        // drop its cache of embeddings).
        let same_embedder = self.config.lock().0.embedder == config.embedder;
        let reuse = old.embedder.clone().filter(|_| same_embedder);
        // Off the runtime's workers: a changed embedder is read and loaded
        // here (a model file of tens of MB).
        let (env, settings) = (self.env.clone(), config.clone());
        let mut next = tokio::task::spawn_blocking(move || crate::build_state_with(&settings, env.as_ref(), reuse))
            .await
            .map_err(|e| ReloadError::Start(format!("building the configuration failed: {e}")))??;
        // Compared with what the process started with: a section changed
        // by an earlier reload still waits for the restart.
        let pending: Vec<&'static str> = [
            ("server", self.booted.0 != config.server),
            ("policy", self.booted.1 != config.policy),
            ("telemetry", self.booted.2 != config.telemetry),
        ]
        .into_iter()
        .filter_map(|(section, changed)| changed.then_some(section))
        .collect();
        for section in &pending {
            tracing::warn!(
                section,
                "this section differs from the one in use; it takes effect at the next restart"
            );
        }
        let same_cache = {
            let (previous, _) = &*self.config.lock();
            // A semantic index holds the embedder's vectors: with another
            // embedder, a cache that has one starts afresh.
            previous.cache == config.cache && (config.cache.semantic.is_empty() || previous.embedder == config.embedder)
        };
        next.inherit(&old, same_cache);
        next.start_learned_after(Some(&old)).await.map_err(|e| match e {
            crate::learned::LoadError::Read { .. } => ReloadError::Unavailable(e.to_string()),
            crate::learned::LoadError::Rejected { .. } => ReloadError::Start(e.to_string()),
        })?;
        // Only once nothing can fail: the policy is shared with the state
        // that keeps serving if this reload is refused.
        next.policy.set_known_models(config.key_model_names());
        for notice in &config.notices {
            tracing::warn!("configuration: {notice}");
        }
        let next = Arc::new(next);
        let router = crate::routes::router(next.clone());
        if !same_cache {
            // The old cache's counts since the last scrape are not lost with
            // it; the new one's count from zero.
            let counts = old.cache.as_ref().map_or([0; 3], |cache| {
                let counters = cache.store().counters();
                [&counters.stores, &counters.errors, &counters.skipped]
                    .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
            });
            old.metrics.cache_replaced(counts[0], counts[1], counts[2]);
        }
        self.state.store(next);
        self.router.store(Arc::new(router));
        *self.config.lock() = (config, fetched.fingerprint);
        *self.pending_restart.lock() = pending;
        Ok(true)
    }

    /// The sections the configuration in use changed that take effect at
    /// the next restart only.
    pub fn pending_restart(&self) -> Vec<&'static str> {
        self.pending_restart.lock().clone()
    }

    /// Turns readiness false: load balancers stop sending new requests.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Polls the origin every `every` and reloads when it changed.
    pub fn watch(self: &Arc<Self>, every: Duration) {
        if !self.origin.watchable() || every.is_zero() {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut last_error: Option<String> = None;
            loop {
                tick.tick().await;
                let Some(live) = weak.upgrade() else { return };
                if live.draining.load(Ordering::Relaxed) {
                    return;
                }
                match live.reload("watch", false).await {
                    // A poll that found the source as it was, or a change
                    // to settle on: an error logged before is not over
                    // while a version the poll saw cannot be read.
                    Ok(true) => last_error = None,
                    Ok(false) if live.settling.lock().is_none() => last_error = None,
                    Ok(false) => {}
                    Err(e) => {
                        let reason = e.to_string();
                        if last_error.as_deref() != Some(reason.as_str()) {
                            tracing::warn!(error = %reason, "configuration watch");
                        }
                        last_error = Some(reason);
                    }
                }
            }
        });
    }

    /// Reloads on every `SIGHUP` that `hup` (listened for since start-up,
    /// so that one sent during a slow start neither stops the process nor
    /// is lost) receives.
    #[cfg(unix)]
    pub fn reload_on_sighup(self: &Arc<Self>, hup: std::io::Result<tokio::signal::unix::Signal>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let Ok(mut hup) = hup else {
                tracing::error!("cannot listen for SIGHUP");
                return;
            };
            while hup.recv().await.is_some() {
                let Some(live) = weak.upgrade() else { return };
                let _ = live.reload("SIGHUP", true).await;
            }
        });
    }

    /// The HTTP service: the lifecycle routes, then the current router.
    pub fn service(self: &Arc<Self>) -> Router {
        Router::new().fallback(front).with_state(self.clone())
    }
}

/// Every request passes here first: `POST /config/reload`, readiness while
/// draining, and everything else to the router of the current state.
async fn front(State(live): State<Arc<Live>>, request: Request) -> Response {
    let path = request.uri().path();
    if path == "/config/reload" {
        if request.method() != Method::POST {
            let mut refused = ApiError::MethodNotAllowed(request.method().to_string()).into_response();
            refused
                .headers_mut()
                .insert(axum::http::header::ALLOW, axum::http::HeaderValue::from_static("POST"));
            return refused;
        }
        let headers = request.headers().clone();
        drop(request);
        return reload_route(live, &headers).await;
    }
    if path == "/health/readiness" && live.draining.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "draining"})),
        )
            .into_response();
    }
    let router = live.router.load_full();
    let result: Result<Response, Infallible> = Router::clone(&router).oneshot(request).await;
    match result {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

async fn reload_route(live: Arc<Live>, headers: &axum::http::HeaderMap) -> Response {
    let state = live.state();
    if !state.policy.has_master_key() {
        return ApiError::Forbidden(
            "Reloading needs a master key: set policy.master_key or SWITCHYARD_MASTER_KEY.".into(),
        )
        .into_response();
    }
    // A key the gateway does not know is a wrong credential (401), a
    // virtual key has no admin rights (403), as on the admin API.
    if let Err(refused) = crate::metering::master_only(&state, headers).await {
        return refused;
    }
    // On its own task: a client that leaves does not stop a reload halfway
    // (with a router's build still running and the reload lock released, a
    // retried call would start another).
    let reload = {
        let live = live.clone();
        tokio::spawn(async move { live.reload("api", true).await })
    };
    let result = match reload.await {
        Ok(result) => result,
        Err(e) => {
            tracing::error!(error = %e, "the configuration reload task failed");
            return ApiError::Internal("The configuration reload failed; the previous one keeps serving.".into())
                .into_response();
        }
    };
    match result {
        Ok(_) => axum::Json(json!({
            "status": "reloaded",
            "reloads": live.reloads.load(Ordering::Relaxed),
            "models": live.state().registry.model_names().count(),
            // Changed, but applied at the next restart only.
            "pending_restart": live.pending_restart(),
        }))
        .into_response(),
        Err(e) => {
            let message = format!("The configuration was not applied; the previous one keeps serving. {e}");
            match e {
                // The new configuration, or an artifact it names, is wrong:
                // the caller's to fix.
                ReloadError::Config(_) | ReloadError::Start(_) => ApiError::InvalidField { param: None, message },
                // It could not be read (a file, S3): perhaps only now.
                ReloadError::Fetch(_) | ReloadError::Unavailable(_) => ApiError::Unavailable(message),
            }
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_version_is_held_and_one_that_failed_to_start_is_retried_later() {
        let now = std::time::Instant::now();
        let invalid = Refused {
            fingerprint: "v2".into(),
            at: now,
            may_pass: false,
            failures: 1,
        };
        assert!(invalid.holds("v2"));
        assert!(!invalid.holds("v3"), "another version is tried");
        let start_failed = Refused {
            fingerprint: "v2".into(),
            at: now,
            may_pass: true,
            failures: 1,
        };
        assert!(start_failed.holds("v2"));
        if let Some(long_ago) = now.checked_sub(RETRY_START_AFTER + Duration::from_secs(1)) {
            let old = Refused {
                at: long_ago,
                ..start_failed.clone()
            };
            assert!(!old.holds("v2"), "retried once the wait is over");
            let again = Refused {
                failures: 2,
                ..old.clone()
            };
            assert!(again.holds("v2"), "twice as long after a second failure");
            let old_invalid = Refused {
                at: long_ago,
                ..invalid
            };
            assert!(old_invalid.holds("v2"), "an invalid version is never retried as it is");
        }
        let waits: Vec<u64> = (1..=9)
            .map(|failures| {
                Refused {
                    failures,
                    ..start_failed.clone()
                }
                .wait()
                .as_secs()
            })
            .collect();
        assert_eq!(waits, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
        let many = Refused {
            failures: u32::MAX,
            ..start_failed
        };
        assert_eq!(many.wait(), RETRY_START_AT_MOST);
    }

    /// An embedding model not in place yet is waited for; a wrong value is
    /// not tried again until the file changes.
    #[test]
    fn a_missing_embedding_model_is_tried_again_later() {
        let issue = |path: &str| crate::config::ConfigIssue {
            path: path.into(),
            message: "x".into(),
        };
        let missing = ReloadError::Config(ConfigError::Invalid(vec![issue(crate::state::EMBEDDER_UNREADABLE)]));
        assert!(may_pass_later(&missing));
        let also_wrong = ReloadError::Config(ConfigError::Invalid(vec![
            issue(crate::state::EMBEDDER_UNREADABLE),
            issue("model_list[0].model_name"),
        ]));
        assert!(!may_pass_later(&also_wrong));
        assert!(!may_pass_later(&ReloadError::Config(ConfigError::Parse("x".into()))));
        assert!(may_pass_later(&ReloadError::Unavailable("x".into())));
    }
}
