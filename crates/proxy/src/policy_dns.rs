//! `PolicyDns`: the DNS responder's `DnsPolicy` for the control plane, over the same `Directory` (and identity cache
//! and batched audit writer) as `PolicyGate`. A name is answered only when the querying pod (by source address) may
//! send at all and some allow rule of its merged policy could match the name (a domain glob, whatever its port; the
//! provider's own domain is the `_provider` capability's rule); every other query is `NXDOMAIN`, and each denial of a
//! known pod becomes one `egress_dns_denied` audit row (an unknown address's go to `UnknownPeers`).

use std::net::IpAddr;
use std::sync::Arc;

use evershell_core::Timestamp;
use evershell_core::audit::{Actor, AuditEvent, EventType};
use evershell_core::policy::{HostPattern, Policy};
use serde_json::json;

use crate::directory::{Directory, PodIdentity};
use crate::dns::{DnsAnswer, DnsDenial, DnsPolicy, DnsTransport};
use crate::policy_gate::PolicyGate;
use crate::unknown_peers::{UnknownKind, UnknownPeers};

/// Whether some allow rule of `policy` could match the host `name` (lower-case, no trailing dot). Raw-IP globs
/// never match a name; a name that reads as an IP (`127.1`) is never a host.
pub fn name_allowed(policy: &Policy, name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    if name.is_empty() || last.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    policy.capabilities.iter().flat_map(|c| c.allow.iter()).flat_map(|r| r.domains.iter()).any(|d| match &d.host {
        HostPattern::Exact(h) => h == name,
        HostPattern::OneLabel(suffix) => {
            name.split_once('.').is_some_and(|(label, rest)| !label.is_empty() && rest == suffix)
        }
        HostPattern::Ip(_) => false,
    })
}

pub struct PolicyDns<D: Directory> {
    gate: Arc<PolicyGate<D>>,
}

impl<D: Directory> PolicyDns<D> {
    /// Decide with `gate`'s identities and write denials through its audit writer (so `gate.shutdown()` flushes them).
    pub fn new(gate: Arc<PolicyGate<D>>) -> Self {
        Self { gate }
    }

    fn verdict(who: &PodIdentity, name: &str) -> DnsAnswer {
        if let Some(why) = who.refusal(Timestamp::now()) {
            return DnsAnswer::Deny { reason: why.into() };
        }
        match &who.policy {
            Ok(p) if name_allowed(p, name) => DnsAnswer::Allow,
            Ok(_) => DnsAnswer::Deny { reason: "host_not_allowed".into() },
            Err(_) => DnsAnswer::Deny { reason: "policy_invalid".into() },
        }
    }
}

#[async_trait::async_trait]
impl<D: Directory> DnsPolicy for PolicyDns<D> {
    async fn allows(&self, peer: IpAddr, name: &str) -> DnsAnswer {
        match self.gate.identity(peer).await {
            Ok(Some(who)) => Self::verdict(&who, name),
            Ok(None) => DnsAnswer::Deny { reason: "unknown_peer".into() },
            Err(e) => {
                tracing::warn!(error = ?e, "egress directory unavailable for a DNS query");
                DnsAnswer::Deny { reason: "directory_unavailable".into() }
            }
        }
    }

    async fn denied(&self, d: DnsDenial) {
        // The identity was just looked up (cached): a peer that is no pod has no org to audit under.
        let who = match self.gate.identity(d.peer).await {
            Ok(Some(who)) => who,
            Ok(None) => {
                // No org to audit under: a server-level record instead (rate-limited per address).
                UnknownPeers::global().note(d.peer, UnknownKind::Dns, &d.name);
                return;
            }
            Err(e) => {
                tracing::warn!(peer = %d.peer, error = ?e, "egress directory unavailable; a DNS denial was not audited");
                return;
            }
        };
        let mut row = AuditEvent::system(who.org_id, EventType::EgressDnsDenied).workspace(who.workspace_id);
        row.actor = Actor::PolicyEngine;
        row.task_id = who.task_id;
        row.agent_role = Some(who.role.clone());
        row.agent_provider = who.provider.clone();
        row.destination = Some(d.name);
        row.decision = Some("deny".into());
        row.reason = Some(d.reason);
        row.details = Some(json!({
            "phase": "dns",
            "pod_id": who.pod_id.to_string(),
            "qtype": d.qtype,
            "transport": match d.transport { DnsTransport::Udp => "udp", DnsTransport::Tcp => "tcp" },
        }));
        self.gate.push_audit(row).await;
    }
}

#[cfg(test)]
mod tests {
    use evershell_core::FieldErrors;
    use evershell_core::policy::ProviderGrant;

    use super::*;

    #[test]
    fn names_match_exact_and_one_label_globs_and_the_providers_domain_only() {
        let mut errs = FieldErrors::default();
        let caps = evershell_core::caps::parse(
            &mut errs,
            "caps",
            Some(
                "- name: a\n  allow:\n    - domains: [api.example.test, '*.cdn.test', 'port.test:8443', 10.0.0.5]\n      methods: [GET]\n",
            ),
        );
        assert!(errs.is_empty(), "{errs:?}");
        let grant = ProviderGrant {
            kind: evershell_core::model::ProviderKind::Anthropic,
            domain: evershell_core::caps::parse_domain("api.anthropic.com").unwrap(),
            credential_name: None,
        };
        let p = Policy::merge(Some(&grant), [caps]);
        for ok in ["api.example.test", "a.cdn.test", "port.test", "api.anthropic.com"] {
            assert!(name_allowed(&p, ok), "{ok}");
        }
        for no in [
            "example.test",
            "x.api.example.test",
            "cdn.test",
            "a.b.cdn.test",
            ".cdn.test",
            "10.0.0.5",
            "127.1",
            "evil.test",
            "anthropic.com",
            "",
        ] {
            assert!(!name_allowed(&p, no), "{no}");
        }
        assert!(!name_allowed(&Policy::default(), "api.example.test"));
    }
}
