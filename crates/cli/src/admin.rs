//! `evershell admin …`: store-level administration, working directly on the store named by `--data-dir` /
//! `--database-url` (also while the server runs). Every command prints JSON with `--json`.

use std::sync::Arc;

use clap::Subcommand;
use evershell_app::admin::{self, ExistingAccount};
use evershell_core::Timestamp;
use evershell_core::model::BillingStatus;
use evershell_core::scope::{MemberRole, PermissionSet};
use evershell_store::Store;

use crate::output::emit;

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// First org, its first Owner and a full_access API key.
    Bootstrap {
        #[arg(long)]
        org: String,
        #[arg(long)]
        email: String,
        /// The Owner's password (default: generated and printed once).
        #[arg(long)]
        password: Option<String>,
        #[arg(long)]
        json: bool,
    },
    #[command(subcommand)]
    Org(OrgCommand),
    #[command(subcommand)]
    User(UserCommand),
    #[command(subcommand, name = "api-key")]
    ApiKey(ApiKeyCommand),
    /// Mint a session token for a user (for scripts).
    Session {
        #[arg(long)]
        user: String,
        /// Slug or id; needed when the user belongs to several orgs.
        #[arg(long)]
        org: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    /// Create an organisation.
    Create {
        /// The org's slug.
        #[arg(long)]
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Set an org's billing posture.
    Billing {
        /// Slug or id.
        #[arg(long)]
        org: String,
        /// active, trial, past_due or decommissioning.
        #[arg(long)]
        status: String,
        /// RFC 3339 end of the trial (status trial only).
        #[arg(long)]
        trial_ends_at: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user to an org: a new account becomes an active member; an existing one is invited (or, with
    /// --reset-password, gets a new password).
    Add {
        #[arg(long)]
        org: String,
        #[arg(long)]
        email: String,
        /// owner, operator or member.
        #[arg(long)]
        role: String,
        /// A new account's password (default: generated and printed once). For an existing account only with
        /// --reset-password.
        #[arg(long)]
        password: Option<String>,
        /// The account exists already (accounts are shared by every org): replace its password (given, or
        /// generated and printed), revoke its sessions in every org, and report it there. Without this flag an
        /// existing account is invited instead, and signs in to this org once it accepts with its own password.
        #[arg(long)]
        reset_password: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Issue an API key.
    Create {
        #[arg(long)]
        org: String,
        /// full_access, submit_observe or read_only.
        #[arg(long)]
        permission_set: String,
        #[arg(long, default_value = "admin-cli")]
        label: String,
        #[arg(long)]
        json: bool,
    },
}

fn domain(e: evershell_core::Error) -> anyhow::Error {
    let fields = e
        .details
        .as_ref()
        .and_then(|d| d["fields"].as_object())
        .map(|f| f.iter().map(|(k, v)| format!(" [{k}: {}]", v.as_str().unwrap_or(""))).collect::<String>())
        .unwrap_or_default();
    anyhow::anyhow!("{}: {}{fields}", e.code.as_str(), e.message)
}

pub async fn run(store: Arc<dyn Store>, cmd: AdminCommand) -> anyhow::Result<()> {
    let s = store.as_ref();
    match cmd {
        AdminCommand::Bootstrap { org, email, password, json } => {
            let b = admin::bootstrap(s, &org, &email, password.as_deref()).await.map_err(domain)?;
            emit(json, &b, |b| {
                let mut t = format!(
                    "org {} ({})\nowner {} ({})\napi key (shown once): {}",
                    b.org.slug, b.org.id, b.owner.email, b.owner.user_id, b.api_key.value
                );
                if let Some(p) = &b.owner.generated_password {
                    t.push_str(&format!("\nowner password (shown once): {p}"));
                }
                t
            })
        }
        AdminCommand::Org(OrgCommand::Create { name, json }) => {
            let o = admin::create_org(s, &name).await.map_err(domain)?;
            emit(json, &o, |o| format!("org {} ({})", o.slug, o.id))
        }
        AdminCommand::Org(OrgCommand::Billing { org, status, trial_ends_at, json }) => {
            let o = admin::find_org(s, &org).await.map_err(domain)?;
            let status = BillingStatus::parse(&status)
                .ok_or_else(|| anyhow::anyhow!("--status must be active, trial, past_due or decommissioning"))?;
            let ends = trial_ends_at
                .map(|t| {
                    Timestamp::parse_rfc3339(&t).ok_or_else(|| anyhow::anyhow!("--trial-ends-at must be RFC 3339"))
                })
                .transpose()?;
            let o = admin::set_billing(s, &o, status, ends).await.map_err(domain)?;
            emit(json, &o, |o| format!("org {} billing {}", o.slug, o.billing_status.as_str()))
        }
        AdminCommand::User(UserCommand::Add { org, email, role, password, reset_password, json }) => {
            let o = admin::find_org(s, &org).await.map_err(domain)?;
            let role: MemberRole = role.parse().map_err(|e: String| anyhow::anyhow!("--role: {e}"))?;
            let existing = if reset_password { ExistingAccount::ResetPassword } else { ExistingAccount::Invite };
            let u = admin::add_member(s, &o, &email, role, password.as_deref(), existing).await.map_err(domain)?;
            emit(json, &u, |u| {
                let mut t = match &u.invite_token {
                    Some(tok) => format!(
                        "{} ({}) is invited as {} of {}: the account already exists, so it signs in here only after \
                         accepting with its own password (POST /v1/auth/accept-invite)\ninvite token (shown once): {tok}",
                        u.email,
                        u.user_id,
                        u.role.as_str(),
                        o.slug
                    ),
                    None => format!("{} ({}) is {} of {}", u.email, u.user_id, u.role.as_str(), o.slug),
                };
                if let Some(p) = &u.generated_password {
                    t.push_str(&format!("\npassword (shown once): {p}"));
                }
                if u.password_reset {
                    t.push_str(&format!(
                        "\npassword RESET: {} session(s) revoked; the new password applies in every org of the account{}",
                        u.sessions_revoked.unwrap_or(0),
                        if u.other_orgs.is_empty() { String::new() } else { format!(" ({})", u.other_orgs.join(", ")) }
                    ));
                }
                t
            })
        }
        AdminCommand::ApiKey(ApiKeyCommand::Create { org, permission_set, label, json }) => {
            let o = admin::find_org(s, &org).await.map_err(domain)?;
            let set: PermissionSet =
                permission_set.parse().map_err(|e: String| anyhow::anyhow!("--permission-set: {e}"))?;
            let k = admin::create_api_key(s, &o, set, &label).await.map_err(domain)?;
            emit(json, &k, |k| format!("{} ({}): {}", k.id, k.permission_set.as_str(), k.value))
        }
        AdminCommand::Session { user, org, json } => {
            let m = admin::mint_user_session(s, &user, org.as_deref()).await.map_err(domain)?;
            emit(json, &m, |m| m.token.clone())
        }
    }
}
