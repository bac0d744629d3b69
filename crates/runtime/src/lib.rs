//! evershell-runtime: the `PodRuntime` trait the reconciler drives, the `local` runtime (one bubblewrap sandbox per
//! pod; the default), `sim` (in memory with scripted faults, for the reconciler's tests), and `AgentClient`, which speaks HTTP to the `evershell agent` service inside a pod.
//!
//! A pod is one incarnation of a workspace: a directory of files (`/workspace` and friends) plus, while it runs, a
//! sandbox process. Files and process are separate on purpose: stopping the sandbox keeps the files, so they can be
//! saved to a snapshot, and a failed sandbox's files survive for a later resume.

mod agent_client;
mod agent_tasks;
pub mod local;
mod pod;
pub mod sim;

pub use agent_client::{AgentClient, AgentError, Download};
pub use agent_tasks::DeliveryAnswer;
pub use local::{LocalRuntime, LocalRuntimeConfig};
pub use pod::{PodError, PodLimits, PodRuntime, PodSpec, PrepareReport};
pub use sim::{SimOp, SimRuntime};
