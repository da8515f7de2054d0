//! `switchyard`: the gateway binary.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::time::Duration;
use switchyard_gateway::Overrides;
use switchyard_gateway::config::{self, ProcessEnv};
use switchyard_gateway::reload::{self, Live, Origin};

/// mimalloc: faster small allocations under concurrency than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Switchyard, an LLM gateway speaking the OpenAI API.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about)]
struct Cli {
    /// Configuration file (YAML), or `s3://bucket/key`; watched for changes.
    /// Without it the embedded default is used.
    #[arg(long, short, env = "SWITCHYARD_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Address to listen on (overrides `server.host` and `SWITCHYARD_HOST`).
    #[arg(long)]
    host: Option<String>,
    /// Port to listen on, 0 for any free port (overrides `server.port` and `SWITCHYARD_PORT`).
    #[arg(long)]
    port: Option<u16>,
    /// S3 endpoint for an `s3://bucket/key` configuration (MinIO, LocalStack, a VPC endpoint).
    #[arg(long, env = "SWITCHYARD_S3_ENDPOINT_URL", global = true)]
    s3_endpoint_url: Option<String>,
    /// Path-style S3 addressing, which most S3-compatible stores need (from
    /// the environment: `1`, `true`, `yes`…; `0`, `false`, `no` or empty
    /// for off).
    #[arg(
        long,
        env = "SWITCHYARD_S3_FORCE_PATH_STYLE",
        global = true,
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    s3_force_path_style: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a configuration file without serving.
    CheckConfig {
        /// The file to check (defaults to `--config`, else the embedded default).
        path: Option<PathBuf>,
        /// A LiteLLM proxy `config.yaml`: report what each key maps to.
        #[arg(long, value_name = "FILE", conflicts_with = "path")]
        litellm: Option<PathBuf>,
    },
}

/// Prints how a LiteLLM configuration maps onto Switchyard's; `false` when
/// the file is in Switchyard's own format (nothing to report).
fn litellm_report(path: &PathBuf) -> anyhow::Result<Option<Vec<String>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let doc: serde_json::Value =
        figment::Figment::from(<figment::providers::YamlExtended as figment::providers::Format>::string(&text))
            .extract()
            .with_context(|| format!("{} is not valid YAML", path.display()))?;
    let mut out = std::io::stdout().lock();
    if !switchyard_gateway::litellm::is_litellm(&doc) {
        writeln!(
            out,
            "{} is not a LiteLLM configuration (no litellm_params, litellm_settings or general_settings); checking it as Switchyard's own",
            path.display()
        )?;
        return Ok(None);
    }
    let printed = match switchyard_gateway::litellm::translate(&doc) {
        Ok(t) => {
            writeln!(out, "LiteLLM keys and what they became:")?;
            for (from, to) in &t.mapped {
                writeln!(out, "  {from} -> {to}")?;
            }
            if !t.warnings.is_empty() {
                writeln!(out, "ignored (no effect on routing, limits or spend):")?;
                for w in &t.warnings {
                    writeln!(out, "  warning: {w}")?;
                }
            }
            t.warnings
        }
        Err(issues) => {
            writeln!(out, "not supported (start-up would fail):")?;
            for i in &issues {
                writeln!(out, "  error: {i}")?;
            }
            anyhow::bail!("{} cannot be served as it is", path.display());
        }
    };
    Ok(Some(printed))
}

