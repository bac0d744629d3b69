//! The HTTP listener: accepts connections up to a cap (above it, new connections wait in the kernel's backlog and
//! hold no descriptor of ours), closes a connection whose request headers do not arrive within the header-read
//! timeout (slowloris), raises `RLIMIT_NOFILE` at start-up, and drains open connections on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    /// A connection's request headers (also the next request's on a kept-alive connection) must arrive within this.
    pub header_read_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit; returns `(soft, hard)` after the change.
pub fn raise_nofile_limit() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit write and read a struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim = raised;
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Serve `router` on `listener` until `shutdown` resolves, then let open connections finish their requests.
/// `open` counts the connections being served (exported as the `evershell_http_connections_open` gauge too).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ListenerLimits,
    open: Arc<AtomicUsize>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let cap = limits.max_connections.max(1);
    let permits = Arc::new(Semaphore::new(cap));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        // Take a slot before accepting: at the cap we stop calling accept, so excess connections cost no descriptor.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE/ENFILE and the like: back off briefly instead of spinning on a full descriptor table.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let n = open.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!("evershell_http_connections_open").set(n as f64);
        // The peer address reaches handlers as `ConnectInfo` (sign-in throttling counts per client address).
        let with_peer = tower::ServiceBuilder::new()
            .map_request(move |mut req: axum::extract::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                req
            })
            .service(router.clone());
        let svc = TowerToHyperService::new(with_peer);
        let mut stop = stop_rx.clone();
        let open = open.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection closed with an error");
                    }
                }
                _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            let n = open.fetch_sub(1, Ordering::Relaxed) - 1;
            metrics::gauge!("evershell_http_connections_open").set(n as f64);
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection gives its slot back when it ends.
    let _ = permits.acquire_many(cap as u32).await;
    Ok(())
}
