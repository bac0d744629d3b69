//! Path safety rules shared by capture and restore: which archive paths are acceptable, and which symlink targets
//! are. Capture applies the same link rules as restore, so a snapshot that verifies is a snapshot that restores.
//!
//! Absolute symlink targets (`venv/bin/python -> /usr/bin/python3`) are kept: they are resolved inside the pod,
//! whose `/` is the sandbox's root, and extraction never follows any link (every entry's ancestors are checked and
//! files are created, never opened through a link), so on the host they are inert. Relative targets that climb
//! above the workspace root with `..` are refused: they are the classic archive-escape shape and mean nothing
//! inside a pod.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Component, Path, PathBuf};

/// Symlink hops followed while resolving a link before giving up (the kernel's own limit: such a link resolves to
/// nothing, so it cannot escape).
const MAX_HOPS: usize = 40;

/// An archive entry path as its normal components. Absolute paths and `..` components are refused; `.` components
/// are dropped, so the root entry (`.` or `./`) yields no components.
pub(crate) fn entry_components(path: &Path) -> Result<Vec<&OsStr>, String> {
    let mut out = Vec::new();
    for comp in path.components() {
        match comp {
            Component::Normal(name) => out.push(name),
            Component::CurDir => {}
            Component::ParentDir => return Err(format!("`{}` has a `..` component", path.display())),
            Component::RootDir | Component::Prefix(_) => return Err(format!("`{}` is absolute", path.display())),
        }
    }
    Ok(out)
}

/// The link at `link` (components relative to the root) with `target` is acceptable: not empty, and either absolute
/// (resolved inside the pod) or relative with `..` components that never climb above the root.
pub(crate) fn check_link_lexical(link: &[&OsStr], target: &Path) -> Result<(), String> {
    let shown = || format!("symlink `{}` -> `{}`", join(link).display(), target.display());
    if target.as_os_str().is_empty() {
        return Err(format!("{} has an empty target", shown()));
    }
    let mut depth = link.len().saturating_sub(1) as isize;
    for comp in target.components() {
        match comp {
            Component::RootDir | Component::Prefix(_) => return Ok(()),
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("{} escapes the workspace", shown()));
                }
            }
            Component::Normal(_) => depth += 1,
        }
    }
    Ok(())
}

enum Step {
    Up,
    Name(OsString),
}

fn steps(target: &Path) -> Option<Vec<Step>> {
    let mut out = Vec::new();
    for comp in target.components() {
        match comp {
            Component::RootDir | Component::Prefix(_) => return None,
            Component::CurDir => {}
            Component::ParentDir => out.push(Step::Up),
            Component::Normal(name) => out.push(Step::Name(name.to_owned())),
        }
    }
    Some(out)
}

/// Resolve the symlink at `root/link` component by component the way the kernel would, reading (never following
/// outside) the links met on the way, and fail if a relative resolution climbs out of `root` — this catches chains
/// that are each lexically inside but escape together (`up -> .` then `x -> up/..`). Missing components resolve
/// lexically; reaching an absolute target ends the check (it is resolved inside the pod).
pub(crate) fn check_link_resolved(root: &Path, link: &[&OsStr]) -> Result<(), String> {
    let link_path = join(link);
    let target = fs::read_link(root.join(&link_path))
        .map_err(|e| format!("cannot read symlink `{}`: {e}", link_path.display()))?;
    let escape = |why: &str| format!("symlink `{}` -> `{}` {why}", link_path.display(), target.display());
    let mut stack: Vec<OsString> = link[..link.len().saturating_sub(1)].iter().map(|s| s.to_os_string()).collect();
    let Some(first) = steps(&target) else { return Ok(()) };
    let mut pending: VecDeque<Step> = first.into();
    let mut hops = 0;
    while let Some(step) = pending.pop_front() {
        match step {
            Step::Up => {
                if stack.pop().is_none() {
                    return Err(escape("escapes the workspace"));
                }
            }
            Step::Name(name) => {
                let here: PathBuf = root.join(stack.iter().collect::<PathBuf>()).join(&name);
                let is_link = fs::symlink_metadata(&here).map(|m| m.file_type().is_symlink()).unwrap_or(false);
                if !is_link {
                    stack.push(name);
                    continue;
                }
                hops += 1;
                if hops > MAX_HOPS {
                    return Ok(());
                }
                let next =
                    fs::read_link(&here).map_err(|e| format!("cannot read symlink `{}`: {e}", here.display()))?;
                let Some(next) = steps(&next) else { return Ok(()) };
                for s in next.into_iter().rev() {
                    pending.push_front(s);
                }
            }
        }
    }
    Ok(())
}

/// Components joined into a relative path.
pub(crate) fn join(components: &[&OsStr]) -> PathBuf {
    components.iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comps(p: &str) -> Vec<&OsStr> {
        entry_components(Path::new(p)).unwrap()
    }

    #[test]
    fn entry_paths() {
        assert_eq!(comps("./a/b/"), vec![OsStr::new("a"), OsStr::new("b")]);
        assert!(comps("./").is_empty());
        assert!(entry_components(Path::new("/etc/passwd")).is_err());
        assert!(entry_components(Path::new("a/../../x")).is_err());
    }

    #[test]
    fn lexical_links() {
        assert!(check_link_lexical(&comps("a/l"), Path::new("../b")).is_ok());
        assert!(check_link_lexical(&comps("a/l"), Path::new("missing/deeper")).is_ok());
        assert!(check_link_lexical(&comps("a/l"), Path::new("../../etc")).is_err());
        assert!(
            check_link_lexical(&comps("l"), Path::new("/usr/bin/python3")).is_ok(),
            "absolute: resolved in the pod"
        );
        assert!(check_link_lexical(&comps("l"), Path::new("")).is_err());
    }

    #[test]
    fn resolved_chains() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::os::unix::fs::symlink(".", root.join("up")).unwrap();
        std::os::unix::fs::symlink("up/..", root.join("x")).unwrap();
        std::os::unix::fs::symlink("up/sub", root.join("ok")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert!(check_link_lexical(&comps("x"), Path::new("up/..")).is_ok());
        let err = check_link_resolved(root, &comps("x")).unwrap_err();
        assert!(err.contains("escapes"), "{err}");
        check_link_resolved(root, &comps("up")).unwrap();
        check_link_resolved(root, &comps("ok")).unwrap();
        check_link_resolved(root, &comps("loop")).unwrap();
    }
}
