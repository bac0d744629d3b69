//! Integration tests: the real server on port 0 against a fresh database, real sandboxes, spoken to over HTTP.

mod harness;

mod api_audit;
mod api_config;
mod api_errors;
mod api_identity;
mod authz_walk;
mod cli;
mod crash;
mod credentials;
mod exec;
mod openapi_drift;
mod secrets;
mod workspace_faults;
mod workspaces;
