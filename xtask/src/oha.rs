//! Driving the `oha` HTTP load generator and parsing its results.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::util::{self, clean_command, run_checked};

/// How `oha` can be asked for machine-readable results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// `--output-format json` (oha 1.5 and later).
    OutputFormatJson,
    /// `-j` / `--json` (older releases).
    LegacyJson,
    /// Only the human-readable summary is available.
    Text,
}

/// A located `oha` binary and the way to get JSON out of it.
#[derive(Debug, Clone)]
pub struct Oha {
    /// Path of the executable.
    program: PathBuf,
    /// Result format flag supported by this version.
    mode: OutputMode,
}

/// Result of one load run, latencies in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadResult {
    /// Requests per second.
    pub rps: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 90th percentile latency.
    pub p90_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// Responses with a 2xx status.
    pub ok_responses: u64,
    /// Responses with any other status.
    pub bad_responses: u64,
    /// Transport errors, excluding requests aborted by the `-z` deadline.
    pub errors: u64,
}

/// One load-generation request shape.
#[derive(Debug, Clone, Copy)]
pub struct Load<'a> {
    /// Full target URL.
    pub url: &'a str,
    /// JSON request body.
    pub body: &'a str,
    /// Concurrent connections.
    pub concurrency: u32,
    /// Requests per second to hold the load at (`None`: as fast as possible).
    pub rate: Option<u32>,
}

impl Oha {
    /// Finds `oha` on `$PATH` or in `~/.cargo/bin`, installing it with
    /// `cargo install oha --locked` when it is in neither place.
    pub fn locate_or_install() -> Result<Self> {
        let program = match find_oha() {
            Some(path) => path,
            None => {
                println!("oha not found on PATH or in ~/.cargo/bin; running `cargo install oha --locked`");
                let mut command = clean_command(util::cargo_program());
                command.args(["install", "oha", "--locked"]);
                run_checked(&mut command, "installing oha")?;
                find_oha().context("`cargo install oha` succeeded but oha is still not found")?
            }
        };
        let mode = detect_mode(&program)?;
        Ok(Self { program, mode })
    }

    /// Location of the executable.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Base command with the options shared by every run.
    fn command(&self, load: &Load<'_>) -> Command {
        let mut command = clean_command(&self.program);
        command
            .arg("-c")
            .arg(load.concurrency.to_string())
            .args(["-m", "POST", "-H", "content-type: application/json", "-d"])
            .arg(load.body)
            .arg("--no-tui");
        command
    }

    /// Sends `requests` requests and discards the results (warm-up).
    pub fn warm_up(&self, load: &Load<'_>, requests: u32) -> Result<()> {
        let mut command = self.command(load);
        command
            .arg("-n")
            .arg(requests.to_string())
            .arg(load.url)
            .stdout(Stdio::null());
        run_checked(&mut command, &format!("warm-up against {}", load.url))
    }

    /// Runs load for `duration_secs` seconds and parses the results.
    pub fn run(&self, load: &Load<'_>, duration_secs: u64) -> Result<LoadResult> {
        let mut command = self.command(load);
        command.arg("-z").arg(format!("{duration_secs}s"));
        if let Some(rate) = load.rate {
            command.arg("-q").arg(rate.to_string());
        }
        match self.mode {
            OutputMode::OutputFormatJson => {
                command.args(["--output-format", "json"]);
            }
            OutputMode::LegacyJson => {
                command.arg("--json");
            }
            OutputMode::Text => {}
        }
        command.arg(load.url).stderr(Stdio::inherit());
        let shown = util::display_command(&command);
        let output = command.output().with_context(|| format!("failed to run `{shown}`"))?;
        if !output.status.success() {
            bail!("`{shown}` failed with {}", output.status);
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let parsed = match self.mode {
            OutputMode::Text => parse_text(&stdout),
            OutputMode::OutputFormatJson | OutputMode::LegacyJson => parse_json(&stdout),
        };
        parsed.with_context(|| format!("cannot parse the output of `{shown}`"))
    }
}

/// Looks for `oha` on `$PATH`, then in `~/.cargo/bin`.
fn find_oha() -> Option<PathBuf> {
    // `cargo install oha` puts it in `$CARGO_HOME/bin`, `~/.cargo/bin` by default.
    util::find_on_path("oha").or_else(|| {
        let cargo_home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))?;
        let candidate = cargo_home.join("bin").join("oha");
        util::is_executable(&candidate).then_some(candidate)
    })
}

/// Inspects `oha --help` for the supported machine-readable output flag.
fn detect_mode(program: &Path) -> Result<OutputMode> {
    let output = Command::new(program)
        .arg("--help")
        .output()
        .with_context(|| format!("cannot run `{} --help`", program.display()))?;
    let help = String::from_utf8_lossy(&output.stdout);
    Ok(mode_from_help(&help))
}

/// Chooses the output mode from the text of `oha --help`.
fn mode_from_help(help: &str) -> OutputMode {
    if help.contains("--output-format") && help.contains("json") {
        OutputMode::OutputFormatJson
    } else if help.contains("--json") {
        OutputMode::LegacyJson
    } else {
        OutputMode::Text
    }
}

/// Reads a number at `pointer` in `value`.
fn number(value: &Value, pointer: &str) -> Result<f64> {
    value
        .pointer(pointer)
        .and_then(Value::as_f64)
        .with_context(|| format!("missing numeric field `{pointer}` in oha JSON output"))
}

