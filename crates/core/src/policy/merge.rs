//! The effective policy of a workspace: the provider's grant for its own domain, then the provider's caps.yaml,
//! then the role's (packs will come after the role). A later layer's capability replaces an earlier one of the same
//! name, in the earlier one's place; new names are appended in order.

use super::model::{AllowRule, Budgets, Capability, DomainGlob, HostPattern, Method, Transform, TransformRule};
use crate::error::FieldErrors;
use crate::model::{AgentRole, Provider, ProviderKind};

/// The name of the platform capability that lets a provider's own domain through.
pub const PROVIDER_CAPABILITY: &str = "_provider";

/// The merged, evaluable policy: capabilities in evaluation order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Policy {
    pub capabilities: Vec<Capability>,
}

/// What the provider contributes without any caps rule: its `domain`, with its `credential_name` stamped.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderGrant {
    pub kind: ProviderKind,
    pub domain: DomainGlob,
    pub credential_name: Option<String>,
}

impl ProviderGrant {
    /// The grant as a capability: every method, any path, TLS only, the credential in the provider kind's format.
    pub fn capability(&self) -> Capability {
        let transforms = self
            .credential_name
            .iter()
            .map(|c| TransformRule {
                transform: Transform::ProviderAuth { credential: c.clone(), kind: self.kind },
                applies_to: None,
            })
            .collect();
        Capability {
            name: PROVIDER_CAPABILITY.into(),
            description: Some(format!("the {} provider's own domain", self.kind.as_str())),
            allow: vec![AllowRule {
                name: Some(PROVIDER_CAPABILITY.into()),
                domains: vec![self.domain.clone()],
                methods: Method::ALL.to_vec(),
                paths: Vec::new(),
                allow_insecure: false,
                predicates: Vec::new(),
                has_body_schema: false,
            }],
            transforms,
            budgets: Budgets::default(),
        }
    }
}

impl Policy {
    /// Merge: the grant first, then each layer in order (provider caps, role caps, later packs).
    pub fn merge(grant: Option<&ProviderGrant>, layers: impl IntoIterator<Item = Vec<Capability>>) -> Policy {
        let mut caps: Vec<Capability> = grant.map(ProviderGrant::capability).into_iter().collect();
        for layer in layers {
            for cap in layer {
                match caps.iter_mut().find(|c| c.name == cap.name) {
                    Some(slot) => *slot = cap,
                    None => caps.push(cap),
                }
            }
        }
        Policy { capabilities: caps }
    }

    /// The policy of a workspace running `role` on `provider`, from their stored caps.yaml documents. Stored
    /// documents were validated on write; a problem here is reported with the field named all the same.
    pub fn for_role(provider: &Provider, role: &AgentRole) -> Result<Policy, FieldErrors> {
        let mut errs = FieldErrors::default();
        let grant = provider_grant(provider, &mut errs);
        let provider_caps = crate::caps::parse(&mut errs, "provider.capabilities", provider.capabilities.as_deref());
        let role_caps = crate::caps::parse(&mut errs, "role.capabilities", role.capabilities.as_deref());
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Policy::merge(grant.as_ref(), [provider_caps, role_caps]))
    }
}

fn provider_grant(p: &Provider, errs: &mut FieldErrors) -> Option<ProviderGrant> {
    match crate::caps::parse_domain(&p.domain) {
        Ok(domain @ DomainGlob { host: HostPattern::Exact(_) | HostPattern::Ip(_), .. }) => {
            Some(ProviderGrant { kind: p.kind, domain, credential_name: p.credential_name.clone() })
        }
        Ok(_) => {
            errs.add("provider.domain", "must not be a glob");
            None
        }
        Err(problem) => {
            errs.add("provider.domain", problem);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(doc: &str) -> Vec<Capability> {
        let mut e = FieldErrors::default();
        let c = crate::caps::parse(&mut e, "c", Some(doc));
        assert!(e.is_empty(), "{e:?}");
        c
    }

    #[test]
    fn later_layers_replace_same_named_capabilities_in_place() {
        let grant = ProviderGrant {
            kind: ProviderKind::Anthropic,
            domain: crate::caps::parse_domain("api.anthropic.com").unwrap(),
            credential_name: Some("anthropic-key".into()),
        };
        let provider = caps(
            "- name: a\n  allow: [{domains: [a.test], methods: [GET]}]\n- name: b\n  allow: [{domains: [b.test], methods: [GET]}]\n",
        );
        let role = caps(
            "- name: a\n  allow: [{domains: [a2.test], methods: [POST]}]\n- name: c\n  allow: [{domains: [c.test], methods: [GET]}]\n",
        );
        let p = Policy::merge(Some(&grant), [provider, role]);
        let names: Vec<&str> = p.capabilities.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["_provider", "a", "b", "c"]);
        assert_eq!(p.capabilities[1].allow[0].methods, [Method::Post], "the role's `a` replaced the provider's");
        assert_eq!(
            p.capabilities[0].transforms[0].transform,
            Transform::ProviderAuth { credential: "anthropic-key".into(), kind: ProviderKind::Anthropic }
        );
        let bare = Policy::merge(Some(&ProviderGrant { credential_name: None, ..grant }), []);
        assert!(bare.capabilities[0].transforms.is_empty());
        assert_eq!(Policy::merge(None, []), Policy::default());
    }
}
