//! The audit trail's model: immutable events with a closed `EventType`, the `filter=` grammar of `GET /v1/audit`,
//! and the opaque keyset cursor over `(timestamp, id)`.

use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{Error, ErrorCode, FieldErrors, Result};
use crate::ids::{OrgId, TaskId, UserId, WorkspaceId};
use crate::time::Timestamp;

macro_rules! event_types {
    ($($(#[$m:meta])* $v:ident = $s:literal => $cat:ident),* $(,)?) => {
        /// What happened. Closed: every event the server writes is one of these.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum EventType {
            $($(#[$m])* #[serde(rename = $s)] $v,)*
        }

        // Written by hand: the derive cannot read a `rename` that arrives through a macro.
        impl utoipa::PartialSchema for EventType {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                crate::names::schema::string_enum(
                    "What happened. Closed: every event the server writes is one of these.",
                    [$($s),*],
                )
            }
        }

        impl ToSchema for EventType {}

        impl EventType {
            pub const ALL: &[EventType] = &[$(EventType::$v),*];

            pub fn as_str(self) -> &'static str {
                match self { $(EventType::$v => $s,)* }
            }

            /// `activity` for workspace state changes and agent events, `audit` for everything a caller changed.
            pub fn category(self) -> Category {
                match self { $(EventType::$v => Category::$cat,)* }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some(EventType::$v),)* _ => None }
            }
        }
    };
}

event_types! {
    OrgCreated = "org_created" => Audit,
    OrgBillingChanged = "org_billing_changed" => Audit,
    UserCreated = "user_created" => Audit,
    LoginSucceeded = "login_succeeded" => Audit,
    LoggedOut = "logged_out" => Audit,
    /// A sign-in (login or accept-invite) with a wrong password for a known account; never the password itself.
    LoginFailed = "login_failed" => Audit,
    /// A sign-in refused by the throttle before any password check; written once per back-off period.
    LoginThrottled = "login_throttled" => Audit,
    /// An operator reset a user's password (`admin user add --reset-password`); written in each of the user's orgs.
    PasswordReset = "password_reset" => Audit,
    MembershipInvited = "membership_invited" => Audit,
    MembershipCreated = "membership_created" => Audit,
    InvitationAccepted = "invitation_accepted" => Audit,
    MembershipRoleChanged = "membership_role_changed" => Audit,
    MembershipRemoved = "membership_removed" => Audit,
    ApiKeyCreated = "api_key_created" => Audit,
    ApiKeyRevoked = "api_key_revoked" => Audit,
    SecretCreated = "secret_created" => Audit,
    SecretRotated = "secret_rotated" => Audit,
    SecretDeleted = "secret_deleted" => Audit,
    CredentialCreated = "credential_created" => Audit,
    CredentialDeleted = "credential_deleted" => Audit,
    ProviderCreated = "provider_created" => Audit,
    ProviderUpdated = "provider_updated" => Audit,
    ProviderArchived = "provider_archived" => Audit,
    ProviderUnarchived = "provider_unarchived" => Audit,
    AgentRoleCreated = "agent_role_created" => Audit,
    AgentRoleUpdated = "agent_role_updated" => Audit,
    /// Also written for each role archived by a provider archive cascade.
    AgentRoleArchived = "agent_role_archived" => Audit,
    AgentRoleUnarchived = "agent_role_unarchived" => Audit,
    WorkspaceCreated = "workspace_created" => Audit,
    /// A workspace was created as a fork of another at one of its checkpoints (both ids and the count in `details`).
    WorkspaceForked = "workspace_forked" => Audit,
    WorkspaceStopRequested = "workspace_stop_requested" => Audit,
    WorkspaceResumeRequested = "workspace_resume_requested" => Audit,
    WorkspaceRestartRequested = "workspace_restart_requested" => Audit,
    WorkspaceArchived = "workspace_archived" => Audit,
    WorkspaceUnarchived = "workspace_unarchived" => Audit,
    WorkspaceFileWritten = "workspace_file_written" => Audit,
    /// A command run in the live sandbox (`sandbox/exec`): program, argument count, exit code, duration.
    WorkspaceExec = "workspace_exec" => Audit,
    /// provisioning → idle.
    WorkspaceReady = "workspace_ready" => Activity,
    /// stopping → stopped.
    WorkspaceStopped = "workspace_stopped" => Activity,
    /// stopping → provisioning during a restart.
    WorkspaceRestarting = "workspace_restarting" => Activity,
    /// any → failed.
    WorkspaceFailed = "workspace_failed" => Activity,
    /// A snapshot was written and verified.
    SnapshotSaved = "snapshot_saved" => Activity,
    /// A snapshot could not be written (the attempt is retried or the stop fails).
    SnapshotFailed = "snapshot_failed" => Activity,
    /// A snapshot was verified and restored into a fresh pod.
    SnapshotRestored = "snapshot_restored" => Activity,
    /// A snapshot was deleted after a newer one was verified.
    SnapshotDeleted = "snapshot_deleted" => Activity,
    /// The reconciler found work interrupted by a control-plane restart and took it over.
    WorkspaceRecovered = "workspace_recovered" => Activity,
    /// The egress proxy decided a pod's outbound request (or refused its connection): destination, method, redacted
    /// path, decision and reason, with capability, transforms, credentials, budgets, bytes and latency in `details`.
    EgressRequest = "egress_request" => Activity,
    /// A task was submitted (queued on its workspace).
    TaskSubmitted = "task_submitted" => Activity,
    /// The agent accepted a task.
    TaskDelivered = "task_delivered" => Activity,
    /// A task could not be delivered after bounded retries.
    TaskDeliveryFailed = "task_delivery_failed" => Activity,
    /// A caller asked for the running task to be cancelled.
    TaskCancelRequested = "task_cancel_requested" => Audit,
    /// The control plane ended a task the agent could not (stop, restart, pod loss, agent restart, recovery).
    TaskInterrupted = "task_interrupted" => Activity,
    // Events the agent emits (actor `agent`), see `agent_wire::AgentEvent`.
    SessionStarted = "session_started" => Activity,
    SessionResumed = "session_resumed" => Activity,
    TaskStarted = "task_started" => Activity,
    IterationCompleted = "iteration_completed" => Activity,
    ToolCallCompleted = "tool_call_completed" => Activity,
    CompactionStarted = "compaction_started" => Activity,
    CompactionCompleted = "compaction_completed" => Activity,
    /// The agent ended a task (`details.status`: completed, failed or cancelled).
    TaskCompleted = "task_completed" => Activity,
    /// An agent event of a type not listed above (`details.agent_event_type` names it).
    AgentEvent = "agent_event" => Activity,
    /// The egress proxy's DNS responder answered `NXDOMAIN` to a pod for a name its policy does not allow: the name
    /// in `destination`, `reason`, and `qtype`, `transport`, `pod_id` in `details`. The name was never forwarded.
    EgressDnsDenied = "egress_dns_denied" => Activity,
}

