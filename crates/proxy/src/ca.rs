//! The platform CA: created once in a directory given to the proxy (`ca.pem` 0644, `ca.key` 0600), refused when its
//! key is open to group or others, and leaf certificates minted per SNI from it (cached, bounded, re-minted daily).

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::{CertifiedKey, SigningKey};

/// File name of the CA certificate inside the CA directory (world-readable: pods trust it).
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside the CA directory (owner-only).
pub const CA_KEY_FILE: &str = "ca.key";

const CA_COMMON_NAME: &str = "evershell platform CA";
const LEAF_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
const LEAF_REMINT_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Why the CA could not be loaded or a leaf minted.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: the CA key is open to group or others (mode {mode:o}); it must be 0600")]
    KeyExposed { path: PathBuf, mode: u32 },
    #[error("{present} exists without {missing}: restore both or remove both")]
    HalfPresent { present: PathBuf, missing: PathBuf },
    #[error("{0}: the certificate does not match the CA key")]
    Mismatch(PathBuf),
    #[error("CA material: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("leaf key: {0}")]
    Key(#[from] rustls::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io { path: path.to_path_buf(), source }
}

/// The platform CA and its bounded cache of minted leaves.
pub struct PlatformCa {
    dir: PathBuf,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    leaf_key: KeyPair,
    leaf_signer: Arc<dyn SigningKey>,
    leaves: Mutex<LeafCache>,
    serial: AtomicU64,
}

struct LeafCache {
    cap: usize,
    map: HashMap<String, (Arc<CertifiedKey>, Instant)>,
    order: VecDeque<String>,
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, "evershell");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

fn now_offset(delta_secs: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::seconds(delta_secs)
}

