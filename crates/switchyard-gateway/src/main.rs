//! `switchyard`: the gateway binary.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use switchyard_gateway::config::{self, ProcessEnv};
use switchyard_gateway::{Overrides, Source};

/// mimalloc: faster small allocations under concurrency than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Switchyard, an LLM gateway speaking the OpenAI API.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about)]
struct Cli {
    /// Configuration file (YAML). Without it the embedded default is used.
    #[arg(long, short, env = "SWITCHYARD_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Address to listen on (overrides `server.host` and `SWITCHYARD_HOST`).
    #[arg(long)]
    host: Option<String>,
    /// Port to listen on, 0 for any free port (overrides `server.port` and `SWITCHYARD_PORT`).
    #[arg(long)]
    port: Option<u16>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a configuration file without serving.
    CheckConfig {
        /// The file to check (defaults to `--config`, else the embedded default).
        path: Option<PathBuf>,
    },
}

fn source(path: Option<&PathBuf>) -> Source<'_> {
    path.map_or(Source::Embedded, |p| Source::File(p))
}

fn check_config(path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = config::load(source(path.as_ref()), &Overrides::default())?;
    let state = switchyard_gateway::build_state(&config, &ProcessEnv)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "configuration is valid: {} models, {} deployments",
        state.registry.model_names().count(),
        state.registry.deployment_count()
    )?;
    for name in state.registry.model_names() {
        let group = state.registry.group(name)?;
        let names: Vec<String> = group
            .deployments()
            .iter()
            .map(|d| format!("{} ({} {})", d.name, d.provider, d.model))
            .collect();
        writeln!(out, "  {name}: {}", names.join(", "))?;
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: no new connections, draining in-flight requests");
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let overrides = Overrides {
        host: cli.host,
        port: cli.port,
    };
    let config = config::load(source(cli.config.as_ref()), &overrides)?;
    let mut state = switchyard_gateway::build_state(&config, &ProcessEnv)?;
    let mut telemetry = switchyard_telemetry::init_tracing(&state.telemetry.tracing)?;
    if telemetry.exporting() {
        tracing::info!("exporting spans over OTLP");
    }
    state.start_telemetry().await?;
    let request_log = state.request_log.clone();
    state.start_learned().await?;
    state.start_policy().await?;
    let listener = switchyard_gateway::bind(&state)
        .await
        .with_context(|| format!("cannot listen on {}:{}", state.server.host, state.server.port))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        models = state.registry.model_names().count(),
        learned_routers = state.learned.len(),
        deployments = state.registry.deployment_count(),
        "listening on http://{addr}"
    );
    switchyard_gateway::serve(listener, state, shutdown_signal()).await?;
    if let Some(log) = request_log {
        log.flush().await;
    }
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::CheckConfig { path }) = cli.command {
        return check_config(path.or(cli.config));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(cli))
}
