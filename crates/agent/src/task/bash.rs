//! The bash tool: one command per call, `bash -c` in the workspace, in its own process group, stdin from
//! `/dev/null`, stdout and stderr into one pipe. The call's timeout kills the whole group; a stop (cancel or the
//! task's deadline) gives the command its grace, then SIGTERM to the group, then SIGKILL. Once the shell has exited
//! the pipe is drained for a moment only, so a background child holding it does not hold the call. Output is kept
//! as head + tail in bounded buffers (a command printing 1 GB costs no more memory than one printing 1 MB), and
//! rendered for the model and for the event with the number of bytes left out, cut on UTF-8 boundaries.

use std::collections::VecDeque;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use super::stop::{self, StopKind, StopRx};

/// After a SIGTERM to the group, how long before SIGKILL.
const TERM_TO_KILL: Duration = Duration::from_millis(500);
/// How long the pipe is still read after the shell exited.
const DRAIN: Duration = Duration::from_millis(evershell_core::exec::DRAIN_MS);

/// Head and tail of a stream, bounded.
pub struct Capture {
    half: usize,
    head: Vec<u8>,
    tail: VecDeque<u8>,
    pub total: u64,
}

impl Capture {
    /// Keeps everything up to `cap` bytes, else the first and last `cap / 2`.
    pub fn new(cap: usize) -> Self {
        let half = (cap / 2).max(1);
        Capture { half, head: Vec::new(), tail: VecDeque::new(), total: 0 }
    }

