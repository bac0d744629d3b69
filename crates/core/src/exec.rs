//! A command run inside a pod (`sandbox/exec`): what is asked, what comes back, and the bounds on both. The agent
//! runs it; the control plane only relays, so these types are shared by both sides.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Longest a command may run when the caller says nothing.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Longest a command may ever run.
pub const MAX_TIMEOUT_MS: u64 = 600_000;
/// Bytes of stdout and of stderr kept (each); the rest is counted and dropped.
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;
/// Largest `stdin` accepted.
pub const MAX_STDIN_BYTES: usize = 1024 * 1024;
/// How long, once the command has exited, its output is still read (background children may hold the pipes).
pub const DRAIN_MS: u64 = 200;

/// A command to run in the pod, as the sandbox user, in `/workspace`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// Program and arguments (no shell unless you name one: `["sh", "-c", "…"]`).
    #[schema(min_items = 1)]
    pub argv: Vec<String>,
    /// Text given on standard input (default: none, stdin is `/dev/null`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Deadline in milliseconds (default 30,000, at most 600,000); at the deadline the whole process group is killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 600000)]
    pub timeout_ms: Option<u64>,
}

/// How the command ended and what it printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExecResult {
    /// Exit status; `null` when the command was killed by a signal.
    pub exit_code: Option<i32>,
    /// The signal that ended it, if any.
    pub signal: Option<i32>,
    /// Standard output (UTF-8, invalid sequences replaced), at most 1 MiB.
    pub stdout: String,
    /// Standard error, likewise.
    pub stderr: String,
    /// Some output was dropped past the cap.
    pub truncated: bool,
    /// The deadline passed and the process group was killed.
    pub timed_out: bool,
    pub duration_ms: u64,
}

impl ExecRequest {
    /// Check the request's own bounds; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return Err("argv: needs at least the program".into());
        }
        if self.argv.iter().any(|a| a.contains('\0')) {
            return Err("argv: NUL byte".into());
        }
        if self.stdin.as_ref().is_some_and(|s| s.len() > MAX_STDIN_BYTES) {
            return Err(format!("stdin: more than {MAX_STDIN_BYTES} bytes"));
        }
        if self.env.keys().any(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
            || self.env.values().any(|v| v.contains('\0'))
        {
            return Err("env: names must be non-empty without `=`; no NUL bytes".into());
        }
        match self.timeout_ms {
            Some(0) => Err("timeout_ms: must be at least 1".into()),
            Some(t) if t > MAX_TIMEOUT_MS => Err(format!("timeout_ms: at most {MAX_TIMEOUT_MS}")),
            _ => Ok(()),
        }
    }

    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS).min(MAX_TIMEOUT_MS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(argv: &[&str]) -> ExecRequest {
        ExecRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            stdin: None,
            env: BTreeMap::new(),
            timeout_ms: None,
        }
    }

    #[test]
    fn validates_bounds() {
        assert!(req(&["true"]).validate().is_ok());
        assert!(req(&[]).validate().unwrap_err().starts_with("argv"));
        let mut r = req(&["true"]);
        r.timeout_ms = Some(MAX_TIMEOUT_MS + 1);
        assert!(r.validate().unwrap_err().starts_with("timeout_ms"));
        r.timeout_ms = Some(0);
        assert!(r.validate().is_err());
        r.timeout_ms = None;
        r.env.insert("A=B".into(), "x".into());
        assert!(r.validate().unwrap_err().starts_with("env"));
        assert_eq!(req(&["x"]).timeout().as_millis() as u64, DEFAULT_TIMEOUT_MS);
    }
}
