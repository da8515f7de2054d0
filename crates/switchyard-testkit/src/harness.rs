//! Runs a gateway binary as a child process for end-to-end tests.

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Marker the gateway prints once it accepts connections.
const READY_MARKER: &str = "listening on http://";

/// How long [`GatewayProcess::start_with`] waits for the ready line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

type Logs = Arc<Mutex<Vec<String>>>;

/// A running gateway child process, killed when dropped.
#[derive(Debug)]
pub struct GatewayProcess {
    child: Child,
    addr: SocketAddr,
    logs: Logs,
    config_path: PathBuf,
    _config_dir: TempDir,
}

impl GatewayProcess {
    /// Writes `config_yaml` to a temp file, runs `<bin> --config <file> --port 0`
    /// and waits for its ready line.
    pub fn start(bin: &Path, config_yaml: &str) -> GatewayProcess {
        GatewayProcess::start_with(bin, config_yaml, &[], &[])
    }

    /// Like [`GatewayProcess::start`], with extra arguments and environment
    /// variables. Inherited `SWITCHYARD_*` variables (and `LITELLM_MASTER_KEY`)
    /// are removed first. When
    /// `args` has its own `--config`, `config_yaml` is not used.
    ///
    /// Panics with the collected output if the process exits, or prints no
    /// line containing `listening on http://` within 60 seconds.
    pub fn start_with(bin: &Path, config_yaml: &str, args: &[&str], envs: &[(&str, &str)]) -> GatewayProcess {
        let (config_dir, config_path) = write_config(config_yaml);
        let mut command = Command::new(bin);
        // `args` may name another `--config` (an `s3://` one); the file is then unused.
        if !args.contains(&"--config") {
            command.arg("--config").arg(&config_path);
        }
        command
            .args(["--port", "0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        scrub_env(&mut command);
        command.envs(envs.iter().copied());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("failed to spawn {}: {e}", bin.display()));

        let logs: Logs = Arc::default();
        let (tx, rx) = mpsc::channel::<String>();
        if let Some(stdout) = child.stdout.take() {
            drain(stdout, Arc::clone(&logs), tx.clone());
        }
        if let Some(stderr) = child.stderr.take() {
            drain(stderr, Arc::clone(&logs), tx);
        } else {
            drop(tx);
        }

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let addr = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                fail_startup(&mut child, &logs, "did not report its address within 60 s");
            }
            match rx.recv_timeout(remaining.min(Duration::from_millis(200))) {
                Ok(line) => {
                    if let Some(addr) = parse_ready_line(&line) {
                        break addr;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        // Give the readers a moment to collect the last output.
                        thread::sleep(Duration::from_millis(100));
                        fail_startup(&mut child, &logs, &format!("exited early with {status}"));
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    fail_startup(&mut child, &logs, "closed its output before becoming ready");
                }
            }
        };
        GatewayProcess {
            child,
            addr,
            logs,
            config_path: config_path.clone(),
            _config_dir: config_dir,
        }
    }

    /// The address the gateway reported (unspecified hosts become 127.0.0.1).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Root URL of the gateway, e.g. `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Whether a request is in flight to one of the deployments, as
    /// `GET /admin/deployments` (with `key` as bearer, if any) shows it.
    pub async fn any_in_flight(&self, key: Option<&str>) -> bool {
        let mut request = reqwest::Client::new().get(format!("{}/admin/deployments", self.base_url()));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let listed: serde_json::Value = request
            .send()
            .await
            .expect("GET /admin/deployments")
            .json()
            .await
            .expect("the deployments as JSON");
        listed["deployments"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|d| d["stats"]["in_flight"] != 0)
    }

