//! Encryption at rest for secret and credential material: XChaCha20-Poly1305 (RustCrypto `chacha20poly1305`) under
//! the deployment's 256-bit master key, a fresh random 192-bit nonce per value, and the owning row's id as
//! associated data — so a sealed value copied into another row (or another org's row) does not open.
//!
//! The key comes from `EVERSHELL_MASTER_KEY_FILE` (`master_key_file`) or is generated once into
//! `<data_dir>/master.key` (mode 0600). A key file that its group or others can access is refused. A check value
//! sealed under the key is kept in the store, so a server started with the wrong key refuses to start instead of
//! failing every later read.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use evershell_core::model::Sealed;
use evershell_core::{Error, Result};
use rand::Rng;
use zeroize::Zeroizing;

/// Bytes of the random nonce that starts every sealed value.
const NONCE_LEN: usize = 24;
/// Bytes of the Poly1305 tag that ends it.
const TAG_LEN: usize = 16;
/// File name of the generated key in the data directory.
pub const KEY_FILE_NAME: &str = "master.key";
/// The server key (in the store) holding the check value.
const CHECK_NAME: &str = "master_key_check";
const CHECK_PLAINTEXT: &[u8] = b"evershell master key check v1";

/// The master key. Its `Debug` is redacted and its bytes are wiped when dropped.
#[derive(Clone)]
pub struct MasterKey {
    key: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self { key: Zeroizing::new(bytes) }
    }

    /// A new random key.
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        rand::rng().fill(&mut k[..]);
        Self::from_bytes(k)
    }

    /// The key file's text: 64 lowercase hex characters and a newline.
    pub fn to_file_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{}\n", hex::encode(&self.key[..])))
    }

    fn parse(text: &str) -> anyhow::Result<Self> {
        let t = text.trim();
        let bytes = Zeroizing::new(hex::decode(t).map_err(|_| anyhow!("must hold 64 hex characters (32 bytes)"))?);
        let arr: [u8; 32] =
            bytes.as_slice().try_into().map_err(|_| anyhow!("must hold 64 hex characters (32 bytes)"))?;
        Ok(Self::from_bytes(arr))
    }

    /// Read a key file, refusing one its group or others can access.
    pub fn read_file(path: &Path) -> anyhow::Result<Self> {
        let meta =
            std::fs::metadata(path).with_context(|| format!("reading the master key file {}", path.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "the master key file {} is accessible to its group or others (mode {mode:04o}); make it readable by \
                 the server alone (chmod 600)",
                path.display()
            );
        }
        let text = Zeroizing::new(
            std::fs::read_to_string(path).with_context(|| format!("reading the master key file {}", path.display()))?,
        );
        Self::parse(&text).with_context(|| format!("the master key file {}", path.display()))
    }

    /// The key of a deployment: from `explicit` (which must exist), else `<data_dir>/master.key`, generated there
    /// (0600, written once, never overwritten) when missing. Returns the key and the file it lives in.
    pub fn load_or_create(explicit: Option<&Path>, data_dir: &Path) -> anyhow::Result<(Self, PathBuf)> {
        if let Some(p) = explicit {
            return Ok((Self::read_file(p)?, p.to_path_buf()));
        }
        let path = data_dir.join(KEY_FILE_NAME);
        let created = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path);
        match created {
            Ok(mut f) => {
                let key = Self::generate();
                f.write_all(key.to_file_text().as_bytes())
                    .and_then(|()| f.sync_all())
                    .with_context(|| format!("writing the new master key {}", path.display()))?;
                tracing::warn!(path = %path.display(), "generated a new master key: back it up with the database");
                Ok((key, path))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok((Self::read_file(&path)?, path)),
            Err(e) => Err(e).with_context(|| format!("creating the master key file {}", path.display())),
        }
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&*self.key).into())
    }

    /// Encrypt `plaintext` for the row `aad` (its id).
    pub fn seal(&self, aad: &str, plaintext: &[u8]) -> Result<Sealed> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill(&mut nonce[..]);
        let ct = self
            .cipher()
            .encrypt(&XNonce::from(nonce), Payload { msg: plaintext, aad: aad.as_bytes() })
            .map_err(|_| Error::internal(anyhow!("sealing failed")))?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(Sealed(out))
    }

    /// Decrypt a value sealed for the row `aad`. A wrong key, another row's value or any tampering fails.
    pub fn open(&self, aad: &str, sealed: &Sealed) -> Result<Zeroizing<Vec<u8>>> {
        let b = &sealed.0;
        if b.len() < NONCE_LEN + TAG_LEN {
            return Err(Error::internal(anyhow!("sealed value of {aad} is truncated")));
        }
        let (nonce, ct) = b.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(Error::internal)?;
        self.cipher()
            .decrypt(&XNonce::from(nonce), Payload { msg: ct, aad: aad.as_bytes() })
            .map(Zeroizing::new)
            .map_err(|_| {
                Error::internal(anyhow!(
                    "sealed value of {aad} does not open under this master key (wrong key or tampered)"
                ))
            })
    }

    /// Check the key against the store's check value (created with this key on first use). A different key than
    /// the one the database's material was sealed with is refused here, at start-up.
    pub async fn verify_against(&self, store: &dyn evershell_store::Store) -> anyhow::Result<()> {
        let candidate = self.seal(CHECK_NAME, CHECK_PLAINTEXT).map_err(|e| anyhow!("{e}"))?;
        let stored = store.server_key(CHECK_NAME, &candidate.0).await.map_err(|e| anyhow!("{e}"))?;
        match self.open(CHECK_NAME, &Sealed(stored)) {
            Ok(p) if p.as_slice() == CHECK_PLAINTEXT => Ok(()),
            _ => bail!(
                "the master key does not match the one this database's secrets were sealed with; start the server \
                 with the original key file (master_key_file / EVERSHELL_MASTER_KEY_FILE)"
            ),
        }
    }
}

