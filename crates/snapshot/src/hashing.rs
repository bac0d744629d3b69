//! Digests of the compressed archive bytes:
//! - [`Digest`]: sha256 + length, the value in the manifest that `verify` and `restore` check. Uses `ring`'s SHA-256
//!   (assembly; ~2× the portable `sha2` code on CPUs without SHA extensions), as it is on the capture hot path.
//! - [`Fingerprint`]: xxh3-128 + length, what capture's read-back compares (stored bytes == uploaded bytes) at
//!   memory speed instead of a second SHA-256 pass.

use std::io::{self, Read};
use std::sync::mpsc::SyncSender;

use bytes::{Bytes, BytesMut};

use ring::digest::{Context, SHA256};
use xxhash_rust::xxh3::Xxh3;

use crate::bridge::CHUNK;

/// Buffer used when draining a reader to the end.
const DRAIN_BUF: usize = 256 * 1024;

/// Running sha256 and length of a byte sequence.
pub(crate) struct Digest {
    hasher: Context,
    bytes: u64,
}

impl Default for Digest {
    fn default() -> Self {
        Self { hasher: Context::new(&SHA256), bytes: 0 }
    }
}

impl Digest {
    pub(crate) fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.bytes += data.len() as u64;
    }

    /// Hex sha256 and total length.
    pub(crate) fn finish(self) -> (String, u64) {
        (hex::encode(self.hasher.finish()), self.bytes)
    }
}

/// Running xxh3-128 and length: a fast equality check between two copies of the same bytes.
#[derive(Default)]
pub(crate) struct Fingerprint {
    hasher: Xxh3,
    bytes: u64,
}

impl Fingerprint {
    pub(crate) fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.bytes += data.len() as u64;
    }

    /// Hex xxh3-128 and total length.
    pub(crate) fn finish(self) -> (String, u64) {
        (format!("{:032x}", self.hasher.digest128()), self.bytes)
    }
}

/// Read `reader` to the end, feeding every chunk to `sink`.
pub(crate) fn drain(mut reader: impl Read, mut sink: impl FnMut(&[u8])) -> io::Result<()> {
    let mut buf = vec![0u8; DRAIN_BUF];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => sink(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Read `source` to the end in [`CHUNK`]-sized pieces, digesting each and handing it to `tx`. `Ok(None)` when the
/// receiver went away before the end (so the digest would be partial).
pub(crate) fn feed(mut source: impl Read, tx: SyncSender<Bytes>) -> io::Result<Option<(String, u64)>> {
    let mut digest = Digest::default();
    loop {
        let mut buf = BytesMut::zeroed(CHUNK);
        let n = match source.read(&mut buf) {
            Ok(0) => return Ok(Some(digest.finish())),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        buf.truncate(n);
        let chunk = buf.freeze();
        digest.update(&chunk);
        if tx.send(chunk).is_err() {
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_digests_and_hands_on_every_byte() {
        let data: Vec<u8> = (0..3 * CHUNK + 5).map(|i| i as u8).collect();
        let (tx, rx) = std::sync::mpsc::sync_channel(16);
        let (sha, n) = feed(&data[..], tx).unwrap().unwrap();
        let received: Vec<u8> = rx.iter().flat_map(|c| c.to_vec()).collect();
        assert_eq!(received, data);
        assert_eq!(n, data.len() as u64);
        let mut digest = Digest::default();
        drain(&data[..], |c| digest.update(c)).unwrap();
        assert_eq!(digest.finish().0, sha);
        let mut hello = Digest::default();
        hello.update(b"hello world");
        assert_eq!(hello.finish().0, "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9");
    }

    #[test]
    fn feed_reports_a_receiver_that_went_away() {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        drop(rx);
        assert_eq!(feed(&[1u8; 10][..], tx).unwrap(), None);
    }

    #[test]
    fn fingerprints_depend_on_every_byte_and_on_chunking_not_at_all() {
        let data = vec![3u8; 100_000];
        let mut whole = Fingerprint::default();
        whole.update(&data);
        let mut parts = Fingerprint::default();
        data.chunks(777).for_each(|c| parts.update(c));
        let (a, b) = (whole.finish(), parts.finish());
        assert_eq!(a, b);
        let mut flipped = data.clone();
        flipped[50_000] ^= 1;
        let mut other = Fingerprint::default();
        other.update(&flipped);
        assert_ne!(other.finish(), a);
    }
}
