//! Server-sent events to the client: each upstream chunk is framed and sent as
//! soon as it arrives; the stream ends with `data: [DONE]`, or with an error
//! event if the upstream failed after the stream began.

use std::convert::Infallible;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt, stream};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard_providers::sse::Event;
use switchyard_providers::{ChunkStream, ProviderError, StreamChunk};
use switchyard_routing::{DeploymentId, InFlight, Outcome};

use crate::routes::{SharedState, error_class};

use crate::error::ApiError;
use crate::metering::{Metered, anthropic_usage, openai_usage};
use crate::observe::Trail;
use switchyard_policy::TokenUsage;

const DONE: &[u8] = b"data: [DONE]\n\n";

/// Chunks of audio queued for a client that has not taken them yet.
const PACED_QUEUE: usize = 4;

/// Passes a byte stream (speech audio) on to its client through a short
/// queue, as a stream's events are: a client that takes nothing for `stall`
/// once its connection's buffers are full (a stuck player), or the
/// shutdown's cut, ends it, letting go of the upstream and of what `held`
/// keeps (the deployment counted busy); the client's body then ends broken,
/// never as if the audio were whole. `ended` is told how it ended: `None`
/// whole, else the status and class its record takes (503
/// `shutting_down` for the cut, 499 `client_closed` for a client that left
/// or stalled, 502 `upstream_error` for audio that broke off upstream).
pub(crate) fn paced_bytes<H: Send + 'static>(
    mut body: Pin<Box<dyn Stream<Item = Result<Bytes, ProviderError>> + Send>>,
    held: H,
    stall: Duration,
    mut cut: tokio::sync::watch::Receiver<bool>,
    deployment: String,
    ended: impl FnOnce(Option<(u16, &'static str)>) + Send + 'static,
) -> Body {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::sync::mpsc::error::SendTimeoutError;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(PACED_QUEUE);
    let broken = Arc::new(AtomicBool::new(false));
    let flag = broken.clone();
    const SHUT: Option<(u16, &str)> = Some((503, "shutting_down"));
    const LEFT: Option<(u16, &str)> = Some((499, "client_closed"));
    tokio::spawn(async move {
        let _held = held;
        // How it ended, and whether the client's body ends broken.
        let (outcome, cut_off) = loop {
            let next = tokio::select! {
                biased;
                _ = cut.wait_for(|cut| *cut) => break (SHUT, true),
                () = tx.closed() => break (LEFT, false),
                next = body.next() => next,
            };
            let Some(item) = next else { break (None, false) };
            let item = item.map_err(|e| {
                tracing::warn!(%deployment, error = %e, "speech broke off while it was passed on");
                std::io::Error::other(e.to_string())
            });
            let failed = item.is_err();
            let sent = tokio::select! {
                biased;
                _ = cut.wait_for(|cut| *cut) => break (SHUT, true),
                sent = tx.send_timeout(item, stall) => sent,
            };
            match sent {
                // The error went to the client as its body's end.
                Ok(()) if failed => break (Some((502, "upstream_error")), false),
                Ok(()) => {}
                Err(SendTimeoutError::Timeout(_)) => {
                    tracing::warn!(
                        %deployment,
                        stall_ms = u64::try_from(stall.as_millis()).unwrap_or(u64::MAX),
                        "the client stopped reading its audio; ended as the client's leaving"
                    );
                    break (LEFT, true);
                }
                Err(SendTimeoutError::Closed(_)) => break (LEFT, false),
            }
        };
        ended(outcome);
        // Before the sender goes: the client's side reads the flag once
        // the queue has ended.
        if cut_off {
            flag.store(true, Ordering::Release);
        }
        drop(tx);
    });
    let chunks = stream::unfold((rx, broken), |(mut rx, broken)| async move {
        match rx.recv().await {
            Some(item) => Some((item, (rx, broken))),
            None if broken.swap(false, Ordering::AcqRel) => {
                Some((Err(std::io::Error::other("the audio was cut off")), (rx, broken)))
            }
            None => None,
        }
    });
    Body::from_stream(chunks)
}

/// Frames one JSON payload as an SSE `data:` event.
fn frame(data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 8);
    put_data(&mut out, data);
    out.put_slice(b"\n");
    out.freeze()
}

/// Writes an event's data as `data:` lines. Data received over several
/// `data:` lines holds them joined by `\n`, and goes out the same way.
pub(crate) fn put_data(out: &mut BytesMut, data: &[u8]) {
    for line in data.split(|b| *b == b'\n') {
        out.put_slice(b"data: ");
        out.put_slice(line);
        out.put_slice(b"\n");
    }
}

/// Why the gateway itself ended a stream the shutdown cut.
const SHUTTING_DOWN: &str = "the gateway is shutting down";
/// Why the gateway itself ended a stream whose reader failed.
const READ_FAILED: &str = "the gateway failed reading the stream";

