//! The model client: one streamed HTTP call per turn (hyper + rustls trusting the system bundle, which inside a
//! pod holds the platform CA; `SSL_CERT_FILE` is honoured). No auth header is sent: the egress proxy injects the
//! provider's credential. Transient failures — connect errors, 429, 5xx, a stream that drops or stalls, an
//! overloaded error event — are retried with exponential backoff (honouring `Retry-After`, in seconds or as an
//! HTTP-date, capped at `retry_max`), at most `max_retries` times; then the call fails with the last cause.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use evershell_core::agent_wire::{ModelTarget, ModelWire};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::stream::SseParser;
use super::{Block, ModelTurn, TurnRequest, anthropic, openai};
use crate::task::stop::{self, StopRx};

/// Tuning of model calls (the defaults are for production; tests shorten them).
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub max_retries: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub connect_timeout: Duration,
    /// Until the response headers arrive.
    pub response_timeout: Duration,
    /// Longest silence inside a streamed answer.
    pub idle_timeout: Duration,
    /// Largest streamed answer accepted.
    pub max_answer_bytes: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            max_retries: 5,
            retry_base: Duration::from_millis(1_000),
            retry_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(300),
            max_answer_bytes: 64 << 20,
        }
    }
}

/// Why a stream could not be used.
#[derive(Debug)]
pub enum StreamError {
    Protocol(String),
    Remote { transient: bool, message: String },
}

/// Why a model call failed for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelError {
    /// Retries exhausted or a permanent error: the cause, for the task's failure.
    Failed(String),
    /// A stop was requested while waiting to retry.
    Stopped,
}

enum Attempt {
    Transient(String, Option<Duration>),
    Permanent(String),
}

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

#[derive(Clone)]
pub struct ModelClient {
    http: Client<Https, Full<Bytes>>,
    pub cfg: Arc<ModelConfig>,
}

/// A retry about to happen (for the task's events).
pub struct RetryNote<'a> {
    pub attempt: u32,
    pub error: &'a str,
    pub delay: Duration,
}

