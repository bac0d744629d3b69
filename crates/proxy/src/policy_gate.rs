//! `PolicyGate`: the real `Gate`. Per request: who the peer is (a `Directory` lookup cached for at most
//! `identity_ttl`, which bounds how long a task's identity outlives its end), whether it may send at all (running
//! workspace, live capability token), the caps decision (`core::policy`: normalise → evaluate), the transforms with
//! their credentials and secrets (OAuth2 tokens through the broker), the budgets (`per_task` ones keyed by the task
//! running now, looked up afresh; compare-and-set on store counters, so exactly the allowed number pass), and the
//! verdict: forward the normalised request with its edits, or `403 egress_denied` / `429 budget_exceeded` naming the
//! reason and rule (never a value). Every exchange ends in one `egress_request` audit row, written in batches.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use evershell_core::Timestamp;
use evershell_core::audit::{Actor, AuditEvent, EventType};
use evershell_core::ids::TaskId;
use evershell_core::policy::{
    self, Allowed, BudgetRef, BudgetScope, CredentialMaterial, Decision as PolicyDecision, Denied, FnLookup,
    RawRequest, RequestParts,
};
use http::{HeaderName, HeaderValue, StatusCode};
use serde_json::json;

use crate::audit_sink::{AuditSink, AuditSinkConfig};
use crate::config::ProxyConfig;
use crate::directory::{BudgetKey, BudgetMove, CredentialForUse, Directory, PodIdentity};
use crate::gate::{ConnId, ConnInfo, Decision, Denial, Forward, Gate, Outcome, RequestHead, Scheme, Verdict};
use crate::oauth2_broker::Oauth2Broker;
use crate::unknown_peers::{UnknownKind, UnknownPeers};

/// Tunables of the gate.
#[derive(Debug, Clone, Copy)]
pub struct PolicyGateConfig {
    /// How long an identity lookup is reused (a pod's identity changes only at start and stop).
    pub identity_ttl: Duration,
    pub audit: AuditSinkConfig,
    /// Compare-and-set attempts on the budget counters before the request is refused as contended.
    pub budget_attempts: usize,
}

impl Default for PolicyGateConfig {
    fn default() -> Self {
        Self { identity_ttl: Duration::from_secs(1), audit: AuditSinkConfig::default(), budget_attempts: 256 }
    }
}

/// What `decide` knew, kept until the exchange's `record`.
struct Pending {
    method: http::Method,
    host: String,
    path: String,
    row: AuditEvent,
    details: serde_json::Map<String, serde_json::Value>,
    /// Counters charged, to add the response bytes to.
    charged: Vec<BudgetKey>,
    request_bytes: u64,
}

/// When an identity was looked up, and what was found (`None`: nobody at that address).
type CachedIdentity = (Instant, Option<Arc<PodIdentity>>);

pub struct PolicyGate<D: Directory> {
    dir: Arc<D>,
    cfg: PolicyGateConfig,
    identities: Mutex<HashMap<IpAddr, CachedIdentity>>,
    broker: Oauth2Broker,
    audit: AuditSink,
    pending: Mutex<HashMap<ConnId, Vec<Pending>>>,
}

impl<D: Directory> PolicyGate<D> {
    /// A gate over `dir`; the broker dials token endpoints with `proxy`'s upstream rules. Starts the audit writer.
    pub fn new(dir: Arc<D>, proxy: &ProxyConfig, cfg: PolicyGateConfig) -> anyhow::Result<Self> {
        Ok(Self {
            broker: Oauth2Broker::new(proxy)?,
            audit: AuditSink::start(dir.clone(), cfg.audit),
            dir,
            cfg,
            identities: Mutex::default(),
            pending: Mutex::default(),
        })
    }

    /// Write every queued audit row and stop the writer (after the proxy stopped accepting).
    pub async fn shutdown(&self) {
        self.audit.close().await;
    }

