//! Store-level administration for the operator's command line (`evershell admin …`): bootstrap, orgs, users, API
//! keys, session tokens and billing posture. These work directly on the store (also while the server runs) and
//! write audit rows attributed to `system` with `details.via = "admin-cli"`.

use evershell_core::audit::{AuditEvent, EventType};
use evershell_core::ids::{OrgId, UserId};
use evershell_core::model::{BillingStatus, Membership, MembershipStatus, Org, User};
use evershell_core::names;
use evershell_core::scope::{MemberRole, PermissionSet};
use evershell_core::{Error, ErrorCode, FieldErrors, Result, Timestamp};
use evershell_store::Store;
use serde::Serialize;

use crate::authn::{SessionKey, mint_session};
use crate::identity::new_key;
use crate::secrets;

/// Default session lifetime for tokens minted by the admin CLI (12 hours).
pub const ADMIN_SESSION_TTL_MS: i64 = 12 * 3600 * 1000;

fn admin_audit(org: OrgId, t: EventType) -> AuditEvent {
    AuditEvent::system(org, t).details(serde_json::json!({ "via": "admin-cli" }))
}

/// Find an org by slug or id.
pub async fn find_org(store: &dyn Store, slug_or_id: &str) -> Result<Org> {
    let by_id = match slug_or_id.parse::<OrgId>() {
        Ok(id) => store.get_org(id).await?,
        Err(_) => None,
    };
    match by_id {
        Some(o) => Ok(o),
        None => store
            .get_org_by_slug(slug_or_id)
            .await?
            .ok_or_else(|| Error::new(ErrorCode::OrgNotFound, format!("no organisation `{slug_or_id}`"))),
    }
}

pub async fn create_org(store: &dyn Store, slug: &str) -> Result<Org> {
    let mut errs = FieldErrors::default();
    names::check_slug(&mut errs, "name", slug);
    errs.into_result()?;
    let now = Timestamp::now();
    let org = Org {
        id: OrgId::new(),
        slug: slug.to_string(),
        billing_status: BillingStatus::Active,
        trial_ends_at: None,
        created_at: now,
        updated_at: now,
    };
    store.create_org(&org, &[admin_audit(org.id, EventType::OrgCreated).target("org", org.id)]).await?;
    Ok(org)
}

/// A user added to an org.
#[derive(Debug, Clone, Serialize)]
pub struct AddedUser {
    pub user_id: UserId,
    pub email: String,
    pub org_id: OrgId,
    pub role: MemberRole,
    /// The generated password, when none was given and the user is new. Shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generated_password: Option<String>,
}

/// Add a user (created if new) to an org as an active member.
pub async fn add_user(
    store: &dyn Store,
    org: &Org,
    email: &str,
    role: MemberRole,
    password: Option<&str>,
) -> Result<AddedUser> {
    let email = names::normalize_email(email);
    let mut errs = FieldErrors::default();
    names::check_email(&mut errs, "email", &email);
    if let Some(p) = password {
        names::check_password(&mut errs, "password", p);
    }
    errs.into_result()?;
    let now = Timestamp::now();
    let existing = store.get_user_by_email(&email).await?;
    let (generated, hash) = match (password, &existing) {
        (Some(p), _) => (None, Some(secrets::hash_password(p)?)),
        (None, Some(_)) => (None, None),
        (None, None) => {
            let p = secrets::new_invite_token().0.trim_start_matches("inv_")[..20].to_string();
            let h = secrets::hash_password(&p)?;
            (Some(p), Some(h))
        }
    };
    if existing.as_ref().is_some_and(|u| u.password_hash.is_some()) && password.is_some() {
        return Err(Error::invalid_field("password", "the user already exists and has a password; omit --password"));
    }
    let new_user = match &existing {
        Some(_) => None,
        None => Some(User { id: UserId::new(), email: email.clone(), password_hash: hash.clone(), created_at: now }),
    };
    let user_id = existing.as_ref().or(new_user.as_ref()).map(|u| u.id).unwrap_or_default();
    let m = Membership {
        org_id: org.id,
        user_id,
        email: email.clone(),
        role,
        status: MembershipStatus::Active,
        accepted_at: Some(now),
        invited_by_user_id: None,
        created_at: now,
        updated_at: now,
    };
    let mut audit = vec![
        admin_audit(org.id, EventType::MembershipCreated)
            .target("membership", user_id)
            .details(serde_json::json!({ "via": "admin-cli", "email": email, "role": role })),
    ];
    if new_user.is_some() {
        audit.push(admin_audit(org.id, EventType::UserCreated).target("user", user_id));
    }
    store.create_membership(&m, new_user.as_ref(), None, &audit).await?;
    Ok(AddedUser { user_id, email, org_id: org.id, role, generated_password: generated })
}