impl ModelClient {
    pub fn new(cfg: ModelConfig) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::warn!(error = %e, "loading a system CA certificate failed");
        }
        let (added, _) = roots.add_parsable_certificates(native.certs);
        if added == 0 {
            tracing::warn!("no system CA certificates found: HTTPS model calls will fail");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut conn = HttpConnector::new();
        conn.enforce_http(false);
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(cfg.connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(conn);
        let http = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(60)).build(https);
        Ok(ModelClient { http, cfg: Arc::new(cfg) })
    }

    /// One model turn, retried on transient errors. A stop during a backoff wait ends it; a stop during a call
    /// lets the call finish (cooperative cancel). `on_retry` hears of each retry.
    pub async fn turn(
        &self,
        target: &ModelTarget,
        req: &TurnRequest<'_>,
        stop: &mut StopRx,
        mut on_retry: impl FnMut(RetryNote<'_>),
    ) -> Result<ModelTurn, ModelError> {
        let prep_started = Instant::now();
        let (path, body) = match target.wire {
            ModelWire::AnthropicMessages => (anthropic::PATH, anthropic::body(req)),
            ModelWire::OpenaiChat => (openai::PATH, openai::body(req)),
        };
        let url = format!("{}{}", target.base_url.trim_end_matches('/'), path);
        let body = Bytes::from(body);
        let prep = prep_started.elapsed();
        let mut attempt = 0u32;
        loop {
            let cause = match self.attempt(target.wire, &url, body.clone()).await {
                Ok(mut turn) => {
                    turn.client_time += prep;
                    return Ok(turn);
                }
                Err(Attempt::Permanent(cause)) => return Err(ModelError::Failed(cause)),
                Err(Attempt::Transient(cause, retry_after)) => (cause, retry_after),
            };
            if attempt >= self.cfg.max_retries {
                return Err(ModelError::Failed(format!("{} (after {} retries)", cause.0, attempt)));
            }
            attempt += 1;
            let delay = retry_delay(&self.cfg, attempt, cause.1);
            tracing::warn!(attempt, error = %cause.0, delay_ms = delay.as_millis() as u64, "model call failed; retrying");
            on_retry(RetryNote { attempt, error: &cause.0, delay });
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop::requested(stop) => return Err(ModelError::Stopped),
            }
        }
    }

    async fn attempt(&self, wire: ModelWire, url: &str, body: Bytes) -> Result<ModelTurn, Attempt> {
        let mut b = http::Request::post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "text/event-stream");
        if wire == ModelWire::AnthropicMessages {
            b = b.header("anthropic-version", anthropic::VERSION);
        }
        let req = b.body(Full::new(body)).map_err(|e| Attempt::Permanent(format!("bad model URL {url}: {e}")))?;
        let resp = match tokio::time::timeout(self.cfg.response_timeout, self.http.request(req)).await {
            Err(_) => return Err(Attempt::Transient("the model did not answer in time".into(), None)),
            Ok(Err(e)) => return Err(Attempt::Transient(format!("model request failed: {}", error_chain(&e)), None)),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        if !status.is_success() {
            let retry_after = resp
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| retry_after(v, std::time::SystemTime::now()));
            let text = read_bounded(resp.into_body(), 2048, self.cfg.idle_timeout).await;
            let cause = format!("model answered HTTP {}: {}", status.as_u16(), text.trim());
            return Err(if status.as_u16() == 429 || status.is_server_error() {
                Attempt::Transient(cause, retry_after)
            } else {
                Attempt::Permanent(cause)
            });
        }
        let started = Instant::now();
        let mut body = resp.into_body();
        let mut parser = SseParser::default();
        let mut total = 0usize;
        let mut anth = anthropic::Assembler::default();
        let mut oai = openai::Assembler::default();
        let mut done = false;
        let mut parse_time = Duration::ZERO;
        while !done {
            let frame = match tokio::time::timeout(self.cfg.idle_timeout, body.frame()).await {
                Err(_) => return Err(Attempt::Transient("the model's stream stalled".into(), None)),
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    return Err(Attempt::Transient(format!("the model's stream dropped: {}", error_chain(&e)), None));
                }
                Ok(Some(Ok(f))) => f,
            };
            let Ok(data) = frame.into_data() else { continue };
            total += data.len();
            if total > self.cfg.max_answer_bytes {
                return Err(Attempt::Permanent(format!(
                    "the model's answer exceeds {} bytes",
                    self.cfg.max_answer_bytes
                )));
            }
            let parse_started = Instant::now();
            let events = parser.feed(&data).map_err(Attempt::Permanent)?;
            for ev in &events {
                let r = match wire {
                    ModelWire::AnthropicMessages => anth.feed(ev),
                    ModelWire::OpenaiChat => oai.feed(ev),
                };
                match r {
                    Ok(true) => {
                        done = true;
                        break;
                    }
                    Ok(false) => {}
                    Err(StreamError::Protocol(m)) => {
                        return Err(Attempt::Transient(format!("bad model stream: {m}"), None));
                    }
                    Err(StreamError::Remote { transient: true, message }) => {
                        return Err(Attempt::Transient(format!("model stream error: {message}"), None));
                    }
                    Err(StreamError::Remote { transient: false, message }) => {
                        return Err(Attempt::Permanent(format!("model stream error: {message}")));
                    }
                }
            }
            parse_time += parse_started.elapsed();
        }
        tracing::debug!(ms = started.elapsed().as_millis() as u64, bytes = total, "model stream read");
        let finish_started = Instant::now();
        let mut turn = match wire {
            ModelWire::AnthropicMessages if done => anth.finish(),
            ModelWire::OpenaiChat if done || oai.finished() => oai.finish(),
            _ => {
                return Err(Attempt::Transient("the model's stream ended before the answer was complete".into(), None));
            }
        };
        turn.client_time = parse_time + finish_started.elapsed();
        Ok(turn)
    }
}