fn check_config(
    runtime: &tokio::runtime::Runtime,
    path: Option<PathBuf>,
    s3: &config::S3Entry,
    printed: &[String],
) -> anyhow::Result<()> {
    // Read as the server would: a file, or an `s3://` object.
    let config = runtime.block_on(async {
        let origin = Origin::from_arg(path.as_ref(), s3).await?;
        let fetched = origin.fetch().await?;
        anyhow::Ok(reload::parse(&fetched, &Overrides::default())?)
    })?;
    let mut state = switchyard_gateway::build_state(&config, &ProcessEnv)?;
    // Learned routers are loaded and checked against the configuration as
    // start-up would, so a missing or mismatched artifact fails here too.
    runtime
        .block_on(state.start_learned())
        .context("a learned router cannot be loaded")?;
    let mut out = std::io::stdout().lock();
    // Notices the LiteLLM report already printed are not repeated; the
    // others (a deployment with no price) are the configuration's own.
    for notice in config.notices.iter().filter(|n| !printed.contains(n)) {
        writeln!(out, "warning: {notice}")?;
    }
    // Where the server writes: a warning, not an error, since the check
    // may run as another user or on another host than the server.
    let mut written = Vec::new();
    if let Some(dir) = &config.policy.data_dir {
        written.push(("policy.data_dir", dir.clone(), None));
    }
    if let Some(log) = config.telemetry.request_log.as_ref().filter(|l| l.redis.is_none()) {
        let dir = log.path.parent().filter(|p| !p.as_os_str().is_empty());
        let dir = dir.map_or_else(|| PathBuf::from("."), std::path::Path::to_path_buf);
        written.push(("telemetry.request_log.path", dir, Some(log.path.clone())));
    }
    for (field, dir, file) in written {
        if let Err(why) = writable(&dir, file.as_deref()) {
            writeln!(
                out,
                "warning: {field}: {why}, where the server writes (checked as this user, on this host)"
            )?;
        }
    }
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

/// Whether this process could write in `dir` (made if missing, as the
/// server would) and append to `file` if it exists; the reason if not.
/// Leaves nothing behind.
fn writable(dir: &std::path::Path, file: Option<&std::path::Path>) -> Result<(), String> {
    // The closest part of the path that exists: the server creates the rest.
    let mut existing = dir;
    while !existing.exists() {
        match existing.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => existing = parent,
            _ => {
                existing = std::path::Path::new(".");
                break;
            }
        }
    }
    if !existing.is_dir() {
        return Err(format!("{} is not a directory", existing.display()));
    }
    // A name of its own (a container's process id is the same at every
    // run); one left by a check that was killed still says it is writable.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let probe = existing.join(format!(".switchyard-check-{}-{nanos}", std::process::id()));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("{} cannot be written: {e}", existing.display())),
    }
    if let Some(file) = file.filter(|f| f.exists()) {
        std::fs::OpenOptions::new()
            .append(true)
            .open(file)
            .map_err(|e| format!("{} cannot be appended to: {e}", file.display()))?;
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
    tracing::info!("shutdown signal received");
}

