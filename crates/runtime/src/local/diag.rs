//! Why a sandbox ended, in a few secret-free lines for `last_error`: the exit status (from the reaper, or from
//! bwrap's own status file for a sandbox this process did not spawn) and the tail of `sandbox.log`.

use std::io::{Read, Seek, SeekFrom};

use super::layout::PodDir;
use super::procfs::signal_name;
use super::sandbox::{self, ExitRecord};

const TAIL_LINES: usize = 20;
/// The heading of the log tail: what follows was printed inside the pod, so it is the pod's word, not ours.
pub const POD_WORDS: &str = "last lines of sandbox.log (printed inside the pod, not verified by evershell)";
const MAX_BYTES: usize = 2048;

/// Exit status and the last log lines, or `None` when there is nothing to say.
pub fn describe(dir: &PodDir) -> Option<String> {
    let status = exit_line(dir);
    let tail = log_tail(dir);
    let mut out = match (status, tail.is_empty()) {
        (None, true) => return None,
        (Some(s), true) => s,
        (None, false) => format!("exit status unknown; {POD_WORDS}:\n{tail}"),
        (Some(s), false) => format!("{s}; {POD_WORDS}:\n{tail}"),
    };
    if out.len() > MAX_BYTES {
        let mut cut = out.len() - MAX_BYTES;
        while !out.is_char_boundary(cut) {
            cut += 1;
        }
        out = format!("…{}", &out[cut..]);
    }
    Some(out)
}

fn exit_line(dir: &PodDir) -> Option<String> {
    let stop_requested = dir.stop_requested().exists();
    let mut line = match sandbox::read_exit_record(dir) {
        Some(ExitRecord { signal: Some(sig), .. }) => {
            format!("sandbox was killed by signal {sig} ({})", signal_name(sig))
        }
        Some(ExitRecord { code: Some(code), .. }) => describe_code(code),
        _ => describe_code(sandbox::read_bwrap_status(dir).exit_code?),
    };
    if stop_requested {
        line.push_str(" after a stop requested by the control plane");
    }
    Some(line)
}

/// bwrap passes on its command's status, and 128 + n when the command died of signal n.
fn describe_code(code: i32) -> String {
    match code {
        0 => "sandbox exited normally (status 0)".to_string(),
        129..=192 => {
            let sig = code - 128;
            format!("sandbox exited with status {code}: the agent was killed by signal {sig} ({})", signal_name(sig))
        }
        c => format!("sandbox exited with status {c}"),
    }
}

fn log_tail(dir: &PodDir) -> String {
    use std::os::unix::fs::OpenOptionsExt;
    let opened = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(dir.log());
    let Ok(mut f) = opened else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(8 * 1024);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    // No terminal escapes or other control characters from the pod reach an operator's screen.
    let text: String =
        String::from_utf8_lossy(&buf).chars().filter(|c| *c == '\n' || *c == '\t' || !c.is_control()).collect();
    let lines: Vec<&str> = text.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_signals_codes_and_log_tail() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = PodDir::new(tmp.path(), "pod_x");
        std::fs::create_dir(&dir.root).unwrap();
        assert_eq!(describe(&dir), None);
        let lines: String = (0..50).map(|i| format!("line {i}\n")).collect();
        std::fs::write(dir.log(), lines).unwrap();
        std::fs::write(dir.bwrap_status(), r#"{ "child-pid": 5 }{ "exit-code": 137 }"#).unwrap();
        let d = describe(&dir).unwrap();
        assert!(d.starts_with("sandbox exited with status 137: the agent was killed by signal 9 (SIGKILL)"), "{d}");
        assert!(d.ends_with("line 49") && d.contains("line 30") && !d.contains("line 29\n"), "{d}");
        assert!(d.contains(POD_WORDS), "the log tail is marked as the pod's words: {d}");
        std::fs::write(dir.log(), "evil \x1b[2J\x07 text\n").unwrap();
        assert!(describe(&dir).unwrap().ends_with("evil [2J text"), "control characters are dropped");
        let rec = ExitRecord { code: None, signal: Some(9), at_ms: 0 };
        std::fs::write(dir.exit_status(), serde_json::to_vec(&rec).unwrap()).unwrap();
        assert!(describe(&dir).unwrap().starts_with("sandbox was killed by signal 9 (SIGKILL)"));
        std::fs::write(dir.log(), "x".repeat(10_000)).unwrap();
        assert!(describe(&dir).unwrap().len() <= MAX_BYTES + 4);
    }
}
