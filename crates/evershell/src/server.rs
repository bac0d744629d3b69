//! `evershell serve`: open the store, the snapshot store and the pod runtime, start the reconciler (which first
//! recovers whatever a previous run left), and serve the API until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use evershell_app::sealing::MasterKey;
use evershell_app::{App, AppConfig, ReconcilerConfig};
use evershell_runtime::local::{LocalRuntime, LocalRuntimeConfig};
use evershell_snapshot::SnapshotStore;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::oneshot;

use crate::config::Config;
use crate::listener::{self, ListenerLimits};

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    /// Where the in-process egress proxy listens (`None` when `[proxy] enabled = false`).
    pub proxy_addr: Option<SocketAddr>,
    /// Where the in-process DNS responder for the pods listens (UDP and TCP; `None` with the proxy disabled).
    pub dns_addr: Option<SocketAddr>,
    /// Connections being served right now.
    pub open_connections: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
    _lock: Option<std::fs::File>,
}

impl Server {
    /// Stop accepting requests, let in-flight reconcile steps finish, and return.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.done).await.context("server task panicked")?
    }

    /// Wait until the server stops on its own (a signal).
    pub async fn wait(mut self) -> anyhow::Result<()> {
        (&mut self.done).await.context("server task panicked")?
    }
}

/// The process-wide Prometheus recorder (installed once, shared by every server in the process).
fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE.get_or_init(|| PrometheusBuilder::new().install_recorder().ok()).clone()
}

/// Only one `serve` per data directory on SQLite: the file lock makes a second one fail fast instead of corrupting
/// the single-server assumptions (leases, pending snapshots).
fn lock_data_dir(cfg: &Config) -> anyhow::Result<Option<std::fs::File>> {
    if !cfg.is_sqlite() {
        return Ok(None);
    }
    let path = cfg.data_dir.join("serve.lock");
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&path)?;
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    anyhow::ensure!(
        rc == 0,
        "another `evershell serve` is already using the data directory {} (lock file {})",
        cfg.data_dir.display(),
        path.display()
    );
    Ok(Some(f))
}