    /// Audit rows handed to the writer so far.
    pub fn audit_rows_queued(&self) -> u64 {
        self.audit.queued()
    }

    /// Queue a row on the gate's batched audit writer (`PolicyDns`'s denials).
    pub(crate) async fn push_audit(&self, row: AuditEvent) {
        self.audit.push(row).await;
    }

    /// Drop the cached identity of `addr` (a pod started or stopped there).
    pub fn invalidate(&self, addr: IpAddr) {
        self.identities.lock().unwrap_or_else(|p| p.into_inner()).remove(&addr);
    }

    /// Who is behind `addr` (cached for `identity_ttl`); shared with `PolicyDns`.
    pub(crate) async fn identity(&self, addr: IpAddr) -> evershell_core::Result<Option<Arc<PodIdentity>>> {
        if let Some((at, id)) = self.identities.lock().unwrap_or_else(|p| p.into_inner()).get(&addr)
            && at.elapsed() < self.cfg.identity_ttl
        {
            return Ok(id.clone());
        }
        self.refresh(addr).await
    }

    /// Who is behind `addr` now (the directory asked, the cache refreshed).
    async fn refresh(&self, addr: IpAddr) -> evershell_core::Result<Option<Arc<PodIdentity>>> {
        let found = self.dir.identity(addr).await?.map(Arc::new);
        let mut cache = self.identities.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 65_536 {
            cache.retain(|_, (at, _)| at.elapsed() < self.cfg.identity_ttl);
        }
        cache.insert(addr, (Instant::now(), found.clone()));
        Ok(found)
    }

