//! The egress proxy: every outbound connection of a pod lands here, is classified by its first bytes, has TLS
//! terminated with a leaf minted from the platform CA, and each request is put to a `Gate` (the control plane's
//! policy) before it is forwarded, streamed, and reported back for audit.

pub mod allow_list;
pub mod audit_sink;
mod batched_io;
mod body;
pub mod ca;
pub mod config;
pub mod directory;
pub mod dns;
pub mod gate;
mod handler;
pub mod oauth2_broker;
pub mod orig_dst;
mod own_addresses;
pub mod policy_dns;
pub mod policy_gate;
mod raw_head;
mod server;
mod sniff;
pub mod unknown_peers;
mod upstream;

pub use allow_list::AllowList;
pub use ca::{CaError, PlatformCa};
pub use config::{ProxyConfig, parse_cidr};
pub use directory::{
    BudgetKey, BudgetMove, ClientCredentialsGrant, CredentialForUse, Directory, MintResult, PodIdentity,
};
pub use dns::{DnsAllowList, DnsAnswer, DnsConfig, DnsDenial, DnsPolicy, DnsServer, DnsTransport};
pub use gate::{
    ConnId, ConnInfo, ConnKind, Decision, Denial, Forward, Gate, Outcome, ProxyRefusal, RequestHead, RequestSummary,
    Scheme, Verdict,
};
pub use policy_dns::PolicyDns;
pub use policy_gate::{PolicyGate, PolicyGateConfig};
pub use server::ProxyServer;
pub use unknown_peers::{UnknownKind, UnknownPeers};
pub use upstream::is_internal;
