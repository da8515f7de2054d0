//! Developer automation for the Switchyard workspace.
//!
//! Invoked through the cargo alias defined in `.cargo/config.toml`:
//!
//! - `cargo xtask ci` runs formatting, lints, build, the Rust test suite and
//!   the Python OpenAI-SDK client tests, failing fast on the first error.
//! - `cargo xtask models fetch` puts the embedding model in `models/`.
//! - `cargo xtask train` / `cargo xtask eval` train and evaluate learned routers.
//! - `cargo xtask image` / `cargo xtask dist` build the container image and
//!   release archives with checksums.
//! - `cargo xtask export-traces` turns the gateway's request log and feedback
//!   into routing data for `train`.
//! - `cargo xtask bench gateway` measures the gateway's overhead against the
//!   mock upstream with the `oha` load generator.
#![allow(
    clippy::print_stdout,
    reason = "xtask is a command-line tool whose step headers and reports belong on stdout"
)]

mod bench;
mod ci;
mod codegen;
mod http;
mod models;
mod oha;
mod plot;
mod process;
mod release;
mod router;
mod traces;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Command-line interface of `cargo xtask`.
#[derive(Debug, Parser)]
#[command(name = "xtask", about = "Switchyard developer tasks", version)]
struct Cli {
    /// The task to run.
    #[command(subcommand)]
    task: Task,
}

/// Tasks understood by `cargo xtask`.
#[derive(Debug, Subcommand)]
enum Task {
    /// Run the full CI pipeline: fmt, clippy, build, cargo test, Python client tests.
    Ci(ci::CiArgs),
    /// Run benchmarks.
    Bench(bench::BenchArgs),
    /// Fetch model files (`cargo xtask models fetch`).
    Models(models::ModelsArgs),
    /// Train a learned router (KNN or MLP) from routing data.
    Train(router::TrainArgs),
    /// Evaluate a learned router on routing data: quality–cost sweep, AIQ.
    Eval(router::EvalArgs),
    /// Turn the gateway's request log and feedback into routing data for `train`.
    ExportTraces(traces::ExportArgs),
    /// Write docs/configuration.md from the configuration types (`--check`: fail if stale).
    Codegen(codegen::CodegenArgs),
    /// Build the container image (deploy/docker/Dockerfile) with docker or podman.
    Image(release::ImageArgs),
    /// Build release binaries and pack them with SHA-256 checksums.
    Dist(release::DistArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Ci(args) => ci::run(&args),
        Task::Bench(args) => bench::run(&args),
        Task::Models(args) => models::run(&args),
        Task::Train(args) => router::train(&args),
        Task::Eval(args) => router::eval(&args),
        Task::ExportTraces(args) => traces::run(&args),
        Task::Codegen(args) => codegen::run(&args),
        Task::Image(args) => release::image(&args),
        Task::Dist(args) => release::dist(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
