//! Fewer, larger reads on the proxy's two legs: `Greedy` hands hyper everything a TLS stream can give without
//! waiting (many records per read, never waiting to fill), `ReadAhead` reads the upstream TCP socket in large
//! chunks under rustls (which asks for one record's worth at a time), and `GreedyConnector` puts `Greedy` on every
//! upstream connection. What is there is forwarded at once: a read returns as soon as the stream would block.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBuf, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::net::TcpStream;

/// Bytes read from the upstream socket per system call (at most this much buffered per connection).
pub const READ_AHEAD_BYTES: usize = 64 * 1024;

/// A hyper stream whose reads go on while the inner stream has bytes ready.
pub struct Greedy<S> {
    inner: S,
    /// An error met after some bytes were already handed out, returned by the next read.
    deferred: Option<io::Error>,
}

impl<S> Greedy<S> {
    pub fn new(inner: S) -> Self {
        Self { inner, deferred: None }
    }
}

impl<S: Read + Unpin> Read for Greedy<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, mut buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = self.deferred.take() {
            return Poll::Ready(Err(e));
        }
        // SAFETY: the inner reader only writes into this memory, and only what it reports filled is advanced over
        // (hyper's contract for `ReadBufCursor::as_mut` / `advance`).
        let mut rb = ReadBuf::uninit(unsafe { buf.as_mut() });
        loop {
            let before = rb.filled().len();
            match Pin::new(&mut self.inner).poll_read(cx, rb.unfilled()) {
                Poll::Ready(Ok(())) => {
                    // End of stream (reported again on the next read), or the buffer is full.
                    if rb.filled().len() == before || rb.unfilled().remaining() == 0 {
                        break;
                    }
                }
                Poll::Ready(Err(e)) if before == 0 => return Poll::Ready(Err(e)),
                Poll::Ready(Err(e)) => {
                    self.deferred = Some(e);
                    break;
                }
                Poll::Pending if before == 0 => return Poll::Pending,
                Poll::Pending => break,
            }
        }
        let n = rb.filled().len();
        // SAFETY: `n` bytes were initialised by the inner reader above.
        unsafe { buf.advance(n) };
        Poll::Ready(Ok(()))
    }
}

impl<S: Write + Unpin> Write for Greedy<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}

impl<S: Connection> Connection for Greedy<S> {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}

/// The upstream TCP socket, read `READ_AHEAD_BYTES` at a time; writes pass straight through.
pub struct ReadAhead(BufReader<TcpStream>);

impl ReadAhead {
    pub fn new(tcp: TcpStream) -> Self {
        Self(BufReader::with_capacity(READ_AHEAD_BYTES, tcp))
    }
}

impl AsyncRead for ReadAhead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ReadAhead {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

impl Connection for ReadAhead {
    fn connected(&self) -> Connected {
        self.0.get_ref().connected()
    }
}

/// A connector whose connections read greedily.
#[derive(Clone)]
pub struct GreedyConnector<C>(pub C);

impl<C> tower_service::Service<Uri> for GreedyConnector<C>
where
    C: tower_service::Service<Uri>,
    C::Future: Send + 'static,
{
    type Response = Greedy<C::Response>;
    type Error = C::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, C::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), C::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move { connecting.await.map(Greedy::new) })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// A stream handing out one queued piece per read (part of it when the buffer is smaller), then pending, or at
    /// the end an error or end of stream.
    struct Pieces {
        ready: VecDeque<Vec<u8>>,
        then: Option<io::ErrorKind>,
        ended: bool,
    }

    impl Read for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            mut buf: ReadBufCursor<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(mut piece) = self.ready.pop_front() {
                let n = piece.len().min(buf.remaining());
                buf.put_slice(&piece[..n]);
                if n < piece.len() {
                    self.ready.push_front(piece.split_off(n));
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(kind) = self.then.take() {
                return Poll::Ready(Err(kind.into()));
            }
            if self.ended { Poll::Ready(Ok(())) } else { Poll::Pending }
        }
    }

    fn pieces(p: &[&[u8]]) -> Greedy<Pieces> {
        Greedy::new(Pieces { ready: p.iter().map(|p| p.to_vec()).collect(), then: None, ended: false })
    }

    /// One poll of one read into a buffer of `cap` bytes.
    fn read_once(g: &mut Greedy<Pieces>, cap: usize) -> Poll<io::Result<Vec<u8>>> {
        let mut storage = vec![0u8; cap];
        let mut rb = ReadBuf::new(&mut storage);
        let waker = futures::task::noop_waker();
        match Pin::new(g).poll_read(&mut Context::from_waker(&waker), rb.unfilled()) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(rb.filled().to_vec())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn bytes(p: Poll<io::Result<Vec<u8>>>) -> Vec<u8> {
        match p {
            Poll::Ready(Ok(b)) => b,
            other => panic!("expected bytes, got {other:?}"),
        }
    }

    #[test]
    fn one_read_takes_every_ready_piece_and_never_waits_for_more() {
        let mut g = pieces(&[b"first ", b"second ", b"third"]);
        assert_eq!(bytes(read_once(&mut g, 64)), b"first second third");
        // Nothing ready: pending (never an empty read, which would mean the end).
        assert!(read_once(&mut g, 64).is_pending());
        g.inner.ready.push_back(b"late".to_vec());
        assert_eq!(bytes(read_once(&mut g, 64)), b"late");
    }

    #[test]
    fn a_full_buffer_ends_the_read_and_the_rest_comes_next() {
        let mut g = pieces(&[b"0123", b"456789"]);
        assert_eq!(bytes(read_once(&mut g, 6)), b"012345");
        assert_eq!(bytes(read_once(&mut g, 64)), b"6789");
    }

    #[test]
    fn an_error_after_some_bytes_comes_with_the_next_read_and_the_end_stays_the_end() {
        let mut g = pieces(&[b"abc"]);
        g.inner.then = Some(io::ErrorKind::ConnectionReset);
        assert_eq!(bytes(read_once(&mut g, 64)), b"abc");
        match read_once(&mut g, 64) {
            Poll::Ready(Err(e)) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
            other => panic!("expected the deferred error, got {other:?}"),
        }
        let mut g = pieces(&[b"xyz"]);
        g.inner.ended = true;
        assert_eq!(bytes(read_once(&mut g, 64)), b"xyz");
        assert!(bytes(read_once(&mut g, 64)).is_empty());
        assert!(bytes(read_once(&mut g, 64)).is_empty());
    }
}
