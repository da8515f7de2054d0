//! Learned-router groups: a model group whose `router` predicts each candidate
//! model group's quality on the request's prompt and sends the request to the
//! best trade-off of quality and cost, falling back down the ranking.
//!
//! The artifact (see [`switchyard_routing::learned`]) is loaded at start-up —
//! a bad one fails start-up — and then polled: when its manifest changes
//! (local modification time and size, or the S3 ETag), the new version is
//! loaded on a background task, validated against the configuration and
//! swapped in atomically. A version that fails is logged, shown by
//! `GET /admin/routers`, and not retried until the manifest changes again;
//! the previous router keeps serving. Requests read the current router once,
//! so a swap never affects a request already routed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use serde::Serialize;
use switchyard_routing::embed::Embedder;
use switchyard_routing::learned::{LearnedRouter, Manifest, PredictorKind, rank};
use switchyard_routing::{Cooldowns, LiveStats, ModelGroup, Registry, RoutingError};

use crate::config::{ArtifactLocation, RouterSpec, S3Entry};
use crate::error::ApiError;

/// Why an artifact version was not (or could not be) loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The artifact could not be read.
    #[error("cannot read the router artifact at {location}: {reason}")]
    Read {
        /// Where it was read from.
        location: String,
        /// What went wrong.
        reason: String,
    },
    /// The artifact was read but does not fit this gateway.
    #[error("the router artifact at {location} was rejected: {reason}")]
    Rejected {
        /// Where it was read from.
        location: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Where artifacts are read from.
#[derive(Debug)]
enum Source {
    Local(PathBuf),
    S3 {
        client: aws_sdk_s3::Client,
        bucket: String,
        prefix: String,
    },
}

/// Why an artifact could not be read.
#[derive(Debug)]
enum ReadFailure {
    /// It was replaced while it was read: try again at the next poll.
    Changed,
    /// Its store did not answer, or a file could not be read: this may pass.
    Unreachable(String),
    /// It was read, and is not a router this build can load.
    Invalid(String),
}

impl std::fmt::Display for ReadFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadFailure::Changed => f.write_str("the manifest changed while it was read"),
            ReadFailure::Unreachable(reason) | ReadFailure::Invalid(reason) => f.write_str(reason),
        }
    }
}

/// A failure of `LearnedRouter::load` on files that were there to read.
fn load_failure(e: switchyard_routing::learned::ArtifactError) -> ReadFailure {
    match e {
        // A file that cannot be read (or a manifest torn by a writer) may
        // be whole at the next read.
        // Data that is not the manifest's (a version whose files are still
        // landing one by one) is read again after a while too.
        switchyard_routing::learned::ArtifactError::Io { .. }
        | switchyard_routing::learned::ArtifactError::Unpublished(_) => ReadFailure::Unreachable(e.to_string()),
        other => ReadFailure::Invalid(other.to_string()),
    }
}

/// How long one read from S3 (a manifest check, or one file's answer) may
/// take; a file's body is given this plus a second per MiB. The build of a
/// router that was read is not bounded: it runs to the end.
const S3_TIMEOUT: Duration = Duration::from_secs(120);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A clear message from an AWS SDK error (its `Display` is only "service error").
pub(crate) fn aws_reason<E: std::error::Error>(e: &E) -> String {
    let mut reason = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        source = s.source();
    }
    reason
}

