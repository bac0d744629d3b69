//! The `evershell` binary: one executable for the control plane (`serve`), the in-pod agent (`agent`), store-level
//! administration (`admin`) and the `/v1` command-line client (`login`, `workspaces …`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use evershell::config::{Config, Overrides};
use evershell_cli::admin::AdminCommand;
use evershell_cli::client::Connection;
use evershell_cli::secrets::{CredentialCommand, SecretCommand};
use evershell_cli::workspaces::WorkspaceCommand;

#[derive(Parser)]
#[command(name = "evershell", version, about = "Self-hostable control plane for isolated AI-agent workspaces")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the control plane keeps its state (shared by `serve` and `admin`).
#[derive(Debug, Clone, Args)]
struct StoreArgs {
    /// Data directory: SQLite file, snapshots, pods.
    #[arg(long, env = "EVERSHELL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// `postgres://…` selects PostgreSQL; default: SQLite in the data directory.
    #[arg(long, env = "EVERSHELL_DATABASE_URL")]
    database_url: Option<String>,
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane: the /v1 API and the reconciler.
    Serve {
        /// Address to listen on.
        #[arg(long, env = "EVERSHELL_LISTEN")]
        listen: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Run the egress proxy as its own process (cluster mode) over the same store and configuration as `serve`
    /// (set `[proxy] enabled = false` for the servers then).
    Proxy {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Run the agent service inside a workspace pod.
    Agent {
        /// Unix socket to listen on.
        #[arg(long, default_value = "/run/evershell/agent.sock")]
        socket: PathBuf,
        /// Workspace root to serve.
        #[arg(long, default_value = "/workspace")]
        root: PathBuf,
        /// The pod id (reported by /healthz).
        #[arg(long)]
        pod_id: Option<String>,
        /// Wait (without touching the workspace) until this file exists.
        #[arg(long)]
        hold: Option<PathBuf>,
        /// Where a held agent marks that it runs (default: `held` beside the --hold file).
        #[arg(long)]
        held_marker: Option<PathBuf>,
    },
    /// Administer the deployment directly on its store.
    Admin {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Check an API key against a server and save it (with the URL) for later commands.
    Login {
        /// Server URL (default: EVERSHELL_URL or http://127.0.0.1:7400).
        #[arg(long)]
        url: Option<String>,
        /// The API key (default: read from stdin).
        #[arg(long)]
        api_key: Option<String>,
    },
    /// Workspaces: create, list, get, stop, resume, restart, archive, unarchive, files, exec.
    #[command(alias = "ws")]
    Workspaces {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: WorkspaceCommand,
    },
    /// Tasks: submit (to a workspace or a new one of a role), list, get, cancel; `--follow` waits for the end.
    Tasks {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: evershell_cli::tasks::TaskCommand,
    },
    /// Secrets (sealed named values): create, list, rotate, delete. Values come from stdin or --value-file.
    Secrets {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: SecretCommand,
    },
    /// Credentials the egress proxy injects: create, list, get, delete. Secrets come from stdin or --value-file.
    Credentials {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: CredentialCommand,
    },
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EVERSHELL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,hyper=warn"));
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

fn load(store: &StoreArgs, listen: Option<String>) -> anyhow::Result<Config> {
    Config::load(
        store.config.as_deref(),
        &Overrides { listen, data_dir: store.data_dir.clone(), database_url: store.database_url.clone() },
    )
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Agent { socket, root, pod_id, hold, held_marker } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(evershell_agent::run(evershell_agent::AgentOptions { socket, root, pod_id, hold, held_marker }))
        }
        Command::Serve { listen, store } => {
            let cfg = load(&store, listen)?;
            init_tracing(cfg.log_format == "json");
            tokio::runtime::Runtime::new()?.block_on(async {
                let server = evershell::server::start(cfg).await?;
                println!("evershell listening on http://{}", server.addr);
                server.wait().await
            })
        }
        Command::Proxy { store } => {
            let cfg = load(&store, None)?;
            init_tracing(cfg.log_format == "json");
            tokio::runtime::Runtime::new()?.block_on(evershell::egress::run_standalone(cfg))
        }
        Command::Admin { store, command } => {
            let cfg = load(&store, None)?;
            tokio::runtime::Runtime::new()?.block_on(async {
                if cfg.database_url.is_none() {
                    evershell::datadir::prepare(&cfg.data_dir, None)?;
                }
                let s = evershell_store::connect(&cfg.database_url()).await?;
                evershell_cli::admin::run(s, command).await
            })
        }
        Command::Login { url, api_key } => {
            tokio::runtime::Runtime::new()?.block_on(evershell_cli::workspaces::login(url, api_key))
        }
        Command::Workspaces { conn, command } => {
            tokio::runtime::Runtime::new()?.block_on(evershell_cli::workspaces::run(&conn, command))
        }
        Command::Tasks { conn, command } => {
            tokio::runtime::Runtime::new()?.block_on(evershell_cli::tasks::run(&conn, command))
        }
        Command::Secrets { conn, command } => {
            tokio::runtime::Runtime::new()?.block_on(evershell_cli::secrets::run_secrets(&conn, command))
        }
        Command::Credentials { conn, command } => {
            tokio::runtime::Runtime::new()?.block_on(evershell_cli::secrets::run_credentials(&conn, command))
        }
    }
}