    fn remember(&self, conn: ConnId, p: Pending) {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).entry(conn).or_default().push(p);
    }

    fn take(&self, conn: ConnId, outcome: &Outcome) -> Option<Pending> {
        let r = outcome.request.as_ref()?;
        let mut all = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let list = all.get_mut(&conn)?;
        let at = list.iter().position(|p| p.method == r.method && p.host == r.host && p.path == r.path)?;
        let p = list.remove(at);
        if list.is_empty() {
            all.remove(&conn);
        }
        Some(p)
    }

    /// The credentials and secrets `allowed`'s transforms name, fetched (and minted) up front; failures by name.
    async fn materials(
        &self,
        who: &PodIdentity,
        allowed: &Allowed,
        details: &mut serde_json::Map<String, serde_json::Value>,
    ) -> (HashMap<String, CredentialMaterial>, HashMap<String, String>) {
        let mut creds = HashMap::new();
        let mut secrets = HashMap::new();
        let mut failures = BTreeMap::new();
        let mut minted = Vec::new();
        for t in &allowed.transforms {
            match t {
                policy::Transform::Auth { credential } | policy::Transform::ProviderAuth { credential, .. } => {
                    if creds.contains_key(credential) || failures.contains_key(credential) {
                        continue;
                    }
                    match self.credential(who, credential).await {
                        Ok((m, was_minted)) => {
                            if was_minted {
                                minted.push(credential.clone());
                            }
                            creds.insert(credential.clone(), m);
                        }
                        Err(why) => {
                            failures.insert(credential.clone(), why);
                        }
                    }
                }
                policy::Transform::Headers { set, .. } => {
                    for name in set.iter().flat_map(|(_, t)| t.secrets()) {
                        if secrets.contains_key(name) {
                            continue;
                        }
                        match self.dir.secret(who.org_id, name).await {
                            Ok(Some(v)) => {
                                secrets.insert(name.to_string(), v);
                            }
                            Ok(None) => {
                                failures.insert(format!("secrets.{name}"), "auth_unavailable".into());
                            }
                            Err(e) => {
                                tracing::warn!(error = ?e, secret = name, "secret lookup failed");
                                failures.insert(format!("secrets.{name}"), "lookup_failed".into());
                            }
                        }
                    }
                }
            }
        }
        if !minted.is_empty() {
            details.insert("credentials_minted".into(), json!(minted));
        }
        if !failures.is_empty() {
            details.insert("auth_failures".into(), json!(failures));
        }
        (creds, secrets)
    }

    async fn credential(&self, who: &PodIdentity, name: &str) -> Result<(CredentialMaterial, bool), String> {
        match self.dir.credential(who.org_id, name, who.user_id).await {
            Ok(CredentialForUse::Ready(m)) => Ok((m, false)),
            Ok(CredentialForUse::ClientCredentials(grant)) => {
                match self.broker.token(self.dir.as_ref(), who.org_id, &grant).await {
                    Ok((access_token, minted)) => {
                        Ok((CredentialMaterial::Oauth2ClientCredentials { access_token }, minted))
                    }
                    Err(f) => Err(f.0),
                }
            }
            Ok(CredentialForUse::NotUsable { reason }) => Err(reason),
            Ok(CredentialForUse::Unavailable) => Err("auth_unavailable".into()),
            Err(e) => {
                tracing::warn!(error = ?e, credential = name, "credential lookup failed");
                Err("lookup_failed".into())
            }
        }
    }

    /// Charge every budget by compare-and-set; `Err` is the verdict to answer with.
    async fn charge(
        &self,
        who: &PodIdentity,
        task: Option<TaskId>,
        budgets: &[BudgetRef],
        request_bytes: u64,
        details: &mut serde_json::Map<String, serde_json::Value>,
    ) -> Result<Vec<BudgetKey>, Denial> {
        if budgets.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<BudgetKey> = budgets.iter().map(|b| budget_key(who, task, b)).collect();
        for _ in 0..self.cfg.budget_attempts {
            let seen = self.dir.budget_counters(&keys).await.map_err(|e| unavailable(&e))?;
            let states: Vec<(BudgetRef, policy::Counter)> = budgets.iter().cloned().zip(seen.iter().copied()).collect();
            match policy::charge_all(&states, request_bytes) {
                Err(exceeded) => {
                    details.insert("budget_exceeded".into(), json!(exceeded));
                    let (status, body) = policy::budget_body(&exceeded);
                    return Err(Denial {
                        status: StatusCode::from_u16(status).unwrap_or(StatusCode::TOO_MANY_REQUESTS),
                        reason: "budget_exceeded".into(),
                        body,
                    });
                }
                Ok(next) => {
                    let moves: Vec<BudgetMove> = keys
                        .iter()
                        .zip(seen.iter().zip(next.iter()))
                        .map(|(k, (s, n))| BudgetMove { key: k.clone(), seen: *s, new: *n })
                        .collect();
                    if self.dir.charge_budgets(&moves).await.map_err(|e| unavailable(&e))? {
                        let counters: BTreeMap<&str, &policy::Counter> =
                            keys.iter().map(|k| k.name.as_str()).zip(next.iter()).collect();
                        details.insert("budgets".into(), json!(counters));
                        return Ok(keys);
                    }
                }
            }
        }
        Err(Denial::egress_denied(
            StatusCode::SERVICE_UNAVAILABLE,
            "budget_contended",
            "the budget counters are too contended right now; retry",
            None,
            None,
        ))
    }
}

fn unavailable(e: &evershell_core::Error) -> Denial {
    tracing::warn!(error = ?e, "egress directory unavailable");
    Denial::egress_denied(
        StatusCode::SERVICE_UNAVAILABLE,
        "directory_unavailable",
        "the control plane could not be asked; retry",
        None,
        None,
    )
}

fn budget_key(who: &PodIdentity, task: Option<TaskId>, b: &BudgetRef) -> BudgetKey {
    let scope = match b.scope {
        BudgetScope::PerWorkspace => who.workspace_id.to_string(),
        // A request made between tasks (an exec call) has no task: the pod's life is then the unit of work.
        BudgetScope::PerTask => task.map_or_else(|| who.pod_id.to_string(), |t| t.to_string()),
    };
    BudgetKey { scope, name: b.name() }
}

