//! `cargo xtask bench gateway`: gateway overhead against the mock upstream.
//!
//! Builds release binaries, starts `mock-upstream` and a `switchyard` gateway
//! that routes `bench-model` to it, and then loads both with `oha` for every
//! scenario and concurrency level, alternating which side goes first. It also
//! measures streaming time-to-first-byte with a raw TCP client and reports
//! the resident memory of both processes.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::http;
use crate::oha::{Load, LoadResult, Oha};
use crate::process::Service;
use crate::util::{self, clean_command, header, run_checked, service_command};

/// Public model name the gateway exposes for the benchmark.
const GATEWAY_MODEL: &str = "bench-model";
/// Model name the mock upstream is addressed with.
const UPSTREAM_MODEL: &str = "mock-model";
/// Requests per side and scenario used to warm both servers up.
const WARM_UP_REQUESTS: u32 = 300;
/// Sequential streaming requests per side for the time-to-first-byte figures.
const TTFB_REQUESTS: usize = 200;
/// How long a service may take to print its listening line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Options of `cargo xtask bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What to benchmark.
    #[command(subcommand)]
    pub target: BenchTarget,
}

/// Benchmark targets.
#[derive(Debug, Subcommand)]
pub enum BenchTarget {
    /// Gateway overhead versus calling the mock upstream directly.
    Gateway(GatewayBenchArgs),
    /// A learned router's decision on one core: embedding a 256-token prompt
    /// (uncached and cached) and the KNN and MLP predictions (criterion).
    Routing,
}

/// Options of `cargo xtask bench gateway`.
#[derive(Debug, Args)]
pub struct GatewayBenchArgs {
    /// Seconds of load per scenario, concurrency level and side.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub duration: u64,
    /// Comma-separated concurrency levels.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub concurrency: Vec<u32>,
    /// Also write the markdown report to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Hold each measured run at this many requests per second (open loop,
    /// below what the machine can serve) rather than sending as fast as the
    /// connections allow: latency then shows the work per request, not the
    /// queue of a saturated machine.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: Option<u32>,
    /// Use the release `switchyard` and `mock-upstream` binaries in this
    /// directory instead of building them (to measure on another machine).
    #[arg(long)]
    pub prebuilt: Option<PathBuf>,
}

/// Runs the selected benchmark.
pub fn run(args: &BenchArgs) -> Result<()> {
    match &args.target {
        BenchTarget::Gateway(gateway) => gateway_bench(gateway),
        BenchTarget::Routing => routing_bench(),
    }
}

/// The routing-decision budget the benchmark is compared with.
const ROUTING_BUDGET_MS: f64 = 2.0;

/// Runs `benches/routing_decision.rs` on one core and prints each median
/// beside the 2 ms budget.
fn routing_bench() -> Result<()> {
    let root = util::workspace_root()?;
    crate::models::fetch(&crate::models::FetchArgs { dir: None, cache: None })?;
    crate::models::distill_if_missing()?;
    header("criterion: benches/routing_decision.rs (RAYON_NUM_THREADS=1)");
    let mut command = clean_command(util::cargo_program());
    command
        .args(["bench", "-p", "switchyard-benches", "--bench", "routing_decision"])
        .current_dir(&root)
        .env("RAYON_NUM_THREADS", "1");
    // Criterion keeps the results of benchmarks since renamed or removed:
    // only those this run wrote are reported.
    let started = std::time::SystemTime::now();
    run_checked(&mut command, "cargo bench")?;
    let dir = util::target_dir(&root)?.join("criterion").join("learned routing");
    let mut rows = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        let fresh = fs::metadata(path.join("new").join("estimates.json"))
            .and_then(|m| m.modified())
            .is_ok_and(|at| at >= started);
        if !fresh {
            continue;
        }
        let (Ok(meta), Ok(estimates)) = (
            fs::read(path.join("new").join("benchmark.json")),
            fs::read(path.join("new").join("estimates.json")),
        ) else {
            continue;
        };
        let meta: serde_json::Value = serde_json::from_slice(&meta)?;
        let estimates: serde_json::Value = serde_json::from_slice(&estimates)?;
        let name = meta["function_id"].as_str().unwrap_or_default().to_owned();
        let median_ns = estimates["median"]["point_estimate"].as_f64().unwrap_or(f64::NAN);
        rows.push((name, median_ns / 1e6));
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    header("learned routing decision, one core");
    println!("{:<40} {:>12} {:>14}", "step", "median ms", "vs 2 ms budget");
    for (name, ms) in &rows {
        println!("{name:<40} {ms:>12.4} {:>13.2}x", ms / ROUTING_BUDGET_MS);
    }
    Ok(())
}