/// The error a stream that failed after it started ends with: the
/// upstream's failure, or the gateway's own when it ended the stream (the
/// shutdown's cut, 503, as a request still waiting then gets; its reader's
/// failure, 500), so that a client can tell a drain from a bad upstream.
pub(crate) fn stream_failure(deployment: &str, err: ProviderError) -> ApiError {
    match &err {
        ProviderError::Stream(why) if why == SHUTTING_DOWN => ApiError::Unavailable(
            "the gateway is shutting down and could not finish this stream; send the request again".into(),
        ),
        ProviderError::Stream(why) if why == READ_FAILED => ApiError::Internal(why.clone()),
        _ => ApiError::upstream(deployment, err),
    }
}

/// The SSE error event sent when a stream fails after it started.
fn error_event(deployment: &str, err: switchyard_providers::ProviderError) -> Bytes {
    let error = stream_failure(deployment, err);
    tracing::warn!(error = %crate::error::Clipped(&error), "stream failed after it started");
    frame(&serde_json::to_vec(&error.body()).unwrap_or_default())
}

/// What the tracker needs to know about one item of an upstream stream.
pub(crate) trait Observed {
    /// Usage the item reports, merged into what earlier items reported.
    fn merge_usage(&self, usage: &mut Option<TokenUsage>);
    /// Whether the item is an in-band error (an Anthropic `error` event).
    fn in_band_error(&self) -> Option<ProviderError>;
    /// Whether the item ends the answer (an Anthropic `message_stop`): the
    /// stream is complete even if its reader stops polling right after it.
    fn is_last(&self) -> bool {
        false
    }
    /// Whether a complete stream of these items ends with one that
    /// [`Observed::is_last`]: one that just stops before it was cut.
    const ENDS_WITH_LAST: bool = false;
    /// The answer's text the item carries (read only when spans capture
    /// content).
    fn text(&self) -> Option<String> {
        None
    }
}

impl Observed for StreamChunk {
    fn merge_usage(&self, usage: &mut Option<TokenUsage>) {
        if let Some(u) = &self.usage {
            *usage = Some(openai_usage(u));
        }
    }

    fn in_band_error(&self) -> Option<ProviderError> {
        None
    }

    fn text(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&self.data).ok()?;
        let delta = v
            .pointer("/choices/0/delta/content")
            .or_else(|| v.pointer("/choices/0/text"))?;
        delta.as_str().map(str::to_owned)
    }
}

impl Observed for Event {
    /// `message_start` carries the prompt's usage, `message_delta` the output so far.
    fn merge_usage(&self, usage: &mut Option<TokenUsage>) {
        let path: &[&str] = match self.event.as_str() {
            "message_start" => &["message", "usage"],
            "message_delta" => &["usage"],
            _ => return,
        };
        let Ok(data) = serde_json::from_str::<serde_json::Value>(&self.data) else {
            return;
        };
        let Some(found) = path.iter().try_fold(&data, |v, k| v.get(*k)) else {
            return;
        };
        let seen = anthropic_usage(found);
        let merged = usage.get_or_insert_with(TokenUsage::default);
        let count = |k: &str| found.get(k).and_then(serde_json::Value::as_u64);
        let (read, write) = (count("cache_read_input_tokens"), count("cache_creation_input_tokens"));
        if read.is_some() || write.is_some() {
            // The event's own breakdown of the prompt stands, for the
            // counts it gives.
            let input = |u: &TokenUsage| u.prompt.saturating_sub(u.cache_read).saturating_sub(u.cache_write);
            let merged_input = count("input_tokens").unwrap_or_else(|| input(merged));
            merged.cache_read = read.unwrap_or(merged.cache_read);
            merged.cache_write = write.unwrap_or(merged.cache_write);
            merged.prompt = merged_input
                .saturating_add(merged.cache_read)
                .saturating_add(merged.cache_write);
        } else {
            // Without the cache counts (as some Anthropic-compatible
            // servers' `message_delta` is), the counts seen so far are kept,
            // each at its highest.
            let input = |u: &TokenUsage| u.prompt.saturating_sub(u.cache_read).saturating_sub(u.cache_write);
            let merged_input = input(merged).max(input(&seen));
            merged.prompt = merged_input
                .saturating_add(merged.cache_read)
                .saturating_add(merged.cache_write);
        }
        // `message_delta` repeats the counts without the writes' breakdown
        // by time to live: `message_start`'s stands.
        if found.get("cache_creation").is_some_and(serde_json::Value::is_object) {
            merged.cache_write_1h = seen.cache_write_1h;
        }
        merged.completion = merged.completion.max(seen.completion);
        merged.web_searches = merged.web_searches.max(seen.web_searches);
    }

    fn in_band_error(&self) -> Option<ProviderError> {
        (self.event == "error").then(|| switchyard_providers::anthropic::stream::error_event(&self.data))
    }

    fn is_last(&self) -> bool {
        self.event == "message_stop"
    }

    const ENDS_WITH_LAST: bool = true;

    fn text(&self) -> Option<String> {
        if self.event != "content_block_delta" {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&self.data).ok()?;
        v.pointer("/delta/text").and_then(|t| t.as_str()).map(str::to_owned)
    }
}