    pub fn push(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.head.len() < self.half {
            let n = (self.half - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        if data.len() >= self.half {
            self.tail.clear();
            self.tail.extend(&data[data.len() - self.half..]);
        } else {
            self.tail.extend(data);
            let excess = self.tail.len().saturating_sub(self.half);
            self.tail.drain(..excess);
        }
    }

    /// The output in at most about `cap` bytes: all of it when it fits, else head and tail (each `cap / 2`, cut on
    /// UTF-8 boundaries) around a note of the bytes left out. `cap` must not exceed the capture's own.
    pub fn render(&self, cap: usize) -> (String, bool) {
        let tail: Vec<u8> = self.tail.iter().copied().collect();
        let kept = (self.head.len() + tail.len()) as u64;
        if self.total == kept && kept as usize <= cap {
            let mut all = self.head.clone();
            all.extend_from_slice(&tail);
            return (String::from_utf8_lossy(&all).into_owned(), false);
        }
        let half = cap / 2;
        let head = &self.head[..utf8_floor(&self.head, half.min(self.head.len()))];
        // The last `half` bytes of the whole stream: from the tail, plus the head's end when nothing is missing.
        let mut last: Vec<u8> = if self.total == kept {
            let mut all = self.head.clone();
            all.extend_from_slice(&tail);
            all
        } else {
            tail
        };
        let from = utf8_ceil(&last, last.len().saturating_sub(half));
        let from = from.max(if self.total == kept { head.len() } else { 0 });
        last.drain(..from);
        let omitted = self.total - head.len() as u64 - last.len() as u64;
        let text = format!(
            "{}\n[… {omitted} bytes of output left out …]\n{}",
            String::from_utf8_lossy(head),
            String::from_utf8_lossy(&last)
        );
        (text, true)
    }
}

/// Largest cut ≤ `i` that leaves no partial character at the end of `b[..i]`.
fn utf8_floor(b: &[u8], i: usize) -> usize {
    let mut j = i;
    while j > 0 && i - j < 4 {
        j -= 1;
        let c = b[j];
        if c & 0xC0 != 0x80 {
            let need = match c {
                0xF0.. => 4,
                0xE0.. => 3,
                0xC0.. => 2,
                _ => 1,
            };
            return if i - j >= need { i } else { j };
        }
    }
    i
}

/// Smallest index ≥ `i` on a UTF-8 character boundary.
fn utf8_ceil(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && (b[i] & 0xC0) == 0x80 {
        i += 1;
    }
    i
}

/// How a call ended.
#[derive(Debug, Clone)]
pub struct BashOutcome {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// Set when a stop ended the command (`cancelled`, `task_timeout`).
    pub interrupted: Option<&'static str>,
    pub duration_ms: u64,
    pub output_bytes: u64,
    /// For the model (capped at `output_to_model_bytes`, status line appended).
    pub to_model: String,
    /// For the event (capped at `output_kept_bytes`).
    pub kept: String,
    pub kept_truncated: bool,
}

impl BashOutcome {
    pub fn is_error(&self) -> bool {
        self.exit_code != Some(0)
    }
}

pub struct BashCall<'a> {
    pub root: &'a Path,
    pub command: &'a str,
    pub timeout: Duration,
    pub to_model_bytes: usize,
    pub kept_bytes: usize,
}

fn signal_group(pgid: Option<i32>, sig: i32) {
    if let Some(pg) = pgid {
        // SAFETY: kill(2) of our own child's process group.
        unsafe { libc::kill(-pg, sig) };
    }
}

/// Start `shell -c command` with stdout and stderr into one pipe; returns the child and the pipe's read end.
fn spawn(shell: &str, call: &BashCall<'_>) -> std::io::Result<(tokio::process::Child, std::io::PipeReader)> {
    let (reader, writer) = std::io::pipe()?;
    let mut cmd = tokio::process::Command::new(shell);
    cmd.arg("-c")
        .arg(call.command)
        .current_dir(call.root)
        .stdin(Stdio::null())
        .stdout(writer.try_clone()?)
        .stderr(writer)
        .process_group(0)
        .kill_on_drop(false);
    let child = cmd.spawn()?;
    // `cmd` (holding our copies of the write end) drops here, so the pipe reaches EOF when the group closes it.
    Ok((child, reader))
}

/// Run one call; `Err` only when the shell could not be started.
pub async fn run(call: BashCall<'_>, stop: &mut StopRx) -> std::io::Result<BashOutcome> {
    let started = Instant::now();
    let (mut child, reader) = match spawn("bash", &call) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => spawn("sh", &call)?,
        r => r?,
    };
    let pgid = child.id().map(|p| p as i32);
    let mut rx = tokio::net::unix::pipe::Receiver::from_owned_fd(std::os::fd::OwnedFd::from(reader))?;
    let cap = call.kept_bytes.max(call.to_model_bytes);
    let (cap_tx, cap_rx) = tokio::sync::oneshot::channel::<Capture>();
    let (stop_reading_tx, mut stop_reading) = tokio::sync::oneshot::channel::<()>();
    let reader_task = tokio::spawn(async move {
        let mut capture = Capture::new(cap);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            tokio::select! {
                biased;
                r = rx.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => capture.push(&buf[..n]),
                },
                _ = &mut stop_reading => break,
            }
        }
        let _ = cap_tx.send(capture);
    });

    let mut timed_out = false;
    let mut interrupted = None;
    let status = tokio::select! {
        s = child.wait() => s?,
        _ = tokio::time::sleep(call.timeout) => {
            timed_out = true;
            signal_group(pgid, libc::SIGKILL);
            child.wait().await?
        }
        s = stop::requested(stop) => {
            interrupted = Some(s.kind.reason());
            let grace = if s.kind == StopKind::Timeout { Duration::ZERO } else { s.grace };
            match tokio::time::timeout(grace, child.wait()).await {
                Ok(st) => st?,
                Err(_) => {
                    signal_group(pgid, libc::SIGTERM);
                    match tokio::time::timeout(TERM_TO_KILL, child.wait()).await {
                        Ok(st) => st?,
                        Err(_) => {
                            signal_group(pgid, libc::SIGKILL);
                            child.wait().await?
                        }
                    }
                }
            }
        }
    };
    if timed_out || interrupted.is_some() {
        // Whatever is left of the group goes too.
        signal_group(pgid, libc::SIGKILL);
    }
    // The pipe for a moment more: a background child may hold it open for good.
    let mut reader_task = reader_task;
    if tokio::time::timeout(DRAIN, &mut reader_task).await.is_err() {
        let _ = stop_reading_tx.send(());
        let _ = reader_task.await;
    }
    let capture = cap_rx.await.unwrap_or_else(|_| Capture::new(cap));
    use std::os::unix::process::ExitStatusExt;
    let exit_code = status.code();
    let signal = status.signal();
    let (shown, _) = capture.render(call.to_model_bytes);
    let (kept, kept_truncated) = capture.render(call.kept_bytes);
    let secs = call.timeout.as_secs();
    let status_line = match (interrupted, timed_out, exit_code, signal) {
        (Some(why), ..) => format!(
            "[interrupted: the task was {}; the command was stopped]",
            if why == "cancelled" { "cancelled" } else { "out of time" }
        ),
        (None, true, ..) => format!("[timed out after {secs} s; the process group was killed]"),
        (None, false, Some(c), _) => format!("[exit code {c}]"),
        (None, false, None, Some(s)) => format!("[killed by signal {s}]"),
        _ => "[ended]".to_string(),
    };
    let to_model = if shown.is_empty() { status_line } else { format!("{shown}\n{status_line}") };
    Ok(BashOutcome {
        exit_code,
        signal,
        timed_out,
        interrupted,
        duration_ms: started.elapsed().as_millis() as u64,
        output_bytes: capture.total,
        to_model,
        kept,
        kept_truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_keeps_all_that_fits_else_head_and_tail_on_char_boundaries() {
        let mut c = Capture::new(100);
        c.push(b"hello ");
        c.push(b"world");
        assert_eq!(c.render(100), ("hello world".to_string(), false));
        let mut c = Capture::new(10);
        let text = "ééééééééééééé"; // 26 bytes, 2 each
        for ch in text.as_bytes().chunks(3) {
            c.push(ch);
        }
        let (s, cut) = c.render(10);
        assert!(cut);
        assert!(s.starts_with("éé\n[… "), "{s}");
        assert!(s.ends_with("\néé"), "{s}");
        assert!(s.contains("[… 18 bytes of output left out …]"), "{s}");
        // A smaller cap than the capture's, without a gap in the stream.
        let mut c = Capture::new(100);
        c.push(b"0123456789abcdefghij");
        let (s, cut) = c.render(10);
        assert!(cut);
        assert_eq!(s, "01234\n[… 10 bytes of output left out …]\nfghij");
    }

    #[test]
    fn capture_memory_is_bounded() {
        let mut c = Capture::new(1000);
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..100 {
            c.push(&chunk);
        }
        assert_eq!(c.total, 6_553_600);
        assert!(c.head.len() + c.tail.len() <= 1000);
        assert!(c.tail.capacity() < 64 * 1024 * 2);
    }
}
