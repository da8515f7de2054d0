//! The Switchyard gateway: configuration, the HTTP API and request dispatch.
//!
//! The `switchyard` binary is a thin shell over [`serve`]; everything here can
//! be driven in-process by tests.

pub mod admin;
pub mod alerts;
pub mod cache;
pub mod cache_config;
pub mod config;
mod deployment_paths;
mod dispatch;
mod end_users;
pub mod error;
pub mod extract;
mod labels;
pub mod learned;
pub mod litellm;
mod media;
pub mod messages;
mod metering;
mod observe;
pub mod passthrough;
pub mod policy_admin;
pub mod policy_config;
pub mod reload;
pub mod responses;
pub mod routes;
pub mod state;
pub mod stream;
pub mod telemetry_config;
mod users;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

pub use config::{Config, ConfigError, Overrides, Source};
pub use error::ApiError;
pub use state::AppState;

/// Validates `config` against `env` and builds the shared state.
pub fn build_state(config: &Config, env: &dyn config::EnvSource) -> Result<AppState, ConfigError> {
    build_state_with(config, env, None)
}

/// [`build_state`] reusing an embedder already loaded with the same
/// `embedder` settings (a reload that did not change them), rather than
/// reading the model again.
pub(crate) fn build_state_with(
    config: &Config,
    env: &dyn config::EnvSource,
    embedder: Option<std::sync::Arc<switchyard_routing::embed::Embedder>>,
) -> Result<AppState, ConfigError> {
    let overlay = config::Overlay {
        vars: &config.environment,
        under: env,
    };
    let env: &dyn config::EnvSource = &overlay;
    // Every section is checked before any problem is reported, so that one
    // run lists them all.
    let mut issues = Vec::new();
    let models = match config.validate(env) {
        Ok(models) => models,
        Err(ConfigError::Invalid(found)) => {
            issues.extend(found);
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    let names: Vec<String> = config
        .model_list
        .iter()
        .map(|m| m.model_name.trim().to_owned())
        .collect();
    let known = config.key_model_names();
    let policy = config.policy.validate(env, &known, &mut issues);
    let cache = config.cache.validate(env, &names, &mut issues);
    let telemetry = config.telemetry.validate(env, &mut issues);
    let pass_through = passthrough::validate(&config.pass_through, env, &mut issues);
    if !issues.is_empty() {
        return Err(ConfigError::Invalid(issues));
    }
    let mut state = AppState::build(
        config.server.clone(),
        &config.router_settings,
        (&config.embedder, embedder),
        &models,
        policy,
        cache.as_ref(),
        telemetry,
    )
    .map_err(ConfigError::Invalid)?;
    state.pass_through = std::sync::Arc::new(pass_through);
    Ok(state)
}

/// Binds the configured address.
pub async fn bind(state: &AppState) -> std::io::Result<TcpListener> {
    TcpListener::bind((state.server.host.as_str(), state.server.port)).await
}

/// Serves until `shutdown` resolves: then readiness reports `draining` for
/// `server.drain_delay_ms` while requests are still taken, the listener
/// closes, and in-flight requests (streams and background responses
/// included) get up to `server.shutdown_timeout_ms` to finish.
pub async fn serve(
    listener: TcpListener,
    live: Arc<reload::Live>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let server = live.state().server.clone();
    let drain = Duration::from_millis(server.shutdown_timeout_ms);
    let delay = Duration::from_millis(server.drain_delay_ms);
    let app = live.service();
    let draining = live.clone();
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let stop = async move {
        shutdown.await;
        draining.start_draining();
        tracing::info!(
            delay_ms = delay.as_millis() as u64,
            "shutting down: readiness reports draining, then no new connections"
        );
        tokio::time::sleep(delay).await;
    };
    let limits = ConnectionLimits {
        idle_timeout: Duration::from_millis(server.idle_timeout_ms),
        max_connections: server.max_connections,
    };
    let server = accept_loop(listener, app, limits, stop, signalled_tx);
    let server = tokio::spawn(server);
    tokio::pin!(server);
    // The server ends by itself once the signal came and no connection is
    // left (at once when none was open).
    let finished = tokio::select! {
        result = &mut server => Some(result),
        _ = signalled_rx => None,
    };
    let deadline = tokio::time::Instant::now() + drain;
    let served = match finished {
        Some(result) => Some(result),
        None => tokio::time::timeout_at(deadline, &mut server).await.ok(),
    };
    let drained = match served {
        Some(result) => {
            result.map_err(std::io::Error::other)?;
            // Background responses were answered at once, and work whose
            // client left has no connection: both go on after their
            // connections closed.
            let busy = || {
                let state = live.state();
                state.responses.jobs_running() || state.abandoned.load(std::sync::atomic::Ordering::Acquire) > 0
            };
            while busy() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            !busy()
        }
        None => false,
    };
    if !drained {
        tracing::warn!(
            timeout_ms = drain.as_millis() as u64,
            "in-flight requests did not finish before the drain timeout; cutting them"
        );
        // End the streams and background responses still running; their
        // trackers charge what was used and write the request log on tasks
        // of their own: let those run before the process exits.
        live.state().cut.send_replace(true);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(())
}

/// What one client connection may hold.
#[derive(Debug, Clone, Copy)]
struct ConnectionLimits {
    /// How long a connection may stay idle (an HTTP/1 request's headers
    /// must arrive within it too).
    idle_timeout: Duration,
    /// Connections served at once.
    max_connections: usize,
}

/// Accepts connections until `stop` resolves, at most
/// `limits.max_connections` at a time, each served by hyper (HTTP/1.1 or
/// HTTP/2). A connection that starts no request within `limits.idle_timeout`
/// is dropped; an idle HTTP/1 one is closed by hyper's header timer, an
/// HTTP/2 one that starts no stream for that long is told to go away.
/// Then it stops accepting, tells `signalled`, and waits for the open
/// connections to finish their requests.
async fn accept_loop(
    listener: TcpListener,
    app: axum::Router,
    limits: ConnectionLimits,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
    signalled: tokio::sync::oneshot::Sender<()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use tower::ServiceExt as _;

    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    // Validated to fit: every permit back means every connection has ended.
    let slots = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let permits = Arc::new(tokio::sync::Semaphore::new(slots as usize));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(60)));
    tokio::pin!(stop);
    loop {
        // A connection waits in the listen backlog while every slot is taken.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut stop => break,
        };
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        // Streams are many small writes: send each event at once rather than
        // letting Nagle's algorithm hold it for the client's delayed ACK.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        // A client whose host vanished (no FIN, no RST) is found out by the
        // kernel's probes, so a stream to it does not run on unseen.
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(60))
            .with_interval(Duration::from_secs(10));
        if let Err(e) = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive) {
            tracing::debug!(error = %e, "cannot set TCP keepalive");
        }
        let started = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let http2 = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (counted, seen_http2) = (started.clone(), http2.clone());
        let service = hyper_util::service::TowerToHyperService::new(app.clone().map_request(
            move |request: axum::http::Request<hyper::body::Incoming>| {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if request.version() == axum::http::Version::HTTP_2 {
                    seen_http2.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                request
            },
        ));
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(tcp), service)
            .into_owned();
        let mut closing = closing.clone();
        let idle = limits.idle_timeout;
        tokio::spawn(async move {
            tokio::pin!(connection);
            let mut check = tokio::time::interval_at(tokio::time::Instant::now() + idle, idle);
            let mut seen = 0;
            let mut ending = false;
            // A connection told to close that has run no request is dropped
            // after this, since a graceful close waits for its peer.
            let give_up = tokio::time::sleep(Duration::MAX);
            tokio::pin!(give_up);
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(e) = result {
                            tracing::trace!(error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    () = &mut give_up => break,
                    _ = closing.changed(), if !ending => {
                        connection.as_mut().graceful_shutdown();
                        if started.load(std::sync::atomic::Ordering::Relaxed) == 0 {
                            give_up.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(1));
                        }
                        ending = true;
                    }
                    _ = check.tick(), if !ending => {
                        let now = started.load(std::sync::atomic::Ordering::Relaxed);
                        if now == 0 {
                            // Never a request (a client that sends nothing,
                            // or an HTTP/2 preface alone): told to go away,
                            // then dropped.
                            connection.as_mut().graceful_shutdown();
                            give_up.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(1));
                            ending = true;
                        } else if now == seen && http2.load(std::sync::atomic::Ordering::Relaxed) {
                            // An HTTP/2 connection that started no stream
                            // since the last look: GOAWAY, and it closes once
                            // its open streams end. (An idle HTTP/1
                            // connection is closed by hyper's header timer,
                            // counted from the end of its last response.)
                            connection.as_mut().graceful_shutdown();
                            ending = true;
                        }
                        seen = now;
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = signalled.send(());
    let _ = closing_tx.send(true);
    // Every slot back: every connection has finished.
    let _ = permits.acquire_many(slots).await;
}

/// After a failed `accept`: a connection the peer already dropped is
/// nothing; anything else (out of file descriptors) is logged and waited
/// out briefly rather than retried in a busy loop.
async fn accept_failed(error: &std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    ) {
        return;
    }
    tracing::warn!(error = %error, "cannot accept a connection");
    tokio::time::sleep(Duration::from_millis(100)).await;
}
