//! The id an upstream gave its answer (`x-request-id` at OpenAI and Azure,
//! `request-id` at Anthropic, `x-amzn-requestid` at AWS): what a provider's
//! support asks for. A provider call made inside [`capture`] records it;
//! calls outside record nothing.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

tokio::task_local! {
    static SLOT: Arc<Mutex<Option<String>>>;
}

/// Response headers that carry an upstream's request id, most specific first.
const HEADERS: [&str; 4] = ["request-id", "x-amzn-requestid", "x-request-id", "apim-request-id"];

/// The longest id kept; a longer value is not an id.
const MAX_LEN: usize = 200;

/// Runs `call` and returns its output with the request id of the last
/// upstream answer it received that carried one (a request sent again
/// within the call, without a parameter the upstream refused, is the one
/// whose answer the client gets).
pub async fn capture<F: Future>(call: F) -> (F::Output, Option<String>) {
    let slot = Arc::new(Mutex::new(None));
    let output = SLOT.scope(Arc::clone(&slot), call).await;
    let id = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
    (output, id)
}

/// The id among an answer's headers, read through `header`: only a plain
/// token, as it goes into a response header and logs.
fn id_from<'h>(header: impl Fn(&str) -> Option<&'h str>) -> Option<&'h str> {
    let id = HEADERS.iter().find_map(|name| header(name)).map(str::trim)?;
    (!id.is_empty() && id.len() <= MAX_LEN && id.bytes().all(|b| b.is_ascii_graphic())).then_some(id)
}

/// The upstream's id for the answer whose headers are `headers`, if it gave one.
pub fn from_headers(headers: &reqwest::header::HeaderMap) -> Option<String> {
    id_from(|name| headers.get(name).and_then(|v| v.to_str().ok())).map(str::to_owned)
}

/// Records the id among an answer's headers, read through `header`.
pub(crate) fn record_from<'h>(header: impl Fn(&str) -> Option<&'h str>) {
    if let Some(id) = id_from(header) {
        let _ = SLOT.try_with(|slot| *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(id.to_owned()));
    }
}

/// [`record_from`] for an HTTP answer's headers.
pub(crate) fn record(headers: &reqwest::header::HeaderMap) {
    record_from(|name| headers.get(name).and_then(|v| v.to_str().ok()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_last_answers_id_is_kept_and_odd_values_are_not() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("x-request-id", "req_abc123".parse().unwrap_or_else(|_| unreachable!()));
        let ((), id) = capture(async {
            record(&headers);
            let mut later = reqwest::header::HeaderMap::new();
            later.insert("request-id", "req_second".parse().unwrap_or_else(|_| unreachable!()));
            record(&later);
        })
        .await;
        assert_eq!(id.as_deref(), Some("req_second"));
        let ((), id) = capture(async { record_from(|_| Some("has space")) }).await;
        assert_eq!(id, None);
        let long = "x".repeat(MAX_LEN + 1);
        let ((), id) = capture(async { record_from(|_| Some(long.as_str())) }).await;
        assert_eq!(id, None);
        // Outside `capture` nothing is recorded, and nothing fails.
        record(&headers);
    }
}