/// `audit` (a caller changed something) or `activity` (workspace state and agent events).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Audit,
    Activity,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Audit => "audit",
            Category::Activity => "activity",
        }
    }
}

/// Which component wrote the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum Actor {
    #[serde(rename = "control-plane")]
    ControlPlane,
    #[serde(rename = "policy-engine")]
    PolicyEngine,
    #[serde(rename = "agent")]
    Agent,
}

impl Actor {
    pub fn as_str(self) -> &'static str {
        match self {
            Actor::ControlPlane => "control-plane",
            Actor::PolicyEngine => "policy-engine",
            Actor::Agent => "agent",
        }
    }
}

/// `user_id` of events caused by API keys and by the server itself.
pub const SYSTEM_USER: &str = "system";

/// One immutable audit row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEvent {
    /// UUIDv7; the pagination tiebreaker.
    #[schema(value_type = String, example = "01936d2e-8f1a-7c3b-9d4e-5f6a7b8c9d0e")]
    pub id: uuid::Uuid,
    pub org_id: OrgId,
    /// The acting user's id, or `system` for API keys and automatic transitions.
    pub user_id: String,
    pub timestamp: Timestamp,
    pub event_type: EventType,
    pub category: Category,
    pub actor: Actor,
    pub workspace_id: Option<WorkspaceId>,
    pub task_id: Option<TaskId>,
    /// Role name (workspace events).
    pub agent_role: Option<String>,
    /// Provider name (workspace events).
    pub agent_provider: Option<String>,
    /// Kind of the object the event is about (`provider`, `agent_role`, `api_key`, `membership`, `org`, …).
    pub target_type: Option<String>,
    /// Id of the object the event is about.
    pub target_id: Option<String>,
    pub destination: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub decision: Option<String>,
    pub reason: Option<String>,
    pub latency_ms: Option<i64>,
    /// The request that caused it.
    pub request_id: Option<String>,
    /// Event-specific detail (changed fields, snapshot manifest, error text, …).
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