    /// Waits (up to 10 s) until a request is in flight to one of the
    /// deployments; panics if none comes.
    pub async fn wait_in_flight(&self, key: Option<&str>) {
        for _ in 0..400 {
            if self.any_in_flight(key).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no request in flight");
    }

    /// All stdout and stderr lines printed so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Waits up to `max_wait` for a log line containing `needle`.
    pub fn wait_for_log(&self, needle: &str, max_wait: Duration) -> bool {
        let deadline = Instant::now() + max_wait;
        loop {
            if self.logs().iter().any(|line| line.contains(needle)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Process id of the child.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The configuration file the gateway was started with (rewrite it to
    /// test reloads).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Sends a signal by name: `TERM`, `HUP`, `INT` or `KILL`.
    pub fn signal(&self, name: &str) {
        signal_process(self.child.id(), name);
    }

    /// Waits up to `max_wait` for the process to exit; its exit code, or
    /// `None` if it is still running (or was killed by a signal).
    pub fn wait_exit(&mut self, max_wait: Duration) -> Option<i32> {
        let deadline = Instant::now() + max_wait;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.code(),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => return None,
            }
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `config_yaml` to a temp file and runs `<bin> check-config <file>`.
pub fn run_check_config(bin: &Path, config_yaml: &str) -> Output {
    let (_dir, path) = write_config(config_yaml);
    let mut command = Command::new(bin);
    command.arg("check-config").arg(&path).stdin(Stdio::null());
    scrub_env(&mut command);
    command
        .output()
        .unwrap_or_else(|e| panic!("failed to run {}: {e}", bin.display()))
}

fn write_config(config_yaml: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("switchyard-test-")
        .tempdir()
        .expect("create temp config dir");
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config_yaml).expect("write temp config");
    (dir, path)
}

/// Removes every inherited `SWITCHYARD_*` variable, and `LITELLM_MASTER_KEY`
/// (which LiteLLM-format files read), from the child's environment.
fn scrub_env(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if text.starts_with("SWITCHYARD_") || text == "LITELLM_MASTER_KEY" {
            command.env_remove(&name);
        }
    }
}

/// Reads `pipe` line by line on a background thread until EOF.
fn drain(pipe: impl Read + Send + 'static, logs: Logs, tx: Sender<String>) {
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']).to_owned();
                    logs.lock().unwrap_or_else(PoisonError::into_inner).push(line.clone());
                    // The receiver is gone once startup finished; keep draining.
                    let _ = tx.send(line);
                }
            }
        }
    });
}

fn fail_startup(child: &mut Child, logs: &Logs, reason: &str) -> ! {
    let _ = child.kill();
    let _ = child.wait();
    let output = logs.lock().unwrap_or_else(PoisonError::into_inner).join("\n");
    panic!("gateway {reason}; output:\n{output}");
}

/// Extracts the address after `listening on http://` (up to whitespace or `"`).
fn parse_ready_line(line: &str) -> Option<SocketAddr> {
    let start = line.find(READY_MARKER)? + READY_MARKER.len();
    let rest = &line[start..];
    let end = rest.find(|c: char| c.is_whitespace() || c == '"').unwrap_or(rest.len());
    let host_port = rest[..end].trim_end_matches('/');
    let addr = host_port
        .parse::<SocketAddr>()
        .ok()
        .or_else(|| host_port.to_socket_addrs().ok()?.next())?;
    if addr.ip().is_unspecified() {
        return Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port()));
    }
    Some(addr)
}

/// Sends process `pid` a signal by name: `TERM`, `HUP`, `INT` or `KILL`.
pub fn signal_process(pid: u32, name: &str) {
    use rustix::process::{Pid, Signal, kill_process};
    let signal = match name {
        "TERM" => Signal::TERM,
        "HUP" => Signal::HUP,
        "INT" => Signal::INT,
        "KILL" => Signal::KILL,
        other => panic!("no signal named {other}"),
    };
    let target = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .unwrap_or_else(|| panic!("pid {pid} out of range"));
    kill_process(target, signal).unwrap_or_else(|e| panic!("kill -{name} failed: {e}"));
}

#[cfg(test)]
mod tests {
    use super::parse_ready_line;

    #[test]
    fn parses_ready_lines() {
        let addr = parse_ready_line("INFO switchyard listening on http://127.0.0.1:4100 ok");
        assert_eq!(addr.unwrap().port(), 4100);
        let addr = parse_ready_line(r#"{"message":"listening on http://0.0.0.0:81","level":"INFO"}"#);
        assert_eq!(addr.unwrap().to_string(), "127.0.0.1:81");
        assert!(parse_ready_line("starting up").is_none());
    }
}