/// Start a server: returns once it listens.
pub async fn start(cfg: Config) -> anyhow::Result<Server> {
    cfg.login.policy().validate().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    let agent_env = cfg.agent.env()?;
    let snap_dir = cfg.snapshots.dir.clone().unwrap_or_else(|| cfg.data_dir.join("snapshots"));
    crate::datadir::prepare(&cfg.data_dir, Some(&snap_dir))?;
    let lock = lock_data_dir(&cfg)?;
    let store = evershell_store::connect(&cfg.database_url()).await.context("opening the store")?;
    let snapshots = SnapshotStore::local(&snap_dir).context("opening the snapshot directory")?;
    let (master_key, key_path) = MasterKey::load_or_create(cfg.master_key_file.as_deref(), &cfg.data_dir)?;
    master_key.verify_against(store.as_ref()).await?;
    tracing::info!(path = %key_path.display(), "master key loaded");
    let egress = match cfg.proxy.enabled {
        true => Some(crate::egress::EgressProxy::start(&cfg, store.clone(), master_key.clone()).await?),
        false => None,
    };
    let proxy_addr = egress.as_ref().map(crate::egress::EgressProxy::local_addr);
    let dns_addr = egress.as_ref().map(crate::egress::EgressProxy::dns_addr);
    anyhow::ensure!(cfg.runtime.kind == "local", "unknown runtime kind `{}` (expected `local`)", cfg.runtime.kind);
    let agent_binary = match &cfg.runtime.agent_binary {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("locating this executable for the in-pod agent")?,
    };
    let mut rcfg = LocalRuntimeConfig::new(
        cfg.runtime.pods_dir.clone().unwrap_or_else(|| cfg.data_dir.join("pods")),
        agent_binary,
        snapshots.clone(),
    );
    if let Some(b) = &cfg.runtime.bwrap {
        rcfg.bwrap = b.clone();
    }
    rcfg.spare_pods = cfg.runtime.spare_pods;
    rcfg.pod_uid_base = cfg.runtime.pod_uid_base;
    rcfg.pod_uid_count = cfg.runtime.pod_uid_count;
    rcfg.sandbox_log_bytes = cfg.runtime.sandbox_log_bytes;
    rcfg.max_workspace_bytes = Some(cfg.runtime.max_workspace_bytes).filter(|&b| b > 0);
    rcfg.network = cfg.runtime.network.then_some(evershell_runtime::local::NetworkPorts {
        // The in-process proxy's actual port (`runtime.proxy_port` may be 0 in tests).
        proxy: proxy_addr.map_or(cfg.runtime.proxy_port, |a| a.port()),
        dns: dns_addr.map_or(cfg.runtime.dns_port, |a| a.port()),
    });
    rcfg.egress_ca_file = Some(cfg.egress_ca_file());
    rcfg.limits = cfg.runtime.limits.pod_limits();
    rcfg.disk_limit_bytes = Some(cfg.runtime.limits.disk_bytes).filter(|&b| b > 0);
    rcfg.agent_env = agent_env;
    let runtime = Arc::new(LocalRuntime::new(rcfg)?);
    let app_cfg = AppConfig {
        session_ttl_ms: cfg.sessions.ttl_seconds * 1000,
        reconciler: ReconcilerConfig {
            interval: Duration::from_millis(cfg.reconciler.interval_ms),
            concurrency: cfg.reconciler.concurrency,
            pod_start_timeout: Duration::from_millis(cfg.reconciler.pod_start_timeout_ms),
            single_server: cfg.is_sqlite(),
            ..Default::default()
        },
        idempotency_ttl_ms: cfg.idempotency.ttl_ms as i64,
        quotas: cfg.quotas,
        max_list_entries: cfg.limits.max_list_entries,
        idempotency_lease_ms: cfg.idempotency.lease_ms as i64,
        idempotency_sweep_interval_ms: cfg.idempotency.sweep_interval_ms,
        login: cfg.login.policy(),
        password_hash_concurrency: cfg.login.hash_concurrency,
        activity: cfg.activity,
        task_upload_dir: Some(cfg.data_dir.join("task-uploads")),
        task_upload_limits: evershell_app::tasks::uploads::UploadLimits {
            max_files: cfg.limits.max_task_files,
            max_file_bytes: cfg.limits.max_task_file_bytes,
            max_total_bytes: cfg.limits.max_task_upload_bytes,
        },
        checkpoints: cfg.checkpoints,
    };
    let app = Arc::new(App::new(store, runtime, snapshots, app_cfg).with_master_key(master_key));
    app.reconciler().start().await.context("starting the reconciler")?;
    app.dispatcher().start(app.reconciler().subscribe()).await.context("starting the task dispatcher")?;
    let housekeeping = tokio_util::sync::CancellationToken::new();
    let sweeper = {
        let (app, stop) = (app.clone(), housekeeping.clone());
        tokio::spawn(async move { app.sweep_idempotency_keys_periodically(stop).await })
    };
    let limits = evershell_api::Limits {
        max_body_bytes: cfg.limits.max_body_bytes,
        max_upload_bytes: cfg.limits.max_upload_bytes,
        max_wait_ms: cfg.limits.max_wait_ms,
        request_timeout_ms: cfg.http.request_timeout_ms,
        upload_timeout_ms: cfg.http.upload_timeout_ms,
        secure_cookies: cfg.http.secure_cookies,
    };
    match listener::raise_nofile_limit() {
        Ok((soft, _)) if (soft as usize) < cfg.http.max_connections + 256 => tracing::warn!(
            nofile = soft,
            max_connections = cfg.http.max_connections,
            "RLIMIT_NOFILE leaves little room beside http.max_connections; raise the hard limit (LimitNOFILE=)"
        ),
        Ok((soft, _)) => tracing::debug!(nofile = soft, "RLIMIT_NOFILE raised to the hard limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise RLIMIT_NOFILE"),
    }
    let listener_limits = ListenerLimits {
        header_read_timeout: Duration::from_millis(cfg.http.header_read_timeout_ms),
        max_connections: cfg.http.max_connections,
    };
    let router = evershell_api::router(app.clone(), prometheus(), limits);
    let listener =
        tokio::net::TcpListener::bind(&cfg.listen).await.with_context(|| format!("listening on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let app2 = app.clone();
    let app3 = app.clone();
    let open_connections = Arc::new(AtomicUsize::new(0));
    let open = open_connections.clone();
    let done = tokio::spawn(async move {
        let shutdown = async move {
            tokio::select! {
                _ = stop_rx => {}
                _ = signal() => tracing::info!("shutting down"),
            }
            // Open SSE streams end now, so the connections drain.
            app3.close_activity_streams();
        };
        listener::serve(listener, router, listener_limits, open, shutdown).await?;
        housekeeping.cancel();
        let _ = sweeper.await;
        app2.dispatcher().shutdown().await;
        app2.reconciler().shutdown().await;
        if let Some(egress) = egress {
            egress.shutdown().await;
        }
        Ok(())
    });
    tracing::info!(%addr, "evershell listening");
    Ok(Server { addr, app, proxy_addr, dns_addr, open_connections, stop: Some(stop_tx), done, _lock: lock })
}

/// SIGINT or SIGTERM.
pub(crate) async fn signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
