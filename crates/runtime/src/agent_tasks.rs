//! The control-plane side of the task wire (`evershell_core::agent_wire`) on `AgentClient`: deliver a task, read
//! and cancel it, long-poll the agent's events, read its session view. Every answer is bounded in size and time
//! like the client's other calls: 30 s for a delivery, a status, a cancel or the session (1 MiB), the long-poll's
//! own wait plus 10 s for an event page (64 MiB, at most `MAX_EVENTS_PER_PAGE` events kept).

use std::time::Duration;

use anyhow::anyhow;
use bytes::Bytes;
use evershell_core::agent_wire::{AgentTaskStatus, EventPage, MAX_EVENT_WAIT_MS, MAX_EVENTS_PER_PAGE, TaskDelivery};
use evershell_core::ids::TaskId;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::agent_client::{AgentClient, AgentError, HEAD_TIMEOUT, MAX_JSON_BODY, ReqBody, empty};

/// Largest event page read from the agent (tool output kept in events can reach 1 MiB each).
const MAX_EVENT_PAGE_BODY: usize = 64 * 1024 * 1024;
/// Margin over the long-poll's own wait before an event page counts as unanswered.
const EVENT_MARGIN: Duration = Duration::from_secs(10);

/// What a delivery got.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryAnswer {
    /// The agent holds the task (new, or a re-delivery of the one it already holds).
    Accepted(AgentTaskStatus),
    /// The agent holds another task that has not ended (409 `agent_busy`).
    Busy,
}

impl AgentClient {
    /// `POST /v1/tasks`.
    pub async fn deliver_task(&self, task: &TaskDelivery) -> Result<DeliveryAnswer, AgentError> {
        let body = serde_json::to_vec(task).map_err(|e| AgentError::Rejected(e.to_string()))?;
        let call = async {
            let res = self.send(Method::POST, "/v1/tasks".into(), full(body)).await?;
            if res.status() == StatusCode::CONFLICT {
                // Drain nothing: the connection is dropped with the response.
                return Ok(DeliveryAnswer::Busy);
            }
            let status: AgentTaskStatus = self.accepted_json(res, MAX_JSON_BODY).await?;
            if status.task_id != task.task_id {
                return Err(AgentError::Unreachable(anyhow!("the agent answered a delivery for another task")));
            }
            Ok(DeliveryAnswer::Accepted(status))
        };
        timed(HEAD_TIMEOUT, "task delivery", call).await
    }

    /// `GET /v1/tasks/{id}`: `None` when this agent process never saw the task (it restarted).
    pub async fn task_status(&self, id: TaskId) -> Result<Option<AgentTaskStatus>, AgentError> {
        let call = async {
            let res = self.send(Method::GET, format!("/v1/tasks/{id}"), empty()).await?;
            if res.status() == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            let status: AgentTaskStatus = self.accepted_json(res, MAX_JSON_BODY).await?;
            if status.task_id != id {
                return Err(AgentError::Unreachable(anyhow!("the agent answered for another task")));
            }
            Ok(Some(status))
        };
        timed(HEAD_TIMEOUT, "task status", call).await
    }

    /// `POST /v1/tasks/{id}/cancel`: `None` when the agent does not know the task.
    pub async fn cancel_task(&self, id: TaskId) -> Result<Option<AgentTaskStatus>, AgentError> {
        let call = async {
            let res = self.send(Method::POST, format!("/v1/tasks/{id}/cancel"), full(b"{}".to_vec())).await?;
            if res.status() == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            let status: AgentTaskStatus = self.accepted_json(res, MAX_JSON_BODY).await?;
            Ok(Some(status))
        };
        timed(HEAD_TIMEOUT, "task cancel", call).await
    }

    /// `GET /v1/events?after=…&wait_ms=…` (the wait is capped at `MAX_EVENT_WAIT_MS`; events beyond
    /// `MAX_EVENTS_PER_PAGE` are dropped and counted in `dropped`).
    pub async fn events(&self, after: u64, wait: Duration) -> Result<EventPage, AgentError> {
        let wait_ms = (wait.as_millis() as u64).min(MAX_EVENT_WAIT_MS);
        let call = async {
            let res = self.send(Method::GET, format!("/v1/events?after={after}&wait_ms={wait_ms}"), empty()).await?;
            let mut page: EventPage = self.accepted_json(res, MAX_EVENT_PAGE_BODY).await?;
            if page.events.len() > MAX_EVENTS_PER_PAGE {
                page.dropped += (page.events.len() - MAX_EVENTS_PER_PAGE) as u64;
                page.events.truncate(MAX_EVENTS_PER_PAGE);
            }
            Ok(page)
        };
        timed(Duration::from_millis(wait_ms) + EVENT_MARGIN, "event page", call).await
    }

    /// `GET /v1/session`: the agent's session view (opaque JSON, at most 1 MiB).
    pub async fn session(&self) -> Result<serde_json::Value, AgentError> {
        let call = async {
            let res = self.send(Method::GET, "/v1/session".into(), empty()).await?;
            self.accepted_json(res, MAX_JSON_BODY).await
        };
        timed(HEAD_TIMEOUT, "session view", call).await
    }

    /// Decode a 200 or 202 JSON body of at most `limit` bytes; any other status is an error.
    async fn accepted_json<T: serde::de::DeserializeOwned>(
        &self,
        res: http::Response<Incoming>,
        limit: usize,
    ) -> Result<T, AgentError> {
        if res.status() != StatusCode::OK && res.status() != StatusCode::ACCEPTED {
            return Err(self.failure(res).await);
        }
        let bytes = http_body_util::Limited::new(res.into_body(), limit)
            .collect()
            .await
            .map_err(|e| AgentError::Unreachable(anyhow!("reading the agent's response (at most {limit} bytes): {e}")))?
            .to_bytes();
        serde_json::from_slice(&bytes)
            .map_err(|e| AgentError::Unreachable(anyhow!(e).context("decoding the agent's response")))
    }
}

fn full(body: Vec<u8>) -> ReqBody {
    http_body_util::Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed_unsync()
}

async fn timed<T>(
    limit: Duration,
    what: &str,
    call: impl Future<Output = Result<T, AgentError>>,
) -> Result<T, AgentError> {
    tokio::time::timeout(limit, call)
        .await
        .map_err(|_| AgentError::Unreachable(anyhow!("{what} did not answer within {limit:?}")))?
}
