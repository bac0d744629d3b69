//! Spare pods: sandboxes set up ahead of need, their agent held (`--hold`), in `<pods_dir>/.spare/<pod_id>/`. A new
//! pod id is taken from a ready spare when there is one (`reserve`), and `prepare` moves the spare's directory into
//! place — the running sandbox's mounts follow the directory, not its name — so a new or resumed workspace pays only
//! for its restore and the agent's release, not for setting a sandbox up. A spare counts as ready only once its
//! held agent runs (it writes `run/held`): bwrap resolves its mount sources by path while it sets up, so the directory may
//! not move before that. Spares belong to no workspace: one left
//! by a crash, one that died, or one reserved but never prepared is killed and deleted; `shutdown` removes them all.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use evershell_core::ids::PodId;

use super::identity::{self, Identities};
use super::layout::{self, PodDir};
use super::sandbox;

/// How long a reserved spare may wait for its `prepare` before it is thrown away.
const RESERVATION: Duration = Duration::from_secs(60);

#[derive(Default)]
struct State {
    /// Set up and held, oldest first.
    ready: VecDeque<PodId>,
    /// Handed out by `reserve`, not yet moved into place.
    reserved: HashMap<PodId, Instant>,
}

pub struct Spares {
    root: PathBuf,
    /// How many to keep ready.
    pub target: usize,
    state: Mutex<State>,
    /// One refill at a time.
    pub filling: tokio::sync::Mutex<()>,
    /// Set by `shutdown`: no more spares.
    pub closed: std::sync::atomic::AtomicBool,
}

impl Spares {
    pub fn new(pods_dir: &Path, target: usize) -> Self {
        Self {
            root: pods_dir.join(".spare"),
            target,
            state: Mutex::default(),
            filling: Default::default(),
            closed: Default::default(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of spare `pod`.
    pub fn dir(&self, pod: PodId) -> PodDir {
        PodDir::new(&self.root, &pod.to_string())
    }

    /// A ready spare's id (now reserved), or `None`.
    pub fn reserve(&self) -> Option<PodId> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(pod) = st.ready.pop_front() {
            let alive = sandbox::read_pid_record(&self.dir(pod)).is_some_and(|r| r.alive());
            if alive {
                st.reserved.insert(pod, Instant::now());
                return Some(pod);
            }
            // Died while waiting: `sweep` removes it.
        }
        None
    }

    /// The spares `reserve` would hand out now, oldest first: set up, agent held, sandbox alive.
    pub fn ready(&self) -> Vec<PodId> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.ready
            .iter()
            .copied()
            .filter(|pod| sandbox::read_pid_record(&self.dir(*pod)).is_some_and(|r| r.alive()))
            .collect()
    }

    /// Forget a reservation (the spare was moved into place).
    pub fn taken(&self, pod: PodId) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).reserved.remove(&pod);
    }

    pub fn add_ready(&self, pod: PodId) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).ready.push_back(pod);
    }

    pub fn missing(&self) -> usize {
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return 0;
        }
        self.target.saturating_sub(self.state.lock().unwrap_or_else(|p| p.into_inner()).ready.len())
    }

    /// Spare directories that are neither ready nor freshly reserved: left by a crash, dead, or reserved too long.
    pub fn stale(&self) -> Vec<PathBuf> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.reserved.retain(|_, at| at.elapsed() < RESERVATION);
        let keep: Vec<String> = st.ready.iter().chain(st.reserved.keys()).map(|p| p.to_string()).collect();
        let Ok(rd) = std::fs::read_dir(&self.root) else { return vec![] };
        rd.flatten()
            .filter(|e| !keep.contains(&e.file_name().to_string_lossy().to_string()))
            .map(|e| e.path())
            .collect()
    }

    /// Stop handing out the ready spares (they are stale now; the next refill deletes them and sets new ones up).
    pub fn forget_ready(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).ready.clear();
    }

    /// Forget every spare (they are being removed).
    pub fn clear(&self) -> Vec<PodId> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<PodId> = st.ready.drain(..).collect();
        all.extend(st.reserved.drain().map(|(p, _)| p));
        all
    }
}

/// Kill whatever sandbox runs in a spare directory and delete it, freeing its uid.
pub fn discard(dir: &Path, ids: Option<&Identities>) {
    let pod = PodDir { root: dir.to_path_buf() };
    if let Some(rec) = sandbox::read_pid_record(&pod) {
        rec.kill();
    }
    if let Some(name) = dir.file_name().and_then(|n| n.to_str()) {
        super::netns::remove(name);
    }
    let id = identity::read(dir);
    match layout::remove_tree(dir) {
        Ok(()) => {
            if let (Some(ids), Some(id)) = (ids, id) {
                ids.release(id);
            }
        }
        Err(e) => tracing::warn!(error = %e, path = %dir.display(), "deleting a spare pod failed"),
    }
}
