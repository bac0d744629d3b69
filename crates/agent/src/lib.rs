//! evershell-agent: the service that runs inside every workspace pod (`evershell agent`). It answers health checks
//! and serves the live files of `/workspace` over HTTP on a Unix socket that the control plane reaches through the
//! pod directory.
//!
//! It also runs the workspace's agent loop (`task`): tasks delivered by the control plane over the routes of
//! `evershell_core::agent_wire`, model calls over Anthropic Messages or OpenAI Chat Completions (streamed, through the
//! egress proxy, which holds the key), one `bash` tool, a session log that survives in the workspace.
//!
//! Routes: `GET /healthz`, `GET /v1/info`, `GET /v1/files`, `GET|PUT /v1/files/{*path}`, `POST /v1/exec`,
//! `POST /v1/tasks`, `GET /v1/tasks/{id}`, `POST /v1/tasks/{id}/cancel`, `GET /v1/events`, `GET /v1/session`. Errors
//! are `{"error":{"code","message"}}`. Logs go to stderr (the pod's `sandbox.log`); file contents are never logged.

mod error;
mod exec;
mod fsops;
mod hold;
mod info;
mod routes;
pub mod task;
#[cfg(feature = "testing")]
pub mod testing;
mod upload;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::UnixListener;
use tracing::Instrument;

pub use fsops::MAX_ENTRIES;
pub use hold::HELD_MARKER;
pub use routes::ENTRY_HEADER;

/// How long in-flight requests get to finish after SIGTERM before the agent exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How the agent is started.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Unix socket to listen on (`/run/evershell/agent.sock` inside a pod).
    pub socket: PathBuf,
    /// The workspace root served by the file routes (`/workspace` inside a pod).
    pub root: PathBuf,
    /// The pod id, reported by `/healthz`.
    pub pod_id: Option<String>,
    /// Do nothing — no socket, no look at the workspace — until this file exists, after writing a `held` file beside
    /// it (the sandbox is set up). The control plane starts a pod's sandbox while it restores the snapshot (or ahead
    /// of need, as a spare), and creates the file once the restore is complete and verified.
    pub hold: Option<PathBuf>,
    /// Where the held agent writes its marker (default: `held` beside the release file).
    pub held_marker: Option<PathBuf>,
}

/// Run the agent until SIGTERM/SIGINT.
pub async fn run(opts: AgentOptions) -> anyhow::Result<()> {
    if let Some(release) = &opts.hold {
        hold::wait_for_release(release, opts.held_marker.as_deref()).await.context("waiting for the release file")?;
    }
    // Bind first: the socket appearing is what the control plane waits for (connections queue until served), so
    // nothing else belongs before it on the resume path.
    let listener = bind(&opts.socket)?;
    init_logging();
    let span = tracing::info_span!("agent", pod_id = opts.pod_id.as_deref().unwrap_or("-"));
    async move {
        tracing::info!(socket = %opts.socket.display(), root = %opts.root.display(), "agent listening");
        let result =
            serve_with(listener, opts.root, opts.pod_id, task::LoopConfig::from_env(), shutdown_signal()).await;
        let _ = std::fs::remove_file(&opts.socket);
        tracing::info!("agent stopped");
        result
    }
    .instrument(span)
    .await
}

/// Bind the socket, replacing a stale socket file left by an earlier run.
pub fn bind(socket: &Path) -> anyhow::Result<UnixListener> {
    match std::fs::symlink_metadata(socket) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            std::fs::remove_file(socket).with_context(|| format!("removing stale socket {}", socket.display()))?;
        }
        Ok(_) => anyhow::bail!("{} exists and is not a socket", socket.display()),
        Err(_) => {}
    }
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    UnixListener::bind(socket).with_context(|| format!("binding {}", socket.display()))
}

/// Serve the agent's routes on `listener` until `shutdown` resolves, then give in-flight requests a short grace.
pub async fn serve(
    listener: UnixListener,
    root: PathBuf,
    pod_id: Option<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with(listener, root, pod_id, task::LoopConfig::default(), shutdown).await
}

/// [`serve`] with the agent loop's tuning given.
pub async fn serve_with(
    listener: UnixListener,
    root: PathBuf,
    pod_id: Option<String>,
    loop_cfg: task::LoopConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let root = root.canonicalize().with_context(|| format!("workspace root {}", root.display()))?;
    let tasks = task::Tasks::new(root.clone(), loop_cfg)?;
    let app = routes::router(Arc::new(routes::AgentState { root, pod_id, tasks }));
    let (tx, mut rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    let mut rx2 = rx.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = rx.wait_for(|v| *v).await;
    });
    tokio::select! {
        r = server => r.context("agent server failed"),
        _ = async {
            let _ = rx2.wait_for(|v| *v).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!("in-flight requests did not finish within the grace period");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; the agent will only stop when killed");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

/// Log to stderr (`RUST_LOG` or `info`), unless the embedding binary already installed a subscriber.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter).with_ansi(false).try_init();
}
