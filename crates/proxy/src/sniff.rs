//! The first bytes of a connection: TLS, an HTTP request line, or anything else; and the stream wrapper that
//! replays those bytes to whoever reads next.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::gate::ConnKind;

const METHODS: &[&[u8]] = &[b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH"];

/// Reads just enough to classify the connection; `None` when the peer closed before sending anything.
pub async fn classify<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Option<(ConnKind, Vec<u8>)>> {
    let mut buf = Vec::with_capacity(16);
    loop {
        let mut chunk = [0u8; 16];
        let n = stream.read(&mut chunk[..16 - buf.len()]).await?;
        if n == 0 {
            return Ok(if buf.is_empty() { None } else { Some((ConnKind::Unrecognised, buf)) });
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(kind) = kind_of(&buf) {
            return Ok(Some((kind, buf)));
        }
    }
}

/// `Some` once the prefix settles it; `None` while more bytes are needed.
pub fn kind_of(prefix: &[u8]) -> Option<ConnKind> {
    match prefix.first()? {
        // A TLS handshake record.
        0x16 => Some(ConnKind::Tls),
        b'A'..=b'Z' => {
            if let Some(sp) = prefix.iter().position(|&b| b == b' ') {
                return Some(if METHODS.contains(&&prefix[..sp]) {
                    ConnKind::PlainHttp
                } else {
                    ConnKind::Unrecognised
                });
            }
            let longest = METHODS.iter().map(|m| m.len()).max().unwrap_or(0);
            if prefix.len() > longest || !prefix.iter().all(u8::is_ascii_uppercase) {
                return Some(ConnKind::Unrecognised);
            }
            if METHODS.iter().any(|m| m.starts_with(prefix)) { None } else { Some(ConnKind::Unrecognised) }
        }
        _ => Some(ConnKind::Unrecognised),
    }
}

/// A stream that yields `prefix` before the inner stream's bytes.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self { prefix, pos: 0, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_prefixes() {
        assert_eq!(kind_of(&[0x16, 3, 1]), Some(ConnKind::Tls));
        assert_eq!(kind_of(b"GET / HTTP/1.1"), Some(ConnKind::PlainHttp));
        assert_eq!(kind_of(b"OPTIONS * HTTP/1.1"), Some(ConnKind::PlainHttp));
        assert_eq!(kind_of(b"GE"), None, "needs more bytes");
        assert_eq!(kind_of(b"SSH-2.0-OpenSSH"), Some(ConnKind::Unrecognised));
        assert_eq!(kind_of(b"HELO x"), Some(ConnKind::Unrecognised));
        assert_eq!(kind_of(b"\x00\x01"), Some(ConnKind::Unrecognised));
        assert_eq!(kind_of(b"get / HTTP/1.1"), Some(ConnKind::Unrecognised));
    }
}
