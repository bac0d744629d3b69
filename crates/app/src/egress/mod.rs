//! The control plane's side of the egress proxy: the `Directory` the proxy reads through (`directory`: pod address →
//! workspace, role, provider and merged caps policy; secrets and credentials decrypted for use; budget counters;
//! mint bookkeeping; audit rows) and the pod network observation the reconciler keeps (`pod_network`: the pod's
//! address and its short-lived capability token, recorded at start, renewed while it runs, cleared at stop), and the
//! per-task token that gives the running task's requests its identity (`task_capability`).

pub mod directory;
pub mod pod_network;
pub mod task_capability;

pub use directory::StoreDirectory;
pub use pod_network::CAPABILITY_TTL;
pub use task_capability::TASK_CAPABILITY_TTL;
