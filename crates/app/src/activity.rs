//! Activity: the `category = activity` audit rows of a workspace or an org. The paged history
//! (`GET /v1/workspaces/{id}/activity`) and the live stream behind both SSE routes: replay from the store after
//! `Last-Event-ID`, then the in-process feed (`Store::activity_feed`), with a store poll by `(timestamp, id)` so rows
//! written by other replicas (or missed by a subscriber that lagged) arrive too, each event once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use evershell_core::audit::{AuditEvent, AuditQuery, Category, Condition, Cursor, EventType, FilterOp, Order};
use evershell_core::ids::{OrgId, TaskId, UserId, WorkspaceId};
use evershell_core::scope::{Reach, Scope};
use evershell_core::{Error, ErrorCode, FieldErrors, Result, Timestamp};
use evershell_store::{FeedEvent, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, watch};

use crate::App;
use crate::audit_log::{AuditPage, parse_page};
use crate::caller::Caller;

/// Timing of the SSE streams (`[activity]` in the server config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamSettings {
    /// A `: heartbeat` comment this often.
    pub heartbeat_ms: u64,
    /// The server ends a stream after this long (`sseMaxStreamDuration`); clients reconnect with `Last-Event-ID`.
    pub max_duration_ms: u64,
    /// How often a stream also reads the store for rows the in-process feed did not carry (other replicas).
    pub poll_interval_ms: u64,
    /// How far behind its newest delivered event a stream's store poll looks, for rows that committed late (their
    /// timestamp is taken before their transaction commits).
    pub lookback_ms: u64,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self { heartbeat_ms: 15_000, max_duration_ms: 300_000, poll_interval_ms: 1_000, lookback_ms: 5_000 }
    }
}

/// The query string of `GET /v1/workspaces/{id}/activity`, as received.
#[derive(Debug, Clone, Default)]
pub struct ActivityParams {
    pub task_id: Option<String>,
    pub event_type: Option<String>,
    pub after: Option<String>,
    pub cursor: Option<String>,
    pub order: Option<String>,
    pub limit: Option<String>,
}

/// What a stream sends.
#[derive(Debug, Clone)]
pub enum StreamItem {
    /// The event, with its JSON rendered once for every stream that sends it.
    Event(Arc<FeedEvent>),
    Heartbeat,
}

/// Rows read from the store per query while a stream catches up.
const PAGE: i64 = 500;
/// Items buffered between a stream's task and its HTTP body.
const BUFFER: usize = 256;
/// Workspace-ownership answers a `:own` stream remembers.
const OWNER_CACHE: usize = 10_000;

fn activity_only() -> Condition {
    Condition { column: "category", op: FilterOp::In(vec![Category::Activity.as_str().into()]) }
}

impl App {
    /// One page of a workspace's activity (the caller has already been shown the workspace).
    pub async fn list_activity(&self, caller: &Caller, ws: WorkspaceId, p: ActivityParams) -> Result<AuditPage> {
        let mut errs = FieldErrors::default();
        let mut conditions = vec![activity_only()];
        if let Some(t) = p.task_id.as_deref() {
            match t.parse::<TaskId>() {
                Ok(t) => conditions.push(Condition { column: "task_id", op: FilterOp::In(vec![t.to_string()]) }),
                Err(_) => errs.add("task_id", "must be a task id (`task_…`)"),
            }
        }
        if let Some(t) = p.event_type.as_deref() {
            match EventType::parse(t) {
                Some(t) => {
                    conditions.push(Condition { column: "event_type", op: FilterOp::In(vec![t.as_str().into()]) })
                }
                None => errs.add("event_type", format!("`{t}` is not an event type")),
            }
        }
        let after = p.after.as_deref().and_then(|a| {
            let t = Timestamp::parse_rfc3339(a);
            if t.is_none() {
                errs.add("after", "must be an RFC 3339 timestamp");
            }
            t
        });
        if p.after.is_some() && p.cursor.is_some() {
            errs.add("cursor", "use `cursor` or `after`, not both");
        }
        let (order, limit) = parse_page(&mut errs, p.order.as_deref(), p.limit.as_deref());
        errs.into_result()?;
        let cursor = p.cursor.as_deref().map(|c| Cursor::decode(c, order)).transpose()?;
        let q = AuditQuery {
            org_id: caller.org_id,
            conditions,
            workspace_id: Some(ws),
            user_id: None,
            // Timestamps are whole milliseconds: "strictly after" is "from the next millisecond".
            from: after.map(|t| t.plus_millis(1)),
            to: None,
            order,
            limit,
            after: cursor,
        };
        let events = self.store.query_audit(&q).await?;
        let cursor = (events.len() as i64 == limit)
            .then(|| events.last().map(|e| Cursor { timestamp_ms: e.timestamp.millis(), id: e.id, order }.encode()))
            .flatten();
        Ok(AuditPage { events, cursor })
    }

    /// Write activity rows (agent and egress events): they reach the history and every open stream. Rows of
    /// another category are refused (they belong with the change that caused them).
    pub async fn record_activity(&self, events: &[AuditEvent]) -> Result<()> {
        if let Some(e) = events.iter().find(|e| e.category != Category::Activity) {
            return Err(Error::internal(anyhow::anyhow!("`{}` is not an activity event", e.event_type.as_str())));
        }
        self.store.append_audit(events).await
    }

