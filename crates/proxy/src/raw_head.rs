//! A read tap on HTTP/1 client connections keeping the last bytes received, so a request carrying
//! `Transfer-Encoding` can be checked for a `Content-Length` that hyper's parser drops silently (a smuggling
//! attempt the proxy answers with 400 instead of guessing).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How many received bytes are kept: a request head longer than this escapes the check, and then hyper's own rule
/// applies (chunked wins, the length is dropped, the connection closes after the response).
pub const TAIL_BYTES: usize = 16 * 1024;

/// The shared tail of received bytes.
#[derive(Clone, Default)]
pub struct RawTail(Arc<Mutex<Vec<u8>>>);

impl RawTail {
    fn push(&self, bytes: &[u8]) {
        let mut tail = self.0.lock().expect("raw tail");
        if bytes.len() >= TAIL_BYTES {
            tail.clear();
            tail.extend_from_slice(&bytes[bytes.len() - TAIL_BYTES..]);
            return;
        }
        let overflow = (tail.len() + bytes.len()).saturating_sub(TAIL_BYTES);
        tail.drain(..overflow);
        tail.extend_from_slice(bytes);
    }

    /// Whether the last request head with this request line also carried a `Content-Length` header.
    pub fn head_has_content_length(&self, request_line: &str) -> bool {
        let tail = self.0.lock().expect("raw tail");
        head_has_content_length(&tail, request_line.as_bytes())
    }
}

fn head_has_content_length(buf: &[u8], request_line: &[u8]) -> bool {
    let Some(start) = buf.windows(request_line.len()).rposition(|w| w == request_line) else {
        return false;
    };
    let head = &buf[start..];
    let end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(head.len());
    head[..end].split(|&b| b == b'\n').skip(1).any(|line| {
        let name = line.split(|&b| b == b':').next().unwrap_or_default();
        name.trim_ascii().eq_ignore_ascii_case(b"content-length")
    })
}

/// The tapped stream.
pub struct Tapped<S> {
    inner: S,
    tail: RawTail,
}

impl<S> Tapped<S> {
    pub fn new(inner: S, tail: RawTail) -> Self {
        Self { inner, tail }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tapped<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            let fresh = &buf.filled()[before..];
            if !fresh.is_empty() {
                self.tail.push(fresh);
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tapped<S> {
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
    fn finds_a_length_beside_chunked_in_the_latest_head() {
        let line = b"POST /x HTTP/1.1\r\n";
        let smuggled =
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert!(head_has_content_length(smuggled, line));
        let clean = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nContent-Length: 1\r\n";
        assert!(!head_has_content_length(clean, line), "body bytes after the head do not count");
        let tail = RawTail::default();
        tail.push(&vec![b'x'; TAIL_BYTES * 2]);
        tail.push(smuggled);
        assert!(tail.head_has_content_length("POST /x HTTP/1.1\r\n"));
    }
}