/// `reason` without the request ids an AWS error's metadata prints
/// (`aws_request_id: "…"`, `s3_extended_request_id: "…"`, in any order).
fn without_request_ids(reason: &str) -> String {
    const MARK: &str = "request_id: \"";
    let mut out = String::with_capacity(reason.len());
    let mut rest = reason;
    while let Some(at) = rest.find(MARK) {
        let key_start = rest[..at].rfind([' ', '{']).map_or(0, |i| i + 1);
        let value_start = at + MARK.len();
        let Some(len) = rest[value_start..].find('"') else {
            break;
        };
        let mut end = value_start + len + 1;
        if rest[end..].starts_with(", ") {
            end += 2;
        }
        out.push_str(&rest[..key_start]);
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// An S3 client with the given settings; credentials from the standard AWS sources.
pub(crate) async fn s3_client(s3: &S3Entry) -> aws_sdk_s3::Client {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = &s3.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    let shared = loader.load().await;
    let mut builder = aws_sdk_s3::config::Builder::from(&shared).force_path_style(s3.force_path_style);
    if shared.region().is_none() {
        builder = builder.region(aws_config::Region::new("us-east-1"));
    }
    if let Some(url) = &s3.endpoint_url {
        builder = builder.endpoint_url(url);
    }
    aws_sdk_s3::Client::from_conf(builder.build())
}

impl Source {
    async fn new(location: &ArtifactLocation, s3: &S3Entry) -> Self {
        match location {
            ArtifactLocation::Local(path) => Source::Local(path.clone()),
            ArtifactLocation::S3 { bucket, prefix } => Source::S3 {
                client: s3_client(s3).await,
                bucket: bucket.clone(),
                prefix: prefix.clone(),
            },
        }
    }

    fn key(prefix: &str, file: &str) -> String {
        if prefix.is_empty() {
            file.to_owned()
        } else {
            format!("{prefix}/{file}")
        }
    }

    /// A cheap fingerprint of the manifest: its modification time and size, or its ETag.
    async fn version(&self) -> Result<String, String> {
        match self {
            Source::Local(dir) => local_version_off(dir.join("manifest.json")).await,
            Source::S3 { client, bucket, prefix } => {
                let head = tokio::time::timeout(
                    S3_TIMEOUT,
                    client
                        .head_object()
                        .bucket(bucket)
                        .key(Self::key(prefix, "manifest.json"))
                        .send(),
                )
                .await
                .map_err(|_| "the store did not answer in time".to_owned())?
                // Without the request ids, which differ at each call: a
                // check failing the same way is warned of once.
                .map_err(|e| without_request_ids(&aws_reason(&e)))?;
                Ok(object_version(
                    head.e_tag(),
                    head.last_modified(),
                    head.content_length(),
                ))
            }
        }
    }

    /// Reads the artifact; returns it with the version it was read at, or
    /// why not with the version it was read at (when known). A version that
    /// changed while it was read is `Changed`, never blamed for a failure.
    /// `building` is set while the router is built on a blocking thread,
    /// which goes on even if this future is dropped.
    async fn load(
        &self,
        building: &Arc<AtomicUsize>,
    ) -> Result<(LearnedRouter, String), (ReadFailure, Option<String>)> {
        let unknown = |failure: ReadFailure| (failure, None);
        match self {
            Source::Local(dir) => {
                let before = local_version_off(dir.join("manifest.json"))
                    .await
                    .map_err(|e| unknown(ReadFailure::Unreachable(e)))?;
                let path = dir.clone();
                let guard = Building::start(building);
                let result = tokio::task::spawn_blocking(move || {
                    let _guard = guard;
                    LearnedRouter::load(&path)
                })
                .await
                .map_err(|e| unknown(ReadFailure::Invalid(e.to_string())))?;
                let after = local_version_off(dir.join("manifest.json"))
                    .await
                    .map_err(|e| unknown(ReadFailure::Unreachable(e)))?;
                if before != after {
                    return Err(unknown(ReadFailure::Changed));
                }
                match result {
                    Ok(router) => Ok((router, before)),
                    Err(e) => Err((load_failure(e), Some(before))),
                }
            }
            Source::S3 { client, bucket, prefix } => {
                // An object larger than an artifact may be is refused before
                // it is read (a wrong key, or a runaway publish, must not run
                // the gateway out of memory): `Ok(Err(why))`.
                let get = |file: &'static str, limit: u64| async move {
                    let late = || format!("{file}: the store did not answer in time");
                    let object = tokio::time::timeout(
                        S3_TIMEOUT,
                        client.get_object().bucket(bucket).key(Self::key(prefix, file)).send(),
                    )
                    .await
                    .map_err(|_| late())?
                    .map_err(|e| format!("{file}: {}", aws_reason(&e)))?;
                    let etag = object_version(object.e_tag(), object.last_modified(), object.content_length());
                    let size = object.content_length().and_then(|n| u64::try_from(n).ok());
                    let size = match size {
                        Some(n) if n <= limit => n,
                        _ => {
                            return Ok(Err(format!(
                                "{file} is {} bytes, more than the {limit} it may hold",
                                size.map_or_else(|| "an unknown number of".to_owned(), |n| n.to_string())
                            )));
                        }
                    };
                    // A large data file takes its time: the wait grows by a
                    // second for each MiB, so that a slow link still loads it.
                    let wait = S3_TIMEOUT + Duration::from_secs(size >> 20);
                    let bytes = tokio::time::timeout(wait, object.body.collect())
                        .await
                        .map_err(|_| late())?
                        .map_err(|e| format!("{file}: {e}"))?
                        .into_bytes();
                    Ok::<_, String>(Ok((bytes, etag)))
                };
                let (manifest_bytes, etag) = get("manifest.json", switchyard_routing::learned::MAX_MANIFEST_BYTES)
                    .await
                    .map_err(|e| unknown(ReadFailure::Unreachable(e)))?
                    .map_err(|e| unknown(ReadFailure::Invalid(e)))?;
                let read_at = Some(etag.clone());
                let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
                    .map_err(|e| (ReadFailure::Invalid(format!("manifest.json: {e}")), read_at.clone()))?;
                let data_file = match manifest.kind {
                    PredictorKind::Knn => "knn.safetensors",
                    PredictorKind::Mlp => "mlp.safetensors",
                };
                let (data, _) = get(data_file, switchyard_routing::learned::MAX_DATA_BYTES)
                    .await
                    .map_err(|e| unknown(ReadFailure::Unreachable(e)))?
                    .map_err(|e| (ReadFailure::Invalid(e), read_at.clone()))?;
                // A manifest replaced while the data was fetched may not
                // describe that data: read both again at the next poll.
                if self.version().await.map_err(|e| unknown(ReadFailure::Unreachable(e)))? != etag {
                    return Err(unknown(ReadFailure::Changed));
                }
                let guard = Building::start(building);
                let router = tokio::task::spawn_blocking(move || {
                    let _guard = guard;
                    // Read whole from S3: what does not load is the
                    // artifact's fault, but for data that is not yet the
                    // manifest's (a version being uploaded file by file).
                    LearnedRouter::from_bytes(&manifest_bytes, Vec::from(data)).map_err(load_failure)
                })
                .await
                .map_err(|e| ReadFailure::Invalid(e.to_string()))
                .and_then(|built| built)
                .map_err(|failure| (failure, read_at))?;
                Ok((router, etag))
            }
        }
    }
}

/// An S3 object's version: its ETag, or, from a store that sends none, its
/// modification time and size (an empty version would never change).
pub(crate) fn object_version(
    e_tag: Option<&str>,
    last_modified: Option<&aws_sdk_s3::primitives::DateTime>,
    length: Option<i64>,
) -> String {
    match e_tag.map(|t| t.trim_matches('"')).filter(|t| !t.is_empty()) {
        Some(tag) => tag.to_owned(),
        None => format!(
            "{}-{}",
            last_modified.map_or(0, aws_sdk_s3::primitives::DateTime::as_nanos),
            length.unwrap_or(-1)
        ),
    }
}

/// Counts a build of a router on a route until the blocking build ends (a
/// count: two builds that overlap end apart).
struct Building(Arc<AtomicUsize>);

impl Building {
    fn start(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Building(count.clone())
    }
}

impl Drop for Building {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// [`local_version`] on the blocking pool: a stalled mount (NFS, EFS)
/// holds no async worker.
async fn local_version_off(manifest: PathBuf) -> Result<String, String> {
    tokio::task::spawn_blocking(move || local_version(&manifest))
        .await
        .map_err(|e| format!("the manifest check stopped: {e}"))?
}

fn local_version(manifest: &Path) -> Result<String, String> {
    use sha2::Digest as _;
    let meta = std::fs::metadata(manifest).map_err(|e| format!("{}: {e}", manifest.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    // One too large to load is not read (loading it says why).
    if meta.len() > switchyard_routing::learned::MAX_MANIFEST_BYTES {
        return Ok(format!("{mtime}-{}", meta.len()));
    }
    // And its content (a few hundred bytes): a manifest rewritten in place
    // within the same second at the same length, on a mount whose times
    // have a second's granularity, is a new version too.
    let text = std::fs::read(manifest).map_err(|e| format!("{}: {e}", manifest.display()))?;
    let digest = hex::encode(sha2::Sha256::digest(&text));
    Ok(format!("{mtime}-{}-{}", meta.len(), &digest[..16]))
}

/// A validated router with its candidates resolved to model groups.
#[derive(Debug)]
pub struct Loaded {
    /// The router (shared with the route of a configuration that replaced
    /// this one's, when the router did not change).
    pub router: Arc<LearnedRouter>,
    /// Model group of each of the router's models, in prediction order.
    pub groups: Vec<String>,
    /// The version it was loaded at (modification time and size, or ETag).
    pub version: String,
    /// Unix time it was loaded.
    pub loaded_at: u64,
}

impl Drop for Loaded {
    /// The last holder of a router frees it off the async workers: freeing a
    /// large HNSW graph (an allocation per point and per edge) would hold a
    /// worker, and every request waiting on it, for a while.
    fn drop(&mut self) {
        if Arc::strong_count(&self.router) != 1 {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let router = Arc::clone(&self.router);
        handle.spawn_blocking(move || {
            // This copy is the last once the `Loaded` being dropped has let
            // go of its own, a moment after this task is handed over.
            for _ in 0..1_000 {
                if Arc::strong_count(&router) == 1 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            drop(router);
        });
    }
}

/// What `GET /admin/routers` reports about one router.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RouterStatus {
    /// Versions swapped in since start-up (the first load included).
    pub loads: u64,
    /// Versions rejected.
    pub rejected: u64,
    /// Why the last rejected version was rejected.
    pub last_error: Option<String>,
    /// Unix time of the last check of the manifest.
    pub last_checked: Option<u64>,
    /// The version that was rejected last; not retried until the manifest
    /// changes, except one that could not be read, retried after
    /// [`RETRY_READ_AFTER`] (the store may not have answered).
    #[serde(skip)]
    rejected_version: Option<String>,
    /// When the rejected version could not be read.
    #[serde(skip)]
    read_failed_at: Option<std::time::Instant>,
    /// How many times in a row the rejected version could not be read.
    #[serde(skip)]
    read_failures: u32,
    /// The rejected version was read whole and did not fit the
    /// configuration (rather than being broken itself).
    #[serde(skip)]
    rejected_by_config: bool,
    /// Why the last check of the manifest failed, while it keeps failing
    /// the same way (warned of once).
    #[serde(skip)]
    check_error: Option<String>,
}

/// How long a version that could not be read waits before it is read again.
const RETRY_READ_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// The longest wait before a version that keeps failing to read is read again.
const MAX_RETRY_READ_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// The wait before a version that could not be read `failures` times in a
/// row is read again: [`RETRY_READ_AFTER`], doubled at each failure after
/// the first, up to [`MAX_RETRY_READ_AFTER`] (a publish that never completes
/// is not downloaded whole every 30 seconds for ever).
fn retry_read_after(failures: u32) -> std::time::Duration {
    let doublings = failures.saturating_sub(1).min(16);
    RETRY_READ_AFTER
        .saturating_mul(1 << doublings)
        .min(MAX_RETRY_READ_AFTER)
}

/// The predicted scores and the choice of one request, reported in headers and logs.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// The router group's name.
    pub router: String,
    /// Candidate groups, best first; the first is the router's choice.
    pub ranked: Vec<String>,
    /// Each candidate group's predicted score (including ones not allowed now).
    pub scores: Vec<(String, f32)>,
}

impl Prediction {
    /// `group=score` pairs, `;`-separated, scores with three decimals.
    pub fn scores_header(&self) -> String {
        self.scores
            .iter()
            .map(|(g, s)| format!("{g}={s:.3}"))
            .collect::<Vec<_>>()
            .join(";")
    }
}

/// One learned-router group.
#[derive(Debug)]
pub struct LearnedRoute {
    /// Public model name of the group.
    pub name: String,
    /// Its configuration.
    pub spec: RouterSpec,
    source: Source,
    current: ArcSwapOption<Loaded>,
    status: Mutex<RouterStatus>,
    /// Model groups with deployments, which candidates must map to.
    groups: HashSet<String>,
    embedder: Arc<Embedder>,
    /// A router is being built (it may outlive a poll that timed out);
    /// shared with the route a reload replaces ([`LearnedRoute::adopt`]),
    /// so that the two never build the same artifact at once.
    building: ArcSwap<AtomicUsize>,
    /// Replaced by a reload: its poller stops.
    retired: AtomicBool,
    /// Predictions running at once, one per core: more would only queue
    /// on the blocking pool, which upstream DNS lookups share.
    slots: Arc<tokio::sync::Semaphore>,
}

impl LearnedRoute {
    /// A route with nothing loaded yet; [`LearnedRoute::reload`] loads it.
    pub(crate) async fn new(
        name: String,
        spec: RouterSpec,
        groups: HashSet<String>,
        embedder: Arc<Embedder>,
    ) -> Arc<Self> {
        let source = Source::new(&spec.location, &spec.s3).await;
        Arc::new(Self {
            name,
            spec,
            source,
            current: ArcSwapOption::empty(),
            status: Mutex::new(RouterStatus::default()),
            groups,
            embedder,
            building: ArcSwap::from_pointee(AtomicUsize::new(0)),
            retired: AtomicBool::new(false),
            slots: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
            )),
        })
    }

    /// The router serving now.
    pub fn current(&self) -> Option<Arc<Loaded>> {
        self.current.load_full()
    }

    /// A copy of the reload status.
    pub fn status(&self) -> RouterStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn update_status(&self, f: impl FnOnce(&mut RouterStatus)) {
        if let Ok(mut status) = self.status.lock() {
            f(&mut status);
        }
    }

    fn validate(&self, router: Arc<LearnedRouter>, version: String) -> Result<Loaded, String> {
        let m = &router.manifest;
        if let switchyard_routing::learned::Objective::Threshold { min_score } = self.spec.objective
            && m.kind == PredictorKind::Mlp
            && !(0.0..=1.0).contains(&min_score)
        {
            return Err(format!(
                "it is an MLP router, whose predicted scores lie between 0 and 1, and `router.min_score` is {min_score}"
            ));
        }
        if !self.embedder.fits(&m.embedder) {
            return Err(format!(
                "it was trained with the embedder `{}` but the gateway runs `{}`",
                m.embedder,
                self.embedder.id()
            ));
        }
        if m.dims != self.embedder.dims() {
            return Err(format!(
                "it expects {}-dimensional embeddings, the embedder makes {}",
                m.dims,
                self.embedder.dims()
            ));
        }
        let mut groups = Vec::with_capacity(m.models.len());
        let mut missing = Vec::new();
        for model in &m.models {
            let group = self.spec.candidates.get(model).unwrap_or(model);
            if self.groups.contains(group) {
                groups.push(group.clone());
            } else {
                missing.push(model.as_str());
            }
        }
        if !missing.is_empty() {
            return Err(format!(
                "its candidate models {} are not model groups of this configuration (map them under `router.candidates`)",
                missing.join(", ")
            ));
        }
        if let Some((i, group)) = groups.iter().enumerate().find(|(i, g)| groups[..*i].contains(g)) {
            return Err(format!(
                "its candidate models `{}` and `{}` both map to the group `{group}`",
                m.models[groups.iter().position(|g| g == group).unwrap_or(0)],
                m.models[i]
            ));
        }
        Ok(Loaded {
            router,
            groups,
            version,
            loaded_at: unix_now(),
        })
    }

    /// Loads the artifact's current version, validates it and swaps it in.
    pub async fn reload(&self) -> Result<(), LoadError> {
        let location = self.spec.location.to_string();
        let (router, version) = match self.source.load(&self.building.load_full()).await {
            Ok(loaded) => loaded,
            Err((failure @ ReadFailure::Changed, _)) => {
                return Err(LoadError::Read {
                    location,
                    reason: failure.to_string(),
                });
            }
            Err((failure, read_at)) => {
                // A broken upload is not fixed by reading it again: it waits
                // for the manifest to change. One that could not be read is
                // tried again after a while. The version held is the one
                // that was read, not whatever the store holds by now.
                let unreachable = matches!(failure, ReadFailure::Unreachable(_));
                let reason = failure.to_string();
                let error = if unreachable {
                    LoadError::Read { location, reason }
                } else {
                    LoadError::Rejected { location, reason }
                };
                let version = match read_at {
                    Some(version) => Some(version),
                    None => self.source.version().await.ok(),
                };
                self.update_status(|s| {
                    s.rejected += 1;
                    s.read_failures = match (unreachable, s.rejected_version == version) {
                        (false, _) => 0,
                        (true, true) => s.read_failures.saturating_add(1),
                        (true, false) => 1,
                    };
                    s.rejected_version = version;
                    s.read_failed_at = unreachable.then(std::time::Instant::now);
                    s.rejected_by_config = false;
                    s.last_error = Some(error.to_string());
                });
                return Err(error);
            }
        };
        match self.validate(Arc::new(router), version.clone()) {
            Ok(loaded) => {
                tracing::info!(router = %self.name, %version, data_hash = %loaded.router.manifest.data_hash, "router artifact loaded");
                self.current.store(Some(Arc::new(loaded)));
                self.update_status(|s| {
                    s.loads += 1;
                    s.rejected_version = None;
                    s.read_failures = 0;
                });
                Ok(())
            }
            Err(reason) => {
                self.update_status(|s| {
                    s.rejected += 1;
                    s.rejected_version = Some(version);
                    s.read_failed_at = None;
                    s.read_failures = 0;
                    s.rejected_by_config = true;
                    s.last_error = Some(reason.clone());
                });
                Err(LoadError::Rejected { location, reason })
            }
        }
    }

    /// Takes over what `old` (the same router in the configuration this one
    /// replaces: same artifact location and S3 settings, same embedder) has
    /// loaded, checked against this configuration's groups, and its reload
    /// status, so a version it rejected is not tried again. `false` when
    /// there is nothing to take or it does not fit: the artifact is then
    /// loaded afresh.
    pub(crate) fn adopt(&self, old: &LearnedRoute) -> bool {
        if old.spec.location != self.spec.location
            || old.spec.s3 != self.spec.s3
            || !Arc::ptr_eq(&old.embedder, &self.embedder)
        {
            return false;
        }
        let Some(current) = old.current() else {
            return false;
        };
        match self.validate(current.router.clone(), current.version.clone()) {
            Ok(mut loaded) => {
                // A build the old route has under way counts for this one.
                self.building.store(old.building.load_full());
                loaded.loaded_at = current.loaded_at;
                self.current.store(Some(Arc::new(loaded)));
                let mut status = old.status();
                // A version that did not fit the old configuration may fit
                // this one: the poller tries it again.
                if status.rejected_by_config {
                    status.rejected_version = None;
                    status.rejected_by_config = false;
                }
                self.update_status(|s| *s = status);
                true
            }
            Err(_) => false,
        }
    }

    /// Checks the manifest and reloads when it changed.
    async fn poll(&self) {
        if self.building.load().load(Ordering::Acquire) > 0 {
            // A build started elsewhere (a configuration reload of a route
            // sharing this artifact) is still running: one at a time.
            return;
        }
        let version = self.source.version().await;
        let mut first = false;
        self.update_status(|s| {
            s.last_checked = Some(unix_now());
            let error = version.as_ref().err().map(ToString::to_string);
            first = error.is_some() && s.check_error != error;
            s.check_error = error;
        });
        let version = match version {
            Ok(v) => v,
            // Once per failure, not at every poll while it lasts.
            Err(reason) if first => {
                tracing::warn!(router = %self.name, %reason, "cannot check the router artifact; the current router keeps serving");
                return;
            }
            Err(reason) => {
                tracing::debug!(router = %self.name, %reason, "cannot check the router artifact still");
                return;
            }
        };
        let current = self.current().map(|l| l.version.clone());
        let status = self.status();
        let held = status.rejected_version.as_ref() == Some(&version)
            && status
                .read_failed_at
                .is_none_or(|at| at.elapsed() < retry_read_after(status.read_failures));
        if current.as_ref() == Some(&version) || held {
            return;
        }
        if let Err(e) = self.reload().await {
            tracing::warn!(router = %self.name, error = %e, "new router artifact not loaded; the current router keeps serving");
        }
    }

    /// Polls the artifact every `poll_interval` until the route is dropped.
    pub(crate) fn watch(self: &Arc<Self>) {
        let Some(period) = self.spec.poll_interval else {
            return;
        };
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(route) = weak.upgrade() else {
                    break;
                };
                // Replaced by a reload (requests still in flight keep it
                // alive): the route that replaced it polls.
                if route.retired.load(Ordering::Acquire) {
                    break;
                }
                route.poll().await;
            }
        });
    }

    /// Predicts every candidate's score on `query` and ranks the groups that
    /// can take the request now: a deployment whose circuit breaker lets it
    /// serve and that is under its `rpm`/`tpm` limits.
    pub(crate) async fn predict(&self, live: &Live<'_>, query: String) -> Result<Prediction, ApiError> {
        let Some(loaded) = self.current() else {
            return Err(ApiError::Routing(RoutingError::NoDeployment(self.name.clone())));
        };
        let embedder = self.embedder.clone();
        let router = Arc::clone(&loaded.router);
        // Embedding and prediction (an HNSW search, a forward pass) run off
        // the async workers, at most one per core at a time for this route.
        // The slot goes with the job: a request that is given up on (its
        // client left) leaves its job running, and it still counts.
        let slot = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .map_err(|e| ApiError::Internal(format!("embedding slots: {e}")))?;
        // A client that left while the request waited for its slot gets
        // no embedding made for it.
        if crate::routes::client_gone() {
            return Err(ApiError::ClientGone { attempts: 0 });
        }
        let scores = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let embedding = embedder
                .embed_one(&query)
                .map_err(|e| ApiError::Internal(format!("embedding the prompt: {e}")))?;
            router
                .predict(&embedding)
                .map_err(|e| ApiError::Internal(format!("router prediction: {e}")))
        })
        .await
        .map_err(|e| ApiError::Internal(format!("embedding task: {e}")))??;
        // Each of the caller's lists (its key's, team's, user's) that names
        // some of the candidates allows those only; one that names the
        // router alone allows them all. A candidate must be allowed by all.
        let list_permits =
            |list: &Vec<String>, g: &String| !loaded.groups.iter().any(|c| list.contains(c)) || list.contains(g);
        let key_permits = |g: &String| {
            live.allowed
                .is_none_or(|lists| lists.iter().all(|l| list_permits(l, g)))
        };
        if !loaded.groups.iter().any(key_permits) {
            return Err(ApiError::Denied(switchyard_policy::Denied::ModelNotAllowed {
                model: self.name.clone(),
            }));
        }
        // A tagged request is ranked among the permitted candidates its
        // tags leave a deployment in; when they leave none, each chosen
        // group is filtered as any request's is.
        let tag_permits = |g: &String| live.tagged.is_none_or(|serves| serves(g));
        let tags_apply = loaded.groups.iter().any(|g| key_permits(g) && tag_permits(g));
        let permitted = |g: &String| key_permits(g) && (!tags_apply || tag_permits(g));
        let allowed: Vec<bool> = loaded
            .groups
            .iter()
            .map(|g| live.can_serve(g) && permitted(g))
            .collect();
        let mut order = rank(
            &scores,
            &loaded.router.manifest.mean_costs,
            &allowed,
            self.spec.objective,
        );
        if order.is_empty() && !live.fail_fast {
            // Every candidate is cooling down or at its limits: rank them
            // all, and the request tries them in that order rather than
            // being refused for the whole cooldown.
            let anyway: Vec<bool> = loaded.groups.iter().map(permitted).collect();
            order = rank(
                &scores,
                &loaded.router.manifest.mean_costs,
                &anyway,
                self.spec.objective,
            );
        }
        if order.is_empty() {
            tracing::warn!(router = %self.name, "no candidate of the router can serve now");
            return Err(ApiError::Routing(RoutingError::NoDeployment(self.name.clone())));
        }
        let prediction = Prediction {
            router: self.name.clone(),
            ranked: order.iter().map(|&j| loaded.groups[j].clone()).collect(),
            // A key limited to some candidates, or a request whose tags
            // leave it some, sees only their scores.
            scores: loaded
                .groups
                .iter()
                .cloned()
                .zip(scores)
                .filter(|(g, _)| permitted(g))
                .collect(),
        };
        tracing::info!(
            router = %self.name,
            version = %loaded.version,
            choice = %prediction.ranked[0],
            scores = %prediction.scores_header(),
            "learned routing decision"
        );
        Ok(prediction)
    }
}

