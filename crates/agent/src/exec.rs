//! `POST /v1/exec`: run one command in the pod, as the sandbox user, in `/workspace`, in its own process group, with
//! stdin from the request (or `/dev/null`). Output is captured up to a cap per stream (the rest is read and dropped,
//! so the command never blocks on a full pipe); at the deadline the whole group is killed. Once the command itself
//! has exited, its output is read for a short moment more and the call returns — a background child that keeps
//! the pipes open does not hold it (the child keeps running).

use std::process::Stdio;
use std::time::{Duration, Instant};

use evershell_core::exec::{DRAIN_MS, ExecRequest, ExecResult, MAX_OUTPUT_BYTES};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Read `r` until EOF, keeping at most `cap` bytes; returns the kept bytes and whether any were dropped.
async fn capture(mut r: impl AsyncRead + Unpin, cap: usize, sink: tokio::sync::watch::Sender<(Vec<u8>, bool)>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => sink.send_modify(|(kept, dropped)| {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                *dropped |= n > room;
            }),
        }
    }
}

/// Run the command; `Err` only when it could not be started at all.
pub async fn run(root: &std::path::Path, req: ExecRequest) -> std::io::Result<ExecResult> {
    let started = Instant::now();
    let mut cmd = tokio::process::Command::new(&req.argv[0]);
    cmd.args(&req.argv[1..])
        .envs(&req.env)
        .current_dir(root)
        .stdin(if req.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    let mut child = cmd.spawn()?;
    let pgid = child.id().map(|p| p as i32);
    if let (Some(text), Some(mut stdin)) = (req.stdin.clone(), child.stdin.take()) {
        // A command that does not read its stdin must not block us: write in the background.
        tokio::spawn(async move {
            let _ = stdin.write_all(text.as_bytes()).await;
        });
    }
    let (out_tx, out_rx) = tokio::sync::watch::channel((Vec::new(), false));
    let (err_tx, err_rx) = tokio::sync::watch::channel((Vec::new(), false));
    let out_task = tokio::spawn(capture(child.stdout.take().expect("piped"), MAX_OUTPUT_BYTES, out_tx));
    let err_task = tokio::spawn(capture(child.stderr.take().expect("piped"), MAX_OUTPUT_BYTES, err_tx));

    let kill_group = || {
        if let Some(pg) = pgid {
            // SAFETY: kill(2) of our own child's process group.
            unsafe { libc::kill(-pg, libc::SIGKILL) };
        }
    };
    let (status, timed_out) = match tokio::time::timeout(req.timeout(), child.wait()).await {
        Ok(status) => (status?, false),
        Err(_) => {
            kill_group();
            (child.wait().await?, true)
        }
    };
    // The output still in the pipes, for a moment (a background child may hold them open for good).
    let drain = Duration::from_millis(DRAIN_MS);
    let _ = tokio::time::timeout(drain, async {
        let _ = out_task.await;
        let _ = err_task.await;
    })
    .await;
    if timed_out {
        kill_group();
    }
    let (out, out_dropped) = out_rx.borrow().clone();
    let (err, err_dropped) = err_rx.borrow().clone();
    use std::os::unix::process::ExitStatusExt;
    Ok(ExecResult {
        exit_code: status.code(),
        signal: status.signal(),
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
        truncated: out_dropped || err_dropped,
        timed_out,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(script: &str, timeout_ms: Option<u64>) -> ExecRequest {
        ExecRequest {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            stdin: None,
            env: Default::default(),
            timeout_ms,
        }
    }

    #[tokio::test]
    async fn runs_captures_and_reports_status() {
        let tmp = tempfile::tempdir().unwrap();
        let r = run(tmp.path(), req("echo out; echo err >&2; pwd; exit 3", None)).await.unwrap();
        assert_eq!(r.exit_code, Some(3));
        assert_eq!(r.stderr, "err\n");
        assert_eq!(r.stdout, format!("out\n{}\n", tmp.path().canonicalize().unwrap().display()));
        assert!(!r.truncated && !r.timed_out);
    }

    #[tokio::test]
    async fn stdin_env_and_caps() {
        let tmp = tempfile::tempdir().unwrap();
        let mut q = req("cat; printf %s \"$X\"", None);
        q.stdin = Some("in:".into());
        q.env.insert("X".into(), "yes".into());
        assert_eq!(run(tmp.path(), q).await.unwrap().stdout, "in:yes");
        let big = run(tmp.path(), req("head -c 3000000 /dev/zero", None)).await.unwrap();
        assert_eq!(big.stdout.len(), MAX_OUTPUT_BYTES);
        assert!(big.truncated);
        assert_eq!(big.exit_code, Some(0));
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_group() {
        let tmp = tempfile::tempdir().unwrap();
        let marker = tmp.path().join("child.pid");
        let script = format!("sleep 300 & echo $! > {}; wait", marker.display());
        let r = run(tmp.path(), req(&script, Some(300))).await.unwrap();
        assert!(r.timed_out);
        assert_eq!(r.signal, Some(libc::SIGKILL));
        let child: i32 = std::fs::read_to_string(&marker).unwrap().trim().parse().unwrap();
        // The background sleep was in the group and got SIGKILL: it dies (gone, or a zombie waiting for its reaper)
        // as soon as the signal is delivered.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let state = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            if state.is_empty() || state.contains(") Z") {
                break;
            }
            assert!(Instant::now() < deadline, "the group's background child survived: {state}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_background_child_holding_stdout_does_not_hold_the_call() {
        let tmp = tempfile::tempdir().unwrap();
        let r = run(tmp.path(), req("sleep 30 & echo started", Some(20_000))).await.unwrap();
        assert_eq!(r.exit_code, Some(0));
        assert_eq!(r.stdout, "started\n");
        assert!(r.duration_ms < 20_000 && !r.timed_out);
    }
}
