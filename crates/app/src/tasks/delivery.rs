//! What the agent is handed for a task: the model target from the role's provider (kind → wire format,
//! `config.base_url` or the kind's default endpoint, the role's model else the provider's `default_model`), the
//! system prompt from the role's environment and description, and the limits from the task, else the role.

use evershell_core::agent_wire::{self, ModelTarget, ModelWire, TaskDelivery, ToolLimits};
use evershell_core::model::{AgentRole, Provider, ProviderKind, TaskRecord, ThinkingEffort};
use evershell_core::{Error, ErrorCode, Result};

/// `max_continuations` when neither the task nor the role sets one.
pub const DEFAULT_MAX_CONTINUATIONS: u32 = 50;
/// Grace a running tool command gets after a cancel.
pub const CANCEL_GRACE_MS: u64 = 10_000;

/// The wire format and default endpoint of a provider kind (`None`: the provider must set `config.base_url`).
fn wire_of(kind: ProviderKind) -> (ModelWire, Option<&'static str>) {
    match kind {
        ProviderKind::Anthropic => (ModelWire::AnthropicMessages, Some("https://api.anthropic.com")),
        ProviderKind::Openai => (ModelWire::OpenaiChat, Some("https://api.openai.com")),
        // OpenAI-compatible endpoints whose address depends on the account: no default.
        ProviderKind::AzureOpenai | ProviderKind::Gemini | ProviderKind::Vertex => (ModelWire::OpenaiChat, None),
    }
}

/// Where the agent calls its model for tasks of `role`; 409 `invalid_state` when the provider names no usable
/// endpoint or no model (checked at submission, so the caller hears of it at once).
pub fn model_target(role: &AgentRole, provider: &Provider) -> Result<ModelTarget> {
    let (wire, default) = wire_of(provider.kind);
    let base_url = match provider.config.get("base_url").map(|s| s.trim()).filter(|s| !s.is_empty()) {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => default.map(str::to_string).ok_or_else(|| {
            Error::conflict(
                ErrorCode::InvalidState,
                format!("providers of kind `{}` need `config.base_url` to run tasks", provider.kind.as_str()),
            )
        })?,
    };
    let model = role.model.clone().or_else(|| provider.default_model.clone()).ok_or_else(|| {
        Error::conflict(ErrorCode::InvalidState, "neither the agent role nor its provider names a model")
    })?;
    Ok(ModelTarget { wire, base_url, model })
}

fn effort(e: ThinkingEffort) -> agent_wire::ThinkingEffort {
    match e {
        ThinkingEffort::High => agent_wire::ThinkingEffort::High,
        ThinkingEffort::Medium => agent_wire::ThinkingEffort::Medium,
        ThinkingEffort::Low => agent_wire::ThinkingEffort::Low,
        ThinkingEffort::Off => agent_wire::ThinkingEffort::Off,
    }
}

/// The system prompt: the role's environment, its free-text description of it, and the role's description.
pub fn system_prompt(role: &AgentRole) -> String {
    let mut p = format!(
        "You are the agent of the role `{}`, working in /workspace. Files uploaded with a task are under \
         /data/uploads/<task_id>/.\nEnvironment: {}.",
        role.name,
        role.environment.as_str()
    );
    if let Some(d) = role.environment_description.as_deref().filter(|d| !d.trim().is_empty()) {
        p.push_str("\nAbout this environment: ");
        p.push_str(d.trim());
    }
    if let Some(d) = role.description.as_deref().filter(|d| !d.trim().is_empty()) {
        p.push_str("\nYour role: ");
        p.push_str(d.trim());
    }
    p
}

