//! Long-running child services (gateway, mock upstream) for benchmarks.
//!
//! A [`Service`] is started with `--port 0`, its output is scanned for the
//! `listening on http://HOST:PORT` line, and from then on both output pipes
//! are drained by background threads so the child can never block on a full
//! pipe. Dropping the service kills the child.

use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::util::display_command;

/// Marker that precedes the bound URL in a service's startup log line.
const LISTEN_MARKER: &str = "listening on http://";

/// Lines of output kept for error messages while waiting for startup.
const OUTPUT_TAIL_LINES: usize = 40;

/// A running child process that is killed when dropped.
#[derive(Debug)]
pub struct Service {
    /// Short name for messages.
    name: String,
    /// The child process.
    child: Child,
    /// Base URL without a trailing slash, e.g. `http://127.0.0.1:4000`.
    url: String,
}

impl Service {
    /// Spawns `command` and waits up to `timeout` for its listening line.
    pub fn start(name: &str, mut command: Command, timeout: Duration) -> Result<Self> {
        let shown = display_command(&command);
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("failed to start {name} (`{shown}`)"))?;

        let (sender, receiver) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            drain(stdout, sender.clone());
        }
        if let Some(stderr) = child.stderr.take() {
            drain(stderr, sender);
        }

        // From here on the guard owns the child, so every error path kills it.
        let mut service = Self {
            name: name.to_owned(),
            child,
            url: String::new(),
        };

        let deadline = Instant::now() + timeout;
        let mut tail = VecDeque::with_capacity(OUTPUT_TAIL_LINES);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match receiver.recv_timeout(remaining) {
                Ok(line) => {
                    if let Some(url) = parse_listen_url(&line) {
                        service.url = url;
                        return Ok(service);
                    }
                    if tail.len() == OUTPUT_TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "{name} did not print a `{LISTEN_MARKER}...` line within {}s (`{shown}`); output so far:\n{}",
                        timeout.as_secs(),
                        join_tail(&tail)
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = service
                        .child
                        .wait()
                        .map(|status| status.to_string())
                        .unwrap_or_else(|err| format!("unknown status ({err})"));
                    bail!(
                        "{name} exited ({status}) before listening (`{shown}`); output:\n{}",
                        join_tail(&tail)
                    );
                }
            }
        }
    }

    /// Base URL of the service, e.g. `http://127.0.0.1:4000`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `HOST:PORT` of the service, suitable for `TcpStream::connect`.
    pub fn authority(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// Process id of the child.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the child has already exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(anyhow!("{} exited unexpectedly ({status})", self.name)),
            Err(err) => Err(anyhow!("cannot query {} status: {err}", self.name)),
        }
    }

    /// Resident set size of the child in MiB, read from `/proc/<pid>/status`.
    pub fn rss_mib(&self) -> Result<f64> {
        let path = format!("/proc/{}/status", self.pid());
        let status = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse::<f64>().ok())
            .with_context(|| format!("no VmRSS line in {path}"))?;
        Ok(kib / 1024.0)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // Errors mean the process is already gone, which is the goal anyway.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `pipe` line by line on a background thread, forwarding lines while
/// someone listens and silently discarding them afterwards until EOF.
fn drain(pipe: impl Read + Send + 'static, sender: Sender<String>) {
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buffer = Vec::new();
        loop {
            buffer.clear();
            match reader.read_until(b'\n', &mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buffer).trim_end().to_owned();
                    // A send error only means startup is over; keep draining.
                    let _ = sender.send(line);
                }
            }
        }
    });
}

/// Joins kept output lines for an error message.
fn join_tail(tail: &VecDeque<String>) -> String {
    if tail.is_empty() {
        return "(no output)".to_owned();
    }
    tail.iter().cloned().collect::<Vec<_>>().join("\n")
}

/// Extracts `http://HOST:PORT` from a log line containing
/// `listening on http://HOST:PORT`, ignoring ANSI colour codes and any
/// surrounding quoting or structured-log punctuation.
pub fn parse_listen_url(line: &str) -> Option<String> {
    let plain = strip_ansi(line);
    let start = plain.find(LISTEN_MARKER)? + LISTEN_MARKER.len();
    let authority: String = plain[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']' | '-' | '_'))
        .collect();
    let authority = authority.trim_end_matches(['.', ':']);
    let (_, port) = authority.rsplit_once(':')?;
    if port.is_empty() || !port.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some(format!("http://{authority}"))
}

/// Removes ANSI CSI escape sequences (`ESC [ ... final-byte`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for next in chars.by_ref() {
                    if ('@'..='~').contains(&next) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::parse_listen_url;

    #[test]
    fn parses_plain_mock_line() {
        assert_eq!(
            parse_listen_url("mock-upstream listening on http://127.0.0.1:40123"),
            Some("http://127.0.0.1:40123".to_owned())
        );
    }

    #[test]
    fn parses_coloured_tracing_line() {
        let line = "\u{1b}[2m2025-01-01T00:00:00Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m switchyard: listening on http://127.0.0.1:5555\u{1b}[0m";
        assert_eq!(parse_listen_url(line), Some("http://127.0.0.1:5555".to_owned()));
    }

    #[test]
    fn parses_json_log_line() {
        let line = r#"{"level":"INFO","fields":{"message":"listening on http://[::1]:8080"}}"#;
        assert_eq!(parse_listen_url(line), Some("http://[::1]:8080".to_owned()));
    }

    #[test]
    fn rejects_lines_without_port() {
        assert_eq!(parse_listen_url("listening on http://localhost"), None);
        assert_eq!(parse_listen_url("starting up"), None);
    }
}