fn deny_from(d: &Denied) -> Denial {
    let (status, body) = policy::denied_body(d);
    Denial {
        status: StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN),
        reason: d.reason.as_str().into(),
        body,
    }
}

fn base_row(who: &PodIdentity) -> AuditEvent {
    let mut row = AuditEvent::system(who.org_id, EventType::EgressRequest).workspace(who.workspace_id);
    row.actor = Actor::PolicyEngine;
    row.task_id = who.task_id;
    row.agent_role = Some(who.role.clone());
    row.agent_provider = who.provider.clone();
    row
}

/// The header edits that turn `before` into `after` (names compared case-insensitively).
fn header_edits(before: &[(String, String)], after: &[(String, String)], f: &mut Forward) {
    let values = |list: &[(String, String)], name: &str| -> Vec<String> {
        list.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone()).collect()
    };
    for (name, _) in before {
        if !after.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
            && let Ok(h) = HeaderName::from_bytes(name.as_bytes())
            && !f.remove_headers.contains(&h)
        {
            f.remove_headers.push(h);
        }
    }
    for (name, value) in after {
        if values(before, name) != values(after, name)
            && let (Ok(h), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value))
        {
            f.set_headers.retain(|(n, _)| *n != h);
            f.set_headers.push((h, v));
        }
    }
}

#[async_trait::async_trait]
impl<D: Directory> Gate for PolicyGate<D> {
    async fn decide(&self, conn: &ConnInfo, head: &RequestHead) -> Verdict {
        let started = Instant::now();
        let who = match self.identity(conn.peer.ip()).await {
            Ok(Some(who)) => who,
            Ok(None) => {
                UnknownPeers::global().note(conn.peer.ip(), UnknownKind::Request, &head.host);
                return Verdict::Deny(Denial::egress_denied(
                    StatusCode::FORBIDDEN,
                    "unknown_peer",
                    "this address belongs to no running workspace",
                    None,
                    None,
                ));
            }
            Err(e) => return Verdict::Deny(unavailable(&e)),
        };
        let raw = RawRequest {
            tls: head.scheme == Scheme::Https,
            sni: conn.sni.clone(),
            authority: format!(
                "{}:{}",
                if head.host.contains(':') { format!("[{}]", head.host) } else { head.host.clone() },
                head.port
            ),
            port: head.port,
            method: head.method.as_str().to_string(),
            target: match &head.query {
                Some(q) => format!("{}?{q}", head.path),
                None => head.path.clone(),
            },
        };
        let mut row = base_row(&who);
        row.destination = Some(format!("{}:{}", head.host, head.port));
        row.method = Some(head.method.as_str().to_string());
        row.path = Some(policy::audit_target(&head.path, head.query.as_deref(), &[]));
        let mut details = serde_json::Map::new();
        details.insert("phase".into(), json!("request"));
        details.insert("pod_id".into(), json!(who.pod_id.to_string()));
        let mut pending = Pending {
            method: head.method.clone(),
            host: head.host.clone(),
            path: head.path.clone(),
            row,
            details,
            charged: Vec::new(),
            request_bytes: 0,
        };
        let verdict = self.decide_for(&who, conn, head, &raw, &mut pending).await;
        pending.details.insert("decide_us".into(), json!(started.elapsed().as_micros() as u64));
        self.remember(conn.id, pending);
        verdict
    }