/// The wait before retry number `attempt` (1-based): exponential from `retry_base`, capped at `retry_max`; a
/// `Retry-After` replaces it (capped at `retry_max` too), though never below half the backoff.
fn retry_delay(cfg: &ModelConfig, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let backoff = cfg.retry_base.saturating_mul(1 << (attempt.max(1) - 1).min(16)).min(cfg.retry_max);
    retry_after.map(|d| d.min(cfg.retry_max)).unwrap_or(backoff).max(backoff / 2)
}

/// The wait a `Retry-After` value asks for at `now`: delay-seconds, or an HTTP-date (IMF-fixdate and the two
/// obsolete forms RFC 9110 tells recipients to accept); a date in the past is no wait. `None` for anything else.
/// The caller caps it at `retry_max`.
fn retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

async fn read_bounded(mut body: hyper::body::Incoming, max: usize, idle: Duration) -> String {
    let mut out = Vec::new();
    while out.len() < max {
        match tokio::time::timeout(idle, body.frame()).await {
            Ok(Some(Ok(f))) => {
                if let Ok(d) = f.into_data() {
                    out.extend_from_slice(&d[..d.len().min(max - out.len())]);
                }
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// A tool call from its streamed parts: arguments that are not a JSON object are kept raw (the call then gets an
/// error result instead of running).
pub fn tool_use(id: String, name: String, args: &str) -> Block {
    let trimmed = args.trim();
    if trimmed.is_empty() {
        return Block::ToolUse { id, name, input: Value::Object(Default::default()), invalid_arguments: None };
    }
    match serde_json::from_str::<Value>(trimmed) {
        Ok(v @ Value::Object(_)) => Block::ToolUse { id, name, input: v, invalid_arguments: None },
        _ => Block::ToolUse {
            id,
            name,
            input: Value::Object(Default::default()),
            invalid_arguments: Some(args.chars().take(16_384).collect()),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::{ModelConfig, retry_after, retry_delay};

    /// 1994-11-06T08:49:37Z.
    fn at() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777)
    }

    #[test]
    fn retry_after_reads_seconds_and_every_http_date_form() {
        assert_eq!(retry_after("7", at()), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(" 0 ", at()), Some(Duration::ZERO));
        // IMF-fixdate, RFC 850 and asctime, each 20 s after `at`.
        for v in ["Sun, 06 Nov 1994 08:49:57 GMT", "Sunday, 06-Nov-94 08:49:57 GMT", "Sun Nov  6 08:49:57 1994"] {
            assert_eq!(retry_after(v, at()), Some(Duration::from_secs(20)), "{v}");
        }
        // A date already past asks for no wait.
        assert_eq!(retry_after("Sun, 06 Nov 1994 08:00:00 GMT", at()), Some(Duration::ZERO));
        for v in ["", "soon", "-3", "1.5", "Sun, 06 Nov 1994 25:00:00 GMT"] {
            assert_eq!(retry_after(v, at()), None, "{v:?}");
        }
    }

    #[test]
    fn the_wait_is_the_backoff_or_retry_after_capped_at_the_max_backoff() {
        let cfg = ModelConfig {
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(2),
            ..ModelConfig::default()
        };
        let ms = Duration::from_millis;
        assert_eq!(
            [1, 2, 3, 5, 9, 40].map(|a| retry_delay(&cfg, a, None)),
            [ms(100), ms(200), ms(400), ms(1600), ms(2000), ms(2000)]
        );
        // An HTTP-date a day away waits the max backoff, not a day.
        let far = retry_after("Mon, 07 Nov 1994 08:49:37 GMT", at());
        assert_eq!(far, Some(Duration::from_secs(86_400)));
        assert_eq!(retry_delay(&cfg, 1, far), ms(2000));
        assert_eq!(retry_delay(&cfg, 1, Some(ms(700))), ms(700));
        // Never below half the backoff.
        assert_eq!(retry_delay(&cfg, 3, Some(Duration::ZERO)), ms(200));
    }
}
