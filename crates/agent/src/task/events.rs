//! The agent's events: a bounded in-memory buffer (by count and by bytes) with a strictly increasing `seq`, read by
//! the control plane with `GET /v1/events?after=&wait_ms=` (long-polled). A reader that falls behind the buffer is
//! told how many events it missed (`dropped`); `agent_instance` changes with every agent process.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use evershell_core::agent_wire::{AgentEvent, EventPage, MAX_EVENT_WAIT_MS, MAX_EVENTS_PER_PAGE};
use evershell_core::ids::TaskId;
use evershell_core::time::Timestamp;

pub const MAX_EVENTS: usize = 4096;
pub const MAX_BYTES: usize = 32 << 20;
/// A page stops growing past this many bytes (one event is always returned).
pub const MAX_PAGE_BYTES: usize = 8 << 20;

struct Inner {
    events: VecDeque<(AgentEvent, usize)>,
    bytes: usize,
    next_seq: u64,
}

pub struct EventBuffer {
    pub instance: String,
    inner: Mutex<Inner>,
    latest: tokio::sync::watch::Sender<u64>,
    max_events: usize,
    max_bytes: usize,
}

impl EventBuffer {
    pub fn new(max_events: usize, max_bytes: usize) -> Self {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        EventBuffer {
            instance: format!("agt_{:x}{:08x}", now.as_nanos(), std::process::id()),
            inner: Mutex::new(Inner { events: VecDeque::new(), bytes: 0, next_seq: 1 }),
            latest: tokio::sync::watch::channel(0).0,
            max_events,
            max_bytes,
        }
    }

    pub fn emit(&self, task_id: Option<&TaskId>, event_type: &str, data: serde_json::Value) -> u64 {
        let size = data.to_string().len() + 128;
        let mut g = self.inner.lock().unwrap();
        let seq = g.next_seq;
        g.next_seq += 1;
        let ev = AgentEvent {
            seq,
            task_id: task_id.cloned(),
            event_type: event_type.to_string(),
            at: Timestamp::now(),
            data,
        };
        g.events.push_back((ev, size));
        g.bytes += size;
        while g.events.len() > self.max_events || (g.bytes > self.max_bytes && g.events.len() > 1) {
            if let Some((_, s)) = g.events.pop_front() {
                g.bytes -= s;
            }
        }
        drop(g);
        self.latest.send_replace(seq);
        tracing::debug!(seq, event_type, "event");
        seq
    }

    fn page(&self, after: u64) -> EventPage {
        let g = self.inner.lock().unwrap();
        let first = g.events.front().map(|(e, _)| e.seq).unwrap_or(g.next_seq);
        let dropped = first.saturating_sub(after.saturating_add(1));
        let mut events = Vec::new();
        let mut bytes = 0;
        for (e, s) in g.events.iter().filter(|(e, _)| e.seq > after) {
            if events.len() >= MAX_EVENTS_PER_PAGE || (!events.is_empty() && bytes + s > MAX_PAGE_BYTES) {
                break;
            }
            bytes += s;
            events.push(e.clone());
        }
        let next_after = events.last().map(|e| e.seq).unwrap_or(after.max(first.saturating_sub(1)));
        EventPage { agent_instance: self.instance.clone(), events, next_after, dropped }
    }

    /// Events after `after`, waiting up to `wait_ms` (capped) for the first one.
    pub async fn poll(&self, after: u64, wait_ms: u64) -> EventPage {
        let mut rx = self.latest.subscribe();
        let wait = Duration::from_millis(wait_ms.min(MAX_EVENT_WAIT_MS));
        let _ = tokio::time::timeout(wait, rx.wait_for(|latest| *latest > after)).await;
        self.page(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pages_long_poll_and_count_what_a_reader_missed() {
        let b = std::sync::Arc::new(EventBuffer::new(3, 1 << 20));
        let p = b.poll(0, 0).await;
        assert!(p.events.is_empty() && p.dropped == 0 && p.next_after == 0);
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.poll(0, 10_000).await })
        };
        // The long poll is parked until an event exists; emit wakes it.
        tokio::task::yield_now().await;
        b.emit(None, "a", serde_json::json!({}));
        let p = waiter.await.unwrap();
        assert_eq!(p.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1]);
        for n in 0..4 {
            b.emit(None, "b", serde_json::json!({ "n": n }));
        }
        let p = b.poll(1, 0).await;
        assert_eq!(p.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!((p.dropped, p.next_after), (1, 5));
        let p = b.poll(5, 0).await;
        assert!(p.events.is_empty() && p.next_after == 5 && p.dropped == 0);
    }
}
