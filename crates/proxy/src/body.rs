//! Bodies streamed through the proxy frame by frame (never collected), counting bytes; the response side carries
//! the exchange's record, reported to the gate when the body ends or is dropped.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::gate::{ConnInfo, Decision, Gate, Outcome, RequestSummary};

/// What the proxy answers the client with: a relayed upstream body, or a body of its own (denials, errors).
pub type ClientBody = Either<Counted<Incoming>, Full<Bytes>>;

/// An exchange in flight; reported to the gate once, when dropped.
pub struct Exchange {
    pub gate: Arc<dyn Gate>,
    pub conn: Arc<ConnInfo>,
    pub request: Option<RequestSummary>,
    pub decision: Decision,
    pub status: Option<StatusCode>,
    pub up: Arc<AtomicU64>,
    pub down: Arc<AtomicU64>,
    pub started: Instant,
    pub latency: Duration,
    pub upgraded: bool,
    pub error: Option<String>,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let outcome = Outcome {
            request: self.request.take(),
            decision: self.decision.clone(),
            status: self.status,
            bytes_up: self.up.load(Ordering::Relaxed),
            bytes_down: self.down.load(Ordering::Relaxed),
            latency: self.latency,
            duration: self.started.elapsed(),
            upgraded: self.upgraded,
            error: self.error.take(),
        };
        let gate = self.gate.clone();
        let conn = self.conn.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { gate.record(&conn, outcome).await });
        }
    }
}

/// A body passed through unchanged, its data bytes added to `counter`.
pub struct Counted<B> {
    inner: B,
    counter: Arc<AtomicU64>,
    exchange: Option<Exchange>,
}

impl<B> Counted<B> {
    pub fn new(inner: B, counter: Arc<AtomicU64>) -> Self {
        Self { inner, counter, exchange: None }
    }

    /// The body that ends the exchange: when it finishes or is dropped, the exchange is recorded.
    pub fn ending(inner: B, counter: Arc<AtomicU64>, exchange: Exchange) -> Self {
        Self { inner, counter, exchange: Some(exchange) }
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(x) = this.exchange.as_mut() {
                    x.error = Some(e.to_string());
                    x.decision = Decision::UpstreamFailed;
                }
            }
            Poll::Ready(None) => {
                // Recorded now rather than when hyper drops the body.
                this.exchange.take();
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A complete body of the proxy's own.
pub fn own(bytes: impl Into<Bytes>) -> ClientBody {
    Either::Right(Full::new(bytes.into()))
}

/// A stream whose reads are added to `counter` (the upgrade relay's byte counts, kept even when it ends in error).
pub struct ReadCounter<S> {
    inner: S,
    counter: Arc<AtomicU64>,
}

impl<S> ReadCounter<S> {
    pub fn new(inner: S, counter: Arc<AtomicU64>) -> Self {
        Self { inner, counter }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for ReadCounter<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.counter.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for ReadCounter<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
