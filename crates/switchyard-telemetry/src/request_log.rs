//! The request log: one JSON record per finished request, and feedback
//! records that score one, appended by a background writer to a rotating
//! JSONL file or a Redis stream. `cargo xtask export-traces` joins them into
//! router training data.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::metrics_registry::Metrics;
use crate::otel::TelemetryError;

/// One finished request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Always `request`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The request's id (`x-request-id`).
    pub request_id: String,
    /// When it finished, Unix milliseconds.
    pub ts: i64,
    /// The endpoint: `chat`, `completions`, `embeddings`, `messages`.
    pub endpoint: String,
    /// The calling key's alias.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_alias: Option<String>,
    /// The calling virtual key, as a short reference (see [`key_ref`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_ref: Option<String>,
    /// The model group asked for.
    pub model: String,
    /// The end user the request was made for (OpenAI's `user`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_user: Option<String>,
    /// The request's tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The model group that answered (a fallback, or a learned router's choice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_model: Option<String>,
    /// The deployment that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    /// The strategy that chose it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// The id the upstream gave its answer (`x-request-id`, `request-id`,
    /// `x-amzn-requestid`), for the provider's support.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_request_id: Option<String>,
    /// The learned router that ranked the candidates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<String>,
    /// The learned router's predicted score per candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted: Option<BTreeMap<String, f32>>,
    /// Upstream attempts made.
    #[serde(default)]
    pub attempts: u32,
    /// Whether the answer streamed.
    #[serde(default)]
    pub stream: bool,
    /// `hit` or `miss` when the cache applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    /// Milliseconds from the request to the last byte.
    pub latency_ms: f64,
    /// Milliseconds from the request to the response head (the first event of a stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttfb_ms: Option<f64>,
    /// Prompt tokens.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Completion tokens.
    #[serde(default)]
    pub completion_tokens: u64,
    /// What it cost, USD.
    #[serde(default)]
    pub cost_usd: f64,
    /// HTTP status of the answer.
    pub status: u16,
    /// The class of the failure, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_class: Option<String>,
    /// The prompt, only when `request_log.include_prompt` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
}

/// A score given to a request after the fact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    /// Always `feedback`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The request it scores.
    pub request_id: String,
    /// When it was given, Unix milliseconds.
    pub ts: i64,
    /// Quality, 0 (bad) to 1 (good); thumbs up is 1, down is 0.
    pub score: f64,
    /// The virtual key that gave it (see [`key_ref`]); none for the master
    /// key or a gateway without keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_ref: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// A short, stable reference to a virtual key for the request log: the
/// first 16 characters of its id, enough to tell keys apart without writing
/// a configured key's whole hash.
pub fn key_ref(key_id: &str) -> String {
    key_id.chars().take(16).collect()
}

/// Where records go.
#[derive(Debug, Clone, PartialEq)]
pub enum LogSink {
    /// A JSONL file, rotated to `.1`, `.2`… when it reaches `max_bytes`.
    File {
        /// The live file.
        path: PathBuf,
        /// Size that triggers a rotation.
        max_bytes: u64,
        /// Rotated files kept.
        keep: usize,
    },
    /// A Redis stream (`XADD … MAXLEN ~`).
    Redis {
        /// `redis://` URL.
        url: String,
        /// Stream key.
        stream: String,
        /// Approximate entries kept.
        max_len: u64,
    },
}

/// Request-log settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestLogSettings {
    /// Where records go.
    pub sink: LogSink,
    /// Whether records carry the prompt text.
    pub include_prompt: bool,
    /// Records queued before new ones are dropped (and counted).
    pub queue: usize,
}

#[derive(Debug)]
enum Msg {
    Line(Queued),
    Flush(oneshot::Sender<()>),
}

/// The most bytes of records queued at once: with prompts in them (up to
/// 64 KiB each), a queue of records alone could grow to gigabytes while
/// the sink is down.
const MAX_QUEUED_BYTES: usize = 256 << 20;

/// A record's line while it is queued: its bytes count against
/// [`MAX_QUEUED_BYTES`] until it is written or dropped.
#[derive(Debug)]
struct Queued {
    text: String,
    len: usize,
    queued: Arc<AtomicUsize>,
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.queued.fetch_sub(self.len, Ordering::Relaxed);
    }
}

/// The request log's handle: cheap to clone, never blocks a request.
#[derive(Debug, Clone)]
pub struct RequestLog {
    tx: mpsc::Sender<Msg>,
    include_prompt: bool,
    dropped: Dropped,
    /// Bytes of the records queued now.
    queued: Arc<AtomicUsize>,
}

/// Counts records that were lost (queue full, write failed), in the metrics
/// and in warnings that thin out as losses go on.
#[derive(Debug, Clone)]
struct Dropped {
    metrics: Metrics,
    count: Arc<AtomicU64>,
}

