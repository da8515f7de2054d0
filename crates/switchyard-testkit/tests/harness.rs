#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]
//! The process harness and the `mock-upstream` binary.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use switchyard_testkit::{GatewayProcess, run_check_config};

/// Writes an executable shell script standing in for a gateway binary.
///
/// A child shell writes it: a file this process held open for writing could
/// be inherited by a process another test thread forks at that moment, and
/// executing the script would then fail with `ETXTBSY`.
#[cfg(unix)]
fn fake_gateway(dir: &Path, body: &str) -> PathBuf {
    use std::io::Write as _;
    let path = dir.join("fake-gateway");
    let mut writer = Command::new("sh")
        .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
        .arg(&path)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = writer.stdin.take().unwrap();
    stdin.write_all(format!("#!/bin/sh\n{body}\n").as_bytes()).unwrap();
    drop(stdin);
    assert!(writer.wait().unwrap().success());
    path
}

/// Runs the env-scrubbing check in a copy of this test binary whose
/// environment carries a `SWITCHYARD_*` variable.
#[cfg(unix)]
#[test]
fn harness_scrubs_inherited_switchyard_env() {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "harness_parses_address_collects_logs_and_scrubs_env",
            "--test-threads=1",
        ])
        .env("SWITCHYARD_LEAK_TEST", "leaked")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("1 passed"), "{stdout}");
}

#[cfg(unix)]
#[test]
fn harness_parses_address_collects_logs_and_scrubs_env() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
echo "args: $*"
echo "config: $(cat "$2")"
echo "leaked=${SWITCHYARD_LEAK_TEST:-none} extra=${EXTRA_VAR:-none} own=${SWITCHYARD_OWN:-none}"
echo "warming up" >&2
echo '{"level":"INFO","message":"listening on http://0.0.0.0:4567"}'
exec sleep 30
"#;
    let bin = fake_gateway(dir.path(), script);
    let gateway = GatewayProcess::start_with(
        &bin,
        "server:\n  port: 1\n",
        &["--log-format", "json"],
        &[("EXTRA_VAR", "yes"), ("SWITCHYARD_OWN", "set")],
    );
    assert_eq!(gateway.addr().port(), 4567);
    assert_eq!(gateway.base_url(), "http://127.0.0.1:4567");
    assert!(gateway.pid() > 0);
    assert!(gateway.wait_for_log("warming up", Duration::from_secs(10)));
    let logs = gateway.logs();
    let args = logs.iter().find(|l| l.starts_with("args: ")).unwrap();
    assert!(args.contains("--config"));
    assert!(args.ends_with("--port 0 --log-format json"), "{args}");
    assert!(logs.iter().any(|l| l == "config: server:"));
    assert!(logs.iter().any(|l| l == "leaked=none extra=yes own=set"), "{logs:?}");
}

#[cfg(unix)]
#[test]
fn harness_panics_with_output_when_process_exits_early() {
    let dir = tempfile::tempdir().unwrap();
    let bin = fake_gateway(dir.path(), "echo 'config is broken' >&2\nexit 3");
    let result = std::panic::catch_unwind(|| GatewayProcess::start(&bin, "x: 1\n"));
    let payload = result.unwrap_err();
    let message = payload.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("config is broken"), "{message}");
}

#[cfg(unix)]
#[test]
fn check_config_runs_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let bin = fake_gateway(dir.path(), "echo \"$1\"; cat \"$2\"; exit 2");
    let output = run_check_config(&bin, "models: []\n");
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(String::from_utf8(output.stdout).unwrap(), "check-config\nmodels: []\n");
}

#[test]
fn mock_upstream_binary_serves_requests() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mock-upstream"))
        .args(["--host", "127.0.0.1", "--port", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("mock-upstream listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body: serde_json::Value = runtime.block_on(async {
        reqwest::Client::new()
            .get(format!("{url}/v1/models"))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(body["object"], "list");
    child.kill().unwrap();
    child.wait().unwrap();
}
