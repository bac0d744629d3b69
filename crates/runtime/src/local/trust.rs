//! The CA bundle pods trust: the host's system bundle plus the egress proxy's platform CA certificate (never its
//! key), written into `<pods_dir>/.trust/` whenever either changes and bound read-only into every sandbox (spares
//! too) over the distro bundle paths tools read, at `/etc/evershell/`, and named by the usual environment variables
//! (`SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`, `CURL_CA_BUNDLE`, `GIT_SSL_CAINFO`, `NODE_EXTRA_CA_CERTS`, `PIP_CERT`)
//! for the agent and everything it runs.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, bail};

use super::layout;

/// The whole bundle inside a pod.
pub const POD_BUNDLE: &str = "/etc/evershell/ca-bundle.pem";
/// The platform CA alone inside a pod (for `NODE_EXTRA_CA_CERTS`, which adds to Node's own roots).
pub const POD_PLATFORM_CA: &str = "/etc/evershell/platform-ca.pem";

/// What the agent (and every command it runs) is told.
pub const ENV: &[(&str, &str)] = &[
    ("SSL_CERT_FILE", POD_BUNDLE),
    ("REQUESTS_CA_BUNDLE", POD_BUNDLE),
    ("CURL_CA_BUNDLE", POD_BUNDLE),
    ("GIT_SSL_CAINFO", POD_BUNDLE),
    ("PIP_CERT", POD_BUNDLE),
    ("NODE_EXTRA_CA_CERTS", POD_PLATFORM_CA),
];

/// Where distributions keep the system bundle; the first present on the host is the bundle's base.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/ssl/cert.pem",
];
/// Host directories bound into the sandbox (`bwrap::HOST_ETC`) that may hold a bundle path: a file can be bound
/// over a path inside them only where the host has it; outside them bubblewrap creates the path on its own root.
const BOUND_FROM_HOST: &[&str] = &["/etc/ssl", "/etc/ca-certificates"];
/// Largest platform CA file read; a certificate is a few KiB.
const MAX_CA_BYTES: u64 = 64 * 1024;
/// Largest system bundle read.
const MAX_SYSTEM_BYTES: u64 = 16 << 20;

/// The files bound into a sandbox.
#[derive(Debug, Clone)]
pub struct Binds {
    pub bundle: PathBuf,
    pub platform_ca: PathBuf,
    /// Paths inside the sandbox the bundle is bound over (besides `POD_BUNDLE`).
    pub over: Vec<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn stamp(p: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(p).ok()?;
    Some(Stamp { ino: m.ino(), len: m.len(), mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128 })
}

#[derive(Debug, Default)]
struct State {
    /// Stamps of (the platform CA, the system bundle) the files were last written from; `None`: never looked.
    seen: Option<(Option<Stamp>, Option<Stamp>)>,
    binds: Option<Binds>,
    /// Bumped each time the bound files change (spares set up before are replaced).
    generation: u64,
}

/// The pods' trust store, kept in step with the platform CA file.
pub struct Trust {
    ca_file: PathBuf,
    dir: PathBuf,
    state: Mutex<State>,
}

/// What `refresh` found.
#[derive(Debug, Clone)]
pub struct Current {
    /// `None`: no platform CA yet (pods see the host's bundle as it is).
    pub binds: Option<Binds>,
    pub generation: u64,
}

impl Trust {
    pub fn new(ca_file: PathBuf, pods_dir: &Path) -> Self {
        Self { ca_file, dir: pods_dir.join(".trust"), state: Mutex::default() }
    }

