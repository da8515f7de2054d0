//! A minimal blocking HTTP/1.1 client over `std::net::TcpStream`, used for
//! benchmark sanity checks and streaming time-to-first-byte measurements.
//!
//! Every request is sent with `connection: close`, so a response ends at EOF
//! and no chunked-encoding parsing is needed for what we inspect.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Socket read/write timeout for every request.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Upper bound on bytes read from one response.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// A fully read response.
#[derive(Debug)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// The response head (status line and headers) as sent.
    pub head: String,
    /// Raw body (still chunk-encoded if the server chose chunked encoding).
    pub body: String,
}

/// Connects to `authority` (`HOST:PORT`) with timeouts and `TCP_NODELAY` set.
fn connect(authority: &str) -> Result<TcpStream> {
    let stream = TcpStream::connect(authority).with_context(|| format!("cannot connect to {authority}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// Serialises a JSON POST request with `connection: close`.
fn post_request(authority: &str, path: &str, body: &str, streaming: bool) -> String {
    let accept = if streaming {
        "text/event-stream"
    } else {
        "application/json"
    };
    format!(
        "POST {path} HTTP/1.1\r\nhost: {authority}\r\ncontent-type: application/json\r\naccept: {accept}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Position just past the `\r\n\r\n` that ends the response head.
fn head_end(buffer: &[u8]) -> Option<usize> {
    buffer
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map(|pos| pos + 4)
}

/// Parses the status code out of `HTTP/1.1 200 OK`.
fn parse_status(head: &[u8]) -> Result<u16> {
    let text = String::from_utf8_lossy(head);
    let line = text.lines().next().unwrap_or_default();
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("malformed HTTP status line: {line:?}"))
}

/// Reads from `stream` until EOF (or the size cap), appending to `buffer`.
fn read_to_end(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Result<()> {
    let mut chunk = [0_u8; 16 * 1024];
    while buffer.len() < MAX_RESPONSE_BYTES {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) if err.kind() == ErrorKind::ConnectionReset => break,
            Err(err) => return Err(err).context("reading HTTP response"),
        }
    }
    Ok(())
}

/// Sends a JSON POST and reads the whole response.
pub fn post_json(authority: &str, path: &str, body: &str) -> Result<Response> {
    exchange(authority, path, &post_request(authority, path, body, false))
}

/// Sends a GET and reads the whole response.
pub fn get(authority: &str, path: &str) -> Result<Response> {
    let request = format!("GET {path} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n\r\n");
    exchange(authority, path, &request)
}

/// Writes `request` and reads the response until the server closes.
fn exchange(authority: &str, path: &str, request: &str) -> Result<Response> {
    let mut stream = connect(authority)?;
    stream.write_all(request.as_bytes()).context("writing HTTP request")?;
    let mut buffer = Vec::new();
    read_to_end(&mut stream, &mut buffer)?;
    let end = head_end(&buffer).with_context(|| {
        format!(
            "incomplete HTTP response from {authority}{path}: {:?}",
            String::from_utf8_lossy(&buffer)
        )
    })?;
    Ok(Response {
        status: parse_status(&buffer[..end])?,
        head: String::from_utf8_lossy(&buffer[..end]).into_owned(),
        body: String::from_utf8_lossy(&buffer[end..]).into_owned(),
    })
}

impl Response {
    /// The value of header `name` (lower case), if the response has it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// Sends one streaming POST and returns the time from the start of the
/// request write until the first `data:` of the SSE body has been received.
/// The rest of the response is then drained so the server finishes cleanly.
pub fn streaming_ttfb(authority: &str, path: &str, body: &str) -> Result<Duration> {
    let mut stream = connect(authority)?;
    let request = post_request(authority, path, body, true);

    let started = Instant::now();
    stream.write_all(request.as_bytes()).context("writing HTTP request")?;

    let mut buffer = Vec::with_capacity(4096);
    let mut chunk = [0_u8; 4096];
    let mut body_start = None;
    let elapsed = loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) => bail!(
                "connection closed before the first `data:` event from {authority}{path}; got: {:?}",
                String::from_utf8_lossy(&buffer)
            ),
            Ok(n) => n,
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) => return Err(err).context("reading streaming response"),
        };
        buffer.extend_from_slice(&chunk[..n]);
        if body_start.is_none()
            && let Some(end) = head_end(&buffer)
        {
            let status = parse_status(&buffer[..end])?;
            if status != 200 {
                read_to_end(&mut stream, &mut buffer)?;
                bail!(
                    "streaming request to {authority}{path} returned HTTP {status}: {}",
                    String::from_utf8_lossy(&buffer[end..])
                );
            }
            body_start = Some(end);
        }
        if let Some(start) = body_start
            && buffer[start..].windows(5).any(|window| window == b"data:")
        {
            break started.elapsed();
        }
        if buffer.len() > MAX_RESPONSE_BYTES {
            bail!("no `data:` event within {MAX_RESPONSE_BYTES} bytes from {authority}{path}");
        }
    };
    read_to_end(&mut stream, &mut buffer)?;
    Ok(elapsed)
}

/// Nearest-rank percentile (`p` in 0..=100) of already sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    sorted.get(index).copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{head_end, parse_status, percentile};

    #[test]
    fn percentile_uses_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&samples, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&samples, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn parses_head() {
        let raw = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\nrest";
        assert_eq!(head_end(raw), Some(raw.len() - 4));
        assert_eq!(parse_status(raw).ok(), Some(404));
    }
}