/// The live state a prediction filters candidates with.
pub(crate) struct Live<'a> {
    /// Each of the caller's lists of the models it may call (`None`: any).
    pub(crate) allowed: Option<&'a [Vec<String>]>,
    /// Whether a tagged request's tags leave a deployment in a group
    /// (`None`: no tag filtering, or no tags); asked of the groups of the
    /// router version that predicts.
    pub(crate) tagged: Option<&'a (dyn Fn(&str) -> bool + Sync)>,
    pub(crate) registry: &'a Registry,
    pub(crate) stats: &'a LiveStats,
    pub(crate) cooldowns: &'a Cooldowns,
    pub(crate) now_ms: u64,
    /// `router_settings.cooldown_fail_fast`: with no candidate able to
    /// serve, refuse rather than rank them all anyway.
    pub(crate) fail_fast: bool,
}

impl Live<'_> {
    /// Whether a deployment of `group` can take a request now: its breaker
    /// lets it serve and it is under its `rpm` and `tpm`.
    pub(crate) fn can_serve(&self, group: &str) -> bool {
        self.registry
            .group(group)
            .is_ok_and(|g: &ModelGroup| g.deployments().iter().any(|d| self.deployment_ok(d)))
    }

    fn deployment_ok(&self, d: &switchyard_routing::DeploymentInfo) -> bool {
        let stats = self.stats.deployment(d.id);
        let under = |limit: Option<u64>, used: u64| limit.is_none_or(|l| used < l);
        self.cooldowns.may_serve(d.id, self.now_ms)
            && under(d.rpm, stats.rpm_used(self.now_ms).saturating_add(stats.in_flight()))
            && under(d.tpm, stats.tpm_used(self.now_ms))
    }
}