/// Follows one stream for the routing statistics and the circuit breaker: it
/// keeps the deployment counted as in flight until the stream ends, and
/// records the outcome, time to first item and tokens then. A stream the
/// client abandons records nothing.
pub struct StreamTracker {
    state: SharedState,
    id: DeploymentId,
    started: Instant,
    first_item: Option<Duration>,
    /// Tokens counted up front against the deployment's minute, taken back
    /// when the stream's own usage is counted.
    estimated_tokens: Option<(u64, u64)>,
    /// The prompt's estimated tokens, for a stream that reports no usage.
    prompt_estimate: u64,
    usage: Option<TokenUsage>,
    /// Items passed to the client, for the output estimate of a stream cut
    /// before the upstream reported its usage.
    items: u64,
    meter: Option<(Metered, String)>,
    /// What the answering deployment charges for this request (its own
    /// prices, or a wildcard deployment's for the model asked for).
    prices: Option<switchyard_policy::Prices>,
    labels: (String, String),
    trail: Option<Trail>,
    /// The request log's status for a stream dropped before its end: the
    /// client left (499), unless the gateway cut it at shutdown.
    cut_by_shutdown: bool,
    /// The request's `gen_ai` span: kept open until the stream ends, which
    /// records its usage (and, when spans capture content, its text).
    span: tracing::Span,
    /// The answer's text so far, when spans capture content.
    captured: Option<String>,
    /// Sent to a cooling deployment anyway: the breaker is left alone.
    anyway: bool,
    /// Where the consumer of the stream (a translation to another API)
    /// says why it stopped reading: an upstream fault, not a client that
    /// left.
    fault: Option<StreamFault>,
    /// Set once the stream's outcome is recorded ([`StreamTracker::finish`]):
    /// dropping it afterwards records nothing more.
    finished: bool,
    /// The gateway failed following the stream (its reader stopped): a
    /// drop records an internal error, as a panic does.
    internal: bool,
    _in_flight: InFlight,
}

/// Why a stream's consumer stopped reading it early (an event it could not
/// read), set at most once; the stream's outcome is then that failure.
pub type StreamFault = std::sync::Arc<std::sync::OnceLock<String>>;

impl StreamTracker {
    /// Starts following a stream on deployment `id`, sent at `started`.
    pub(crate) fn new(state: SharedState, id: DeploymentId, started: Instant, in_flight: InFlight) -> Self {
        Self {
            state,
            id,
            started,
            first_item: None,
            estimated_tokens: None,
            prompt_estimate: 0,
            usage: None,
            items: 0,
            meter: None,
            prices: None,
            labels: (String::new(), String::new()),
            trail: None,
            cut_by_shutdown: false,
            span: tracing::Span::none(),
            captured: None,
            anyway: false,
            fault: None,
            finished: false,
            internal: false,
            _in_flight: in_flight,
        }
    }

    /// A handle through which the stream's consumer reports an event it
    /// could not read; the stream then ends as that failure (502), not as
    /// a client that left.
    pub(crate) fn fault(&mut self) -> StreamFault {
        self.fault.get_or_insert_with(StreamFault::default).clone()
    }

    /// Marks a stream sent to a cooling deployment because every one was:
    /// how it ends leaves the breaker, and another request's probe, alone.
    pub(crate) fn anyway(mut self, anyway: bool) -> Self {
        self.anyway = anyway;
        self
    }

    /// Keeps `span` open until the stream ends, and records the stream's
    /// usage on it then (and its text, with `capture`).
    pub(crate) fn spanned(mut self, span: tracing::Span, capture: bool) -> Self {
        self.span = span;
        self.captured = capture.then(String::new);
        self
    }

    /// Names the model group and deployment in metrics.
    pub(crate) fn labelled(mut self, group: String, deployment: String) -> Self {
        self.labels = (group, deployment);
        self
    }

    /// Takes back `estimated` tokens, counted up front at `at_ms`, when the
    /// stream ends.
    pub(crate) fn counting(mut self, estimated: u64, at_ms: u64) -> Self {
        self.estimated_tokens = Some((estimated, at_ms));
        self.prompt_estimate = estimated;
        self
    }

    /// Tokens used so far, as the upstream reported them; without a report,
    /// the prompt's estimate and a token per event, as the stream is charged
    /// (an upstream that never reports must still use up its `tpm`).
    fn tokens_used(&self) -> u64 {
        self.usage.map_or_else(
            || self.prompt_estimate.saturating_add(self.items),
            |u| u.prompt.saturating_add(u.completion),
        )
    }

    /// Replaces the up-front estimate with the tokens used, once; `true`
    /// when the outcome's own record counts them instead.
    fn settle_tokens(&mut self, counted_by_outcome: bool) {
        let Some((estimated, at_ms)) = self.estimated_tokens.take() else {
            return;
        };
        let now = self.state.now_ms();
        self.state.stats.take_back_tokens(self.id, estimated, at_ms, now);
        if !counted_by_outcome {
            let used = i64::try_from(self.tokens_used()).unwrap_or(i64::MAX);
            self.state.stats.add_tokens(self.id, used, now);
        }
    }

    /// Appends the request-log record when the stream ends.
    pub(crate) fn with_trail(mut self, trail: Trail) -> Self {
        self.trail = Some(trail);
        self
    }

