//! `evershell workspaces …` and `evershell login`.

use std::io::{Read, Write};

use clap::{Args, Subcommand};
use futures_util_lite::stream_to_writer;
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::{Client, Connection, check, encode_path};
use crate::output::{emit, print_json};
use crate::profile::{self, Profile};

#[derive(Debug, Subcommand)]
pub enum WorkspaceCommand {
    /// Create a workspace for a role.
    Create {
        /// Role name.
        #[arg(long, conflicts_with = "role_id", required_unless_present = "role_id")]
        role: Option<String>,
        #[arg(long)]
        role_id: Option<String>,
        #[arg(long)]
        environment: Option<String>,
        #[command(flatten)]
        o: Opts,
    },
    /// List workspaces.
    List {
        #[arg(long)]
        role: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        include_archived: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show one workspace.
    Get {
        id: String,
        #[command(flatten)]
        o: Opts,
    },
    /// Stop: save /workspace to a snapshot and release the pod.
    Stop {
        id: String,
        #[command(flatten)]
        o: Opts,
    },
    /// Resume a stopped (or failed) workspace from its snapshot.
    Resume {
        id: String,
        /// Resume with an empty /workspace when there is no snapshot.
        #[arg(long)]
        allow_empty: bool,
        #[command(flatten)]
        o: Opts,
    },
    /// Restart on a fresh pod (snapshot, restore).
    Restart {
        id: String,
        /// Interrupt a running task.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        o: Opts,
    },
    /// Fork: a new workspace (yours) from this one's state right after N completed tasks; prints the new id.
    Fork {
        id: String,
        /// How many completed tasks the fork includes (0: as the workspace was created).
        #[arg(long = "at", value_name = "N")]
        at: u64,
        #[arg(long)]
        json: bool,
    },
    Archive {
        id: String,
        #[arg(long)]
        json: bool,
    },
    Unarchive {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Live files (or, with --snapshot, the latest snapshot's).
    #[command(subcommand)]
    Files(FilesCommand),
    /// Run a command in the running workspace as the sandbox user, in /workspace: `exec WS -- CMD ARGS…`. Prints
    /// its stdout and stderr and exits with its exit code (128 + signal when killed, 124 on timeout).
    Exec {
        id: String,
        /// Deadline in milliseconds (default 30000, at most 600000); the whole process group is killed then.
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Extra environment variable (repeatable).
        #[arg(long = "env", value_name = "NAME=VALUE")]
        env: Vec<String>,
        /// Send this process's standard input to the command.
        #[arg(long)]
        stdin: bool,
        /// Print the whole result as JSON instead.
        #[arg(long)]
        json: bool,
        /// The program and its arguments.
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct Opts {
    /// Wait until the workspace settles.
    #[arg(long)]
    pub wait: bool,
    /// Longest wait in milliseconds.
    #[arg(long, default_value_t = 120_000)]
    pub timeout_ms: u64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum FilesCommand {
    /// List files.
    Ls {
        id: String,
        #[arg(long)]
        snapshot: bool,
        #[arg(long)]
        json: bool,
    },
    /// Download a file (to stdout, or --output).
    Get {
        id: String,
        path: String,
        #[arg(long)]
        snapshot: bool,
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
    },
    /// Upload a file (from a local file, or stdin with `-`).
    Put {
        id: String,
        path: String,
        /// Local file, or `-` for stdin.
        source: String,
        #[arg(long)]
        json: bool,
    },
}

fn summary(ws: &Value) -> String {
    let mut s = format!(
        "{}  {}  role {}",
        ws["id"].as_str().unwrap_or("?"),
        ws["status"].as_str().unwrap_or("?"),
        ws["role_id"].as_str().unwrap_or("?")
    );
    if let Some(r) = ws["status_reason"].as_str() {
        s.push_str(&format!("  ({r})"));
    }
    if let Some(e) = ws["last_error"].as_str() {
        s.push_str(&format!("\n  last error: {e}"));
    }
    if let Some(snap) = ws["snapshot"].as_object() {
        s.push_str(&format!(
            "\n  snapshot {} ({} entries, {} bytes)",
            snap["ref"].as_str().unwrap_or("?"),
            snap["file_count"],
            snap["size_bytes"]
        ));
    }
    s
}

fn wait_query(o: &Opts) -> String {
    if o.wait { format!("wait=true&timeout_ms={}", o.timeout_ms) } else { String::new() }
}

async fn lifecycle(c: &Client, id: &str, verb: &str, extra: &str, o: &Opts) -> anyhow::Result<()> {
    let mut q = wait_query(o);
    if !extra.is_empty() {
        q = if q.is_empty() { extra.to_string() } else { format!("{q}&{extra}") };
    }
    let path = format!(
        "/v1/workspaces/{}/{verb}{}",
        encode_path(id),
        if q.is_empty() { String::new() } else { format!("?{q}") }
    );
    let v: Value = c.json(Method::POST, &path, None).await?;
    emit(o.json, &v, |v| {
        if v.get("id").is_some() { summary(v) } else { format!("{id}: {}", v["status"].as_str().unwrap_or("?")) }
    })
}

pub async fn run(conn: &Connection, cmd: WorkspaceCommand) -> anyhow::Result<()> {
    let c = Client::new(conn)?;
    match cmd {
        WorkspaceCommand::Create { role, role_id, environment, o } => {
            let body = json!({ "role_name": role, "role_id": role_id, "environment": environment });
            let body = Value::Object(
                body.as_object()
                    .unwrap()
                    .iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            );
            let q = wait_query(&o);
            let v: Value = c
                .json(
                    Method::POST,
                    &format!("/v1/workspaces{}", if q.is_empty() { q } else { format!("?{q}") }),
                    Some(body),
                )
                .await?;
            emit(o.json, &v, summary)
        }
        WorkspaceCommand::List { role, status, include_archived, json } => {
            let mut q = vec![];
            if let Some(r) = role {
                q.push(format!("role_name={}", urlencoding::encode(&r)));
            }
            if let Some(s) = status {
                q.push(format!("status={}", urlencoding::encode(&s)));
            }
            if include_archived {
                q.push("include_archived=true".into());
            }
            let v: Value = c.json(Method::GET, &format!("/v1/workspaces?{}", q.join("&")), None).await?;
            emit(json, &v, |v| {
                v["workspaces"]
                    .as_array()
                    .map(|a| a.iter().map(summary).collect::<Vec<_>>().join("\n"))
                    .unwrap_or_default()
            })
        }
        WorkspaceCommand::Get { id, o } => {
            let q = wait_query(&o);
            let v: Value = c.json(Method::GET, &format!("/v1/workspaces/{}?{q}", encode_path(&id)), None).await?;
            emit(o.json, &v, summary)
        }
        WorkspaceCommand::Stop { id, o } => lifecycle(&c, &id, "stop", "", &o).await,
        WorkspaceCommand::Resume { id, allow_empty, o } => {
            lifecycle(&c, &id, "resume", if allow_empty { "allow_empty=true" } else { "" }, &o).await
        }
        WorkspaceCommand::Restart { id, force, o } => {
            lifecycle(&c, &id, "restart", if force { "force=true" } else { "" }, &o).await
        }
        WorkspaceCommand::Fork { id, at, json } => {
            let body = json!({ "fork_point_task_count": at });
            let v: Value =
                c.json(Method::POST, &format!("/v1/workspaces/{}/fork", encode_path(&id)), Some(body)).await?;
            emit(json, &v, |v| v["workspace_id"].as_str().unwrap_or("?").to_string())
        }
        WorkspaceCommand::Archive { id, json } => {
            lifecycle(&c, &id, "archive", "", &Opts { wait: false, timeout_ms: 0, json }).await
        }
        WorkspaceCommand::Unarchive { id, json } => {
            lifecycle(&c, &id, "unarchive", "", &Opts { wait: false, timeout_ms: 0, json }).await
        }
        WorkspaceCommand::Files(f) => files(&c, f).await,
        WorkspaceCommand::Exec { id, timeout_ms, env, stdin, json, argv } => {
            let mut vars = serde_json::Map::new();
            for kv in env {
                let (k, v) = kv.split_once('=').ok_or_else(|| anyhow::anyhow!("--env wants NAME=VALUE, got `{kv}`"))?;
                vars.insert(k.to_string(), Value::String(v.to_string()));
            }
            let mut body = json!({ "argv": argv, "env": vars });
            if let Some(t) = timeout_ms {
                body["timeout_ms"] = json!(t);
            }
            if stdin {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
                body["stdin"] = json!(text);
            }
            let v: Value =
                c.json(Method::POST, &format!("/v1/workspaces/{}/sandbox/exec", encode_path(&id)), Some(body)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            use std::io::Write;
            std::io::stdout().write_all(v["stdout"].as_str().unwrap_or_default().as_bytes())?;
            std::io::stderr().write_all(v["stderr"].as_str().unwrap_or_default().as_bytes())?;
            if v["truncated"].as_bool() == Some(true) {
                eprintln!("evershell: output was truncated at 1 MiB per stream");
            }
            let code = if v["timed_out"].as_bool() == Some(true) {
                124
            } else if let Some(code) = v["exit_code"].as_i64() {
                code as i32
            } else {
                128 + v["signal"].as_i64().unwrap_or(0) as i32
            };
            std::io::stdout().flush()?;
            std::process::exit(code)
        }
    }
}

async fn files(c: &Client, cmd: FilesCommand) -> anyhow::Result<()> {
    match cmd {
        FilesCommand::Ls { id, snapshot, json } => {
            let which = if snapshot { "snapshot" } else { "sandbox" };
            let v: Value =
                c.json(Method::GET, &format!("/v1/workspaces/{}/{which}/files", encode_path(&id)), None).await?;
            emit(json, &v, |v| {
                v["entries"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|e| {
                                let kind = if e["is_dir"].as_bool() == Some(true) { "d" } else { "-" };
                                format!("{kind} {:>12}  {}", e["size"], e["path"].as_str().unwrap_or(""))
                            })
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                    .unwrap_or_default()
            })
        }
        FilesCommand::Get { id, path, snapshot, output } => {
            let which = if snapshot { "snapshot" } else { "sandbox" };
            let res = c.request(
                Method::GET,
                &format!("/v1/workspaces/{}/{which}/download/{}", encode_path(&id), encode_path(&path)),
            );
            let res = check(res.send().await?).await?;
            match output {
                Some(p) => {
                    let mut f = std::fs::File::create(&p)?;
                    stream_to_writer(res, &mut f).await
                }
                None => stream_to_writer(res, &mut std::io::stdout().lock()).await,
            }
        }
        FilesCommand::Put { id, path, source, json } => {
            let bytes = if source == "-" {
                let mut b = Vec::new();
                std::io::stdin().read_to_end(&mut b)?;
                b
            } else {
                std::fs::read(&source)?
            };
            let req = c
                .request(
                    Method::PUT,
                    &format!("/v1/workspaces/{}/sandbox/files/{}", encode_path(&id), encode_path(&path)),
                )
                .header("content-type", "application/octet-stream")
                .body(bytes);
            let (_, v): (_, Value) = c.send(req).await?;
            emit(json, &v, |v| format!("wrote {} ({} bytes)", v["path"].as_str().unwrap_or("?"), v["size"]))
        }
    }
}

/// `evershell login`: check the key against the server, then save URL and key.
pub async fn login(url: Option<String>, api_key: Option<String>) -> anyhow::Result<()> {
    let key = match api_key {
        Some(k) => k,
        None => {
            eprint!("API key: ");
            std::io::stderr().flush()?;
            let mut k = String::new();
            std::io::stdin().read_line(&mut k)?;
            k.trim().to_string()
        }
    };
    let url = url.or_else(|| std::env::var("EVERSHELL_URL").ok()).unwrap_or_else(|| "http://127.0.0.1:7400".into());
    let conn = Connection { url: Some(url.clone()), api_key: Some(key.clone()) };
    let me: Value = Client::new(&conn)?.json(Method::GET, "/v1/me/session", None).await?;
    let path = profile::save(&Profile { url: Some(url), api_key: Some(key) })?;
    print_json(&json!({ "saved": path, "org_id": me["org_id"], "user_id": me["user_id"] }))
}

mod futures_util_lite {
    //! Copy a response body to a writer chunk by chunk.
    pub async fn stream_to_writer(mut res: reqwest::Response, w: &mut impl std::io::Write) -> anyhow::Result<()> {
        while let Some(chunk) = res.chunk().await? {
            w.write_all(&chunk)?;
        }
        w.flush()?;
        Ok(())
    }
}