/// A request shape that is measured against both sides.
#[derive(Debug, Clone, Copy)]
struct Scenario {
    /// Label in the report.
    name: &'static str,
    /// Request path below the base URL.
    path: &'static str,
    /// Kind of request body.
    kind: ScenarioKind,
}

/// Body variants of the scenarios.
#[derive(Debug, Clone, Copy)]
enum ScenarioKind {
    /// Non-streaming chat completion.
    Chat,
    /// Streaming chat completion.
    ChatStream,
    /// Embeddings.
    Embeddings,
}

impl Scenario {
    /// JSON body addressed to `model`.
    fn body(self, model: &str) -> String {
        let messages = json!([{"role": "user", "content": "Say hello to the benchmark"}]);
        let value = match self.kind {
            ScenarioKind::Chat => json!({"model": model, "messages": messages}),
            // Usage asked for on both sides: the gateway asks the upstream
            // for it anyway (it charges by it), so the mock does the same
            // work for either.
            ScenarioKind::ChatStream => {
                json!({"model": model, "messages": messages, "stream": true, "stream_options": {"include_usage": true}})
            }
            ScenarioKind::Embeddings => {
                json!({"model": model, "input": "benchmark embedding input"})
            }
        };
        value.to_string()
    }
}

/// Streaming chat, also used for the time-to-first-byte measurement.
const CHAT_STREAM: Scenario = Scenario {
    name: "chat stream",
    path: "/v1/chat/completions",
    kind: ScenarioKind::ChatStream,
};

/// The scenarios, in report order.
const SCENARIOS: [Scenario; 3] = [
    Scenario {
        name: "chat",
        path: "/v1/chat/completions",
        kind: ScenarioKind::Chat,
    },
    CHAT_STREAM,
    Scenario {
        name: "embeddings",
        path: "/v1/embeddings",
        kind: ScenarioKind::Embeddings,
    },
];

/// One row of the report.
#[derive(Debug)]
struct Row {
    /// Scenario label.
    scenario: &'static str,
    /// Concurrency level.
    concurrency: u32,
    /// Results when calling the mock directly.
    direct: LoadResult,
    /// Results when calling through the gateway.
    gateway: LoadResult,
}

/// Streaming time-to-first-byte percentiles in milliseconds.
#[derive(Debug, Clone, Copy)]
struct Ttfb {
    /// Median.
    p50_ms: f64,
    /// 99th percentile.
    p99_ms: f64,
}

/// Gateway configuration routing `bench-model` to the mock upstream.
fn gateway_config(mock_url: &str) -> String {
    format!(
        "server:\n  host: 127.0.0.1\n  port: 4000\nmodel_list:\n  - model_name: {GATEWAY_MODEL}\n    deployments:\n      - provider: openai\n        model: {UPSTREAM_MODEL}\n        api_base: {mock_url}/v1\n        api_key: bench-key\n"
    )
}