    /// Charges the stream's usage to `meter` when it ends (or is abandoned).
    pub(crate) fn metered(mut self, meter: Metered, deployment: String) -> Self {
        self.prices = meter.prices(&self.state, self.id);
        self.meter = Some((meter, deployment));
        self
    }

    fn on_item(&mut self, item: &impl Observed) {
        if self.first_item.is_none() {
            let first = self.started.elapsed();
            self.first_item = Some(first);
            self.state
                .metrics
                .first_token(&self.labels.0, &self.labels.1, first.as_secs_f64());
        }
        self.items += 1;
        item.merge_usage(&mut self.usage);
        if let Some(captured) = self.captured.as_mut()
            && captured.len() <= crate::observe::MAX_CAPTURED
            && let Some(text) = item.text()
        {
            captured.push_str(&text);
        }
    }

    /// What the usage seen so far costs on this deployment.
    fn cost(&self) -> switchyard_policy::Nanos {
        let prices = self.prices.or_else(|| self.state.prices.get(self.id.0).copied());
        match (self.usage, prices) {
            (Some(u), Some(p)) => p.cost(&u),
            _ => 0,
        }
    }

    /// Charges what the stream used, on a task of its own. A stream that did
    /// not end cleanly (abandoned by its client, or cut by an upstream
    /// fault) may not have had its usage reported yet, and some upstreams
    /// never report it: without a complete stream's usage, the output is
    /// taken as at least one token per item streamed, so leaving before the
    /// usage chunk, or an upstream that sends none, does not make the output
    /// free.
    fn charge(&mut self, complete: bool) {
        let Some((meter, name)) = self.meter.take() else {
            return;
        };
        let usage = if complete && self.usage.is_some() {
            self.usage
        } else {
            let mut usage = self.usage.unwrap_or(TokenUsage {
                prompt: meter.estimated_prompt(),
                ..TokenUsage::default()
            });
            usage.completion = usage.completion.max(self.items);
            Some(usage)
        };
        // The request log shows what was charged.
        self.usage = usage;
        let state = self.state.clone();
        let id = self.id;
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            // Taken now, before the task runs: a shutdown's flush waits for it.
            let guard = state.policy.write_guard();
            handle.spawn(async move {
                meter.settle(&state, id, &name, usage).await;
                drop(guard);
            });
        }
    }

    /// Records on the request's span what the stream used and what it
    /// answered (when content is captured), and why it ended early;
    /// `failed` marks the span's status as an error.
    fn record_span(&mut self, why: Option<&str>, failed: bool) {
        if let Some(u) = self.usage {
            self.span
                .record("gen_ai.usage.input_tokens", i64::try_from(u.prompt).unwrap_or(i64::MAX));
            self.span.record(
                "gen_ai.usage.output_tokens",
                i64::try_from(u.completion).unwrap_or(i64::MAX),
            );
        }
        if let Some(text) = self.captured.take() {
            switchyard_telemetry::set_exported_attribute(
                &self.span,
                "gen_ai.completion",
                crate::observe::clip_captured(text),
            );
        }
        if let Some(why) = why {
            self.span.record("error.type", why);
        }
        if failed {
            self.span.record("otel.status_code", "error");
        }
    }

    fn finish(&mut self, error: Option<&ProviderError>) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        self.charge(error.is_none());
        self.record_span(error.map(|e| error_class(e).as_str()), error.is_some());
        let now = self.state.now_ms();
        self.state
            .metrics
            .stream(&self.labels.0, &self.labels.1, self.started.elapsed().as_secs_f64());
        if let Some(mut trail) = self.trail.take() {
            trail.charged_raw(self.usage, self.cost());
            match error {
                None => trail.finish_with(200, None),
                // The error's code, as other records give it (`upstream_error`…).
                Some(e) => trail.finish_with(502, Some(crate::error::upstream_code(e))),
            }
        }
        self.settle_tokens(error.is_none());
        match error {
            None => {
                let outcome = Outcome {
                    latency: self.started.elapsed(),
                    ttft: self.first_item,
                    tokens: self.tokens_used(),
                };
                self.state.stats.record_success(self.id, outcome, now);
                if !self.anyway {
                    // The probe's verdict was its first event (dispatch):
                    // the end of a stream is no probe's.
                    self.state
                        .cooldowns
                        .record_success(self.id, switchyard_routing::Claim::Closed, now);
                }
                if let Some(alerts) = &self.state.alerts {
                    alerts.answered(&self.labels.0, &self.labels.1, self.started.elapsed());
                }
            }
            Some(e) => {
                let class = error_class(e);
                // The client's own error (an in-band refusal) is not the
                // upstream failing; the client got a 200 and a broken stream.
                if let Some(alerts) = &self.state.alerts
                    && class != switchyard_routing::ErrorClass::ClientError
                {
                    alerts.failed(
                        &self.labels.0,
                        Some(&self.labels.1),
                        &crate::error::upstream_code(e),
                        200,
                    );
                }
                self.state
                    .metrics
                    .stream_error(&self.labels.0, &self.labels.1, class.as_str());
                self.state.stats.record_failure(self.id, class, now);
                if !self.anyway
                    && self
                        .state
                        .cooldowns
                        .record_failure(self.id, class, switchyard_routing::Claim::Closed, now)
                {
                    tracing::warn!(
                        deployment = %self.labels.1,
                        "deployment put in cooldown after a failed stream"
                    );
                    self.state.metrics.cooldown(&self.labels.1);
                    if let Some(alerts) = &self.state.alerts {
                        alerts.cooldown(&self.labels.1, class.as_str());
                    }
                }
            }
        }
    }

    /// Wraps `items` so that the outcome is recorded when the stream ends.
    /// The upstream is read on a task of its own, ahead of the client (see
    /// [`read_ahead`]); the outcome is recorded as the client's side reads
    /// the items, so a translation that stops reading at an item it cannot
    /// read ([`StreamTracker::fault`]) still decides it.
    pub(crate) fn follow<T: Observed + Send + 'static>(
        self,
        items: Pin<Box<dyn Stream<Item = Result<T, ProviderError>> + Send>>,
    ) -> Pin<Box<dyn Stream<Item = Result<T, ProviderError>> + Send>> {
        let stall = Duration::from_millis(self.state.server.stream_write_timeout_ms);
        let deployment = self.labels.1.clone();
        let cut = self.state.cut.subscribe();
        let slot = Arc::new(Mutex::new(Slot {
            tracker: Some(self),
            ended: None,
        }));
        let ahead = read_ahead(items, slot.clone(), stall, cut, deployment);
        Box::pin(stream::unfold(Some((ahead, Held(slot))), |state| async move {
            let (mut ahead, held) = state?;
            let next = ahead.next().await;
            let mut slot = held.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let ended = slot.ended;
            let Some(tracker) = slot.tracker.as_mut() else {
                // The reader let the stream go (the client stopped reading,
                // or the shutdown cut it), and recorded how it ended.
                let why = ended.unwrap_or("the stream ended early");
                return Some((Err(ProviderError::Stream(why.into())), None));
            };
            match next {
                Some(Some(Ok(item))) => {
                    tracker.on_item(&item);
                    if let Some(e) = item.in_band_error() {
                        tracker.finish(Some(&e));
                        slot.tracker = None;
                        return Some((Ok(item), None));
                    }
                    if item.is_last() {
                        tracker.finish(None);
                        slot.tracker = None;
                        return Some((Ok(item), None));
                    }
                    drop(slot);
                    Some((Ok(item), Some((ahead, held))))
                }
                Some(Some(Err(e))) => {
                    tracker.finish(Some(&e));
                    slot.tracker = None;
                    Some((Err(e), None))
                }
                Some(None) if T::ENDS_WITH_LAST => {
                    // Closed before its last event: cut, not complete.
                    let e = ProviderError::Stream("the upstream closed the stream before message_stop".into());
                    tracker.finish(Some(&e));
                    slot.tracker = None;
                    None
                }
                Some(None) => {
                    tracker.finish(None);
                    slot.tracker = None;
                    None
                }
                // The reader stopped without the upstream's end (it
                // panicked): the gateway's failure, not the deployment's.
                None => {
                    tracker.internal = true;
                    let tracker = slot.tracker.take();
                    drop(slot);
                    drop(tracker);
                    Some((Err(ProviderError::Stream(READ_FAILED.into())), None))
                }
            }
        }))
    }
}

