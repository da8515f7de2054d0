#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support crate"
)]
//! Standalone mock upstream (OpenAI, Anthropic and Bedrock protocols) for
//! benchmarks and Python tests.
//!
//! Prints `mock-upstream listening on http://HOST:PORT` once ready, then
//! serves until killed or interrupted.

use std::io::Write as _;
use std::net::SocketAddr;

use clap::Parser;
use switchyard_testkit::MockUpstream;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(name = "mock-upstream", about = "Mock OpenAI, Anthropic and Bedrock upstream server")]
struct Cli {
    /// Host or IP address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to bind (0 picks a free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    let addr = resolve(&cli.host, cli.port).await?;
    let mock = MockUpstream::start_on(addr).await?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "mock-upstream listening on http://{}", mock.addr())?;
        stdout.flush()?;
    }
    tokio::select! {
        () = mock.serve_forever() => {}
        () = shutdown_signal() => {}
    }
    Ok(())
}

async fn resolve(host: &str, port: u16) -> std::io::Result<SocketAddr> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse() {
        return Ok(SocketAddr::new(ip, port));
    }
    tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("cannot resolve host {host}")))
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