/// A new API key as the CLI prints it.
#[derive(Debug, Clone, Serialize)]
pub struct IssuedKey {
    pub id: evershell_core::ids::ApiKeyId,
    pub org_id: OrgId,
    pub label: String,
    pub permission_set: PermissionSet,
    pub value: String,
}

pub async fn create_api_key(store: &dyn Store, org: &Org, set: PermissionSet, label: &str) -> Result<IssuedKey> {
    let (key, value, hash) = new_key(org.id, label, set, None);
    let audit = admin_audit(org.id, EventType::ApiKeyCreated)
        .target("api_key", key.id)
        .details(serde_json::json!({ "via": "admin-cli", "label": label, "permission_set": set }));
    store.create_api_key(&key, &hash, &[audit]).await?;
    Ok(IssuedKey { id: key.id, org_id: org.id, label: key.label, permission_set: set, value })
}

/// What `admin bootstrap` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Bootstrap {
    pub org: Org,
    pub owner: AddedUser,
    pub api_key: IssuedKey,
}

/// First org, its first Owner and a `full_access` API key.
pub async fn bootstrap(store: &dyn Store, slug: &str, email: &str, password: Option<&str>) -> Result<Bootstrap> {
    let org = create_org(store, slug).await?;
    let owner = add_user(store, &org, email, MemberRole::Owner, password).await?;
    let api_key = create_api_key(store, &org, PermissionSet::FullAccess, "bootstrap").await?;
    Ok(Bootstrap { org, owner, api_key })
}

/// A session token minted for scripts.
#[derive(Debug, Clone, Serialize)]
pub struct MintedSession {
    pub token: String,
    pub expires_at: Timestamp,
    pub user_id: UserId,
    pub org_id: OrgId,
}

/// Mint a session for `email` in `org` (or the user's only org).
pub async fn mint_user_session(store: &dyn Store, email: &str, org: Option<&str>) -> Result<MintedSession> {
    let email = names::normalize_email(email);
    let user = store
        .get_user_by_email(&email)
        .await?
        .ok_or_else(|| Error::invalid_field("user", format!("no user with email `{email}`")))?;
    let memberships: Vec<_> = store
        .list_user_memberships(user.id)
        .await?
        .into_iter()
        .filter(|(m, _)| m.status == MembershipStatus::Active)
        .collect();
    let org_id = match org {
        Some(o) => {
            let org = find_org(store, o).await?;
            if !memberships.iter().any(|(m, _)| m.org_id == org.id) {
                return Err(Error::invalid_field("org", "the user is not an active member of that organisation"));
            }
            org.id
        }
        None => match memberships.as_slice() {
            [(m, _)] => m.org_id,
            [] => return Err(Error::invalid_field("user", "the user is not an active member of any organisation")),
            _ => return Err(Error::invalid_field("org", "the user belongs to several organisations; pass --org")),
        },
    };
    let (token, session) =
        mint_session(store, &SessionKey::default(), ADMIN_SESSION_TTL_MS, &user, org_id, None).await?;
    Ok(MintedSession { token, expires_at: session.expires_at, user_id: user.id, org_id })
}

pub async fn set_billing(
    store: &dyn Store,
    org: &Org,
    status: BillingStatus,
    trial_ends_at: Option<Timestamp>,
) -> Result<Org> {
    if trial_ends_at.is_some() && status != BillingStatus::Trial {
        return Err(Error::invalid_field("trial_ends_at", "only applies to status `trial`"));
    }
    let audit = admin_audit(org.id, EventType::OrgBillingChanged).target("org", org.id).details(serde_json::json!({
        "via": "admin-cli", "from": org.billing_status, "to": status, "trial_ends_at": trial_ends_at,
    }));
    store.set_org_billing(org.id, status, trial_ends_at, &[audit]).await
}