/// A followed stream's tracker, shared by the client's side (which records
/// the outcome as it reads) and the reader (which lets the stream go when
/// the client stops reading or the shutdown cuts it).
struct Slot {
    /// The tracker, until the outcome is recorded or the reader let the
    /// stream go (dropping it records the client's leaving, or the cut).
    tracker: Option<StreamTracker>,
    /// Why the reader let the stream go, for the client if it reads on.
    ended: Option<&'static str>,
}

/// The client's side's hold on the [`Slot`]: dropped (the client left, a
/// translation stopped reading, a panic unwinds), it drops the tracker
/// there and then, which records that ending on this thread.
struct Held(Arc<Mutex<Slot>>);

impl Drop for Held {
    fn drop(&mut self) {
        let tracker = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .tracker
            .take();
        drop(tracker);
    }
}

/// A stream's items as read ahead: each item, then `None` for the
/// upstream's end (a reader that stops without it stopped early).
type ReadAhead<T> = Pin<Box<dyn Stream<Item = Option<Result<T, ProviderError>>> + Send>>;

/// How many items a stream is read ahead of its client.
const READ_AHEAD: usize = 16;

/// Reads `items` on a task of its own, ahead of the client by up to
/// [`READ_AHEAD`] items, then the end (`None`), so that a client slow to
/// take them does not stop the shutdown's cut from being seen. Usage is
/// noted as it is read. A client that takes nothing for `stall` while some
/// is queued (it stopped reading, or vanished without closing), or a cut by
/// the shutdown, ends the stream here, also after the upstream's end: the
/// tracker is dropped (which charges what was used and logs the client's
/// leaving, or the cut) and the upstream closed; a client that reads on
/// gets an error. A client that left (its body dropped) stops the reader
/// at once.
fn read_ahead<T: Observed + Send + 'static>(
    items: Pin<Box<dyn Stream<Item = Result<T, ProviderError>> + Send>>,
    slot: Arc<Mutex<Slot>>,
    stall: Duration,
    mut cut: tokio::sync::watch::Receiver<bool>,
    deployment: String,
) -> ReadAhead<T> {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        // No runtime to read on (never so in the gateway): read inline.
        return Box::pin(items.map(Some).chain(stream::once(async { None })));
    };
    let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
    let noted = slot.clone();
    let let_go = move |why: &'static str, by_shutdown: bool| {
        let mut held = slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        held.ended = Some(why);
        let tracker = held.tracker.take();
        drop(held);
        if let Some(mut tracker) = tracker {
            tracker.cut_by_shutdown = by_shutdown;
            drop(tracker);
        }
    };
    let stalled = move || {
        tracing::warn!(
            %deployment,
            stall_ms = u64::try_from(stall.as_millis()).unwrap_or(u64::MAX),
            "the client stopped reading its stream; ended as the client's leaving"
        );
    };
    let reader = async move {
        let shutting_down = SHUTTING_DOWN;
        let mut upstream = Some(items);
        loop {
            // The upstream's next item, or its end once it has ended; then
            // the end is sent and the reader waits for the client to take
            // what is queued.
            let next = match upstream.as_mut() {
                Some(items) => tokio::select! {
                    biased;
                    _ = cut.wait_for(|cut| *cut) => return let_go(shutting_down, true),
                    () = tx.closed() => return,
                    next = items.next() => next,
                },
                None => {
                    // All taken, the end included: the client's side ends it.
                    if tx.capacity() == tx.max_capacity() {
                        return;
                    }
                    let before = tx.capacity();
                    tokio::select! {
                        biased;
                        _ = cut.wait_for(|cut| *cut) => return let_go(shutting_down, true),
                        () = tx.closed() => return,
                        () = tokio::time::sleep(stall) => {}
                    }
                    if tx.capacity() == before {
                        stalled();
                        return let_go("the client did not read the stream in time", false);
                    }
                    continue;
                }
            };
            if let Some(Ok(item)) = &next {
                // Noted now: a stream let go before its client reads the
                // usage is still charged by it.
                let mut held = noted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some(tracker) = held.tracker.as_mut() {
                    item.merge_usage(&mut tracker.usage);
                }
            }
            if next.is_none() {
                upstream = None;
            }
            tokio::select! {
                biased;
                _ = cut.wait_for(|cut| *cut) => return let_go(shutting_down, true),
                sent = tokio::time::timeout(stall, tx.send(next)) => match sent {
                    Ok(Ok(())) => {}
                    // The client left.
                    Ok(Err(_)) => return,
                    Err(_) => {
                        stalled();
                        return let_go("the client did not read the stream in time", false);
                    }
                },
            }
        }
    };
    runtime.spawn(tracing::Instrument::in_current_span(reader));
    Box::pin(stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

impl Drop for StreamTracker {
    /// A stream the client abandoned is still charged for what it used.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if let Some(why) = self.fault.as_ref().and_then(|f| f.get()).cloned() {
            self.finish(Some(&ProviderError::Stream(why)));
            return;
        }
        // Usage seen before the end (Anthropic's prompt counts, sent first)
        // counts at least one output token per item streamed, as `charge`
        // counts it, for the deployment's token statistics too.
        if let Some(usage) = self.usage.as_mut() {
            usage.completion = usage.completion.max(self.items);
        }
        self.settle_tokens(false);
        // The upstream took the request: it counts against the
        // deployment's rpm, without an outcome.
        self.state.stats.record_request(self.id, self.state.now_ms());
        self.charge(false);
        let (status, why) = if std::thread::panicking() || self.internal {
            (500, "internal_error")
        } else if self.cut_by_shutdown {
            (503, "shutting_down")
        } else {
            (499, "client_closed")
        };
        // A client's leaving is not the gateway's failure.
        self.record_span(Some(why), status != 499);
        if let Some(mut trail) = self.trail.take() {
            trail.charged_raw(self.usage, self.cost());
            trail.finish_with(status, Some(why.into()));
        }
    }
}