impl AuditEvent {
    /// A new event stamped now, for `org` and `user_id`, written by the control plane.
    pub fn new(org_id: OrgId, user_id: impl Into<String>, event_type: EventType) -> Self {
        Self {
            id: uuid::Uuid::now_v7(),
            org_id,
            user_id: user_id.into(),
            timestamp: Timestamp::now(),
            event_type,
            category: event_type.category(),
            actor: Actor::ControlPlane,
            workspace_id: None,
            task_id: None,
            agent_role: None,
            agent_provider: None,
            target_type: None,
            target_id: None,
            destination: None,
            method: None,
            path: None,
            decision: None,
            reason: None,
            latency_ms: None,
            request_id: None,
            details: None,
        }
    }

    pub fn system(org_id: OrgId, event_type: EventType) -> Self {
        Self::new(org_id, SYSTEM_USER, event_type)
    }

    pub fn target(mut self, kind: &str, id: impl ToString) -> Self {
        self.target_type = Some(kind.to_string());
        self.target_id = Some(id.to_string());
        self
    }

    pub fn workspace(mut self, id: WorkspaceId) -> Self {
        self.workspace_id = Some(id);
        self
    }

    /// The task the event belongs to (the `task_id` column; `?task_id=` of the activity list filters on it).
    pub fn task(mut self, id: TaskId) -> Self {
        self.task_id = Some(id);
        self
    }

    pub fn reason(mut self, r: impl Into<String>) -> Self {
        self.reason = Some(r.into());
        self
    }

    pub fn details(mut self, d: serde_json::Value) -> Self {
        self.details = Some(d);
        self
    }

    pub fn request(mut self, request_id: Option<&str>) -> Self {
        self.request_id = request_id.map(str::to_string);
        self
    }

    pub fn by_user(mut self, user: Option<UserId>) -> Self {
        if let Some(u) = user {
            self.user_id = u.to_string();
        }
        self
    }
}

/// Columns `filter=` may name.
pub const FILTER_COLUMNS: &[&str] = &[
    "event_type",
    "category",
    "actor",
    "user_id",
    "workspace_id",
    "task_id",
    "agent_role",
    "agent_provider",
    "target_type",
    "target_id",
    "destination",
    "method",
    "path",
    "decision",
    "reason",
    "request_id",
];

/// One `filter=` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterOp {
    /// `col=v1,v2`
    In(Vec<String>),
    /// `col!=v1,v2`
    NotIn(Vec<String>),
    /// `col!=` — the column is set.
    NotEmpty,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// Always one of `FILTER_COLUMNS` (safe to splice into SQL).
    pub column: &'static str,
    pub op: FilterOp,
}

/// Sort order over `(timestamp, id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    Asc,
    #[default]
    Desc,
}

/// Default and largest page size.
pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 10_000;

/// A validated audit query.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditQuery {
    pub org_id: OrgId,
    pub conditions: Vec<Condition>,
    /// Only events for this workspace (`/workspaces/{id}/audit`).
    pub workspace_id: Option<WorkspaceId>,
    /// Only events attributed to this user (`audit:read:own`).
    pub user_id: Option<String>,
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
    pub order: Order,
    pub limit: i64,
    pub after: Option<Cursor>,
}

/// Most `filter=` conditions one query takes (each is an SQL expression; thousands overflow the database's
/// expression limits).
pub const MAX_FILTERS: usize = 50;
/// Most values across all conditions of one query (each is a bound parameter).
pub const MAX_FILTER_VALUES: usize = 1000;