impl Dropped {
    fn one(&self, why: &str) {
        self.metrics.log_dropped();
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        // The 1st, 2nd, 4th, 8th… loss: an outage does not flood the log.
        if n.is_power_of_two() {
            tracing::warn!(dropped_so_far = n, "request log: a record was dropped ({why})");
        }
    }
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

impl RequestLog {
    /// Opens the sink and starts the writer on the current Tokio runtime.
    pub async fn open(settings: &RequestLogSettings, metrics: Metrics) -> Result<Self, TelemetryError> {
        let (tx, rx) = mpsc::channel(settings.queue.max(16));
        let dropped = Dropped {
            metrics,
            count: Arc::default(),
        };
        match &settings.sink {
            LogSink::File { path, max_bytes, keep } => {
                let writer = FileWriter::open(path.clone(), *max_bytes, *keep)?;
                let dropped = dropped.clone();
                tokio::task::spawn_blocking(move || writer.run(rx, &dropped));
            }
            LogSink::Redis { url, stream, max_len } => {
                let client =
                    redis::Client::open(url.as_str()).map_err(|e| TelemetryError::RequestLog(e.to_string()))?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(2)))
                    // The writer retries a batch itself.
                    .set_number_of_retries(1);
                let con = redis::aio::ConnectionManager::new_lazy_with_config(client, config)
                    .map_err(|e| TelemetryError::RequestLog(e.to_string()))?;
                tokio::spawn(redis_writer(con, stream.clone(), *max_len, rx, dropped.clone()));
            }
        }
        Ok(Self {
            tx,
            include_prompt: settings.include_prompt,
            dropped,
            queued: Arc::default(),
        })
    }

    /// Whether records should carry the prompt.
    pub fn include_prompt(&self) -> bool {
        self.include_prompt
    }

    fn send(&self, line: String) {
        let len = line.len();
        if self.queued.fetch_add(len, Ordering::Relaxed).saturating_add(len) > MAX_QUEUED_BYTES {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            self.dropped.one("the writer is behind");
            return;
        }
        let line = Queued {
            text: line,
            len,
            queued: Arc::clone(&self.queued),
        };
        // A record refused here is dropped, and its bytes given back.
        if self.tx.try_send(Msg::Line(line)).is_err() {
            self.dropped.one("the writer is behind");
        }
    }

    /// Appends a finished request (its `kind` and `ts` are filled in).
    pub fn record(&self, mut record: RequestRecord) {
        record.kind = "request".into();
        if record.ts == 0 {
            record.ts = now_ms();
        }
        if !self.include_prompt {
            record.prompt = None;
        }
        if let Ok(line) = serde_json::to_string(&record) {
            self.send(line);
        }
    }

    /// Appends feedback on a request, given by the key `key_ref` refers to.
    pub fn feedback(&self, request_id: &str, score: f64, comment: Option<String>, key_ref: Option<String>) {
        let feedback = Feedback {
            kind: "feedback".into(),
            request_id: request_id.to_owned(),
            ts: now_ms(),
            score,
            key_ref,
            comment,
        };
        if let Ok(line) = serde_json::to_string(&feedback) {
            self.send(line);
        }
    }

    /// Waits until everything queued before this call is written.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(10), wait).await;
        }
    }
}

struct FileWriter {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: std::io::BufWriter<std::fs::File>,
    size: u64,
    /// A write failed part-way (a full disk): the line it left is ended
    /// before the next one, which would otherwise be glued to it.
    torn: bool,
    /// Failures not logged yet, and when one last was: a full disk fails
    /// every record, and one error line a minute says so.
    unlogged: u64,
    logged_at: Option<std::time::Instant>,
}

impl FileWriter {
    fn open(path: PathBuf, max_bytes: u64, keep: usize) -> Result<Self, TelemetryError> {
        let fail = |e: std::io::Error| TelemetryError::RequestLog(format!("{}: {e}", path.display()));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let file = private_file().create(true).append(true).open(&path).map_err(fail)?;
        let (size, torn) = tail_of(&path);
        Ok(Self {
            file: std::io::BufWriter::new(file),
            path,
            max_bytes,
            keep,
            size,
            torn,
            unlogged: 0,
            logged_at: None,
        })
    }

