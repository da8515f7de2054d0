//! `cargo xtask image` and `cargo xtask dist`: the container image and
//! release archives.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use sha2::{Digest, Sha256};

use crate::http;
use crate::util::{
    cargo_program, clean_command, display_command, find_on_path, run_checked, target_dir, workspace_root,
};

/// The workspace version, the image tag and archive version.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Options of `cargo xtask image`.
#[derive(Debug, Args)]
pub struct ImageArgs {
    /// Image name and tag.
    #[arg(long, default_value_t = format!("switchyard:{VERSION}"))]
    pub tag: String,
    /// Bake the embedding model (models/all-MiniLM-L6-v2) into the image.
    #[arg(long)]
    pub with_model: bool,
    /// The container engine (default: the first of `docker` and `podman` on
    /// PATH that answers `docker info` / `podman info`).
    #[arg(long)]
    pub engine: Option<PathBuf>,
    /// Print the build command instead of running it.
    #[arg(long)]
    pub print: bool,
    /// After the build, run the image and check it: ready, serves a chat
    /// completion on the default configuration, runs as uid 10001, reloads
    /// on SIGHUP, drains and exits 0 on SIGTERM; with `--with-model`, the
    /// embedding model serves a semantic cache.
    #[arg(long, conflicts_with = "print")]
    pub check: bool,
}

/// Options of `cargo xtask dist`.
#[derive(Debug, Args)]
pub struct DistArgs {
    /// Where archives and `SHA256SUMS` go (default: `<target dir>/dist`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Package this already-built binary instead of building a release one.
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// The target triple `--binary` was built for, which names the archive
    /// (default: this host's).
    #[arg(long, requires = "binary")]
    pub target: Option<String>,
}

/// The container engine to build with: `--engine`, else the first of
/// `docker` and `podman` on PATH that answers `info` (a docker client whose
/// daemon is not running is passed over for podman).
fn engine(args: &ImageArgs) -> Result<PathBuf> {
    if let Some(engine) = &args.engine {
        return Ok(engine.clone());
    }
    let mut refusals = Vec::new();
    for name in ["docker", "podman"] {
        let Some(path) = find_on_path(name) else { continue };
        match answers_info(&path) {
            Ok(()) => return Ok(path),
            Err(why) => refusals.push(format!("`{name} info` failed: {why}")),
        }
    }
    if refusals.is_empty() {
        bail!(
            "no container engine found: neither `docker` nor `podman` is on PATH. Install one, or build the \
             image elsewhere with `docker build -f deploy/docker/Dockerfile .` from the repository root"
        );
    }
    bail!(
        "no working container engine: {}. Start the engine (for docker, its daemon), install podman, or pass \
         --engine",
        refusals.join("; ")
    )
}

/// Runs `<engine> info` (for at most [`INFO_TIMEOUT`]); the first line of
/// its error output when it fails.
fn answers_info(engine: &Path) -> std::result::Result<(), String> {
    use std::io::Read as _;
    let mut child = Command::new(engine)
        .arg("info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", engine.display()))?;
    let deadline = Instant::now() + INFO_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {} s", INFO_TIMEOUT.as_secs()));
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    Err(stderr
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no reason given")
        .trim()
        .to_owned())
}

/// How long `<engine> info` may take to answer.
const INFO_TIMEOUT: Duration = Duration::from_secs(15);

/// Builds the image from `deploy/docker/Dockerfile`.
pub fn image(args: &ImageArgs) -> Result<()> {
    let root = workspace_root()?;
    if args.with_model && !root.join("models/all-MiniLM-L6-v2/model.safetensors").exists() {
        bail!("--with-model needs the model in models/all-MiniLM-L6-v2: run `cargo xtask models fetch` first");
    }
    // Printing the command runs nothing, so it asks no engine anything.
    let engine = if args.print {
        args.engine
            .clone()
            .or_else(|| find_on_path("docker"))
            .or_else(|| find_on_path("podman"))
            .unwrap_or_else(|| PathBuf::from("docker"))
    } else {
        engine(args)?
    };
    let mut command = Command::new(&engine);
    command
        .current_dir(&root)
        .args(["build", "-f", "deploy/docker/Dockerfile", "-t", &args.tag])
        .args([
            "--build-arg",
            if args.with_model {
                "WITH_MODEL=1"
            } else {
                "WITH_MODEL=0"
            },
        ])
        .arg(".");
    if args.print {
        println!("{}", display_command(&command));
        return Ok(());
    }
    run_checked(&mut command, "image build")?;
    println!("built {}", args.tag);
    if args.check {
        check_image(&engine, &args.tag, args.with_model)?;
    }
    Ok(())
}

/// A container started by [`check_image`], removed when dropped.
struct Container<'a> {
    engine: &'a Path,
    name: String,
}