/// Loads every router once (a failure fails start-up) and starts watching them.
pub async fn start(routes: &[Arc<LearnedRoute>]) -> Result<(), LoadError> {
    start_after(routes, &std::collections::BTreeMap::new()).await
}

/// Reads of a router's artifact at a start before the start fails.
const START_READS: u32 = 4;

/// The pause between those reads.
const START_READ_PAUSE: Duration = Duration::from_secs(2);

/// How long after the first read another may start.
const START_READS_WITHIN: Duration = Duration::from_secs(20);

/// Loads a route's artifact for a start. A version caught while it is being
/// published (its data file not yet the one its manifest names, or the
/// manifest replaced during the read), or a store that did not answer, is
/// read again a few times before the start fails; a rejected one fails it
/// at once.
async fn first_load(route: &LearnedRoute) -> Result<(), LoadError> {
    let started = std::time::Instant::now();
    let mut reads = 1;
    loop {
        match route.reload().await {
            // Not after a read that took long (a store that timed out):
            // a start is not held for minutes.
            Err(e @ LoadError::Read { .. }) if reads < START_READS && started.elapsed() < START_READS_WITHIN => {
                tracing::warn!(
                    router = %route.name,
                    error = %e,
                    "router artifact not read; reading it again in {} s",
                    START_READ_PAUSE.as_secs()
                );
                tokio::time::sleep(START_READ_PAUSE).await;
                reads += 1;
            }
            other => return other,
        }
    }
}