    /// End every activity stream (the server is shutting down; an open stream would hold the shutdown).
    pub fn close_activity_streams(&self) {
        self.store.activity_feed().close();
    }

    /// Start a live stream of activity: the org's (`workspace` None; a `workspace:read:own` caller gets only the
    /// events of workspaces they created) or one workspace's (the caller has already been shown it). With
    /// `last_event_id`, the events after that one are replayed from the store first. The stream ends after
    /// `max_duration_ms`, or when the receiver is dropped.
    pub async fn activity_stream(
        &self,
        caller: &Caller,
        workspace: Option<WorkspaceId>,
        last_event_id: Option<&str>,
    ) -> Result<mpsc::Receiver<StreamItem>> {
        let own = match (workspace, caller.reach(Scope::WorkspaceRead)?) {
            (None, Reach::Own) => Some(caller.user_id()),
            _ => None,
        };
        // Subscribe before reading the replay start, so nothing committed from here on is missed.
        let feed = self.store.activity_feed().subscribe();
        let closing = self.store.activity_feed().closing();
        let start = match last_event_id.map(str::trim).filter(|s| !s.is_empty()) {
            None => (Timestamp::now().millis(), uuid::Uuid::nil()),
            Some(raw) => {
                let id = uuid::Uuid::parse_str(raw)
                    .map_err(|_| Error::new(ErrorCode::InvalidCursor, "Last-Event-ID is not an event id"))?;
                match self.store.get_audit_event(caller.org_id, id).await? {
                    Some(e) => (e.timestamp.millis(), e.id),
                    // Not an event of this org (or not kept): replay from the moment its UUIDv7 names.
                    None => match id.get_timestamp().map(|t| t.to_unix()) {
                        Some((secs, nanos)) => (secs as i64 * 1000 + i64::from(nanos / 1_000_000), id),
                        None => return Err(Error::new(ErrorCode::InvalidCursor, "Last-Event-ID is not an event id")),
                    },
                }
            }
        };
        let (tx, rx) = mpsc::channel(BUFFER);
        let stream = Stream {
            store: self.store.clone(),
            settings: self.config.activity,
            filter: Filter { org: caller.org_id, workspace, own, owners: HashMap::new() },
            position: Position::new(start),
            tx,
        };
        tokio::spawn(stream.run(feed, closing));
        Ok(rx)
    }
}

/// Which events a stream shows.
struct Filter {
    org: OrgId,
    workspace: Option<WorkspaceId>,
    /// `Some(user)`: only events of workspaces `user` created.
    own: Option<Option<UserId>>,
    owners: HashMap<WorkspaceId, bool>,
}

impl Filter {
    async fn admits(&mut self, store: &dyn Store, e: &AuditEvent) -> Result<bool> {
        if e.org_id != self.org || e.category != Category::Activity {
            return Ok(false);
        }
        if self.workspace.is_some() && e.workspace_id != self.workspace {
            return Ok(false);
        }
        let Some(user) = self.own else { return Ok(true) };
        let (Some(user), Some(ws)) = (user, e.workspace_id) else { return Ok(false) };
        if let Some(&mine) = self.owners.get(&ws) {
            return Ok(mine);
        }
        let mine = store.get_workspace(self.org, ws).await?.is_some_and(|w| w.created_by_user_id == Some(user));
        if self.owners.len() >= OWNER_CACHE {
            self.owners.clear();
        }
        self.owners.insert(ws, mine);
        Ok(mine)
    }
}

/// Where a stream is: the replay start, the newest `(timestamp, id)` delivered, and the ids delivered recently
/// enough that a store poll could return them again.
struct Position {
    start: (i64, uuid::Uuid),
    high: (i64, uuid::Uuid),
    seen: HashSet<uuid::Uuid>,
    recent: VecDeque<(i64, uuid::Uuid)>,
}

impl Position {
    fn new(start: (i64, uuid::Uuid)) -> Self {
        Self { start, high: start, seen: HashSet::new(), recent: VecDeque::new() }
    }

    fn fresh(&self, e: &AuditEvent) -> bool {
        !self.seen.contains(&e.id)
    }

    /// Record a delivery. Ids are forgotten once they fall twice the look-back behind the newest, beyond the reach
    /// of any later poll.
    fn mark(&mut self, e: &AuditEvent, lookback_ms: i64) {
        let key = (e.timestamp.millis(), e.id);
        self.seen.insert(e.id);
        self.recent.push_back(key);
        self.high = self.high.max(key);
        let floor = self.high.0.saturating_sub(2 * lookback_ms);
        while self.recent.front().is_some_and(|(ts, _)| *ts < floor) {
            if let Some((_, id)) = self.recent.pop_front() {
                self.seen.remove(&id);
            }
        }
    }
}

struct Stream {
    store: Arc<dyn Store>,
    settings: StreamSettings,
    filter: Filter,
    position: Position,
    tx: mpsc::Sender<StreamItem>,
}

