//! evershell-core: the domain without I/O — typed ids, timestamps, scopes and roles, the workspace state machine,
//! caps.yaml parsing and the pure caps policy evaluation, the audit model and the one domain error.

pub mod agent_wire;
pub mod audit;
pub mod caps;
pub mod error;
pub mod exec;
pub mod files;
pub mod idle;
pub mod ids;
pub mod lifecycle;
pub mod model;
pub mod names;
pub mod policy;
pub mod scope;
pub mod task;
pub mod time;

pub use error::{Error, ErrorCode, FieldErrors, Result};
pub use time::Timestamp;