/// A secret string from a request body (a secret's value, an API key, a password). `Debug` is redacted and the bytes
/// are wiped on drop, so a logged request struct shows nothing.
#[derive(Clone, Default)]
pub struct SecretString(Zeroizing<String>);

impl<'de> serde::Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d).map(Self::new)
    }
}

impl SecretString {
    pub fn new(s: impl Into<String>) -> Self {
        Self(Zeroizing::new(s.into()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_with_a_fresh_nonce_and_opens_only_for_its_row_and_key() {
        let k = MasterKey::generate();
        let a = k.seal("sec_A", b"hunter2").unwrap();
        let b = k.seal("sec_A", b"hunter2").unwrap();
        assert_ne!(a, b, "same plaintext, different nonce");
        assert_eq!(a.0.len(), NONCE_LEN + 7 + TAG_LEN);
        assert!(!a.0.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(k.open("sec_A", &a).unwrap().as_slice(), b"hunter2");
        // Swapped into another row: refused.
        assert!(k.open("sec_B", &a).is_err());
        // Another key: refused.
        assert!(MasterKey::generate().open("sec_A", &a).is_err());
        // Tampered or truncated: refused.
        let mut t = a.clone();
        let last = t.0.len() - 1;
        t.0[last] ^= 1;
        assert!(k.open("sec_A", &t).is_err());
        assert!(k.open("sec_A", &Sealed(a.0[..10].to_vec())).is_err());
    }

    #[test]
    fn debug_never_shows_material() {
        let k = MasterKey::from_bytes([0xab; 32]);
        assert_eq!(format!("{k:?}"), "MasterKey(<redacted>)");
        let s = k.seal("x", b"topsecret").unwrap();
        let shown = format!("{s:?}");
        assert!(shown.contains("redacted") && !shown.contains("ab"), "{shown}");
    }

    #[test]
    fn generates_once_with_0600_and_refuses_readable_files() {
        let dir = tempfile::tempdir().unwrap();
        let (k1, path) = MasterKey::load_or_create(None, dir.path()).unwrap();
        assert_eq!(path, dir.path().join(KEY_FILE_NAME));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let (k2, _) = MasterKey::load_or_create(None, dir.path()).unwrap();
        let sealed = k1.seal("r", b"v").unwrap();
        assert_eq!(k2.open("r", &sealed).unwrap().as_slice(), b"v", "the second start reads the same key");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = MasterKey::load_or_create(None, dir.path()).unwrap_err().to_string();
        assert!(e.contains("group or others") && e.contains("0644"), "{e}");

        let explicit = dir.path().join("given.key");
        std::fs::write(&explicit, "not hex").unwrap();
        std::fs::set_permissions(&explicit, std::fs::Permissions::from_mode(0o400)).unwrap();
        let e = format!("{:#}", MasterKey::load_or_create(Some(&explicit), dir.path()).unwrap_err());
        assert!(e.contains("64 hex characters"), "{e}");
        let missing = dir.path().join("missing.key");
        assert!(MasterKey::load_or_create(Some(&missing), dir.path()).is_err(), "an explicit file must exist");
    }
}