/// The stream's receiver is gone (the client left): stop.
struct Gone;

impl Stream {
    async fn run(mut self, mut feed: broadcast::Receiver<Arc<FeedEvent>>, mut closing: watch::Receiver<bool>) {
        let s = self.settings;
        let deadline = tokio::time::sleep(Duration::from_millis(s.max_duration_ms));
        tokio::pin!(deadline);
        let mut heartbeat = interval(s.heartbeat_ms);
        // Streams opened together (a dashboard reconnecting, a load test) must not poll the store together: a herd of
        // polls queues on the store's connections while the feed's events wait behind them. Each stream's polls
        // keep a phase of their own.
        let mut poll = interval_phased(s.poll_interval_ms, rand::random::<f64>());
        let mut feed_open = true;
        // Catch up from the store first (the replay after `Last-Event-ID`; without one, nothing is older).
        if self.poll().await.is_err() {
            return;
        }
        loop {
            let step = tokio::select! {
                biased;
                () = self.tx.closed() => return,
                () = &mut deadline => return,
                _ = async { closing.wait_for(|c| *c).await.map(|_| ()) } => return,
                got = feed.recv(), if feed_open => match got {
                    Ok(e) => self.offer(e).await,
                    // Fell behind the feed: the rows are in the store.
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(missed = n, "activity stream lagged; catching up from the store");
                        self.poll().await
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        feed_open = false;
                        Ok(())
                    }
                },
                _ = poll.tick() => self.poll().await,
                _ = heartbeat.tick() => self.send(StreamItem::Heartbeat).await,
            };
            if step.is_err() {
                return;
            }
        }
    }

    async fn send(&self, item: StreamItem) -> std::result::Result<(), Gone> {
        self.tx.send(item).await.map_err(|_| Gone)
    }

    /// Deliver `e` if this stream shows it and has not sent it yet.
    async fn offer(&mut self, fe: Arc<FeedEvent>) -> std::result::Result<(), Gone> {
        let e = &fe.event;
        if !self.position.fresh(e) {
            return Ok(());
        }
        match self.filter.admits(self.store.as_ref(), e).await {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(err) => {
                tracing::warn!(error = %err.message, "activity stream could not check an event's workspace");
                return Ok(());
            }
        }
        self.position.mark(e, self.settings.lookback_ms as i64);
        self.send(StreamItem::Event(fe)).await
    }

    /// Read the store from a little behind the newest delivered event (never before the start) and deliver what
    /// has not been sent. A store error is logged and left to the next poll.
    async fn poll(&mut self) -> std::result::Result<(), Gone> {
        let lookback = self.settings.lookback_ms as i64;
        let from = self.position.start.0.max(self.position.high.0.saturating_sub(lookback));
        let mut after = self.position.start;
        loop {
            let q = AuditQuery {
                org_id: self.filter.org,
                conditions: vec![activity_only()],
                workspace_id: self.filter.workspace,
                user_id: None,
                from: Some(Timestamp::from_millis(from)),
                to: None,
                order: Order::Asc,
                limit: PAGE,
                after: Some(Cursor { timestamp_ms: after.0, id: after.1, order: Order::Asc }),
            };
            let rows = match self.store.query_audit(&q).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e.message, "activity stream could not read the store; retrying at the next poll");
                    return Ok(());
                }
            };
            let full = rows.len() as i64 == PAGE;
            if let Some(last) = rows.last() {
                after = (last.timestamp.millis(), last.id);
            }
            for e in rows {
                self.offer(Arc::new(FeedEvent::new(e))).await?;
            }
            if !full {
                return Ok(());
            }
        }
    }
}

/// A ticker of period `ms` whose first tick is `phase` (0..1) of a period from now, then one period apart.
fn interval_phased(ms: u64, phase: f64) -> tokio::time::Interval {
    let period = Duration::from_millis(ms.max(1));
    let first = period.mul_f64(phase.clamp(0.0, 1.0)).max(Duration::from_millis(1));
    let mut i = tokio::time::interval_at(tokio::time::Instant::now() + first, period);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
}

/// A ticker whose first tick is one period from now.
fn interval(ms: u64) -> tokio::time::Interval {
    interval_phased(ms, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts: i64) -> AuditEvent {
        let mut e = AuditEvent::system(OrgId::new(), EventType::WorkspaceReady);
        e.timestamp = Timestamp::from_millis(ts);
        e
    }

    #[test]
    fn position_dedupes_within_reach_of_a_poll_and_forgets_beyond_it() {
        let mut p = Position::new((1_000, uuid::Uuid::nil()));
        let a = ev(1_000);
        assert!(p.fresh(&a));
        p.mark(&a, 100);
        assert!(!p.fresh(&a));
        // A late row (older timestamp, delivered later) does not move the high-water mark back.
        let late = ev(900);
        p.mark(&late, 100);
        assert_eq!(p.high.0, 1_000);
        // Once the newest is more than twice the look-back ahead, old ids are forgotten: no poll reaches them.
        p.mark(&ev(1_300), 100);
        assert!(p.fresh(&a));
        assert_eq!(p.seen.len(), 1);
    }
}
