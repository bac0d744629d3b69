//! The caps policy and its pure evaluation: the typed caps.yaml model (`model`), glob matching (`glob`), the merge
//! provider → role (`merge`), request normalisation (`normalise`), allow/deny evaluation (`evaluate`), transforms
//! with credential and secret lookup (`transform`), budget accounting (`budget`), the 403/429 bodies
//! (`response`) and the audit view of a decision (`audit_view`). No I/O: the proxy supplies requests, lookups and counter storage.

mod audit_view;
mod budget;
mod evaluate;
mod glob;
mod merge;
mod model;
mod normalise;
mod response;
mod transform;

#[cfg(test)]
mod tests;

pub use audit_view::*;
pub use budget::*;
pub use evaluate::*;
pub use merge::*;
pub use model::*;
pub use normalise::*;
pub use response::*;
pub use transform::*;