    /// Logs a failure, at most once a minute, with how many there were.
    fn failed(&mut self, what: &str, e: &std::io::Error) {
        self.unlogged += 1;
        if self.logged_at.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
            tracing::error!(error = %e, path = %self.path.display(), failures = self.unlogged, "{what}");
            self.unlogged = 0;
            self.logged_at = Some(std::time::Instant::now());
        }
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        // The live file may have been moved or removed (by hand, or by an
        // outside log rotator): there is then nothing to rotate, and a new
        // file is opened rather than every later record failing.
        let gone = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(e)
            }
        };
        if self.keep == 0 {
            std::fs::remove_file(&self.path).or_else(gone)?;
        } else if self.path.exists() {
            // (A live file already gone, e.g. moved to `.1` by a rotation
            // whose reopen failed, makes no room to shift for: shifting
            // again on every record would delete the older files.)
            for n in (1..self.keep).rev() {
                let from = self.rotated(n);
                if from.exists() {
                    std::fs::rename(&from, self.rotated(n + 1))?;
                }
            }
            std::fs::rename(&self.path, self.rotated(1)).or_else(gone)?;
        }
        let file = private_file().create(true).append(true).open(&self.path)?;
        self.file = std::io::BufWriter::new(file);
        // Another writer may have made the file meanwhile.
        (self.size, self.torn) = tail_of(&self.path);
        Ok(())
    }

    /// Writes `line` and its line end in one call, so that no line end
    /// can fail apart from its line.
    fn write(&mut self, mut line: String) -> std::io::Result<()> {
        line.push('\n');
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        if self.torn {
            self.file.write_all(b"\n")?;
            self.size += 1;
            self.torn = false;
        }
        if let Err(e) = self.file.write_all(line.as_bytes()) {
            self.torn = true;
            return Err(e);
        }
        self.size += line.len() as u64;
        Ok(())
    }

    /// Writes lines as they come; flushes whenever the queue is empty.
    fn run(mut self, mut rx: mpsc::Receiver<Msg>, dropped: &Dropped) {
        while let Some(msg) = rx.blocking_recv() {
            let mut waiting = Vec::new();
            let mut next = Some(msg);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Line(mut line) => {
                        if let Err(e) = self.write(std::mem::take(&mut line.text)) {
                            self.failed("cannot write the request log", &e);
                            dropped.one("the file cannot be written");
                        }
                    }
                    Msg::Flush(done) => waiting.push(done),
                }
                next = rx.try_recv().ok();
            }
            if let Err(e) = self.file.flush() {
                self.failed("cannot flush the request log", &e);
            }
            for done in waiting {
                let _ = done.send(());
            }
        }
        let _ = self.file.flush();
    }
}

/// Records sent to Redis in one round trip at most.
const REDIS_BATCH: usize = 256;

async fn redis_writer(
    mut con: redis::aio::ConnectionManager,
    stream: String,
    max_len: u64,
    mut rx: mpsc::Receiver<Msg>,
    dropped: Dropped,
) {
    while let Some(msg) = rx.recv().await {
        // What is queued goes in one atomic pipeline: one round trip, and a
        // batch written whole or not at all.
        let mut lines = Vec::new();
        let mut waiting = Vec::new();
        let mut next = Some(msg);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Line(line) => lines.push(line),
                Msg::Flush(done) => waiting.push(done),
            }
            if lines.len() < REDIS_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !lines.is_empty() {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for line in &lines {
                pipe.cmd("XADD")
                    .arg(&stream)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(max_len)
                    .arg("*")
                    .arg("record")
                    .arg(&line.text)
                    .ignore();
            }
            let mut tries = 0;
            loop {
                match pipe.query_async::<()>(&mut con).await {
                    Ok(()) => break,
                    Err(e) if tries < 3 => {
                        tries += 1;
                        tracing::warn!(error = %e, "request log: Redis write failed; retrying");
                        tokio::time::sleep(Duration::from_millis(200 * tries)).await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, records = lines.len(), "request log: Redis write failed; records dropped");
                        for _ in &lines {
                            dropped.one("Redis did not take it");
                        }
                        break;
                    }
                }
            }
        }
        for done in waiting {
            let _ = done.send(());
        }
    }
}

/// A log file's size, and whether its last line was left unfinished (a
/// write cut by a full disk or a killed process before a restart): the
/// next record then starts on a line of its own.
fn tail_of(path: &std::path::Path) -> (u64, bool) {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return (0, false);
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut last = [b'\n'];
    if size > 0 && file.seek(SeekFrom::End(-1)).is_ok() && file.read_exact(&mut last).is_err() {
        last = [b'\n'];
    }
    (size, last[0] != b'\n')
}

