//! A minimal `Gate` for tests and benchmarks: exact host names allowed (optionally over plain HTTP), fixed header
//! edits per host, and every outcome kept so a test can wait for exactly the records it expects.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use http::{HeaderName, HeaderValue, StatusCode};
use tokio::sync::Notify;

use crate::gate::{ConnInfo, Denial, Forward, Gate, Outcome, RequestHead, Verdict};

/// Allows the listed hosts, denies the rest with `403 egress_denied` (`reason: host_not_allowed`).
#[derive(Default)]
pub struct AllowList {
    hosts: HashSet<String>,
    insecure: HashSet<String>,
    headers: HashMap<String, Vec<(HeaderName, HeaderValue)>>,
    outcomes: Mutex<Vec<(ConnInfo, Outcome)>>,
    changed: Notify,
}

impl AllowList {
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(hosts: I) -> Self {
        Self { hosts: hosts.into_iter().map(|h| h.into().to_ascii_lowercase()).collect(), ..Default::default() }
    }

    /// Also allow plain `http://` to `host`.
    pub fn insecure(mut self, host: &str) -> Self {
        self.hosts.insert(host.to_ascii_lowercase());
        self.insecure.insert(host.to_ascii_lowercase());
        self
    }

    /// Set `name: value` on every request to `host`.
    pub fn with_header(mut self, host: &str, name: &'static str, value: &str) -> Self {
        self.headers
            .entry(host.to_ascii_lowercase())
            .or_default()
            .push((HeaderName::from_static(name), HeaderValue::from_str(value).expect("header value")));
        self
    }

    /// Every outcome recorded so far.
    pub fn outcomes(&self) -> Vec<(ConnInfo, Outcome)> {
        self.outcomes.lock().expect("outcomes").clone()
    }

    /// Waits until at least `n` outcomes are recorded and returns them.
    pub async fn wait_for_outcomes(&self, n: usize) -> Vec<(ConnInfo, Outcome)> {
        loop {
            let notified = self.changed.notified();
            {
                let all = self.outcomes.lock().expect("outcomes");
                if all.len() >= n {
                    return all.clone();
                }
            }
            notified.await;
        }
    }
}

#[async_trait::async_trait]
impl Gate for AllowList {
    async fn decide(&self, _conn: &ConnInfo, head: &RequestHead) -> Verdict {
        if !self.hosts.contains(&head.host) {
            return Verdict::Deny(Denial::egress_denied(
                StatusCode::FORBIDDEN,
                "host_not_allowed",
                &format!("{} is not allowed", head.host),
                None,
                None,
            ));
        }
        Verdict::Forward(Forward {
            set_headers: self.headers.get(&head.host).cloned().unwrap_or_default(),
            allow_insecure: self.insecure.contains(&head.host),
            ..Default::default()
        })
    }

    async fn record(&self, conn: &ConnInfo, outcome: Outcome) {
        self.outcomes.lock().expect("outcomes").push((conn.clone(), outcome));
        self.changed.notify_waiters();
    }
}