impl PlatformCa {
    /// Loads the CA from `dir`, or creates it there (and the directory, 0700) when neither file exists.
    pub fn load_or_create(dir: &Path, leaf_cache: usize) -> Result<Self, CaError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let (cert_pem, key) = match (cert_path.exists(), key_path.exists()) {
            (true, true) => {
                let mode = fs::metadata(&key_path).map_err(io_err(&key_path))?.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(CaError::KeyExposed { path: key_path, mode });
                }
                let key_pem = fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
                let cert_pem = fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
                (cert_pem, KeyPair::from_pem(&key_pem)?)
            }
            (false, false) => Self::create(dir, &cert_path, &key_path)?,
            (true, false) => return Err(CaError::HalfPresent { present: cert_path, missing: key_path }),
            (false, true) => return Err(CaError::HalfPresent { present: key_path, missing: cert_path }),
        };
        let cert_der = pem_to_der(&cert_pem).ok_or_else(|| CaError::Mismatch(cert_path.clone()))?;
        if !contains(&cert_der, key.public_key_raw()) {
            return Err(CaError::Mismatch(cert_path));
        }
        let leaf_key = KeyPair::generate()?;
        let leaf_signer = rustls::crypto::ring::sign::any_supported_type(&PrivateKeyDer::Pkcs8(
            PrivatePkcs8KeyDer::from(leaf_key.serialize_der()),
        ))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            cert_pem,
            cert_der,
            issuer: Issuer::new(ca_params(), key),
            leaf_key,
            leaf_signer,
            leaves: Mutex::new(LeafCache { cap: leaf_cache.max(1), map: HashMap::new(), order: VecDeque::new() }),
            serial: AtomicU64::new(0),
        })
    }

    fn create(dir: &Path, cert_path: &Path, key_path: &Path) -> Result<(String, KeyPair), CaError> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err(dir))?;
        let key = KeyPair::generate()?;
        let mut params = ca_params();
        params.not_before = now_offset(-24 * 3600);
        params.not_after = now_offset(10 * 365 * 24 * 3600);
        params.serial_number = Some(SerialNumber::from(unique_serial(0).to_vec()));
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        let mut f =
            fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(key_path).map_err(io_err(key_path))?;
        f.write_all(key.serialize_pem().as_bytes()).and_then(|_| f.sync_all()).map_err(io_err(key_path))?;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(cert_path)
            .map_err(io_err(cert_path))?;
        f.write_all(cert_pem.as_bytes()).and_then(|_| f.sync_all()).map_err(io_err(cert_path))?;
        // The umask may have narrowed the certificate's mode; pods must be able to read it.
        fs::set_permissions(cert_path, fs::Permissions::from_mode(0o644)).map_err(io_err(cert_path))?;
        tracing::info!(dir = %dir.display(), "platform CA created");
        Ok((cert_pem, key))
    }

    /// The CA certificate in PEM (what pods add to their trust bundle).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate in DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Path of `ca.pem`.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CA_CERT_FILE)
    }

    /// A leaf for `host` (lower-case DNS name), from the cache when one younger than a day is there.
    pub fn leaf(&self, host: &str) -> Result<Arc<CertifiedKey>, CaError> {
        {
            let cache = self.leaves.lock().expect("leaf cache");
            if let Some((leaf, minted)) = cache.map.get(host)
                && minted.elapsed() < LEAF_REMINT_AFTER
            {
                return Ok(leaf.clone());
            }
        }
        let leaf = Arc::new(self.mint(host)?);
        let mut cache = self.leaves.lock().expect("leaf cache");
        if cache.map.insert(host.to_string(), (leaf.clone(), Instant::now())).is_none() {
            cache.order.push_back(host.to_string());
            while cache.order.len() > cache.cap {
                if let Some(old) = cache.order.pop_front() {
                    cache.map.remove(&old);
                }
            }
        }
        Ok(leaf)
    }

    /// How many leaves the cache holds.
    pub fn cached_leaves(&self) -> usize {
        self.leaves.lock().expect("leaf cache").map.len()
    }

    fn mint(&self, host: &str) -> Result<CertifiedKey, CaError> {
        let mut params = CertificateParams::new(vec![host.to_string()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        params.not_before = now_offset(-3600);
        params.not_after = now_offset(LEAF_LIFETIME.as_secs() as i64);
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let n = self.serial.fetch_add(1, Ordering::Relaxed) + 1;
        params.serial_number = Some(SerialNumber::from(unique_serial(n).to_vec()));
        let cert = params.signed_by(&self.leaf_key, &self.issuer)?;
        tracing::debug!(host, "leaf certificate minted");
        Ok(CertifiedKey::new(vec![cert.der().clone(), self.cert_der.clone()], self.leaf_signer.clone()))
    }
}

/// A positive 16-byte serial: wall-clock nanoseconds and a per-process counter.
fn unique_serial(n: u64) -> [u8; 16] {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&nanos.to_be_bytes());
    out[8..].copy_from_slice(&n.to_be_bytes());
    out[0] &= 0x7f;
    out[0] |= 0x01;
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn pem_to_der(pem: &str) -> Option<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_with_modes_and_reloaded_identically() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let ca = PlatformCa::load_or_create(&dir, 8).unwrap();
        let mode = |f: &str| fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(CA_KEY_FILE), 0o600);
        assert_eq!(mode(CA_CERT_FILE), 0o644);
        let again = PlatformCa::load_or_create(&dir, 8).unwrap();
        assert_eq!(ca.cert_pem(), again.cert_pem());
    }

    #[test]
    fn key_readable_by_others_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        PlatformCa::load_or_create(tmp.path(), 8).unwrap();
        fs::set_permissions(tmp.path().join(CA_KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        let err = PlatformCa::load_or_create(tmp.path(), 8).err().expect("refused");
        assert!(matches!(err, CaError::KeyExposed { mode: 0o644, .. }), "{err}");
    }

    #[test]
    fn half_a_ca_is_refused_and_a_foreign_key_is_a_mismatch() {
        let tmp = tempfile::tempdir().unwrap();
        PlatformCa::load_or_create(tmp.path(), 8).unwrap();
        let key = fs::read(tmp.path().join(CA_KEY_FILE)).unwrap();
        fs::remove_file(tmp.path().join(CA_KEY_FILE)).unwrap();
        assert!(matches!(PlatformCa::load_or_create(tmp.path(), 8), Err(CaError::HalfPresent { .. })));
        let other = tempfile::tempdir().unwrap();
        PlatformCa::load_or_create(other.path(), 8).unwrap();
        fs::copy(other.path().join(CA_KEY_FILE), tmp.path().join(CA_KEY_FILE)).unwrap();
        assert!(matches!(PlatformCa::load_or_create(tmp.path(), 8), Err(CaError::Mismatch(_))));
        drop(key);
    }

    #[test]
    fn leaves_are_cached_per_host_and_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = PlatformCa::load_or_create(tmp.path(), 2).unwrap();
        let a = ca.leaf("a.test").unwrap();
        assert!(Arc::ptr_eq(&a, &ca.leaf("a.test").unwrap()));
        assert_eq!(a.cert.len(), 2, "leaf then CA");
        ca.leaf("b.test").unwrap();
        ca.leaf("c.test").unwrap();
        assert_eq!(ca.cached_leaves(), 2);
        assert!(!Arc::ptr_eq(&a, &ca.leaf("a.test").unwrap()), "a.test was evicted first");
    }
}
