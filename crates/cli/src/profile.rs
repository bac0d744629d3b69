//! Where the client finds the server and its key: flags, then `EVERSHELL_URL` / `EVERSHELL_API_KEY`, then the
//! profile `evershell login` wrote to `$XDG_CONFIG_HOME/evershell/credentials` (default `~/.config/…`), as TOML with
//! `url` and `api_key`, readable only by its owner.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Profile {
    pub url: Option<String>,
    pub api_key: Option<String>,
}

pub fn path() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("evershell").join("credentials")
}

pub fn load() -> Profile {
    std::fs::read_to_string(path()).ok().and_then(|s| parse(&s)).unwrap_or_default()
}

fn parse(s: &str) -> Option<Profile> {
    let mut p = Profile::default();
    for line in s.lines() {
        let Some((k, v)) = line.split_once('=') else { continue };
        let v = v.trim().trim_matches('"').to_string();
        match k.trim() {
            "url" => p.url = Some(v),
            "api_key" => p.api_key = Some(v),
            _ => {}
        }
    }
    Some(p)
}

pub fn save(p: &Profile) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&path)?;
    let q = |v: &Option<String>| v.as_deref().unwrap_or("").replace('"', "");
    writeln!(f, "url = \"{}\"\napi_key = \"{}\"", q(&p.url), q(&p.api_key))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_what_it_writes() {
        let p = super::parse("url = \"http://127.0.0.1:7400\"\napi_key = \"sk_live_x\"\n").unwrap();
        assert_eq!(p.url.as_deref(), Some("http://127.0.0.1:7400"));
        assert_eq!(p.api_key.as_deref(), Some("sk_live_x"));
    }
}
