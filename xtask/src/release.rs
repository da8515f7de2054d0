//! `cargo xtask image` and `cargo xtask dist`: the container image and
//! release archives.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use sha2::{Digest, Sha256};

use crate::util::{cargo_program, display_command, find_on_path, run_checked, target_dir, workspace_root};

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
    /// The container engine (default: `docker`, else `podman`, from PATH).
    #[arg(long)]
    pub engine: Option<PathBuf>,
    /// Print the build command instead of running it.
    #[arg(long)]
    pub print: bool,
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
}

/// The container engine to build with.
fn engine(args: &ImageArgs) -> Result<PathBuf> {
    if let Some(engine) = &args.engine {
        return Ok(engine.clone());
    }
    find_on_path("docker")
        .or_else(|| find_on_path("podman"))
        .with_context(|| {
            "no container engine found: neither `docker` nor `podman` is on PATH. Install one, or build the \
         image elsewhere with `docker build -f deploy/docker/Dockerfile .` from the repository root"
        })
}

/// Builds the image from `deploy/docker/Dockerfile`.
pub fn image(args: &ImageArgs) -> Result<()> {
    let root = workspace_root()?;
    if args.with_model && !root.join("models/all-MiniLM-L6-v2/model.safetensors").exists() {
        bail!("--with-model needs the model in models/all-MiniLM-L6-v2: run `cargo xtask models fetch` first");
    }
    let engine = match engine(args) {
        Ok(engine) => engine,
        Err(e) if args.print => {
            println!("({e})");
            PathBuf::from("docker")
        }
        Err(e) => return Err(e),
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
    Ok(())
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
    if root.join("LICENSE").exists() {
        std::fs::copy(root.join("LICENSE"), staging.join("LICENSE")).context("cannot copy LICENSE")?;
    }
    let archive = out.join(format!("{name}.tar.gz"));
    let mut tar = Command::new("tar");
    tar.current_dir(out).arg("-czf").arg(&archive).arg(&name);
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
            let mut build = Command::new(cargo_program());
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
    let archive = package(&root, &binary, &host_triple()?, &out)?;
    println!("wrote {}", archive.display());
    println!("checksums in {}", out.join("SHA256SUMS").display());
    Ok(())
}