impl Container<'_> {
    /// Runs `engine <args>` and returns its stdout, failing with its stderr.
    fn engine(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(self.engine)
            .args(args)
            .output()
            .with_context(|| format!("cannot run {}", self.engine.display()))?;
        if !out.status.success() {
            bail!(
                "`{} {}` failed: {}",
                self.engine.display(),
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The container's output so far (stdout and stderr).
    fn logs(&self) -> String {
        Command::new(self.engine)
            .args(["logs", &self.name])
            .output()
            .map(|out| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )
            })
            .unwrap_or_default()
    }

    /// Waits until the logs contain `needle`.
    fn wait_for_log(&self, needle: &str, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.logs().contains(needle) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!(
            "the container did not log `{needle}` within {within:?}; its logs:\n{}",
            self.logs()
        )
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = Command::new(self.engine).args(["rm", "-f", &self.name]).output();
    }
}

/// The JSON in a response body (the body may be chunk-framed).
fn json_body(body: &str) -> Result<serde_json::Value> {
    let start = body.find('{').context("no JSON in the response")?;
    let end = body.rfind('}').context("no JSON in the response")?;
    serde_json::from_str(&body[start..=end]).context("the response is not JSON")
}

/// Starts a container of `tag` (with `run_args` before the image and
/// `command` after it) and waits until it is ready.
fn start_container<'a>(
    engine: &'a Path,
    tag: &str,
    run_args: &[&str],
    command: &[&str],
) -> Result<(Container<'a>, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let authority = format!("127.0.0.1:{port}");
    let container = Container {
        engine,
        name: format!("switchyard-image-check-{}-{port}", std::process::id()),
    };
    let publish = format!("{authority}:4000");
    let mut args = vec!["run", "-d", "--name", &container.name, "-p", &publish];
    args.extend_from_slice(run_args);
    args.push(tag);
    args.extend_from_slice(command);
    container.engine(&args)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if http::get(&authority, "/health/readiness").is_ok_and(|r| r.status == 200) {
            return Ok((container, authority));
        }
        let running = container.engine(&["inspect", "--format", "{{.State.Running}}", &container.name])?;
        if running.trim() == "false" {
            bail!(
                "the container exited before it was ready; its logs:\n{}",
                container.logs()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the container was not ready within 60 s; its logs:\n{}",
                container.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Asks `model` for a chat completion of `prompt`; fails unless it is 200
/// with some content.
fn chat(authority: &str, model: &str, prompt: &str) -> Result<http::Response> {
    let request = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
    });
    let response = http::post_json(authority, "/v1/chat/completions", &request.to_string())?;
    let answer = json_body(&response.body)?;
    let content = answer["choices"][0]["message"]["content"].as_str().unwrap_or_default();
    if response.status != 200 || content.is_empty() {
        bail!("chat completion on `{model}` answered {}: {answer}", response.status);
    }
    Ok(response)
}

/// Starts `tag` and checks what a deployment relies on.
fn check_image(engine: &Path, tag: &str, with_model: bool) -> Result<()> {
    let (container, authority) = start_container(engine, tag, &[], &[])?;
    println!("check: ready on {authority}");

    let models = json_body(&http::get(&authority, "/v1/models")?.body)?;
    let model = models["data"][0]["id"]
        .as_str()
        .with_context(|| format!("/v1/models listed no model: {models}"))?
        .to_owned();
    chat(&authority, &model, "Say hello from the image.")?;
    println!("check: `{model}` answered a chat completion");

    let uid = container.engine(&["exec", &container.name, "id", "-u"])?;
    if uid.trim() != "10001" {
        bail!("the gateway runs as uid {}, not 10001", uid.trim());
    }
    println!("check: runs as uid 10001");

    container.engine(&["kill", "--signal", "HUP", &container.name])?;
    container.wait_for_log("configuration reloaded", Duration::from_secs(10))?;
    println!("check: SIGHUP reloaded the configuration");

    container.engine(&["stop", "--time", "30", &container.name])?;
    let code = container.engine(&["inspect", "--format", "{{.State.ExitCode}}", &container.name])?;
    if code.trim() != "0" {
        bail!("exit code {} after SIGTERM; logs:\n{}", code.trim(), container.logs());
    }
    container.wait_for_log("stopped: spend and the request log are written", Duration::from_secs(5))?;
    println!("check: SIGTERM drained and exited 0");
    drop(container);

    if with_model {
        check_model(engine, tag)?;
    }
    Ok(())
}

/// The configuration [`check_model`] mounts: a semantic cache, which loads
/// the embedding model at start-up and embeds every prompt it looks up.
const SEMANTIC_CONFIG: &str = "\
server:
  host: 0.0.0.0
cache:
  enabled: true
  backend: memory
  semantic:
    mock-gpt:
      min_similarity: 0.8
model_list:
  - model_name: mock-gpt
    deployments:
      - provider: mock
        model: mock-gpt-1
";

/// Runs the image with a semantic cache and checks that the baked-in model
/// embeds: a paraphrase of a cached prompt is a semantic hit.
fn check_model(engine: &Path, tag: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let temp = tempfile::Builder::new()
        .prefix("switchyard-image-check-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let dir = temp.path();
    // Readable by the image's uid 10001.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    std::fs::write(dir.join("config.yaml"), SEMANTIC_CONFIG)?;
    std::fs::set_permissions(dir.join("config.yaml"), std::fs::Permissions::from_mode(0o644))?;
    // `Z`: relabelled for the container where SELinux is enforcing.
    let volume = format!("{}:/etc/switchyard/check:ro,Z", dir.display());
    let result = (|| {
        let (container, authority) = start_container(
            engine,
            tag,
            &["-v", &volume],
            &["--config", "/etc/switchyard/check/config.yaml"],
        )?;
        chat(&authority, "mock-gpt", "What is the capital of France?")?;
        let paraphrase = chat(&authority, "mock-gpt", "What's the capital city of France?")?;
        match paraphrase.header("x-switchyard-cache-similarity") {
            Some(similarity) => println!(
                "check: the embedding model loads; a paraphrase hit the semantic cache (similarity {similarity})"
            ),
            None => bail!(
                "a paraphrase missed the semantic cache (x-switchyard-cache: {}); logs:\n{}",
                paraphrase.header("x-switchyard-cache").unwrap_or("absent"),
                container.logs()
            ),
        }
        Ok(())
    })();
    drop(temp);
    result
}

/// The host's target triple, as rustc reports it.
fn host_triple() -> Result<String> {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("cannot run rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .context("rustc -vV printed no host triple")
}

/// Packs `binary` with the README, the default configuration and the
/// licence into `<out>/switchyard-<version>-<triple>.tar.gz`, and appends its
/// SHA-256 to `<out>/SHA256SUMS`. Returns the archive.
pub fn package(root: &Path, binary: &Path, triple: &str, out: &Path) -> Result<PathBuf> {
    let name = format!("switchyard-{VERSION}-{triple}");
    let staging = out.join(&name);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).with_context(|| format!("cannot clear {}", staging.display()))?;
    }
    std::fs::create_dir_all(staging.join("config")).with_context(|| format!("cannot create {}", staging.display()))?;
    std::fs::copy(binary, staging.join("switchyard")).with_context(|| format!("cannot copy {}", binary.display()))?;
    std::fs::copy(root.join("README.md"), staging.join("README.md")).context("cannot copy README.md")?;
    std::fs::copy(root.join("config/config.yaml"), staging.join("config/config.yaml"))
        .context("cannot copy config/config.yaml")?;
    // Apache-2.0 §4(a): every copy goes out with the licence.
    std::fs::copy(root.join("LICENSE"), staging.join("LICENSE")).context("cannot copy LICENSE")?;
    let archive = out.join(format!("{name}.tar.gz"));
    let mut tar = Command::new("tar");
    // The archive is named relative to `out`, where tar runs.
    tar.current_dir(out)
        .arg("-czf")
        .arg(format!("{name}.tar.gz"))
        .arg(&name);
    run_checked(&mut tar, "tar")?;
    std::fs::remove_dir_all(&staging).ok();
    let bytes = std::fs::read(&archive).with_context(|| format!("cannot read {}", archive.display()))?;
    let digest = hex(&Sha256::digest(&bytes));
    let sums = out.join("SHA256SUMS");
    let file_name = format!("{name}.tar.gz");
    let mut lines: Vec<String> = std::fs::read_to_string(&sums)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.ends_with(&format!("  {file_name}")))
        .map(str::to_owned)
        .collect();
    lines.push(format!("{digest}  {file_name}"));
    let mut f = std::fs::File::create(&sums).with_context(|| format!("cannot write {}", sums.display()))?;
    for line in lines {
        writeln!(f, "{line}")?;
    }
    Ok(archive)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Builds the release binary and packages it.
pub fn dist(args: &DistArgs) -> Result<()> {
    let root = workspace_root()?;
    let target = target_dir(&root)?;
    let out = args.out.clone().unwrap_or_else(|| target.join("dist"));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let binary = match &args.binary {
        Some(binary) => binary.clone(),
        None => {
            // The caller's relative target directory, made absolute: the
            // binary packaged below is the one built here.
            let mut build = clean_command(cargo_program());
            build.current_dir(&root).args([
                "build",
                "--release",
                "--locked",
                "-p",
                "switchyard-gateway",
                "--bin",
                "switchyard",
            ]);
            run_checked(&mut build, "release build")?;
            target.join("release/switchyard")
        }
    };
    let triple = match &args.target {
        // It names a file and a directory: letters, digits, `_`, `.` and `-`.
        Some(triple)
            if triple.is_empty()
                || triple.starts_with('.')
                || !triple
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) =>
        {
            bail!("--target {triple:?} is not a target triple")
        }
        Some(triple) => triple.clone(),
        None => host_triple()?,
    };
    let archive = package(&root, &binary, &triple, &out)?;
    println!("wrote {}", archive.display());
    println!("checksums in {}", out.join("SHA256SUMS").display());
    Ok(())
}
