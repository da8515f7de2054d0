//! `cargo xtask image` says clearly when no container engine is present and
//! prints the build it would run; `cargo xtask dist` packs a binary with a
//! checksum that `sha256sum -c` accepts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::process::Command;

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");
/// Any executable will do: packing does not look inside it.
const SMALL_BINARY: &str = "/bin/true";

fn xtask(args: &[&str], path: Option<&str>) -> (bool, String) {
    let mut command = Command::new(XTASK);
    command.args(args);
    if let Some(path) = path {
        command.env("PATH", path);
    }
    let out = command.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn image_without_an_engine_says_so_and_print_shows_the_build() {
    let empty = tempfile::tempdir().unwrap();
    let (ok, out) = xtask(&["image"], Some(empty.path().to_str().unwrap()));
    assert!(!ok);
    assert!(
        out.contains("no container engine found") && out.contains("docker") && out.contains("podman"),
        "{out}"
    );
    let (ok, out) = xtask(
        &["image", "--print", "--tag", "switchyard:test"],
        Some(empty.path().to_str().unwrap()),
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("build -f deploy/docker/Dockerfile -t switchyard:test --build-arg WITH_MODEL=0 ."),
        "{out}"
    );
}

#[test]
fn dist_packs_a_binary_with_a_checksum_that_verifies() {
    let out = tempfile::tempdir().unwrap();
    let (ok, log) = xtask(
        &["dist", "--binary", SMALL_BINARY, "--out", out.path().to_str().unwrap()],
        None,
    );
    assert!(ok, "{log}");
    let sums = std::fs::read_to_string(out.path().join("SHA256SUMS")).unwrap();
    assert_eq!(sums.lines().count(), 1, "{sums}");
    let archive = sums.split_whitespace().nth(1).unwrap();
    assert!(
        archive.starts_with("switchyard-") && archive.ends_with(".tar.gz"),
        "{archive}"
    );
    let check = Command::new("sha256sum")
        .arg("-c")
        .arg("SHA256SUMS")
        .current_dir(out.path())
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    let listing = Command::new("tar")
        .arg("-tzf")
        .arg(out.path().join(archive))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    for file in ["/switchyard", "/README.md", "/config/config.yaml"] {
        assert!(listing.lines().any(|l| l.ends_with(file)), "{file} in {listing}");
    }
    // Packing again replaces the line rather than adding one.
    let (ok, log) = xtask(
        &["dist", "--binary", SMALL_BINARY, "--out", out.path().to_str().unwrap()],
        None,
    );
    assert!(ok, "{log}");
    assert_eq!(
        std::fs::read_to_string(out.path().join("SHA256SUMS"))
            .unwrap()
            .lines()
            .count(),
        1
    );
}

#[test]
fn dist_takes_an_output_directory_relative_to_where_it_runs() {
    let cwd = tempfile::tempdir().unwrap();
    let out = Command::new(XTASK)
        .args(["dist", "--binary", SMALL_BINARY, "--out", "dist"])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{log}");
    let sums = std::fs::read_to_string(cwd.path().join("dist/SHA256SUMS")).unwrap();
    let archive = sums.split_whitespace().nth(1).unwrap();
    assert!(cwd.path().join("dist").join(archive).is_file(), "{log}");
}

/// Writes an executable shell script `name` into `dir`.
///
/// A child shell writes it: a file this process held open for writing could
/// be inherited by a process another test thread forks at that moment, and
/// executing the script would then fail with `ETXTBSY`.
fn script(dir: &std::path::Path, name: &str, body: &str) {
    use std::io::Write as _;
    let path = dir.join(name);
    let mut writer = std::process::Command::new("sh")
        .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
        .arg(&path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = writer.stdin.take().unwrap();
    stdin.write_all(format!("#!/bin/sh\n{body}\n").as_bytes()).unwrap();
    drop(stdin);
    assert!(writer.wait().unwrap().success());
}

#[test]
fn image_passes_over_a_docker_client_without_a_daemon() {
    let bin = tempfile::tempdir().unwrap();
    let dir = bin.path();
    // Only the fakes: a real docker or podman elsewhere on PATH stays out.
    let path = dir.display().to_string();
    // A docker client whose daemon is not running, as `docker info` reports it.
    script(
        dir,
        "docker",
        "echo 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?' >&2; exit 1",
    );
    let (ok, out) = xtask(&["image"], Some(&path));
    assert!(!ok);
    assert!(
        out.contains("no working container engine") && out.contains("Cannot connect to the Docker daemon"),
        "{out}"
    );

    // With podman beside it, podman builds; its arguments are recorded.
    let called = dir.join("podman-called");
    script(
        dir,
        "podman",
        &format!("[ \"$1\" = info ] && exit 0\necho \"$@\" > '{}'", called.display()),
    );
    let (ok, out) = xtask(&["image", "--tag", "switchyard:test"], Some(&path));
    assert!(ok, "{out}");
    assert!(out.contains("built switchyard:test"), "{out}");
    let args = std::fs::read_to_string(&called).unwrap();
    assert_eq!(
        args.trim(),
        "build -f deploy/docker/Dockerfile -t switchyard:test --build-arg WITH_MODEL=0 ."
    );
}
