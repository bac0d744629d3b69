//! Integration tests: the real server on port 0 against a fresh database, real sandboxes, spoken to over HTTP.

mod data_perms;
mod harness;
mod http_limits;
mod idempotency_secrets;
mod idle;
mod metrics_labels;
mod quotas_paging;
mod smaller_hardening;
mod snapshot_index;

mod activity;
mod api_account_takeover;
mod api_audit;
mod api_config;
mod api_errors;
mod api_identity;
mod api_login_throttle;
mod authz_walk;
mod cli;
mod conformance;
mod crash;
mod credentials;
mod egress;
mod egress_attacks;
mod egress_e2e;
mod egress_rig;
mod egress_task;
mod exec;
mod fork;
mod openapi_drift;
mod secrets;
mod task_run;
mod task_uploads;
mod tasks;
mod workspace_faults;
mod workspaces;