/// Parse the `filter=` values of a request.
pub fn parse_filters(raw: &[String]) -> Result<Vec<Condition>> {
    let mut errs = FieldErrors::default();
    if raw.len() > MAX_FILTERS {
        errs.add("filter", format!("at most {MAX_FILTERS} conditions (got {})", raw.len()));
        return Err(Error::validation(errs));
    }
    let values: usize = raw.iter().map(|f| f.matches(',').count() + 1).sum();
    if values > MAX_FILTER_VALUES {
        errs.add("filter", format!("at most {MAX_FILTER_VALUES} values across all conditions (got {values})"));
        return Err(Error::validation(errs));
    }
    let mut out = Vec::new();
    for (i, f) in raw.iter().enumerate() {
        let field = format!("filter[{i}]");
        let (col, op) = if let Some((c, v)) = f.split_once("!=") {
            if v.is_empty() { (c, FilterOp::NotEmpty) } else { (c, FilterOp::NotIn(split_values(v))) }
        } else if let Some((c, v)) = f.split_once('=') {
            if v.is_empty() {
                errs.add(field, "needs at least one value after `=` (use `col!=` for \"is set\")");
                continue;
            }
            (c, FilterOp::In(split_values(v)))
        } else {
            errs.add(field, "must be `col=v1,v2`, `col!=v1,v2` or `col!=`");
            continue;
        };
        let Some(column) = FILTER_COLUMNS.iter().copied().find(|c| *c == col) else {
            errs.add(field, format!("unknown column `{col}` (allowed: {})", FILTER_COLUMNS.join(", ")));
            continue;
        };
        if let FilterOp::In(vs) | FilterOp::NotIn(vs) = &op {
            let bad = match column {
                "event_type" => vs.iter().find(|v| EventType::parse(v).is_none()),
                "category" => vs.iter().find(|v| !matches!(v.as_str(), "audit" | "activity")),
                "actor" => vs.iter().find(|v| !matches!(v.as_str(), "control-plane" | "policy-engine" | "agent")),
                "decision" => vs.iter().find(|v| !matches!(v.as_str(), "allow" | "deny")),
                _ => None,
            };
            if let Some(bad) = bad {
                errs.add(field, format!("`{bad}` is not a valid {column}"));
                continue;
            }
        }
        out.push(Condition { column, op });
    }
    errs.into_result().map(|()| out)
}

fn split_values(v: &str) -> Vec<String> {
    v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

/// A keyset position: the last `(timestamp, id)` of the previous page, and the order it was read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub timestamp_ms: i64,
    pub id: uuid::Uuid,
    pub order: Order,
}

impl Cursor {
    pub fn encode(&self) -> String {
        let o = match self.order {
            Order::Asc => 'a',
            Order::Desc => 'd',
        };
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("v1.{o}.{}.{}", self.timestamp_ms, self.id))
    }

    /// Decode a cursor; it must have been issued for the same `order`.
    pub fn decode(s: &str, order: Order) -> Result<Self> {
        let bad = || Error::new(ErrorCode::InvalidCursor, "the cursor is malformed or was issued for another query");
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
        let raw = String::from_utf8(raw).map_err(|_| bad())?;
        let mut parts = raw.split('.');
        let (Some("v1"), Some(o), Some(ts), Some(id), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let cursor_order = match o {
            "a" => Order::Asc,
            "d" => Order::Desc,
            _ => return Err(bad()),
        };
        if cursor_order != order {
            return Err(bad());
        }
        let timestamp_ms = ts.parse().map_err(|_| bad())?;
        let id = uuid::Uuid::parse_str(id).map_err(|_| bad())?;
        Ok(Self { timestamp_ms, id, order })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_grammar() {
        let c = parse_filters(&[
            "event_type=provider_created,agent_role_created".into(),
            "user_id!=system".into(),
            "workspace_id!=".into(),
        ])
        .unwrap();
        assert_eq!(c[0].op, FilterOp::In(vec!["provider_created".into(), "agent_role_created".into()]));
        assert_eq!(c[1].op, FilterOp::NotIn(vec!["system".into()]));
        assert_eq!(c[2], Condition { column: "workspace_id", op: FilterOp::NotEmpty });
    }

    #[test]
    fn filter_errors_name_the_filter() {
        let e = parse_filters(&["ok=1".into()]).unwrap_err();
        assert_eq!(e.code, ErrorCode::ValidationError);
        assert!(e.details.unwrap()["fields"]["filter[0]"].as_str().unwrap().contains("unknown column"));
        assert!(parse_filters(&["event_type=nope".into()]).is_err());
        assert!(parse_filters(&["garbage".into()]).is_err());
        assert!(parse_filters(&["category=".into()]).is_err());
    }

    #[test]
    fn cursor_round_trip_and_rejects_garbage() {
        let c = Cursor { timestamp_ms: 1234, id: uuid::Uuid::now_v7(), order: Order::Desc };
        assert_eq!(Cursor::decode(&c.encode(), Order::Desc).unwrap(), c);
        assert_eq!(Cursor::decode(&c.encode(), Order::Asc).unwrap_err().code, ErrorCode::InvalidCursor);
        assert_eq!(Cursor::decode("!!!", Order::Desc).unwrap_err().code, ErrorCode::InvalidCursor);
        assert_eq!(Cursor::decode("djEuZC4xMjM", Order::Desc).unwrap_err().code, ErrorCode::InvalidCursor);
    }

    #[test]
    fn every_event_type_round_trips() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(*t));
            assert_eq!(serde_json::to_value(t).unwrap(), serde_json::json!(t.as_str()));
        }
    }
}
