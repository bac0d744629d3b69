//! Helpers for request bodies: PATCH's "absent vs null" (`Option<Option<T>>`) and trimming optional text.

use serde::{Deserialize, Deserializer};

/// Deserialize a field that distinguishes "absent" (`None`, via `#[serde(default)]`) from `null` (`Some(None)`).
pub fn double_option<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Apply a PATCH field: absent keeps `current`, `null` clears it, a value replaces it.
pub fn patch<T: Clone>(current: &Option<T>, change: &Option<Option<T>>) -> Option<T> {
    match change {
        None => current.clone(),
        Some(v) => v.clone(),
    }
}
