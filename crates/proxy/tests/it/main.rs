//! Proxy integration tests: a real proxy on 127.0.0.1:0, real TLS upstreams with a test CA, real clients.

mod dns;
mod forwarding;
mod harness;
mod policy_gate;
mod protocols;
mod refusals;
