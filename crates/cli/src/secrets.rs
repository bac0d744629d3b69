//! `evershell secrets …` and `evershell credentials …`. Secret values are read from stdin or `--value-file` by
//! default, so they stay out of shell history; `--value` exists for scripts and is documented as the exception.

use std::io::Read;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::{Client, Connection, encode_path};
use crate::output::emit;

/// Where a secret value comes from.
#[derive(Debug, Clone, Args)]
pub struct ValueSource {
    /// Read the value from this file (a trailing newline is dropped). Without it (or `--value`), stdin is read.
    #[arg(long, conflicts_with = "value")]
    pub value_file: Option<PathBuf>,
    /// The value itself. It lands in shell history and the process list: prefer stdin or --value-file.
    #[arg(long)]
    pub value: Option<String>,
}

impl ValueSource {
    fn read(&self) -> anyhow::Result<String> {
        let raw = match (&self.value, &self.value_file) {
            (Some(v), _) => v.clone(),
            (None, Some(p)) => {
                std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?
            }
            (None, None) => {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s
            }
        };
        let v = raw.strip_suffix('\n').map(|s| s.strip_suffix('\r').unwrap_or(s)).unwrap_or(&raw).to_string();
        anyhow::ensure!(!v.is_empty(), "the value is empty");
        Ok(v)
    }
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Create a secret (value from stdin, --value-file or --value).
    Create {
        name: String,
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        source: ValueSource,
        #[arg(long)]
        json: bool,
    },
    /// List secrets (names and metadata; values are never shown).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Rotate a secret's value (by id or name).
    Rotate {
        secret: String,
        #[command(flatten)]
        source: ValueSource,
        #[arg(long)]
        json: bool,
    },
    /// Delete a secret (by id or name).
    Delete {
        secret: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CredentialCommand {
    /// Create a credential. Its secret (the API key, password, client secret or service-account JSON, whichever the
    /// kind needs) comes from stdin, --value-file or --value.
    Create {
        name: String,
        #[arg(long)]
        provider: String,
        /// api_key, basic_auth, query_api_key, oauth2_client_credentials, oauth2_authorization_code,
        /// oauth2_jwt_bearer, oauth2_jwt_bearer_with_subject, oauth2_client_assertion.
        #[arg(long)]
        kind: String,
        /// OAuth scope (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Non-secret setting, e.g. `client_id=…`, `username=…` (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
        /// A personal credential of the signed-in user.
        #[arg(long)]
        personal: bool,
        /// Let members add personal overrides (oauth2_authorization_code only).
        #[arg(long)]
        allow_user_override: bool,
        #[command(flatten)]
        source: ValueSource,
        #[arg(long)]
        json: bool,
    },
    /// List the credentials you can see.
    List {
        #[arg(long)]
        json: bool,
    },
    Get {
        id: String,
        #[arg(long)]
        json: bool,
    },
    Delete {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

/// The secret field of a credential kind.
fn secret_field(kind: &str) -> &'static str {
    match kind {
        "basic_auth" => "password",
        "oauth2_client_credentials" | "oauth2_authorization_code" => "client_secret",
        k if k.starts_with("oauth2_jwt_bearer") || k == "oauth2_client_assertion" => "service_account_json",
        _ => "api_key",
    }
}

fn secret_line(s: &Value) -> String {
    format!(
        "{}  {}  updated {}{}",
        s["id"].as_str().unwrap_or("?"),
        s["name"].as_str().unwrap_or("?"),
        s["updated_at"].as_str().unwrap_or("?"),
        s["description"].as_str().map(|d| format!("  — {d}")).unwrap_or_default()
    )
}

fn credential_line(c: &Value) -> String {
    let mut s = format!(
        "{}  {}  {} {}  {}",
        c["id"].as_str().unwrap_or("?"),
        c["name"].as_str().unwrap_or("?"),
        c["provider"].as_str().unwrap_or("?"),
        c["kind"].as_str().unwrap_or("?"),
        c["status"].as_str().unwrap_or("?")
    );
    if let Some(m) = c["last_minted_status"].as_str() {
        s.push_str(&format!(" ({m})"));
    }
    if let Some(u) = c["user_id"].as_str() {
        s.push_str(&format!("  personal: {u}"));
    }
    s
}

/// A secret's id from an id or a name.
async fn secret_id(c: &Client, given: &str) -> anyhow::Result<String> {
    if given.starts_with("sec_") {
        return Ok(given.to_string());
    }
    let list: Value = c.json(Method::GET, "/v1/secrets", None).await?;
    list["secrets"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == given))
        .and_then(|s| s["id"].as_str().map(str::to_string))
        .ok_or_else(|| anyhow::anyhow!("no secret named `{given}`"))
}

pub async fn run_secrets(conn: &Connection, cmd: SecretCommand) -> anyhow::Result<()> {
    let c = Client::new(conn)?;
    match cmd {
        SecretCommand::Create { name, description, source, json } => {
            let mut body = json!({ "name": name, "value": source.read()? });
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            let v: Value = c.json(Method::POST, "/v1/secrets", Some(body)).await?;
            emit(json, &v, secret_line)
        }
        SecretCommand::List { json } => {
            let v: Value = c.json(Method::GET, "/v1/secrets", None).await?;
            emit(json, &v, |v| {
                v["secrets"]
                    .as_array()
                    .map(|a| a.iter().map(secret_line).collect::<Vec<_>>().join("\n"))
                    .unwrap_or_default()
            })
        }
        SecretCommand::Rotate { secret, source, json } => {
            let id = secret_id(&c, &secret).await?;
            let value = source.read()?;
            let v: Value = c
                .json(Method::PUT, &format!("/v1/secrets/{}", encode_path(&id)), Some(json!({ "value": value })))
                .await?;
            emit(json, &v, secret_line)
        }
        SecretCommand::Delete { secret, json } => {
            let id = secret_id(&c, &secret).await?;
            let v: Value = c.json(Method::DELETE, &format!("/v1/secrets/{}", encode_path(&id)), None).await?;
            emit(json, &v, |v| format!("{id}: {}", v["status"].as_str().unwrap_or("?")))
        }
    }
}

pub async fn run_credentials(conn: &Connection, cmd: CredentialCommand) -> anyhow::Result<()> {
    let c = Client::new(conn)?;
    match cmd {
        CredentialCommand::Create {
            name,
            provider,
            kind,
            scopes,
            config,
            personal,
            allow_user_override,
            source,
            json,
        } => {
            let mut cfg = serde_json::Map::new();
            for kv in config {
                let (k, v) =
                    kv.split_once('=').ok_or_else(|| anyhow::anyhow!("--config wants KEY=VALUE, got `{kv}`"))?;
                cfg.insert(k.to_string(), Value::String(v.to_string()));
            }
            let mut body = json!({
                "name": name, "provider": provider, "kind": kind, "scopes": scopes, "provider_config": cfg,
                "personal": personal, "allow_user_override": allow_user_override,
            });
            body[secret_field(&kind)] = json!(source.read()?);
            let v: Value = c.json(Method::POST, "/v1/credentials", Some(body)).await?;
            emit(json, &v, credential_line)
        }
        CredentialCommand::List { json } => {
            let v: Value = c.json(Method::GET, "/v1/credentials", None).await?;
            emit(json, &v, |v| {
                v["credentials"]
                    .as_array()
                    .map(|a| a.iter().map(credential_line).collect::<Vec<_>>().join("\n"))
                    .unwrap_or_default()
            })
        }
        CredentialCommand::Get { id, json } => {
            let v: Value = c.json(Method::GET, &format!("/v1/credentials/{}", encode_path(&id)), None).await?;
            emit(json, &v, credential_line)
        }
        CredentialCommand::Delete { id, json } => {
            let v: Value = c.json(Method::DELETE, &format!("/v1/credentials/{}", encode_path(&id)), None).await?;
            emit(json, &v, |v| format!("{id}: {}", v["status"].as_str().unwrap_or("?")))
        }
    }
}
