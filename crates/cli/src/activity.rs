//! `evershell activity [--workspace ID] [--follow]`: a workspace's history, or (with `--follow`) the live stream of
//! the org or one workspace, reconnecting with `Last-Event-ID` whenever the server closes it. Events print as one
//! JSON object per line.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use reqwest::Method;
use serde_json::Value;

use crate::client::{Client, check, encode_path};
use crate::sse::Parser;

#[derive(Debug, Args)]
pub struct ActivityArgs {
    /// One workspace (required without --follow: the org-wide history is `GET /v1/audit`).
    #[arg(long)]
    pub workspace: Option<String>,
    /// Stream live events (org-wide without --workspace) until interrupted.
    #[arg(long)]
    pub follow: bool,
    /// Only this task's events (history only).
    #[arg(long)]
    pub task: Option<String>,
    /// Most events to show (history only).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
}

/// Waits between reconnects after a failure: 0.5 s doubling to 30 s (a clean close reconnects at once).
const RETRY_MAX: Duration = Duration::from_secs(30);

pub async fn run(client: &Client, a: ActivityArgs) -> anyhow::Result<()> {
    if a.follow {
        let path = match &a.workspace {
            Some(ws) => format!("/v1/workspaces/{}/activity/stream", encode_path(ws)),
            None => "/v1/activity/stream".to_string(),
        };
        return follow(client, &path, |e| {
            println!("{}", serde_json::to_string(e).unwrap_or_default());
            true
        })
        .await;
    }
    let ws = a.workspace.context("--workspace is required without --follow (org-wide history: GET /v1/audit)")?;
    let mut path = format!("/v1/workspaces/{}/activity?order=asc&limit={}", encode_path(&ws), a.limit);
    if let Some(t) = &a.task {
        path.push_str(&format!("&task_id={}", urlencoding::encode(t)));
    }
    let page: Value = client.json(Method::GET, &path, None).await?;
    // One JSON event per line, oldest first (as `--follow` prints them).
    for e in page["events"].as_array().into_iter().flatten() {
        println!("{}", serde_json::to_string(e)?);
    }
    Ok(())
}

/// Read the stream at `path`, calling `on_event` with each event's JSON until it returns `false`. When the server
/// closes the stream (it does every few minutes) or the connection drops, reconnect with the last event id.
pub async fn follow(client: &Client, path: &str, mut on_event: impl FnMut(&Value) -> bool) -> anyhow::Result<()> {
    let mut last_id: Option<String> = None;
    let mut retry = Duration::from_millis(500);
    loop {
        let mut req = client.request(Method::GET, path).header("accept", "text/event-stream");
        if let Some(id) = &last_id {
            req = req.header("last-event-id", id.as_str());
        }
        let mut res = match req.send().await {
            Ok(r) => check(r).await?,
            Err(e) => {
                eprintln!("activity stream: {e}; reconnecting in {:.1} s", retry.as_secs_f64());
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
                continue;
            }
        };
        let mut parser = Parser::default();
        let ended = loop {
            match res.chunk().await {
                Ok(Some(chunk)) => {
                    retry = Duration::from_millis(500);
                    for f in parser.push(&chunk)? {
                        let (Some(id), Some(data)) = (f.id, f.data) else { continue };
                        let Ok(v) = serde_json::from_str::<Value>(&data) else { continue };
                        last_id = Some(id);
                        if !on_event(&v) {
                            return Ok(());
                        }
                    }
                }
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        if let Some(e) = ended {
            eprintln!("activity stream: {e}; reconnecting in {:.1} s", retry.as_secs_f64());
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(RETRY_MAX);
        }
    }
}