/// The delivery for `task`.
pub fn delivery(task: &TaskRecord, role: &AgentRole, provider: &Provider) -> Result<TaskDelivery> {
    let o = &task.options;
    let positive = |v: Option<i64>| v.filter(|n| *n > 0).map(|n| n as u64);
    Ok(TaskDelivery {
        task_id: task.id,
        description: task.description.clone(),
        uploads: o.uploads.clone(),
        model: model_target(role, provider)?,
        system_prompt: system_prompt(role),
        thinking_effort: o.thinking_effort.or(role.thinking_effort).map(effort),
        max_continuations: o
            .max_continuations
            .or(role.max_continuations)
            .map_or(DEFAULT_MAX_CONTINUATIONS, |n| n.clamp(0, i64::from(u32::MAX)) as u32),
        max_context_tokens: positive(o.max_context_tokens.or(role.max_context_tokens)),
        timeout_seconds: positive(role.task_timeout_seconds),
        reset_session: o.reset_session,
        limits: ToolLimits::default(),
        cancel_grace_ms: CANCEL_GRACE_MS,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use evershell_core::Timestamp;
    use evershell_core::ids::{OrgId, ProviderId, RoleId, TaskId, WorkspaceId};
    use evershell_core::model::{Environment, PoolPolicy, TaskOptions};
    use evershell_core::task::TaskStatus;

    use super::*;

    fn provider(kind: ProviderKind, config: &[(&str, &str)], default_model: Option<&str>) -> Provider {
        Provider {
            id: ProviderId::new(),
            org_id: OrgId::new(),
            name: "p".into(),
            kind,
            display_name: None,
            domain: "api.example.com".into(),
            credential_name: None,
            default_model: default_model.map(str::to_string),
            capabilities: None,
            config: config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            created_at: Timestamp::from_millis(0),
            updated_at: Timestamp::from_millis(0),
            archived_at: None,
        }
    }

    fn role(model: Option<&str>) -> AgentRole {
        AgentRole {
            id: RoleId::new(),
            org_id: OrgId::new(),
            name: "coder".into(),
            display_name: None,
            description: Some("Writes Rust.".into()),
            provider_id: ProviderId::new(),
            model: model.map(str::to_string),
            capabilities: None,
            environment: Environment::Staging,
            environment_description: Some("A staging copy of the shop.".into()),
            task_timeout_seconds: Some(900),
            idle_timeout_seconds: None,
            thinking_effort: Some(ThinkingEffort::Low),
            max_continuations: Some(7),
            max_context_tokens: Some(100_000),
            pool_policy: PoolPolicy::Off,
            pool_size: None,
            pool_max_size: None,
            pack_ids: vec![],
            created_at: Timestamp::from_millis(0),
            updated_at: Timestamp::from_millis(0),
            archived_at: None,
            memory_limit_bytes: None,
            pids_limit: None,
            cpu_limit_millis: None,
        }
    }

    #[test]
    fn model_target_from_kind_config_and_models() {
        let t = model_target(&role(None), &provider(ProviderKind::Anthropic, &[], Some("claude-x"))).unwrap();
        assert_eq!(
            t,
            ModelTarget {
                wire: ModelWire::AnthropicMessages,
                base_url: "https://api.anthropic.com".into(),
                model: "claude-x".into()
            }
        );
        let p = provider(ProviderKind::Openai, &[("base_url", "http://10.0.0.5:8000/")], Some("default"));
        let t = model_target(&role(Some("llama")), &p).unwrap();
        assert_eq!(t.wire, ModelWire::OpenaiChat);
        assert_eq!(t.base_url, "http://10.0.0.5:8000", "a trailing slash is dropped");
        assert_eq!(t.model, "llama", "the role's model wins over the provider's default");
        for kind in [ProviderKind::Gemini, ProviderKind::Vertex, ProviderKind::AzureOpenai] {
            let e = model_target(&role(None), &provider(kind, &[], Some("m"))).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidState, "{kind:?}");
            let ok = model_target(&role(None), &provider(kind, &[("base_url", "https://x.example")], Some("m")));
            assert_eq!(ok.unwrap().wire, ModelWire::OpenaiChat);
        }
        let e = model_target(&role(None), &provider(ProviderKind::Anthropic, &[], None)).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidState);
    }

    #[test]
    fn task_options_override_the_role() {
        let r = role(None);
        let p = provider(ProviderKind::Anthropic, &[], Some("m"));
        let mut t = TaskRecord {
            id: TaskId::new(),
            org_id: r.org_id,
            workspace_id: WorkspaceId::new(),
            created_by_user_id: None,
            description: "fix it".into(),
            status: TaskStatus::Submitted,
            reason: None,
            options: TaskOptions::default(),
            queue_seq: 1,
            created_at: Timestamp::from_millis(0),
            delivered_at: None,
            started_at: None,
            completed_at: None,
            result: None,
        };
        let d = delivery(&t, &r, &p).unwrap();
        assert_eq!(d.max_continuations, 7);
        assert_eq!(d.max_context_tokens, Some(100_000));
        assert_eq!(d.thinking_effort, Some(agent_wire::ThinkingEffort::Low));
        assert_eq!(d.timeout_seconds, Some(900));
        assert!(d.system_prompt.contains("staging") && d.system_prompt.contains("A staging copy of the shop."));
        assert!(d.system_prompt.contains("Writes Rust."));
        t.options = TaskOptions {
            thinking_effort: Some(ThinkingEffort::High),
            max_continuations: Some(2),
            max_context_tokens: Some(5_000),
            reset_session: true,
            uploads: vec!["a.csv".into()],
            ..Default::default()
        };
        let d = delivery(&t, &r, &p).unwrap();
        assert_eq!(d.max_continuations, 2);
        assert_eq!(d.max_context_tokens, Some(5_000));
        assert_eq!(d.thinking_effort, Some(agent_wire::ThinkingEffort::High));
        assert!(d.reset_session);
        assert_eq!(d.uploads, vec!["a.csv".to_string()]);
        assert_eq!(d.cancel_grace_ms, CANCEL_GRACE_MS);
    }
}
