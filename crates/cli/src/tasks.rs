//! `evershell tasks …`: submit a task (to a workspace, or to a new workspace of a role), list, get, cancel, and
//! `--follow` a task until it ends (polling it; the exit status says whether it completed). With `--file`, the
//! submission is sent as `multipart/form-data` (`tasks_form`).

use std::time::Duration;

use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::{Client, Connection};
use crate::output::emit;

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Submit a task: to a workspace (`--workspace`), or to a new workspace of a role (`--role`).
    Submit {
        /// What the agent is asked to do.
        description: String,
        #[arg(long, conflicts_with = "role", required_unless_present = "role")]
        workspace: Option<String>,
        /// Create a workspace of this role for the task.
        #[arg(long)]
        role: Option<String>,
        /// A file to place under /data/uploads/<task_id>/ (repeatable).
        #[arg(long = "file", value_name = "PATH")]
        files: Vec<std::path::PathBuf>,
        #[arg(long)]
        thinking_effort: Option<String>,
        #[arg(long)]
        max_continuations: Option<i64>,
        #[arg(long)]
        max_context_tokens: Option<i64>,
        /// Start with a fresh agent session.
        #[arg(long)]
        reset_session: bool,
        /// Wait until the task ends, printing its status as it changes; exit non-zero unless it completed.
        #[arg(long)]
        follow: bool,
        #[arg(long)]
        json: bool,
    },
    /// A workspace's tasks, newest first.
    List {
        #[arg(long)]
        workspace: String,
        #[arg(long)]
        json: bool,
    },
    /// One task.
    Get {
        task: String,
        #[arg(long)]
        workspace: String,
        /// Wait until the task ends (exit non-zero unless it completed).
        #[arg(long)]
        follow: bool,
        #[arg(long)]
        json: bool,
    },
    /// Cancel the workspace's running task.
    Cancel {
        #[arg(long)]
        workspace: String,
        #[arg(long)]
        json: bool,
    },
}

fn summary(t: &Value) -> String {
    let s = |k: &str| t[k].as_str().unwrap_or("-").to_string();
    let mut line = format!("{}  {}", s("id"), s("status"));
    if let Some(r) = t["reason"].as_str() {
        line.push_str(&format!(" ({r})"));
    }
    if let Some(d) = t["duration_seconds"].as_f64() {
        line.push_str(&format!("  {d:.1}s"));
    }
    line.push_str(&format!("  {}", s("description").lines().next().unwrap_or("")));
    line
}

const ENDED: &[&str] = &["completed", "failed", "cancelled", "delivery_failed"];

/// Poll the task until it ends; print each status it is seen in (unless `json`); error unless it completed.
async fn follow(c: &Client, ws: &str, task: &str, json: bool) -> anyhow::Result<()> {
    let mut last = String::new();
    loop {
        let t: Value = c.json(Method::GET, &format!("/v1/workspaces/{ws}/tasks/{task}"), None).await?;
        let status = t["status"].as_str().unwrap_or_default().to_string();
        if status != last && !json {
            println!("{}", summary(&t));
        }
        if ENDED.contains(&status.as_str()) {
            if json {
                crate::output::print_json(&t)?;
            }
            if status != "completed" {
                anyhow::bail!("task {task} ended {status} ({})", t["reason"].as_str().unwrap_or("no reason"));
            }
            if let Some(r) = t["result"].as_str().filter(|_| !json) {
                println!("{r}");
            }
            return Ok(());
        }
        last = status;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn run(conn: &Connection, cmd: TaskCommand) -> anyhow::Result<()> {
    let c = Client::new(conn)?;
    match cmd {
        TaskCommand::Submit {
            description,
            workspace,
            role,
            files,
            thinking_effort,
            max_continuations,
            max_context_tokens,
            reset_session,
            follow: wait,
            json,
        } => {
            let mut uploads = Vec::with_capacity(files.len());
            for f in &files {
                let name = crate::tasks_form::upload_name(f)?;
                let data = tokio::fs::read(f).await.map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
                uploads.push((name, data));
            }
            let mut body = json!({ "description": description, "reset_session": reset_session });
            for (k, v) in [
                ("thinking_effort", thinking_effort.map(Value::from)),
                ("max_continuations", max_continuations.map(Value::from)),
                ("max_context_tokens", max_context_tokens.map(Value::from)),
            ] {
                if let Some(v) = v {
                    body[k] = v;
                }
            }
            let path = match (&workspace, &role) {
                (Some(ws), _) => format!("/v1/workspaces/{ws}/tasks"),
                (None, Some(r)) => {
                    body["role_name"] = json!(r);
                    "/v1/tasks".to_string()
                }
                (None, None) => unreachable!("clap requires one"),
            };
            let v: Value = if uploads.is_empty() {
                c.json(Method::POST, &path, Some(body)).await?
            } else {
                // With files: multipart, the same fields as text parts.
                let form = crate::tasks_form::build(&body, &uploads);
                let req = c
                    .request(Method::POST, &path)
                    .header(reqwest::header::CONTENT_TYPE, form.content_type)
                    .body(form.body);
                c.send(req).await?.1
            };
            let (ws, task) =
                (v["workspace_id"].as_str().unwrap_or_default(), v["task_id"].as_str().unwrap_or_default());
            if wait {
                if !json {
                    println!("task {task} on workspace {ws}");
                }
                return follow(&c, ws, task, json).await;
            }
            emit(json, &v, |v| format!("{}  {}  workspace {}", task, v["status"].as_str().unwrap_or(""), ws))
        }
        TaskCommand::List { workspace, json } => {
            let v: Value = c.json(Method::GET, &format!("/v1/workspaces/{workspace}/tasks"), None).await?;
            emit(json, &v, |v| {
                v.as_array().map(|a| a.iter().map(summary).collect::<Vec<_>>().join("\n")).unwrap_or_default()
            })
        }
        TaskCommand::Get { task, workspace, follow: wait, json } => {
            if wait {
                return follow(&c, &workspace, &task, json).await;
            }
            let v: Value = c.json(Method::GET, &format!("/v1/workspaces/{workspace}/tasks/{task}"), None).await?;
            emit(json, &v, summary)
        }
        TaskCommand::Cancel { workspace, json } => {
            let v: Value = c.json(Method::POST, &format!("/v1/workspaces/{workspace}/task/cancel"), None).await?;
            emit(json, &v, |v| {
                format!(
                    "{}  {} (cancel requested)",
                    v["task_id"].as_str().unwrap_or(""),
                    v["status"].as_str().unwrap_or("")
                )
            })
        }
    }
}
