//! The `evershell` binary's library half: configuration and the server, so integration tests can start the real
//! server in-process on port 0.

pub mod config;
pub mod datadir;
pub mod egress;
pub mod listener;
pub mod server;