/// Parses oha's JSON output (`summary.requestsPerSec`, `latencyPercentiles`
/// in seconds, `statusCodeDistribution`, `errorDistribution`).
pub fn parse_json(text: &str) -> Result<LoadResult> {
    let value: Value = serde_json::from_str(text.trim()).context("oha output is not JSON")?;
    let mut result = LoadResult {
        rps: number(&value, "/summary/requestsPerSec")?,
        p50_ms: number(&value, "/latencyPercentiles/p50")? * 1000.0,
        p90_ms: number(&value, "/latencyPercentiles/p90")? * 1000.0,
        p99_ms: number(&value, "/latencyPercentiles/p99")? * 1000.0,
        ..LoadResult::default()
    };
    if let Some(statuses) = value.get("statusCodeDistribution").and_then(Value::as_object) {
        for (status, count) in statuses {
            let count = count.as_u64().unwrap_or(0);
            if status.starts_with('2') {
                result.ok_responses += count;
            } else {
                result.bad_responses += count;
            }
        }
    }
    if let Some(errors) = value.get("errorDistribution").and_then(Value::as_object) {
        result.errors = errors
            .iter()
            .filter(|(message, _)| !message.contains("deadline"))
            .map(|(_, count)| count.as_u64().unwrap_or(0))
            .sum();
    }
    Ok(result)
}

/// Converts a value with an oha time unit into milliseconds.
fn to_millis(value: f64, unit: &str) -> Option<f64> {
    let factor = match unit {
        "ns" => 1e-6,
        "us" | "µs" | "μs" => 1e-3,
        "ms" => 1.0,
        "s" | "sec" | "secs" => 1e3,
        "m" | "min" | "mins" => 60e3,
        "h" => 3_600e3,
        _ => return None,
    };
    Some(value * factor)
}

/// Parses oha's human-readable summary as a fallback for old versions.
pub fn parse_text(text: &str) -> Result<LoadResult> {
    let mut result = LoadResult::default();
    let mut percentiles = BTreeMap::new();
    let mut rps = None;
    let mut in_status = false;
    for raw in text.lines() {
        let line = raw.trim();
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            rps = rest.trim().parse::<f64>().ok();
        } else if let Some((pct, rest)) = line.split_once("% in ") {
            let mut parts = rest.split_whitespace();
            let millis = parts
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .zip(parts.next())
                .and_then(|(v, unit)| to_millis(v, unit));
            if let (Ok(pct), Some(millis)) = (pct.trim().parse::<f64>(), millis) {
                // Keyed in hundredths of a percent to stay integral.
                percentiles.insert((pct * 100.0).round() as u64, millis);
            }
        } else if line.starts_with("Status code distribution") {
            in_status = true;
        } else if line.starts_with("Error distribution") {
            in_status = false;
        } else if in_status && line.starts_with('[') {
            let Some((status, rest)) = line.trim_start_matches('[').split_once(']') else {
                continue;
            };
            let count = rest
                .split_whitespace()
                .next()
                .and_then(|c| c.parse::<u64>().ok())
                .unwrap_or(0);
            if status.starts_with('2') {
                result.ok_responses += count;
            } else {
                result.bad_responses += count;
            }
        }
    }
    let get = |key: u64| {
        percentiles
            .get(&key)
            .copied()
            .with_context(|| format!("no p{} latency line in oha output", key / 100))
    };
    result.rps = rps.context("no `Requests/sec:` line in oha output")?;
    result.p50_ms = get(5000)?;
    result.p90_ms = get(9000)?;
    result.p99_ms = get(9900)?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::{OutputMode, mode_from_help, parse_json, parse_text};

    #[test]
    fn parses_json_summary() -> anyhow::Result<()> {
        let json = r#"{
            "summary": {"successRate": 1.0, "requestsPerSec": 1234.5},
            "latencyPercentiles": {"p50": 0.001, "p90": 0.002, "p99": 0.004},
            "statusCodeDistribution": {"200": 90, "502": 10},
            "errorDistribution": {"aborted due to deadline": 3, "connection reset": 2}
        }"#;
        let result = parse_json(json)?;
        assert!((result.rps - 1234.5).abs() < 1e-9);
        assert!((result.p50_ms - 1.0).abs() < 1e-9);
        assert!((result.p90_ms - 2.0).abs() < 1e-9);
        assert!((result.p99_ms - 4.0).abs() < 1e-9);
        assert_eq!(result.ok_responses, 90);
        assert_eq!(result.bad_responses, 10);
        assert_eq!(result.errors, 2);
        Ok(())
    }

    #[test]
    fn parses_text_summary() -> anyhow::Result<()> {
        let text = "Summary:\n  Requests/sec:\t1059.7008\n\nResponse time distribution:\n  10.00% in 0.6996 ms\n  50.00% in 1.1258 ms\n  90.00% in 3.0770 ms\n  99.00% in 0.0046 secs\n\nStatus code distribution:\n  [200] 20 responses\n  [500] 2 responses\n";
        let result = parse_text(text)?;
        assert!((result.rps - 1059.7008).abs() < 1e-9);
        assert!((result.p50_ms - 1.1258).abs() < 1e-9);
        assert!((result.p90_ms - 3.077).abs() < 1e-9);
        assert!((result.p99_ms - 4.6).abs() < 1e-9);
        assert_eq!(result.ok_responses, 20);
        assert_eq!(result.bad_responses, 2);
        Ok(())
    }

    #[test]
    fn detects_output_mode() {
        assert_eq!(
            mode_from_help("--output-format <F> [possible values: text, json]"),
            OutputMode::OutputFormatJson
        );
        assert_eq!(
            mode_from_help("-j, --json  Print results as JSON"),
            OutputMode::LegacyJson
        );
        assert_eq!(mode_from_help("-n <N>"), OutputMode::Text);
    }
}