    async fn record(&self, conn: &ConnInfo, outcome: Outcome) {
        let pending = match self.take(conn.id, &outcome) {
            Some(p) => Some(p),
            None => match self.identity(conn.peer.ip()).await {
                Ok(Some(who)) => {
                    let mut row = base_row(&who);
                    if let Some(r) = &outcome.request {
                        row.destination = Some(format!("{}:{}", r.host, r.port));
                        row.method = Some(r.method.as_str().to_string());
                        row.path = Some(policy::audit_target(&r.path, None, &[]));
                    } else if let Some(sni) = &conn.sni {
                        let port = conn.original_dst.map_or(443, |d| d.port());
                        row.destination = Some(format!("{sni}:{port}"));
                    } else if let Some(d) = conn.original_dst {
                        row.destination = Some(d.to_string());
                    }
                    let mut details = serde_json::Map::new();
                    details.insert(
                        "phase".into(),
                        json!(if outcome.request.is_some() { "request" } else { "connection" }),
                    );
                    details.insert("pod_id".into(), json!(who.pod_id.to_string()));
                    Some(Pending {
                        method: http::Method::GET,
                        host: String::new(),
                        path: String::new(),
                        row,
                        details,
                        charged: Vec::new(),
                        request_bytes: 0,
                    })
                }
                Ok(None) => {
                    // Org-less: a server-level record (`UnknownPeers`), not an audit row. A request the gate denied
                    // as `unknown_peer` was noted when it was decided.
                    let noted =
                        matches!(&outcome.decision, Decision::DeniedByGate { reason } if reason == "unknown_peer");
                    if !noted {
                        let kind =
                            if outcome.request.is_some() { UnknownKind::Request } else { UnknownKind::Connection };
                        let what = outcome.request.as_ref().map(|r| r.host.as_str()).or(conn.sni.as_deref());
                        UnknownPeers::global().note(conn.peer.ip(), kind, what.unwrap_or(""));
                    }
                    None
                }
                Err(e) => {
                    tracing::warn!(peer = %conn.peer, error = ?e, "egress directory unavailable; an outcome was not audited");
                    None
                }
            },
        };
        let Some(mut p) = pending else { return };
        match &outcome.decision {
            Decision::Forwarded => {
                p.row.decision = Some("allow".into());
            }
            Decision::UpstreamFailed => {
                p.row.decision = Some("allow".into());
                p.row.reason = Some("upstream_failed".into());
            }
            Decision::DeniedByGate { reason } => {
                p.row.decision = Some("deny".into());
                p.row.reason = Some(reason.clone());
            }
            Decision::RefusedByProxy(r) => {
                p.row.decision = Some("deny".into());
                p.row.reason = Some(r.as_str().into());
            }
        }
        p.row.latency_ms = Some(outcome.latency.as_millis() as i64);
        let d = &mut p.details;
        d.insert("bytes_up".into(), json!(outcome.bytes_up));
        d.insert("bytes_down".into(), json!(outcome.bytes_down));
        d.insert("duration_ms".into(), json!(outcome.duration.as_millis() as u64));
        if let Some(s) = outcome.status {
            d.insert("status".into(), json!(s.as_u16()));
        }
        if outcome.upgraded {
            d.insert("upgraded".into(), json!(true));
        }
        if let Some(e) = &outcome.error {
            d.insert("error".into(), json!(e.chars().take(300).collect::<String>()));
        }
        // Response bytes (and request bytes beyond what was declared) count after the fact.
        let extra = outcome.bytes_down + outcome.bytes_up.saturating_sub(p.request_bytes);
        if extra > 0 {
            for key in &p.charged {
                if let Err(e) = self.dir.add_budget_bytes(key, extra).await {
                    tracing::warn!(error = ?e, budget = key.name, "adding response bytes to a budget failed");
                }
            }
        }
        p.row.details = Some(serde_json::Value::Object(std::mem::take(&mut p.details)));
        self.audit.push(p.row).await;
    }
}

