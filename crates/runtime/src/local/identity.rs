//! The host identity a pod runs as. A control plane running as root never lends root to a pod: each pod gets its
//! own unprivileged uid (and gid of the same number) from a configured range, so pods are apart from the host and
//! from each other, and bubblewrap is started as that uid (the sandbox's uid 1000 maps to it). Pod set-up that needs
//! root (directories, ownership) happens before the drop, in the control plane.
//!
//! bubblewrap resolves its mount sources by path as the pod's uid, so the pods directory and everything above it
//! must be searchable by the pod. One extra group, `base` (the first id of the range), is given search-only access
//! to the pods directory, to the pod directories and to the data directory holding them; every pod's bwrap carries
//! it as its only supplementary group. Nothing is readable through it.
//!
//! A pod's identity is recorded in `<pod>/identity` (owned by root, in a directory the pod cannot write) before any
//! of its files are made, so it survives control-plane restarts and moves with a spare into place.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// Default first id of the range (the traversal group); pods use `base + 1 ..= base + count`.
pub const DEFAULT_BASE: u32 = 1_500_000_000;
pub const DEFAULT_COUNT: u32 = 65_536;

/// A pod's host uid and gid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodIdentity {
    pub uid: u32,
    pub gid: u32,
}

/// Hands out one free id of the range per pod.
pub struct Identities {
    /// The traversal group.
    pub group: u32,
    first: u32,
    count: u32,
    state: Mutex<State>,
    /// Host-wide claims of ids (`/run/evershell/pod-uids`): shared by every server on the host, cleared at boot.
    claims: Option<PathBuf>,
}

/// Where ids are claimed host-wide.
pub const CLAIMS_DIR: &str = "/run/evershell/pod-uids";

struct State {
    used: BTreeSet<u32>,
    next: u32,
}

impl Identities {
    /// `None` when this process is not root: pods then run as its own (unprivileged) uid, as bubblewrap does.
    pub fn for_this_process(base: u32, count: u32) -> anyhow::Result<Option<Self>> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        if count == 0 || base == 0 || base.checked_add(count).is_none() {
            bail!("runtime.pod_uid_base / pod_uid_count do not describe a usable id range ({base}, {count})");
        }
        let claims = PathBuf::from(CLAIMS_DIR);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&claims)
            .with_context(|| format!("creating {}", claims.display()))?;
        // Start where the last pod of any server left off, so a freed id is not reused at once.
        let next = std::fs::read_dir(&claims)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&u| u > base && u <= base + count)
            .max()
            .map(|u| u - base)
            .unwrap_or(0)
            % count;
        Ok(Some(Self {
            group: base,
            first: base + 1,
            count,
            state: Mutex::new(State { used: BTreeSet::new(), next }),
            claims: Some(claims),
        }))
    }

    /// Mark ids recorded by existing pod directories as used (start-up), claiming them on the host again.
    pub fn adopt(&self, ids: impl IntoIterator<Item = PodIdentity>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            let _ = self.claim(id.uid);
            st.used.insert(id.uid);
        }
    }

    /// A free id, round-robin through the range (a freed id is not reused at once). An id is also claimed on the
    /// host (`claims/<uid>`, created exclusively), so servers sharing a host never hand out the same uid, address or
    /// interface name.
    pub fn allocate(&self) -> anyhow::Result<PodIdentity> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for i in 0..self.count {
            let uid = self.first + (st.next + i) % self.count;
            if !st.used.contains(&uid) && self.claim(uid)? {
                st.used.insert(uid);
                st.next = (st.next + i + 1) % self.count;
                return Ok(PodIdentity { uid, gid: uid });
            }
        }
        bail!("all {} pod uids of the configured range are in use", self.count)
    }

    pub fn release(&self, id: PodIdentity) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).used.remove(&id.uid);
        if let Some(dir) = &self.claims {
            let _ = std::fs::remove_file(dir.join(id.uid.to_string()));
        }
    }

    /// The pod's position in the range (0-based): it numbers the pod's network interfaces and addresses.
    pub fn index(&self, id: PodIdentity) -> u32 {
        id.uid - self.first
    }

    /// Claim `uid` on the host: `false` when another server holds it.
    fn claim(&self, uid: u32) -> anyhow::Result<bool> {
        let Some(dir) = &self.claims else { return Ok(true) };
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(dir.join(uid.to_string())) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e).with_context(|| format!("claiming pod uid {uid} in {}", dir.display())),
        }
    }

    /// Make `pods_dir` (and its `.spare`) root-owned, group = traversal group, mode 0710; check every directory above
    /// it can be searched by a pod, giving the data directory right above it group search if needed.
    pub fn prepare_tree(&self, pods_dir: &Path) -> anyhow::Result<()> {
        for d in [pods_dir.to_path_buf(), pods_dir.join(".spare")] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            traversable(&d, self.group)?;
        }
        let parent = pods_dir.parent().map(Path::to_path_buf);
        for anc in pods_dir.ancestors().skip(1) {
            let meta = std::fs::metadata(anc).with_context(|| format!("reading {}", anc.display()))?;
            let mode = meta.permissions().mode();
            let searchable = mode & 0o001 != 0 || (meta.gid() == self.group && mode & 0o010 != 0);
            if searchable {
                continue;
            }
            if Some(anc.to_path_buf()) == parent && meta.uid() == 0 {
                // The data directory: keep it closed to everyone else, open it for search to the pods' group.
                let mode = (mode & 0o700) | 0o010;
                chown(anc, 0, self.group)?;
                std::fs::set_permissions(anc, std::fs::Permissions::from_mode(mode))?;
                continue;
            }
            bail!(
                "{} cannot be searched by sandboxes (they run as unprivileged uids and bubblewrap reaches pod \
                 directories by path): allow search with `chmod o+x {}`, or move the pods directory",
                anc.display(),
                anc.display()
            );
        }
        Ok(())
    }
}