    /// The files to bind, rewritten first when the platform CA or the system bundle changed since the last call.
    /// A missing or unusable CA file is logged (once per change) and leaves pods with the host's bundle.
    pub fn refresh(&self) -> Current {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let system = SYSTEM_BUNDLES.iter().map(Path::new).find(|p| p.is_file());
        let now = (stamp(&self.ca_file), system.and_then(stamp));
        if st.seen != Some(now) {
            st.seen = Some(now);
            st.generation += 1;
            st.binds = match now.0 {
                None => {
                    tracing::warn!(
                        path = %self.ca_file.display(),
                        "no platform CA certificate yet: pods trust only the host's CA bundle"
                    );
                    None
                }
                Some(_) => match self.write(system) {
                    Ok(b) => {
                        tracing::info!(path = %b.bundle.display(), "pods trust the platform CA");
                        Some(b)
                    }
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "pods do not trust the platform CA");
                        None
                    }
                },
            };
        }
        Current { binds: st.binds.clone(), generation: st.generation }
    }

    fn write(&self, system: Option<&Path>) -> anyhow::Result<Binds> {
        let ca = read_capped(&self.ca_file, MAX_CA_BYTES)?;
        let ca = String::from_utf8(ca).with_context(|| format!("{} is not PEM text", self.ca_file.display()))?;
        if !ca.contains("-----BEGIN CERTIFICATE-----") {
            bail!("{} holds no PEM certificate", self.ca_file.display());
        }
        // The key must never reach a pod: a file that holds one is refused outright.
        if ca.contains("PRIVATE KEY") {
            bail!("{} holds a private key; only the certificate may be given to pods", self.ca_file.display());
        }
        let mut bundle = match system {
            Some(p) => String::from_utf8_lossy(&read_capped(p, MAX_SYSTEM_BYTES)?).into_owned(),
            None => String::new(),
        };
        if !bundle.is_empty() && !bundle.ends_with('\n') {
            bundle.push('\n');
        }
        bundle.push_str("# evershell platform CA (egress proxy)\n");
        bundle.push_str(ca.trim_end());
        bundle.push('\n');
        std::fs::DirBuilder::new().recursive(true).mode(0o755).create(&self.dir)?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o755))?;
        let (bundle_path, ca_path) = (self.dir.join("ca-bundle.pem"), self.dir.join("platform-ca.pem"));
        layout::write_atomic(&ca_path, format!("{}\n", ca.trim_end()).as_bytes())
            .with_context(|| format!("writing {}", ca_path.display()))?;
        layout::write_atomic(&bundle_path, bundle.as_bytes())
            .with_context(|| format!("writing {}", bundle_path.display()))?;
        Ok(Binds {
            bundle: bundle_path,
            platform_ca: ca_path,
            over: SYSTEM_BUNDLES.iter().copied().filter(|p| bindable(p)).collect(),
        })
    }
}

fn read_capped(p: &Path, cap: u64) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let mut buf = Vec::new();
    f.take(cap + 1).read_to_end(&mut buf).with_context(|| format!("reading {}", p.display()))?;
    if buf.len() as u64 > cap {
        bail!("{} is larger than {cap} bytes", p.display());
    }
    Ok(buf)
}

/// Whether the bundle can be bound at `p` inside a sandbox: inside a directory bound from the host, only over a
/// regular file the host has there (a link follows to a path of its own); elsewhere bubblewrap makes the path.
fn bindable(p: &str) -> bool {
    match BOUND_FROM_HOST.iter().find(|d| Path::new(p).starts_with(d)) {
        Some(d) if Path::new(d).exists() => std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIBdGVzdA==\n-----END CERTIFICATE-----\n";

    #[test]
    fn the_bundle_follows_the_ca_file_and_never_takes_a_key() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = tmp.path().join("ca.pem");
        let t = Trust::new(ca.clone(), tmp.path());
        let first = t.refresh();
        assert!(first.binds.is_none());
        assert_eq!(t.refresh().generation, first.generation, "nothing changed");

        std::fs::write(&ca, CERT).unwrap();
        let now = t.refresh();
        assert!(now.generation > first.generation);
        let b = now.binds.expect("a bundle");
        let bundle = std::fs::read_to_string(&b.bundle).unwrap();
        assert!(bundle.ends_with(CERT), "{bundle}");
        assert_eq!(std::fs::read_to_string(&b.platform_ca).unwrap(), CERT);
        assert_eq!(std::fs::metadata(&b.bundle).unwrap().permissions().mode() & 0o777, 0o644);
        if Path::new("/etc/ssl/certs/ca-certificates.crt").is_file() {
            assert!(b.over.contains(&"/etc/ssl/certs/ca-certificates.crt"));
            assert!(bundle.len() > CERT.len() + 1000, "the system bundle is included");
        }

        std::fs::write(&ca, format!("{CERT}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")).unwrap();
        let refused = t.refresh();
        assert!(refused.binds.is_none(), "a file with a key is never bound");
        std::fs::write(&ca, "x".repeat(MAX_CA_BYTES as usize + 1)).unwrap();
        assert!(t.refresh().binds.is_none(), "oversized");
    }
}
