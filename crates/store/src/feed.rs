//! The in-process activity feed: every `category = activity` audit row this process commits is published, after
//! its transaction commits, to a bounded broadcast channel. Publishing never waits: a subscriber that falls behind
//! gets `Lagged` and must catch up from the store (the rows are there), so a slow reader never blocks a writer.
//! `close` tells every subscriber the server is shutting down (its streams end, so they do not hold the shutdown).

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use evershell_core::audit::{AuditEvent, Category};
use tokio::sync::{broadcast, watch};

/// Events the channel holds for its slowest subscriber before that one lags.
pub const FEED_CAPACITY: usize = 4096;

/// One published event, with its JSON rendered once for every subscriber that sends it.
#[derive(Debug)]
pub struct FeedEvent {
    pub event: AuditEvent,
    json: std::sync::OnceLock<String>,
}

impl FeedEvent {
    pub fn new(event: AuditEvent) -> Self {
        Self { event, json: std::sync::OnceLock::new() }
    }

    /// The event as one line of JSON.
    pub fn json(&self) -> &str {
        self.json.get_or_init(|| serde_json::to_string(&self.event).unwrap_or_else(|_| "{}".into()))
    }
}

/// The sending side, shared by every clone of a store.
#[derive(Clone)]
pub struct ActivityFeed {
    events: broadcast::Sender<Arc<FeedEvent>>,
    closing: Arc<watch::Sender<bool>>,
}

impl Default for ActivityFeed {
    fn default() -> Self {
        Self { events: broadcast::channel(FEED_CAPACITY).0, closing: Arc::new(watch::channel(false).0) }
    }
}

impl std::fmt::Debug for ActivityFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivityFeed").field("subscribers", &self.events.receiver_count()).finish()
    }
}

impl ActivityFeed {
    /// Receive every activity row committed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FeedEvent>> {
        self.events.subscribe()
    }

    /// Becomes `true` when the server shuts down.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// The server is shutting down: every stream should end.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    fn publish(&self, events: Vec<Arc<FeedEvent>>) {
        for e in events {
            // No subscriber is not an error: the row is in the store.
            let _ = self.events.send(e);
        }
    }
}

/// A write transaction that remembers the activity rows it inserted and publishes them once it commits (a dropped
/// or failed transaction publishes nothing).
pub(crate) struct Tx<DB: sqlx::Database> {
    inner: sqlx::Transaction<'static, DB>,
    pending: Vec<Arc<FeedEvent>>,
    feed: ActivityFeed,
}

impl<DB: sqlx::Database> Tx<DB> {
    pub(crate) fn new(inner: sqlx::Transaction<'static, DB>, feed: &ActivityFeed) -> Self {
        Self { inner, pending: Vec::new(), feed: feed.clone() }
    }

    /// Remember `events` for publication at commit.
    pub(crate) fn note(&mut self, events: &[AuditEvent]) {
        self.pending.extend(
            events.iter().filter(|e| e.category == Category::Activity).map(|e| Arc::new(FeedEvent::new(e.clone()))),
        );
    }

    pub(crate) fn conn(&mut self) -> &mut DB::Connection {
        &mut self.inner
    }

    pub(crate) async fn commit(self) -> sqlx::Result<()> {
        self.inner.commit().await?;
        self.feed.publish(self.pending);
        Ok(())
    }
}

impl<DB: sqlx::Database> Deref for Tx<DB> {
    type Target = DB::Connection;
    fn deref(&self) -> &DB::Connection {
        &self.inner
    }
}

impl<DB: sqlx::Database> DerefMut for Tx<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        &mut self.inner
    }
}
