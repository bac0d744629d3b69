//! Asking a running task to stop: a cooperative cancel (the current model call finishes; a running tool command
//! gets a grace before its group is killed) or the task's deadline (nothing more is waited for).

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopKind {
    Cancelled,
    Timeout,
}

impl StopKind {
    pub fn reason(self) -> &'static str {
        match self {
            StopKind::Cancelled => "cancelled",
            StopKind::Timeout => "task_timeout",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop {
    pub kind: StopKind,
    /// How long a running tool command may still run before SIGTERM to its group.
    pub grace: Duration,
}

pub type StopTx = tokio::sync::watch::Sender<Option<Stop>>;
pub type StopRx = tokio::sync::watch::Receiver<Option<Stop>>;

pub fn channel() -> (StopTx, StopRx) {
    tokio::sync::watch::channel(None)
}

/// Resolves once a stop is requested (never, if the sender is gone without one).
pub async fn requested(rx: &mut StopRx) -> Stop {
    loop {
        if let Some(s) = *rx.borrow_and_update() {
            return s;
        }
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

pub fn current(rx: &StopRx) -> Option<Stop> {
    *rx.borrow()
}

/// Resolves once the task's deadline has passed (a cancel does not count: it lets the current call finish).
pub async fn deadline_passed(rx: &mut StopRx) {
    loop {
        if matches!(*rx.borrow_and_update(), Some(Stop { kind: StopKind::Timeout, .. })) {
            return;
        }
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}