/// Full benchmark flow; services are killed when their guards drop, also on error.
fn gateway_bench(args: &GatewayBenchArgs) -> Result<()> {
    ensure!(
        !args.concurrency.is_empty() && args.concurrency.iter().all(|c| *c > 0),
        "--concurrency needs one or more positive numbers"
    );
    let bin_dir = match &args.prebuilt {
        Some(dir) => dir.clone(),
        None => {
            let root = util::workspace_root()?;
            header("cargo build --release --bin switchyard --bin mock-upstream");
            let mut build = clean_command(util::cargo_program());
            build
                .args(["build", "--release", "--bin", "switchyard", "--bin", "mock-upstream"])
                .current_dir(&root);
            run_checked(&mut build, "release build")?;
            util::target_dir(&root)?.join("release")
        }
    };
    let gateway_bin = bin_dir.join("switchyard");
    let mock_bin = bin_dir.join("mock-upstream");
    for bin in [&gateway_bin, &mock_bin] {
        ensure!(bin.is_file(), "{} is missing", bin.display());
    }

    header("locating the oha load generator");
    let oha = Oha::locate_or_install()?;
    println!("using {}", oha.program().display());

    header("starting mock-upstream and switchyard");
    let mut mock = start_mock(&mock_bin)?;
    println!("mock-upstream at {}", mock.url());
    // A fresh directory of its own (not a predictable name to clear).
    let config_dir = tempfile::Builder::new()
        .prefix("switchyard-bench-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let config_path = config_dir.path().join("gateway.yaml");
    fs::write(&config_path, gateway_config(mock.url()))
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let mut gateway = start_gateway(&gateway_bin, &config_path)?;
    println!("switchyard at {}", gateway.url());

    sanity_check(&mock, &gateway)?;

    header(&format!(
        "warming up ({WARM_UP_REQUESTS} requests per scenario and side)"
    ));
    for scenario in SCENARIOS {
        for (service, model) in [(&mock, UPSTREAM_MODEL), (&gateway, GATEWAY_MODEL)] {
            let url = format!("{}{}", service.url(), scenario.path);
            let body = scenario.body(model);
            // At the highest concurrency measured: the gateway opens its
            // upstream connections now, not inside a measured run.
            let load = Load {
                url: &url,
                body: &body,
                concurrency: args.concurrency.iter().copied().max().unwrap_or(8).max(8),
                rate: None,
            };
            oha.warm_up(&load, WARM_UP_REQUESTS)?;
        }
    }

    let mut rows = Vec::new();
    let mut run_index = 0_usize;
    for scenario in SCENARIOS {
        for &concurrency in &args.concurrency {
            header(&format!(
                "{} at concurrency {concurrency} ({}s per side{})",
                scenario.name,
                args.duration,
                args.rate
                    .map(|r| format!(", held at {r} requests/s"))
                    .unwrap_or_default()
            ));
            let direct_url = format!("{}{}", mock.url(), scenario.path);
            let gateway_url = format!("{}{}", gateway.url(), scenario.path);
            let direct_body = scenario.body(UPSTREAM_MODEL);
            let gateway_body = scenario.body(GATEWAY_MODEL);
            let direct_load = Load {
                url: &direct_url,
                body: &direct_body,
                concurrency,
                rate: args.rate,
            };
            let gateway_load = Load {
                url: &gateway_url,
                body: &gateway_body,
                concurrency,
                rate: args.rate,
            };
            // Alternate which side runs first to spread thermal and cache effects.
            let (direct, through_gateway) = if run_index.is_multiple_of(2) {
                let direct = measure(&oha, &direct_load, args.duration, "direct")?;
                let through = measure(&oha, &gateway_load, args.duration, "gateway")?;
                (direct, through)
            } else {
                let through = measure(&oha, &gateway_load, args.duration, "gateway")?;
                let direct = measure(&oha, &direct_load, args.duration, "direct")?;
                (direct, through)
            };
            run_index += 1;
            mock.ensure_running()?;
            gateway.ensure_running()?;
            rows.push(Row {
                scenario: scenario.name,
                concurrency,
                direct,
                gateway: through_gateway,
            });
        }
    }

    header(&format!(
        "streaming time to first byte ({TTFB_REQUESTS} sequential requests per side)"
    ));
    let ttfb_direct = measure_ttfb(mock.authority(), UPSTREAM_MODEL)?;
    let ttfb_gateway = measure_ttfb(gateway.authority(), GATEWAY_MODEL)?;

    let gateway_rss = gateway.rss_mib()?;
    let mock_rss = mock.rss_mib()?;

    let report = render_report(&rows, args.rate, ttfb_direct, ttfb_gateway, gateway_rss, mock_rss)?;
    println!();
    println!("{report}");
    if let Some(out) = &args.out {
        if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        fs::write(out, &report).with_context(|| format!("cannot write {}", out.display()))?;
        println!("report written to {}", out.display());
    }
    Ok(())
}

/// Starts `mock-upstream` on a random loopback port.
fn start_mock(bin: &Path) -> Result<Service> {
    let mut command = service_command(bin);
    command.args(["--host", "127.0.0.1", "--port", "0"]);
    Service::start("mock-upstream", command, STARTUP_TIMEOUT)
}

/// Starts the gateway with `config` on a random loopback port.
fn start_gateway(bin: &Path, config: &Path) -> Result<Service> {
    let mut command = service_command(bin);
    command
        .arg("--config")
        .arg(config)
        .args(["--host", "127.0.0.1", "--port", "0"]);
    Service::start("switchyard", command, STARTUP_TIMEOUT)
}

/// Sends one request per scenario to each side and fails on a non-200
/// answer, so a misconfiguration is reported before minutes of load.
fn sanity_check(mock: &Service, gateway: &Service) -> Result<()> {
    for scenario in SCENARIOS {
        for (name, service, model) in [
            ("mock-upstream", mock, UPSTREAM_MODEL),
            ("switchyard", gateway, GATEWAY_MODEL),
        ] {
            let response = http::post_json(service.authority(), scenario.path, &scenario.body(model))
                .with_context(|| format!("{} request to {name}", scenario.name))?;
            if response.status != 200 {
                bail!(
                    "{} request to {name} ({}{}) returned HTTP {}: {}",
                    scenario.name,
                    service.url(),
                    scenario.path,
                    response.status,
                    response.body.trim()
                );
            }
        }
    }
    Ok(())
}

/// Runs one oha measurement and insists on at least one successful response.
fn measure(oha: &Oha, load: &Load<'_>, duration: u64, side: &str) -> Result<LoadResult> {
    let result = oha.run(load, duration)?;
    if result.ok_responses == 0 {
        bail!(
            "{side} run against {} produced no 2xx responses ({} non-2xx, {} errors)",
            load.url,
            result.bad_responses,
            result.errors
        );
    }
    println!(
        "  {side:<8} {:>10.0} rps  p50 {:>8.3} ms  p90 {:>8.3} ms  p99 {:>8.3} ms",
        result.rps, result.p50_ms, result.p90_ms, result.p99_ms
    );
    if result.bad_responses > 0 || result.errors > 0 {
        println!(
            "  warning: {side} had {} non-2xx responses and {} errors",
            result.bad_responses, result.errors
        );
    }
    Ok(result)
}

/// Measures streaming time-to-first-`data:` over sequential requests.
fn measure_ttfb(authority: &str, model: &str) -> Result<Ttfb> {
    let body = CHAT_STREAM.body(model);
    let mut samples = Vec::with_capacity(TTFB_REQUESTS);
    for _ in 0..TTFB_REQUESTS {
        samples.push(http::streaming_ttfb(authority, CHAT_STREAM.path, &body)?);
    }
    samples.sort_unstable();
    let millis = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(Ttfb {
        p50_ms: millis(http::percentile(&samples, 50.0)),
        p99_ms: millis(http::percentile(&samples, 99.0)),
    })
}

/// Renders the markdown report: the table, TTFB lines and memory usage.
fn render_report(
    rows: &[Row],
    rate: Option<u32>,
    ttfb_direct: Ttfb,
    ttfb_gateway: Ttfb,
    gateway_rss: f64,
    mock_rss: f64,
) -> Result<String> {
    let mut out = String::new();
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get);
    writeln!(
        out,
        "Measured on {cores} CPU cores, shared by the load generator, the mock upstream and the gateway.\n"
    )?;
    if let Some(rate) = rate {
        writeln!(
            out,
            "Each measured run held at {rate} requests/s (open loop); without `--rate`, as fast as the connections go.\n"
        )?;
    }
    writeln!(
        out,
        "| scenario | c | direct rps | gateway rps | direct p50 ms | gateway p50 ms | overhead p50 ms | direct p90 | gateway p90 | direct p99 | gateway p99 | overhead p99 ms | failed (direct / gateway) |"
    )?;
    writeln!(out, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")?;
    for row in rows {
        let (d, g) = (&row.direct, &row.gateway);
        writeln!(
            out,
            "| {} | {} | {:.0} | {:.0} | {:.3} | {:.3} | {:+.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:+.3} | {} / {} |",
            row.scenario,
            row.concurrency,
            d.rps,
            g.rps,
            d.p50_ms,
            g.p50_ms,
            g.p50_ms - d.p50_ms,
            d.p90_ms,
            g.p90_ms,
            d.p99_ms,
            g.p99_ms,
            g.p99_ms - d.p99_ms,
            d.bad_responses + d.errors,
            g.bad_responses + g.errors,
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "Streaming TTFB p50: direct {:.3} ms, gateway {:.3} ms, overhead {:+.3} ms",
        ttfb_direct.p50_ms,
        ttfb_gateway.p50_ms,
        ttfb_gateway.p50_ms - ttfb_direct.p50_ms
    )?;
    writeln!(
        out,
        "Streaming TTFB p99: direct {:.3} ms, gateway {:.3} ms, overhead {:+.3} ms",
        ttfb_direct.p99_ms,
        ttfb_gateway.p99_ms,
        ttfb_gateway.p99_ms - ttfb_direct.p99_ms
    )?;
    writeln!(
        out,
        "Gateway RSS: {gateway_rss:.1} MiB (mock-upstream RSS: {mock_rss:.1} MiB)"
    )?;
    Ok(out)
}