/// Options that create a file readable and writable by its owner only
/// (mode 0600 on Unix): the request log may hold prompts.
fn private_file() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_redis_did_not_take_are_counted_as_dropped() {
        let metrics = Metrics::new();
        let settings = RequestLogSettings {
            sink: LogSink::Redis {
                url: "redis://127.0.0.1:1".into(),
                stream: "s".into(),
                max_len: 100,
            },
            include_prompt: false,
            queue: 100,
        };
        let log = RequestLog::open(&settings, metrics.clone()).await.unwrap();
        for i in 0..5 {
            log.record(RequestRecord {
                request_id: format!("req-{i}"),
                ..RequestRecord::default()
            });
        }
        log.flush().await;
        let text = metrics.render();
        assert!(
            text.lines().any(|l| l == "switchyard_request_log_dropped_total 5"),
            "{text}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_are_appended_and_the_file_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("requests.jsonl");
        let settings = RequestLogSettings {
            sink: LogSink::File {
                path: path.clone(),
                max_bytes: 2000,
                keep: 2,
            },
            include_prompt: false,
            queue: 1000,
        };
        let log = RequestLog::open(&settings, Metrics::new()).await.unwrap();
        for i in 0..30 {
            log.record(RequestRecord {
                request_id: format!("req-{i}"),
                model: "gpt".into(),
                status: 200,
                prompt: Some("secret prompt".into()),
                ..RequestRecord::default()
            });
        }
        log.feedback("req-29", 0.75, None, None);
        log.flush().await;
        let live = std::fs::read_to_string(&path).unwrap();
        let last: Vec<Feedback> = live
            .lines()
            .filter_map(|l| serde_json::from_str::<Feedback>(l).ok())
            .filter(|f| f.kind == "feedback")
            .collect();
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].score, 0.75);
        assert!(std::fs::metadata(&path).unwrap().len() <= 2000);
        assert!(dir.path().join("requests.jsonl.1").exists());
        assert!(dir.path().join("requests.jsonl.2").exists());
        assert!(
            !dir.path().join("requests.jsonl.3").exists(),
            "only two rotated files are kept"
        );
        let all = [path.clone(), dir.path().join("requests.jsonl.1")]
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect::<String>();
        assert!(!all.contains("secret prompt"), "prompts are left out unless asked for");
        let first: RequestRecord = serde_json::from_str(live.lines().next().unwrap()).unwrap();
        assert_eq!(first.kind, "request");
        assert!(first.ts > 0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            for file in [path.clone(), dir.path().join("requests.jsonl.1")] {
                let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", file.display());
            }
        }
    }

    /// A rotation whose reopen failed leaves the live file at `.1`: the
    /// next rotation opens a new one without shifting the rotated files
    /// again (each shift would delete the oldest).
    #[test]
    fn a_rotation_after_a_failed_reopen_keeps_the_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("requests.jsonl");
        let mut writer = FileWriter::open(path.clone(), 1000, 2).unwrap();
        std::fs::write(writer.rotated(1), "newer\n").unwrap();
        std::fs::write(writer.rotated(2), "older\n").unwrap();
        std::fs::remove_file(&path).unwrap();
        for _ in 0..3 {
            writer.rotate().unwrap();
            std::fs::remove_file(&path).unwrap();
        }
        assert_eq!(std::fs::read_to_string(writer.rotated(1)).unwrap(), "newer\n");
        assert_eq!(std::fs::read_to_string(writer.rotated(2)).unwrap(), "older\n");
    }

    /// A line a write left unfinished before a restart is ended before
    /// the first new record, which would otherwise be glued to it.
    #[test]
    fn an_unfinished_line_from_before_a_restart_is_ended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("requests.jsonl");
        std::fs::write(&path, "{\"whole\":1}\n{\"cut\":").unwrap();
        let mut writer = FileWriter::open(path.clone(), 10_000, 2).unwrap();
        writer.write("{\"next\":2}".into()).unwrap();
        writer.file.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"whole\":1}\n{\"cut\":\n{\"next\":2}\n");
        let mut whole = FileWriter::open(path.clone(), 10_000, 2).unwrap();
        whole.write("{\"last\":3}".into()).unwrap();
        whole.file.flush().unwrap();
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .ends_with("{\"next\":2}\n{\"last\":3}\n")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_live_file_moved_away_is_started_again_at_the_next_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("requests.jsonl");
        let settings = RequestLogSettings {
            sink: LogSink::File {
                path: path.clone(),
                max_bytes: 1000,
                keep: 1,
            },
            include_prompt: false,
            queue: 1000,
        };
        let log = RequestLog::open(&settings, Metrics::new()).await.unwrap();
        let record = |i: usize| RequestRecord {
            request_id: format!("req-{i}"),
            ..RequestRecord::default()
        };
        log.record(record(0));
        log.flush().await;
        // An outside rotator takes the live file away.
        std::fs::rename(&path, dir.path().join("elsewhere.jsonl")).unwrap();
        for i in 1..40 {
            log.record(record(i));
        }
        log.flush().await;
        let live = std::fs::read_to_string(&path).unwrap();
        assert!(live.contains("req-39"), "records go to a new live file: {live}");
    }
}
