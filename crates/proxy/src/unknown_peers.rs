//! `UnknownPeers`: what becomes of egress from an address no running pod owns (never recorded, cleared when its
//! workspace stopped, or outside `allowed_peers`). Such traffic has no org, and audit rows live under an org, so it
//! is recorded at server level instead: the counter `evershell_egress_unknown_peer_denials_total{kind}` (`kind` is
//! one of `request`, `connection`, `dns`, `outside_peers`: bounded) and one `warn` log line per address per
//! `window` naming the address, what it tried and how many denials of it the window before held back. The memory is
//! bounded too: at most `max_peers` addresses are tracked; beyond that, denials are counted and logged in one
//! aggregate line per window. A workspace that is running but refused (stopped, token expired) is known: its
//! denials are ordinary audit rows of its org.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// What an unknown address tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownKind {
    /// An HTTP request (denied `403 unknown_peer`).
    Request,
    /// A connection refused before any request (not HTTP, failed handshake).
    Connection,
    /// A DNS query (answered `NXDOMAIN`).
    Dns,
    /// A connection from outside `allowed_peers`, closed at once.
    OutsidePeers,
}

impl UnknownKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UnknownKind::Request => "request",
            UnknownKind::Connection => "connection",
            UnknownKind::Dns => "dns",
            UnknownKind::OutsidePeers => "outside_peers",
        }
    }
}

struct Entry {
    window_start: Instant,
    /// Denials since the last log line of this address.
    held_back: u64,
}

struct State {
    peers: HashMap<IpAddr, Entry>,
    /// Denials of untracked addresses (the map was full) since the last aggregate line.
    overflow: u64,
    overflow_logged: Option<Instant>,
}

/// Rate-limited server-level record of denials of unknown addresses.
pub struct UnknownPeers {
    window: Duration,
    max_peers: usize,
    state: Mutex<State>,
    total: AtomicU64,
}

impl UnknownPeers {
    pub fn new(window: Duration, max_peers: usize) -> Self {
        Self {
            window,
            max_peers: max_peers.max(1),
            state: Mutex::new(State { peers: HashMap::new(), overflow: 0, overflow_logged: None }),
            total: AtomicU64::new(0),
        }
    }

    /// The process-wide one (a minute per address, 4,096 addresses), shared by the proxy, its gate and the DNS
    /// responder.
    pub fn global() -> &'static UnknownPeers {
        static ONE: OnceLock<UnknownPeers> = OnceLock::new();
        ONE.get_or_init(|| UnknownPeers::new(Duration::from_secs(60), 4096))
    }

    /// Denials noted so far (by this instance).
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Note one denial of `peer`; `what` says what it tried (a host, a DNS name: never a secret). Returns whether a
    /// log line was written for it.
    pub fn note(&self, peer: IpAddr, kind: UnknownKind, what: &str) -> bool {
        self.note_at(peer, kind, what, Instant::now())
    }

    fn note_at(&self, peer: IpAddr, kind: UnknownKind, what: &str, now: Instant) -> bool {
        self.total.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("evershell_egress_unknown_peer_denials_total", "kind" => kind.as_str()).increment(1);
        let what: String = what.chars().take(120).collect();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = st.peers.get_mut(&peer) {
            if now.duration_since(e.window_start) < self.window {
                e.held_back += 1;
                return false;
            }
            let held_back = std::mem::take(&mut e.held_back);
            e.window_start = now;
            drop(st);
            tracing::warn!(%peer, kind = kind.as_str(), what, held_back, "egress denied: the address belongs to no running pod");
            return true;
        }
        if st.peers.len() >= self.max_peers {
            let window = self.window;
            st.peers.retain(|_, e| now.duration_since(e.window_start) < window);
        }
        if st.peers.len() >= self.max_peers {
            st.overflow += 1;
            if st.overflow_logged.is_some_and(|t| now.duration_since(t) < self.window) {
                return false;
            }
            let n = std::mem::take(&mut st.overflow);
            st.overflow_logged = Some(now);
            drop(st);
            tracing::warn!(denials = n, "egress denied to many addresses that belong to no running pod");
            return true;
        }
        st.peers.insert(peer, Entry { window_start: now, held_back: 0 });
        drop(st);
        tracing::warn!(%peer, kind = kind.as_str(), what, held_back = 0u64, "egress denied: the address belongs to no running pod");
        true
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.state.lock().unwrap().peers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_address_per_window_and_bounded_memory() {
        let u = UnknownPeers::new(Duration::from_secs(60), 2);
        let t0 = Instant::now();
        let a: IpAddr = "10.212.0.6".parse().unwrap();
        let b: IpAddr = "10.212.0.10".parse().unwrap();
        let c: IpAddr = "10.212.0.14".parse().unwrap();
        assert!(u.note_at(a, UnknownKind::Request, "x.test", t0));
        for i in 0..1000 {
            assert!(!u.note_at(a, UnknownKind::Dns, "y.test", t0 + Duration::from_millis(i)), "a repeat was logged");
        }
        assert!(u.note_at(b, UnknownKind::Connection, "", t0));
        // The map is full: a third address is aggregated, once per window.
        assert!(u.note_at(c, UnknownKind::Request, "z.test", t0));
        assert!(!u.note_at(c, UnknownKind::Request, "z.test", t0 + Duration::from_secs(1)));
        assert_eq!(u.tracked(), 2);
        // A window later the address logs again (with what was held back), and stale entries make room.
        assert!(u.note_at(a, UnknownKind::Request, "x.test", t0 + Duration::from_secs(61)));
        assert!(u.note_at(c, UnknownKind::Request, "z.test", t0 + Duration::from_secs(61)));
        assert!(u.tracked() <= 2);
        assert_eq!(u.total(), 1006);
    }
}
