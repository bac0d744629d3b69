//! The domain entities the store keeps and the API shows: organisations, people, keys, providers, roles, workspaces,
//! snapshots, secrets and credentials.

mod identity;
mod provider;
mod role;
mod secret;
mod task;
mod workspace;

pub use identity::*;
pub use provider::*;
pub use role::*;
pub use secret::*;
pub use task::*;
pub use workspace::*;
