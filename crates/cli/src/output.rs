//! Printing results: JSON with `--json`, otherwise a short human summary.

use serde::Serialize;

pub fn print_json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Print `v` as JSON when `json`, else the `human` text.
pub fn emit<T: Serialize>(json: bool, v: &T, human: impl FnOnce(&T) -> String) -> anyhow::Result<()> {
    if json {
        print_json(v)
    } else {
        println!("{}", human(v));
        Ok(())
    }
}