/// Whether a chunk is the usage-only chunk `include_usage` adds: no choices,
/// as `[]`, `null` (some servers) or no member at all.
/// The usage is read from the chunk itself (a zero usage is no count, but
/// its chunk is still the usage chunk).
fn is_usage_only(chunk: &StreamChunk) -> bool {
    // Only a chunk with a usage is parsed (this runs on every chunk): one
    // that counts, or one naming `"prompt_tokens"` unescaped, as a member.
    const COUNT: &[u8] = b"\"prompt_tokens\"";
    if chunk.usage.is_none() && !chunk.data.windows(COUNT.len()).any(|w| w == COUNT) {
        return false;
    }
    serde_json::from_slice::<serde_json::Value>(&chunk.data)
        .ok()
        .is_some_and(|v| {
            v.get("usage").is_some_and(|u| !u.is_null())
                && match v.get("choices") {
                    None | Some(serde_json::Value::Null) => true,
                    Some(choices) => choices.as_array().is_some_and(Vec::is_empty),
                }
        })
}

/// A chunk without its `"usage": null` member, which an upstream asked for
/// `include_usage` puts in every chunk and a client that did not ask for it
/// would not get from OpenAI. Found in the raw bytes (a `"` inside a JSON
/// string is escaped, so the pattern is only ever a member); a chunk without
/// it is passed on as it is.
fn without_null_usage(data: &Bytes) -> Bytes {
    const KEY: &[u8] = b"\"usage\"";
    let skip_ws = |mut i: usize| {
        while data.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        i
    };
    // The first `"usage"` that is a member set to null: the text `usage`
    // as a string value (a delta's content) is followed by no colon.
    let member = data
        .windows(KEY.len())
        .enumerate()
        .filter(|(_, w)| *w == KEY)
        .find_map(|(start, _)| {
            let colon = skip_ws(start + KEY.len());
            if data.get(colon) != Some(&b':') {
                return None;
            }
            let value = skip_ws(colon + 1);
            data[value..].starts_with(b"null").then_some((start, value + 4))
        });
    let Some((start, end)) = member else {
        return data.clone();
    };
    // Take the comma before the member, or else the one after it.
    let before = data[..start].iter().rposition(|b| !b.is_ascii_whitespace());
    let (from, to) = match before {
        Some(i) if data[i] == b',' => (i, end),
        _ => {
            let after = skip_ws(end);
            if data.get(after) == Some(&b',') {
                (start, skip_ws(after + 1))
            } else {
                (start, end)
            }
        }
    };
    let mut out = BytesMut::with_capacity(data.len());
    out.put_slice(&data[..from]);
    out.put_slice(&data[to..]);
    out.freeze()
}