/// Root-owned, group `group`, mode 0710: searchable by pods, readable and writable by root alone.
pub fn traversable(dir: &Path, group: u32) -> anyhow::Result<()> {
    chown(dir, 0, group)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o710))
        .with_context(|| format!("chmod {}", dir.display()))
}

/// `chown` that never follows a link.
pub fn chown(p: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).with_context(|| format!("chown {}", p.display()))
}

/// Give every entry of the tree under `root` (itself included) to `uid`:`gid`, never following a link. Only for
/// trees no pod process runs on (a restore, an upgrade), so nothing can swap an entry during the walk.
pub fn chown_tree(root: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p)?;
        std::os::unix::fs::lchown(&p, Some(uid), Some(gid))?;
        if meta.is_dir() {
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(())
}

fn record_path(pod_root: &Path) -> PathBuf {
    pod_root.join("identity")
}

/// Write `<pod>/identity` (the pod directory is root's; the pod cannot write it).
pub fn record(pod_root: &Path, id: PodIdentity) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(record_path(pod_root))?;
    f.write_all(&serde_json::to_vec(&id).expect("an identity serialises"))?;
    f.sync_all()
}

/// The identity a pod directory records, if any.
pub fn read(pod_root: &Path) -> Option<PodIdentity> {
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(record_path(pod_root)).ok()?;
    serde_json::from_reader(std::io::Read::take(f, 4096)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(count: u32) -> Identities {
        Identities {
            group: 100,
            first: 101,
            count,
            state: Mutex::new(State { used: BTreeSet::new(), next: 0 }),
            claims: None,
        }
    }

    #[test]
    fn allocates_round_robin_and_never_twice() {
        let a = ids(3);
        a.adopt([PodIdentity { uid: 102, gid: 102 }]);
        let x = a.allocate().unwrap();
        let y = a.allocate().unwrap();
        assert_eq!((x.uid, y.uid), (101, 103));
        assert!(a.allocate().is_err(), "range exhausted");
        a.release(x);
        assert_eq!(a.allocate().unwrap().uid, 101);
    }

    #[test]
    fn records_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let id = PodIdentity { uid: 7, gid: 8 };
        record(tmp.path(), id).unwrap();
        assert_eq!(read(tmp.path()), Some(id));
        assert!(record(tmp.path(), id).is_err(), "written once");
    }
}
