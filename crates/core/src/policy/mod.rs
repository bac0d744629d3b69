//! The caps policy and its pure evaluation: the typed caps.yaml model (`model`), glob matching (`glob`), the merge
//! provider → role (`merge`), request normalisation (`normalise`), allow/deny evaluation (`evaluate`), transforms
//! with credential and secret lookup (`transform`), budget accounting (`budget`) and the 403/429 bodies
//! (`response`). No I/O: the proxy supplies requests, lookups and counter storage.

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

pub use budget::*;
pub use evaluate::*;
pub use merge::*;
pub use model::*;
pub use normalise::*;
pub use response::*;
pub use transform::*;