impl<D: Directory> PolicyGate<D> {
    async fn decide_for(
        &self,
        who: &PodIdentity,
        conn: &ConnInfo,
        head: &RequestHead,
        raw: &RawRequest,
        p: &mut Pending,
    ) -> Verdict {
        if let Some(why) = who.refusal(Timestamp::now()) {
            return Verdict::Deny(Denial::egress_denied(
                StatusCode::FORBIDDEN,
                why,
                match why {
                    "workspace_not_running" => "the workspace is not running",
                    _ => "the pod's capability token is missing or expired",
                },
                None,
                None,
            ));
        }
        let policy = match &who.policy {
            Ok(p) => p.clone(),
            Err(why) => {
                tracing::warn!(workspace_id = %who.workspace_id, error = why, "workspace policy unusable");
                return Verdict::Deny(Denial::egress_denied(
                    StatusCode::FORBIDDEN,
                    "policy_invalid",
                    "the workspace's caps policy could not be built",
                    None,
                    None,
                ));
            }
        };
        let (normalised, decision) = policy::decide(&policy, raw);
        let allowed = match (&normalised, decision) {
            (Some(n), PolicyDecision::Deny(d)) => {
                let audit = policy::decision_audit(n, &PolicyDecision::Deny(d.clone()), None);
                note(p, &audit);
                return Verdict::Deny(deny_from(&d));
            }
            (None, PolicyDecision::Deny(d)) => {
                p.details.insert("detail".into(), json!(d.detail));
                return Verdict::Deny(deny_from(&d));
            }
            (None, PolicyDecision::Allow(_)) => unreachable!("an allow always has a normalised request"),
            (Some(_), PolicyDecision::Allow(a)) => a,
        };
        let n = normalised.expect("allowed requests are normalised");
        let (creds, secrets) = self.materials(who, &allowed, &mut p.details).await;
        let lookup = FnLookup(|name: &str| creds.get(name).cloned(), |name: &str| secrets.get(name).cloned());
        let before: Vec<(String, String)> = head
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let parts = RequestParts { headers: before.clone(), query: n.query.clone() };
        let applied = match policy::apply_transforms(&allowed, parts, &lookup) {
            Ok(a) => a,
            Err(d) => {
                let audit = policy::decision_audit(&n, &PolicyDecision::Deny(d.clone()), None);
                note(p, &audit);
                return Verdict::Deny(deny_from(&d));
            }
        };
        let audit = policy::decision_audit(&n, &PolicyDecision::Allow(allowed.clone()), Some(&applied));
        note(p, &audit);
        let request_bytes = head
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0u64);
        let task = if allowed.budgets.iter().any(|b| b.scope == BudgetScope::PerTask) {
            // A per-task budget is charged to the task running now, never to one the identity cache still remembers
            // (the next task's first requests can follow the previous one's end within `identity_ttl`). Budgeted
            // requests already make store round trips; this is one more.
            match self.refresh(conn.peer.ip()).await {
                Ok(Some(now)) if now.workspace_id == who.workspace_id && now.pod_id == who.pod_id => now.task_id,
                Ok(_) => None,
                Err(e) => return Verdict::Deny(unavailable(&e)),
            }
        } else {
            who.task_id
        };
        p.row.task_id = task;
        match self.charge(who, task, &allowed.budgets, request_bytes, &mut p.details).await {
            Ok(keys) => {
                p.charged = keys;
                p.request_bytes = request_bytes;
            }
            Err(denial) => return Verdict::Deny(denial),
        }
        let mut forward = Forward {
            allow_insecure: !n.tls,
            path: Some(n.path.clone()),
            query: (applied.parts.query != head.query).then(|| applied.parts.query.clone().unwrap_or_default()),
            ..Default::default()
        };
        header_edits(&before, &applied.parts.headers, &mut forward);
        Verdict::Forward(forward)
    }
}

/// Copy the pure audit view into the row.
fn note(p: &mut Pending, a: &policy::DecisionAudit) {
    p.row.destination = Some(a.destination.clone());
    p.row.path = Some(a.path.clone());
    p.row.decision = Some(a.decision.into());
    p.row.reason = a.reason.map(|r| r.as_str().to_string());
    if let Some(c) = &a.capability {
        p.details.insert("capability".into(), json!(c));
    }
    if let Some(r) = &a.rule {
        p.details.insert("rule".into(), json!(r));
    }
    if !a.transforms.is_empty() {
        p.details.insert("transforms".into(), json!(a.transforms));
    }
}
