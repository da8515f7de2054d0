//! `cargo xtask ci`: the full CI pipeline, failing fast on the first error.
//!
//! Steps, in order: `cargo fmt --check`, `cargo clippy -D warnings`,
//! `cargo build --workspace --bins`, `cargo xtask models fetch` and
//! `distill` (from the model cache after the first run), the Python
//! test environment (`tests/python/requirements.txt`: client SDKs, pytest and
//! `moto_server`, which the S3 tests start), `cargo test --workspace`, and the
//! Python OpenAI-SDK client tests in `tests/python` run against the freshly
//! built `switchyard` and `mock-upstream` binaries.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::util::{self, clean_command, header, run_checked};

/// Options of `cargo xtask ci`.
#[derive(Debug, Args)]
pub struct CiArgs {
    /// Skip the Python client tests.
    #[arg(long)]
    pub skip_python: bool,
    /// Skip `cargo fmt --check` and `cargo clippy`.
    #[arg(long)]
    pub skip_lint: bool,
}

/// One step of the pipeline.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// `cargo fmt --all -- --check`.
    Fmt,
    /// `cargo clippy --workspace --all-targets -- -D warnings`.
    Clippy,
    /// `cargo build --workspace --bins`.
    Build,
    /// `cargo xtask models fetch` and `distill`: the embedding models the tests use.
    Models,
    /// The Python virtual environment with the test tools.
    PythonEnv,
    /// `cargo test --workspace`.
    Test,
    /// The Python OpenAI-SDK client tests.
    Python,
}

impl Step {
    /// Human-readable description used in the step header.
    fn title(self) -> &'static str {
        match self {
            Self::Fmt => "cargo fmt --all -- --check",
            Self::Clippy => "cargo clippy --workspace --all-targets -- -D warnings",
            Self::Build => "cargo build --workspace --bins",
            Self::Models => "fetch the embedding model and distil its static form (cargo xtask models fetch, distill)",
            Self::PythonEnv => "python test environment (tests/python/requirements.txt)",
            Self::Test => "cargo test --workspace",
            Self::Python => "python client tests (pytest -q tests/python)",
        }
    }
}

/// Runs the CI pipeline.
pub fn run(args: &CiArgs) -> Result<()> {
    let root = util::workspace_root()?;
    let target = util::target_dir(&root)?;

    let mut steps = Vec::new();
    if !args.skip_lint {
        steps.extend([Step::Fmt, Step::Clippy]);
    }
    steps.extend([Step::Build, Step::Models, Step::PythonEnv, Step::Test]);
    if !args.skip_python {
        steps.push(Step::Python);
    }

    let total = steps.len();
    for (index, step) in steps.iter().enumerate() {
        header(&format!("[{}/{total}] {}", index + 1, step.title()));
        run_step(*step, &root, &target)
            .with_context(|| format!("CI step {}/{total} failed: {}", index + 1, step.title()))?;
    }

    header(&format!("CI passed ({total} steps)"));
    Ok(())
}

/// Executes a single pipeline step.
fn run_step(step: Step, root: &Path, target: &Path) -> Result<()> {
    match step {
        Step::Fmt => cargo(root, &["fmt", "--all", "--", "--check"], "formatting check"),
        Step::Clippy => cargo(
            root,
            &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"],
            "clippy",
        ),
        Step::Build => cargo(root, &["build", "--workspace", "--bins"], "build"),
        Step::Models => {
            crate::models::fetch(&crate::models::FetchArgs { dir: None, cache: None })?;
            crate::models::distill_if_missing()
        }
        Step::PythonEnv => ensure_venv(root, target).map(drop),
        Step::Test => {
            let moto = target.join("py-venv").join("bin").join("moto_server");
            let mut command = clean_command(util::cargo_program());
            command
                .args(["test", "--workspace"])
                .current_dir(root)
                .env("MOTO_SERVER_BIN", moto);
            run_checked(&mut command, "cargo test")
        }
        Step::Python => python_tests(root, target),
    }
}

/// Runs `cargo <args>` in the workspace root.
fn cargo(root: &Path, args: &[&str], what: &str) -> Result<()> {
    let mut command = clean_command(util::cargo_program());
    command.args(args).current_dir(root);
    run_checked(&mut command, what)
}

/// Ensures the Python virtual environment exists and runs pytest in it.
fn python_tests(root: &Path, target: &Path) -> Result<()> {
    let gateway_bin = target.join("debug").join("switchyard");
    let mock_bin = target.join("debug").join("mock-upstream");
    for (name, path) in [("switchyard", &gateway_bin), ("mock-upstream", &mock_bin)] {
        if !util::is_executable(path) {
            bail!(
                "the `{name}` binary was not found at {} (did `cargo build --workspace --bins` produce it?)",
                path.display()
            );
        }
    }

    let python = ensure_venv(root, target)?;
    let mut command = clean_command(&python);
    command
        .args(["-m", "pytest", "-q", "tests/python"])
        .current_dir(root)
        .env("GATEWAY_BIN", &gateway_bin)
        .env("MOCK_UPSTREAM_BIN", &mock_bin)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    run_checked(&mut command, "python client tests")
}

/// Creates `<target>/py-venv` when missing and (re)installs
/// `tests/python/requirements.txt` whenever its hash differs from the stamp
/// recorded by the last successful install. Returns the venv's interpreter.
fn ensure_venv(root: &Path, target: &Path) -> Result<PathBuf> {
    let venv = target.join("py-venv");
    let python = venv.join("bin").join("python");
    let requirements = root.join("tests").join("python").join("requirements.txt");
    let stamp = venv.join(".requirements.fnv1a");

    let contents = fs::read(&requirements).with_context(|| format!("cannot read {}", requirements.display()))?;
    let wanted = util::fnv1a_hex(&contents);

    if !util::is_executable(&python) {
        if venv.exists() {
            println!("removing incomplete virtual environment at {}", venv.display());
            fs::remove_dir_all(&venv).with_context(|| format!("cannot remove {}", venv.display()))?;
        }
        fs::create_dir_all(target).with_context(|| format!("cannot create {}", target.display()))?;
        println!("creating virtual environment at {}", venv.display());
        let mut command = clean_command("python3");
        command.arg("-m").arg("venv").arg(&venv);
        run_checked(
            &mut command,
            "creating the Python virtual environment (is python3-venv installed?)",
        )?;
    }

    let installed = fs::read_to_string(&stamp).unwrap_or_default();
    if installed.trim() == wanted {
        println!("python requirements up to date ({})", venv.display());
        return Ok(python);
    }

    println!("installing {}", requirements.display());
    let mut command = clean_command(&python);
    command
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check", "-r"])
        .arg(&requirements)
        .current_dir(root);
    run_checked(&mut command, "installing Python test requirements")?;
    fs::write(&stamp, format!("{wanted}\n")).with_context(|| format!("cannot write {}", stamp.display()))?;
    Ok(python)
}