/// How long a stream may go without a write before a comment is sent.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(10);

/// An SSE comment, which clients ignore.
const KEEPALIVE: &[u8] = b": keepalive\n\n";

/// Turns upstream chunks into an SSE response. Dropping the response body (the
/// client went away) drops the upstream stream, which closes its connection.
/// With `strip_usage`, the usage the gateway asked for on the client's
/// behalf is not forwarded: neither the usage-only chunk nor the other
/// chunks' `"usage": null`.
pub fn sse_response(chunks: ChunkStream, deployment: String, strip_usage: bool) -> Response {
    let events = sse_events(chunks, deployment, strip_usage, KEEPALIVE_EVERY);
    let mut response = Response::new(Body::from_stream(events.map(Ok::<_, Infallible>)));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The frames of [`sse_response`]'s body, with a comment after `keepalive`
/// without one.
fn sse_events(
    chunks: ChunkStream,
    deployment: String,
    strip_usage: bool,
    keepalive: Duration,
) -> impl Stream<Item = Bytes> + Send {
    let state = (chunks, deployment, false);
    stream::unfold(state, move |(mut chunks, deployment, finished)| async move {
        if finished {
            return None;
        }
        let next = loop {
            // A comment after a silence (a model thinking before its next
            // words), so proxies' idle timeouts do not cut the stream.
            let Ok(next) = tokio::time::timeout(keepalive, chunks.next()).await else {
                return Some((Bytes::from_static(KEEPALIVE), (chunks, deployment, false)));
            };
            match next {
                Some(Ok(chunk)) if strip_usage && is_usage_only(&chunk) => continue,
                other => break other,
            }
        };
        let (bytes, finished) = match next {
            Some(Ok(chunk)) if strip_usage => (frame(&without_null_usage(&chunk.data)), false),
            Some(Ok(chunk)) => (frame(&chunk.data), false),
            Some(Err(err)) => (error_event(&deployment, err), true),
            None => (Bytes::from_static(DONE), true),
        };
        Some((bytes, (chunks, deployment, finished)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_silent_stream_gets_comments_until_its_next_chunk() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // Nothing comes until the test has seen two comments.
        let chunks: ChunkStream = Box::pin(
            stream::once(async move {
                let _ = rx.await;
                Ok(StreamChunk {
                    data: Bytes::from_static(br#"{"choices":[{"index":0,"delta":{"content":"hi"}}]}"#),
                    usage: None,
                })
            })
            .chain(stream::empty()),
        );
        let mut events = Box::pin(sse_events(chunks, "d".into(), false, Duration::from_millis(20)));
        assert_eq!(events.next().await.as_deref(), Some(KEEPALIVE));
        assert_eq!(events.next().await.as_deref(), Some(KEEPALIVE));
        tx.send(()).unwrap();
        let mut rest = Vec::new();
        while let Some(frame) = events.next().await {
            rest.push(String::from_utf8(frame.to_vec()).unwrap());
        }
        let rest: Vec<_> = rest.iter().filter(|f| f.as_bytes() != KEEPALIVE).collect();
        assert_eq!(rest.len(), 2, "{rest:?}");
        assert!(rest[0].starts_with("data: {") && rest[0].contains("hi"), "{rest:?}");
        assert_eq!(rest[1].as_bytes(), DONE);
    }

    #[test]
    fn a_usage_chunk_has_no_choices_in_any_shape() {
        let usage = Some(switchyard_api::Usage {
            prompt_tokens: 3,
            completion_tokens: 2,
            total_tokens: 5,
            ..Default::default()
        });
        let chunk = |data: &str, usage: Option<switchyard_api::Usage>| StreamChunk {
            data: Bytes::from(data.to_owned()),
            usage,
        };
        for data in [
            r#"{"choices":[],"usage":{"prompt_tokens":3}}"#,
            r#"{"choices":null,"usage":{"prompt_tokens":3}}"#,
            r#"{"usage":{"prompt_tokens":3}}"#,
        ] {
            assert!(is_usage_only(&chunk(data, usage.clone())), "{data}");
        }
        assert!(!is_usage_only(&chunk(
            r#"{"choices":[{"index":0,"delta":{"content":"x"}}],"usage":{"prompt_tokens":3}}"#,
            usage.clone()
        )));
        assert!(!is_usage_only(&chunk(r#"{"choices":[]}"#, None)));
        // A zero usage (no count) still makes its chunk the usage chunk.
        assert!(is_usage_only(&chunk(
            r#"{"choices":[],"usage":{"prompt_tokens":0,"completion_tokens":0}}"#,
            None
        )));
    }

    /// A `message_delta` without the cache counts keeps `message_start`'s:
    /// the cache writes are still charged.
    #[test]
    fn anthropic_stream_usage_keeps_the_highest_counts() {
        let event = |name: &str, data: &str| Event {
            event: name.to_owned(),
            data: data.to_owned(),
            ..Event::default()
        };
        let mut usage = None;
        event(
            "message_start",
            r#"{"type":"message_start","message":{"usage":{"input_tokens":200,"cache_creation_input_tokens":100000,"cache_read_input_tokens":50,"output_tokens":1}}}"#,
        )
        .merge_usage(&mut usage);
        event(
            "message_delta",
            r#"{"type":"message_delta","usage":{"input_tokens":200,"output_tokens":300}}"#,
        )
        .merge_usage(&mut usage);
        let usage = usage.unwrap();
        assert_eq!(
            (usage.prompt, usage.cache_write, usage.cache_read, usage.completion),
            (100_250, 100_000, 50, 300)
        );
        // Anthropic's own repeats every count in `message_delta`.
        let mut usage = None;
        for (name, data) in [
            (
                "message_start",
                r#"{"message":{"usage":{"input_tokens":10,"cache_read_input_tokens":5,"output_tokens":1}}}"#,
            ),
            (
                "message_delta",
                r#"{"usage":{"input_tokens":10,"cache_read_input_tokens":5,"cache_creation_input_tokens":0,"output_tokens":7}}"#,
            ),
        ] {
            event(name, data).merge_usage(&mut usage);
        }
        let usage = usage.unwrap();
        assert_eq!((usage.prompt, usage.cache_read, usage.completion), (15, 5, 7));
        // A start without the split and a delta with it: the delta's split.
        let mut usage = None;
        for (name, data) in [
            (
                "message_start",
                r#"{"message":{"usage":{"input_tokens":100,"output_tokens":1}}}"#,
            ),
            (
                "message_delta",
                r#"{"usage":{"input_tokens":40,"cache_read_input_tokens":60,"output_tokens":7}}"#,
            ),
        ] {
            event(name, data).merge_usage(&mut usage);
        }
        let usage = usage.unwrap();
        assert_eq!((usage.prompt, usage.cache_read, usage.completion), (100, 60, 7));
    }

    #[test]
    fn a_null_usage_member_is_cut_and_nothing_else() {
        let cut = |text: &str| String::from_utf8(without_null_usage(&Bytes::from(text.to_owned())).to_vec()).unwrap();
        assert_eq!(
            cut(r#"{"id":"c","choices":[{"delta":{"content":"hi"}}],"usage":null}"#),
            r#"{"id":"c","choices":[{"delta":{"content":"hi"}}]}"#
        );
        assert_eq!(
            cut(r#"{"id": "c", "usage": null, "choices": []}"#),
            r#"{"id": "c", "choices": []}"#
        );
        assert_eq!(cut(r#"{"usage" : null , "id": "c"}"#), r#"{"id": "c"}"#);
        assert_eq!(cut(r#"{"usage":null}"#), "{}");
        // The word as a delta's text comes first; the member is still cut.
        assert_eq!(
            cut(r#"{"choices":[{"delta":{"content":"usage"}}],"usage":null}"#),
            r#"{"choices":[{"delta":{"content":"usage"}}]}"#
        );
        for kept in [
            r#"{"id":"c","usage":{"total_tokens":3}}"#,
            r#"{"choices":[{"delta":{"content":"say \"usage\":null"}}]}"#,
            r#"{"id":"c"}"#,
        ] {
            assert_eq!(cut(kept), kept);
        }
        for text in [
            r#"{"id":"c","choices":[],"usage":null}"#,
            r#"{"usage": null, "id": "c"}"#,
        ] {
            let value: serde_json::Value = serde_json::from_str(&cut(text)).unwrap();
            assert!(value.get("usage").is_none(), "{value}");
        }
    }
}
