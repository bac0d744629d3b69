//! A small `/v1` client: bearer auth, JSON in and out, and API errors shown as `code: message (request id)`.

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::profile;

#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// Server URL (default: EVERSHELL_URL, the saved profile, or http://127.0.0.1:7400).
    #[arg(long, global = true)]
    pub url: Option<String>,
    /// API key or session token (default: EVERSHELL_API_KEY or the saved profile).
    #[arg(long, global = true)]
    pub api_key: Option<String>,
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub fn new(c: &Connection) -> anyhow::Result<Self> {
        let saved = profile::load();
        let base = c
            .url
            .clone()
            .or_else(|| std::env::var("EVERSHELL_URL").ok())
            .or(saved.url)
            .unwrap_or_else(|| "http://127.0.0.1:7400".into());
        let token = c.api_key.clone().or_else(|| std::env::var("EVERSHELL_API_KEY").ok()).or(saved.api_key);
        Ok(Self { http: reqwest::Client::builder().build()?, base: base.trim_end_matches('/').to_string(), token })
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    /// Send and decode JSON, turning an error envelope into an error.
    pub async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> anyhow::Result<(StatusCode, T)> {
        let res = check(req.send().await?).await?;
        let status = res.status();
        Ok((status, res.json().await?))
    }

    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<T> {
        let mut r = self.request(method, path);
        if let Some(b) = body {
            r = r.json(&b);
        }
        Ok(self.send(r).await?.1)
    }
}

/// Pass a successful response through; render an error envelope as an error.
pub async fn check(res: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    if res.status().is_success() {
        return Ok(res);
    }
    let status = res.status();
    let body: serde_json::Value = res.json().await.unwrap_or_default();
    let e = &body["error"];
    let fields = e["details"]["fields"]
        .as_object()
        .map(|f| f.iter().map(|(k, v)| format!("\n  {k}: {}", v.as_str().unwrap_or(""))).collect::<String>())
        .unwrap_or_default();
    anyhow::bail!(
        "{} {}: {}{fields} (request {})",
        status.as_u16(),
        e["code"].as_str().unwrap_or("error"),
        e["message"].as_str().unwrap_or(""),
        e["request_id"].as_str().unwrap_or("?")
    )
}

/// Percent-encode each segment of a file path, keeping the `/` separators.
pub fn encode_path(p: &str) -> String {
    p.split('/').map(|s| urlencoding::encode(s).into_owned()).collect::<Vec<_>>().join("/")
}