/// Without a master key the gateway is open: a request with no key, or an
/// unknown one, is served without limits. Virtual keys stored by an earlier
/// run (in `data_dir` or Redis) would then limit nobody who leaves them out,
/// so a gateway that holds some does not start without its master key (a
/// missing secret after a restart, say). A Redis that cannot be read now is
/// not waited for.
async fn refuse_open_with_stored_keys(state: &switchyard_gateway::AppState) -> anyhow::Result<()> {
    if state.policy.auth_required() {
        return Ok(());
    }
    // Counted, not read: a record this version cannot read is a key too.
    let counted = tokio::time::timeout(Duration::from_secs(5), state.policy.key_count()).await;
    if let Ok(Ok(keys)) = counted
        && keys > 0
    {
        anyhow::bail!(
            "policy.master_key: {keys} virtual key(s) are stored but no master key is set; without one every client \
             route would be open and those keys' limits and budgets could be skipped by leaving the key out \
             (set policy.master_key or SWITCHYARD_MASTER_KEY)"
        );
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // Listened for from the start: a `SIGHUP` during a slow start (an
    // artifact download) would otherwise stop the process; it reloads once
    // the gateway is up.
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let overrides = Overrides {
        host: cli.host,
        port: cli.port,
    };
    let s3 = config::S3Entry {
        endpoint_url: cli.s3_endpoint_url,
        region: None,
        force_path_style: cli.s3_force_path_style,
    };
    let origin = Origin::from_arg(cli.config.as_ref(), &s3).await?;
    let fetched = origin.fetch().await?;
    let config = reload::parse(&fetched, &overrides)?;
    let mut state = switchyard_gateway::build_state(&config, &ProcessEnv)?;
    let mut telemetry = switchyard_telemetry::init_tracing(&state.telemetry.tracing)?;
    if telemetry.exporting() {
        tracing::info!("exporting spans over OTLP");
    }
    for notice in &config.notices {
        tracing::warn!("configuration: {notice}");
    }
    state.start_telemetry().await?;
    let request_log = state.request_log.clone();
    state.start_learned().await?;
    state.start_policy().await?;
    state.start_alerts();
    refuse_open_with_stored_keys(&state).await?;
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
    if state.telemetry.metrics && state.telemetry.metrics_require_auth && !state.policy.has_master_key() {
        tracing::warn!(
            "telemetry.metrics_require_auth is set but no master key is: /metrics answers 403 to everyone \
             (set policy.master_key or SWITCHYARD_MASTER_KEY)"
        );
    }
    if !state.policy.auth_required() {
        let reach = if addr.ip().is_loopback() {
            "this host"
        } else {
            "the network"
        };
        tracing::warn!(
            "no master key and no virtual keys are configured: every client route is open to anyone on {reach} \
             (set policy.master_key or SWITCHYARD_MASTER_KEY)"
        );
    }
    let poll = Duration::from_millis(state.server.config_poll_ms);
    let live = Live::new(
        origin,
        overrides,
        Box::new(ProcessEnv),
        config,
        fetched.fingerprint,
        state,
    );
    live.watch(poll);
    #[cfg(unix)]
    live.reload_on_sighup(hup);
    switchyard_gateway::serve(listener, live.clone(), shutdown_signal()).await?;
    // One deadline for what is left to write, inside the 10 s the
    // deployment files give after the drain: spend first (requests a
    // client left write their records as they end, before the policy's
    // flush returns), then the request log, then spans, each given at
    // least a second. What is not written by then stays queued (and, with
    // `policy.data_dir`, on disk for the next start).
    let deadline = tokio::time::Instant::now() + FINAL_FLUSH_TIMEOUT;
    // Each step ends by its own deadline, and leaves the steps after it a
    // second each: the three together stay within `FINAL_FLUSH_TIMEOUT`.
    let until = |after: u32| (deadline - SPANS_AT_LEAST * after).max(tokio::time::Instant::now() + SPANS_AT_LEAST);
    let policy = live.state().policy.clone();
    let spend_written = tokio::time::timeout_at(deadline - SPANS_AT_LEAST * 2, policy.flush()).await;
    let log_written = match &request_log {
        Some(log) => tokio::time::timeout_at(until(1), log.flush()).await.is_ok(),
        None => true,
    };
    if spend_written.is_err() {
        let queued = policy.redis_status().map_or(0, |(_, queued)| queued);
        tracing::warn!(queued, "stopping before all queued spend reached Redis");
    }
    if !log_written {
        tracing::warn!("stopping before the request log was fully written");
    }
    if spend_written.is_ok() && log_written {
        tracing::info!("stopped: spend and the request log are written");
    } else {
        tracing::warn!("stopped with writes left undone (see above)");
    }
    if tokio::time::timeout_at(until(0), tokio::task::spawn_blocking(move || telemetry.shutdown()))
        .await
        .is_err()
    {
        tracing::warn!("stopping before every span was exported");
    }
    Ok(())
}

/// The longest the shutdown waits, after the drain, for spend, the request
/// log and spans to be written.
const FINAL_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(8);

/// The least time the request log and spans are each given at the end.
const SPANS_AT_LEAST: std::time::Duration = std::time::Duration::from_secs(1);

fn main() -> std::process::ExitCode {
    // The error and its causes on one line: a configuration mistake is not
    // a crash, so no backtrace even where `RUST_BACKTRACE` is set.
    match start() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn start() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // TLS to Redis (`rediss://`) builds its rustls configuration from the
    // process's default provider, which must be chosen when more than one
    // is compiled in. Fails only when one is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if let Some(Command::CheckConfig { path, litellm }) = cli.command {
        // Inside the runtime: clients (Redis) are made, not connected.
        let _entered = runtime.enter();
        let s3 = config::S3Entry {
            endpoint_url: cli.s3_endpoint_url,
            region: None,
            force_path_style: cli.s3_force_path_style,
        };
        if let Some(file) = litellm {
            let printed = litellm_report(&file)?.unwrap_or_default();
            return check_config(&runtime, Some(file), &s3, &printed);
        }
        return check_config(&runtime, path.or(cli.config), &s3, &[]);
    }
    let result = runtime.block_on(run(cli));
    // A span export still blocked past its time is not waited for.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    result
}