/// [`start`] for a reloaded configuration: a route whose router did not
/// change takes over what the route it replaces (same name in `old`) has
/// loaded, rather than reading the artifact again (which fails the reload if
/// the store now holds a version the running router rejected).
pub(crate) async fn start_after(
    routes: &[Arc<LearnedRoute>],
    old: &std::collections::BTreeMap<String, Arc<LearnedRoute>>,
) -> Result<(), LoadError> {
    for route in routes {
        let adopted = old.get(&route.name).is_some_and(|before| route.adopt(before));
        if !adopted {
            first_load(route).await?;
        } else if route.spec.poll_interval.is_none() {
            // Not polled: a reload is how a new version is read (the same
            // one is not downloaded and built again). One that cannot be
            // read or loaded leaves the adopted router serving.
            let held = route.current().map(|l| l.version.clone());
            let unchanged = match route.source.version().await {
                Ok(version) => held.as_ref() == Some(&version),
                Err(_) => false,
            };
            if unchanged {
                tracing::debug!(router = %route.name, "router artifact unchanged; kept");
            } else if let Err(e) = route.reload().await {
                tracing::warn!(router = %route.name, error = %e, "new router artifact not loaded; the current router keeps serving");
            }
        }
        route.watch();
    }
    for before in old.values() {
        before.retired.store(true, Ordering::Release);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An S3 refusal prints request ids that differ at each call: without
    /// them, two refusals read alike (and are warned of once).
    #[test]
    fn request_ids_are_left_out_of_a_check_failure() {
        let a = r#"service error: unhandled error (Forbidden): Error { code: "Forbidden", aws_request_id: "A1B2", s3_extended_request_id: "xyz=" }"#;
        let b = r#"service error: unhandled error (Forbidden): Error { code: "Forbidden", s3_extended_request_id: "q+r=", aws_request_id: "C3D4" }"#;
        assert_eq!(without_request_ids(a), without_request_ids(b));
        assert!(!without_request_ids(a).contains("A1B2"));
        assert!(without_request_ids(a).contains("Forbidden"));
        assert_eq!(without_request_ids("no such key"), "no such key");
    }

    /// A manifest rewritten at the same length and modification time (a
    /// mount whose times have a second's granularity) is a new version.
    #[test]
    fn a_local_manifest_is_versioned_by_its_content_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        std::fs::write(&path, br#"{"v":1}"#).unwrap();
        let first = local_version(&path).unwrap();
        let at = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::write(&path, br#"{"v":2}"#).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(at)
            .unwrap();
        assert_ne!(local_version(&path).unwrap(), first);
        assert_eq!(local_version(&path).unwrap(), local_version(&path).unwrap());
    }

    #[test]
    fn an_object_without_an_etag_is_versioned_by_time_and_size() {
        assert_eq!(object_version(Some("\"abc\""), None, Some(3)), "abc");
        let at = aws_sdk_s3::primitives::DateTime::from_secs(1_700_000_000);
        let later = aws_sdk_s3::primitives::DateTime::from_secs(1_700_000_001);
        let v1 = object_version(None, Some(&at), Some(10));
        assert!(!v1.is_empty());
        assert_ne!(v1, object_version(Some(""), Some(&later), Some(10)));
        assert_ne!(v1, object_version(None, Some(&at), Some(11)));
    }

    #[test]
    fn a_version_that_keeps_failing_to_read_waits_longer_each_time() {
        use std::time::Duration;
        assert_eq!(retry_read_after(1), Duration::from_secs(30));
        assert_eq!(retry_read_after(2), Duration::from_secs(60));
        assert_eq!(retry_read_after(4), Duration::from_secs(240));
        assert_eq!(retry_read_after(40), Duration::from_secs(3600));
    }

    #[test]
    fn data_that_is_not_the_manifests_yet_is_read_again() {
        use switchyard_routing::learned::ArtifactError;
        // A version whose files land one by one (`aws s3 sync`, `rsync`)
        // is tried again after a while, not held until its manifest changes.
        assert!(matches!(
            load_failure(ArtifactError::Unpublished("half there".into())),
            ReadFailure::Unreachable(_)
        ));
        assert!(matches!(
            load_failure(ArtifactError::Invalid("broken".into())),
            ReadFailure::Invalid(_)
        ));
    }
}
