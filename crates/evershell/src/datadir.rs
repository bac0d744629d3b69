//! The data directory's permissions: created `0700`, its files `0600`, and a start-up check that refuses a directory
//! or file other local users could read or write (the database holds the session-signing key and live session
//! ids), naming the `chmod` that fixes it. A search-only bit for the group is allowed on the directories, so a
//! sandbox running as an unprivileged uid in that group can traverse to its pod directory.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Files of the data directory that must be private when they exist.
const PRIVATE_FILES: &[&str] =
    &["evershell.db", "evershell.db-wal", "evershell.db-shm", "evershell.db-journal", "serve.lock", "bootstrap.json"];

/// Create `dir` (and missing parents) `0700` when it does not exist.
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| anyhow::anyhow!("creating the data directory {}: {e}", dir.display()))?;
    }
    Ok(())
}

/// Refuse a directory that group or others may read or write (group search, `0710`, is allowed; others get
/// nothing).
pub fn check_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mode = std::fs::metadata(dir)
        .map_err(|e| anyhow::anyhow!("reading the permissions of {}: {e}", dir.display()))?
        .permissions()
        .mode()
        & 0o777;
    anyhow::ensure!(
        mode & 0o067 == 0,
        "{} is accessible to other users (mode {mode:04o}): it holds credentials; run `chmod 700 {}`",
        dir.display(),
        dir.display()
    );
    Ok(())
}

/// Refuse a file that group or others may access at all.
pub fn check_private_file(file: &Path) -> anyhow::Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(file) else { return Ok(()) };
    let mode = meta.permissions().mode() & 0o777;
    anyhow::ensure!(
        mode & 0o077 == 0,
        "{} is accessible to other users (mode {mode:04o}): run `chmod 600 {}`",
        file.display(),
        file.display()
    );
    Ok(())
}

/// Create the data directory `0700` if missing, then check it, its known files and `snapshots_dir` (`serve` passes
/// it; the admin CLI does not use snapshots).
pub fn prepare(data_dir: &Path, snapshots_dir: Option<&Path>) -> anyhow::Result<()> {
    create_private_dir(data_dir)?;
    check_private_dir(data_dir)?;
    for f in PRIVATE_FILES {
        check_private_file(&data_dir.join(f))?;
    }
    if let Some(snaps) = snapshots_dir {
        create_private_dir(snaps)?;
        check_private_dir(snaps)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn refuses_what_others_can_read_and_names_the_fix() {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("a/b");
        let snaps = data.join("snapshots");
        prepare(&data, Some(&snaps)).unwrap();
        assert_eq!(std::fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(&snaps).unwrap().permissions().mode() & 0o777, 0o700);
        chmod(&data, 0o710);
        prepare(&data, Some(&snaps)).expect("group search is allowed");
        for bad in [0o750, 0o720, 0o701, 0o755] {
            chmod(&data, bad);
            let e = prepare(&data, Some(&snaps)).unwrap_err().to_string();
            assert!(e.contains(&format!("chmod 700 {}", data.display())), "{bad:o}: {e}");
        }
        chmod(&data, 0o700);
        chmod(&snaps, 0o755);
        assert!(prepare(&data, Some(&snaps)).unwrap_err().to_string().contains("chmod 700"));
        chmod(&snaps, 0o700);
        let db = data.join("evershell.db");
        std::fs::write(&db, b"").unwrap();
        chmod(&db, 0o640);
        let e = prepare(&data, Some(&snaps)).unwrap_err().to_string();
        assert!(e.contains(&format!("chmod 600 {}", db.display())), "{e}");
        chmod(&db, 0o600);
        prepare(&data, Some(&snaps)).unwrap();
    }
}
