//! The session: the conversation as an append-only log of JSON lines in `/workspace/.evershell/session/`
//! (`agent_wire::SESSION_DIR`), so it is in every snapshot and a resumed workspace continues it. Each record is one
//! `write(2)` of a whole line (a kill -9 of the agent loses nothing written; the kernel has it), and a background
//! thread `fdatasync`s after writes so a host crash loses at most the last moments; a task's end waits for it. On
//! load a torn last line (a write cut short) is skipped and cut off the file, and every `tool_use` without a result
//! gets a synthetic "interrupted" result before the next model call. `reset_session` renames the log aside
//! (the newest [`KEEP_OLD`] are kept) and starts a fresh one.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use evershell_core::agent_wire::SESSION_DIR;
use evershell_core::ids::TaskId;
use evershell_core::time::Timestamp;
use serde::{Deserialize, Serialize};

use super::model::{Block, Message, Role};

pub const LOG_NAME: &str = "session.jsonl";
/// Old logs kept after `reset_session`.
pub const KEEP_OLD: usize = 5;
/// The text of a synthetic result for a tool call whose run was cut short.
pub const INTERRUPTED: &str = "[interrupted: the agent stopped before this command finished; it may have run in part]";

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    SessionStarted {
        session_id: String,
        at: Timestamp,
    },
    TaskStarted {
        task_id: TaskId,
        at: Timestamp,
    },
    Message {
        message: Message,
    },
    /// The context from here on (after a compaction or a repair that could not be appended).
    Context {
        messages: Vec<Message>,
        compaction: bool,
        at: Timestamp,
    },
    TaskEnded {
        task_id: TaskId,
        state: String,
        reason: Option<String>,
        iterations: u32,
        at: Timestamp,
    },
}

/// What a task left in the log.
#[derive(Debug, Clone, Serialize)]
pub struct TaskEntry {
    pub task_id: TaskId,
    pub started_at: Timestamp,
    pub state: Option<String>,
    pub reason: Option<String>,
    pub iterations: u32,
}

/// How the log was opened.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    pub resumed: bool,
    pub records: usize,
    pub torn_record_skipped: bool,
    pub bad_records_skipped: usize,
    pub interrupted_results_added: usize,
}

struct Syncer {
    state: Mutex<(u64, u64, bool)>, // (written generation, synced generation, closed)
    cv: Condvar,
}

pub struct Session {
    pub dir: PathBuf,
    file: File,
    pub session_id: String,
    pub created_at: Timestamp,
    pub context: Vec<Message>,
    pub tasks: Vec<TaskEntry>,
    pub compactions: u32,
    pub records: usize,
    /// Changes whenever the context is replaced rather than appended to (compaction, repair).
    pub generation: u64,
    syncer: Arc<Syncer>,
}

impl Drop for Session {
    fn drop(&mut self) {
        let mut st = self.syncer.state.lock().unwrap();
        st.2 = true;
        self.syncer.cv.notify_all();
    }
}

fn log_path(root: &Path) -> PathBuf {
    root.join(SESSION_DIR).join(LOG_NAME)
}

impl Session {
    /// Open the workspace's session (or a fresh one with `reset`), repairing what an unclean end left.
    pub fn open(root: &Path, reset: bool) -> io::Result<(Session, LoadReport)> {
        let dir = root.join(SESSION_DIR);
        std::fs::create_dir_all(&dir)?;
        let path = log_path(root);
        if reset && path.exists() {
            rotate(&dir, &path)?;
        }
        let mut report = LoadReport::default();
        let mut records = Vec::new();
        if path.exists() {
            report.resumed = true;
            let (recs, good_len, torn, bad) = read_records(&path)?;
            records = recs;
            report.torn_record_skipped = torn;
            report.bad_records_skipped = bad;
            if torn {
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(good_len)?;
                f.sync_data()?;
                tracing::warn!(path = %path.display(), "torn last session record skipped");
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let syncer = Arc::new(Syncer { state: Mutex::new((0, 0, false)), cv: Condvar::new() });
        spawn_syncer(file.try_clone()?, syncer.clone());
        let mut s = Session {
            dir,
            file,
            session_id: String::new(),
            created_at: Timestamp::now(),
            context: Vec::new(),
            tasks: Vec::new(),
            compactions: 0,
            records: 0,
            generation: 0,
            syncer,
        };
        report.records = records.len();
        for r in records {
            s.apply(r);
        }
        if s.session_id.is_empty() {
            let id = format!("ses_{:x}{:x}", Timestamp::now().millis(), std::process::id());
            s.append(Record::SessionStarted { session_id: id, at: Timestamp::now() })?;
        }
        report.interrupted_results_added = s.repair()?;
        Ok((s, report))
    }

    fn apply(&mut self, r: Record) {
        self.records += 1;
        match r {
            Record::SessionStarted { session_id, at } => {
                self.session_id = session_id;
                self.created_at = at;
            }
            Record::TaskStarted { task_id, at } => {
                self.tasks.push(TaskEntry { task_id, started_at: at, state: None, reason: None, iterations: 0 })
            }
            Record::Message { message } => push_merged(&mut self.context, message),
            Record::Context { messages, compaction, .. } => {
                self.context = Vec::new();
                for m in messages {
                    push_merged(&mut self.context, m);
                }
                self.generation += 1;
                if compaction {
                    self.compactions += 1;
                }
            }
            Record::TaskEnded { task_id, state, reason, iterations, .. } => {
                if let Some(t) = self.tasks.iter_mut().rev().find(|t| t.task_id == task_id) {
                    t.state = Some(state);
                    t.reason = reason;
                    t.iterations = iterations;
                }
            }
        }
    }

    /// Append one record (one write of one line) and apply it.
    pub fn append(&mut self, r: Record) -> io::Result<()> {
        let mut line = serde_json::to_vec(&r).map_err(io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        let mut st = self.syncer.state.lock().unwrap();
        st.0 += 1;
        self.syncer.cv.notify_all();
        drop(st);
        self.apply(r);
        Ok(())
    }

    pub fn push_message(&mut self, message: Message) -> io::Result<()> {
        self.append(Record::Message { message })
    }

    /// Wait until everything appended so far is on disk.
    pub fn flush(&self) -> impl Future<Output = ()> + Send + 'static {
        let syncer = self.syncer.clone();
        async move {
            let _ = tokio::task::spawn_blocking(move || {
                let mut st = syncer.state.lock().unwrap();
                let target = st.0;
                while st.1 < target && !st.2 {
                    st = syncer.cv.wait(st).unwrap();
                }
            })
            .await;
        }
    }

    /// Give every `tool_use` a result: synthetic "interrupted" results after the last assistant message (appended),
    /// or, for one further back (a damaged log), a rewritten context. Returns how many were added.
    pub fn repair(&mut self) -> io::Result<usize> {
        let (fixed, added, appended_only) = with_results(&self.context);
        if added == 0 {
            return Ok(0);
        }
        if appended_only {
            let n = self.context.len();
            for m in fixed.into_iter().skip(n) {
                self.push_message(m)?;
            }
        } else {
            self.append(Record::Context { messages: fixed, compaction: false, at: Timestamp::now() })?;
        }
        tracing::warn!(added, "tool calls without a result got an interrupted result");
        Ok(added)
    }
}

/// Keep the context in merged form (turns alternate, no empty text, no empty message): a message of the same role
/// as the last one joins it. Every message but the last is then final, which lets the loop keep its wire form.
fn push_merged(context: &mut Vec<Message>, mut m: Message) {
    m.content.retain(|b| !matches!(b, Block::Text { text } if text.is_empty()));
    if m.content.is_empty() {
        return;
    }
    match context.last_mut() {
        Some(last) if last.role == m.role => last.content.extend(m.content),
        _ => context.push(m),
    }
}

/// The context with a result for every tool call; (context, results added, whether only appended at the end).
pub fn with_results(context: &[Message]) -> (Vec<Message>, usize, bool) {
    let mut out: Vec<Message> = Vec::with_capacity(context.len() + 1);
    let mut added = 0;
    let mut appended_only = true;
    let mut i = 0;
    while i < context.len() {
        let m = &context[i];
        out.push(m.clone());
        i += 1;
        if m.role != Role::Assistant {
            continue;
        }
        let pending: Vec<String> = m.tool_uses().map(|(id, ..)| id.to_string()).collect();
        if pending.is_empty() {
            continue;
        }
        // The results belong in the user messages right after.
        let mut answered = std::collections::HashSet::new();
        while i < context.len() && context[i].role == Role::User && context[i].has_tool_results() {
            for b in &context[i].content {
                if let Block::ToolResult { tool_use_id, .. } = b {
                    answered.insert(tool_use_id.clone());
                }
            }
            out.push(context[i].clone());
            i += 1;
        }
        for id in pending.iter().filter(|id| !answered.contains(*id)) {
            if i < context.len() {
                appended_only = false;
            }
            out.push(Message::tool_result(id, INTERRUPTED, true));
            added += 1;
        }
    }
    (out, added, appended_only)
}

/// Records of a log; (records, length of its complete part, last line torn, bad lines skipped).
fn read_records(path: &Path) -> io::Result<(Vec<Record>, u64, bool, usize)> {
    let mut r = io::BufReader::new(File::open(path)?);
    let mut out = Vec::new();
    let mut good_len = 0u64;
    let mut bad = 0;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok((out, good_len, false, bad));
        }
        if line.last() != Some(&b'\n') {
            // The last write was cut short (a complete record without its newline is torn too: rewriting it would
            // leave the file ambiguous).
            return Ok((out, good_len, true, bad));
        }
        good_len += n as u64;
        match serde_json::from_slice::<Record>(&line) {
            Ok(rec) => out.push(rec),
            Err(e) => {
                bad += 1;
                tracing::warn!(error = %e, "unreadable session record skipped");
            }
        }
    }
}

fn rotate(dir: &Path, path: &Path) -> io::Result<()> {
    let aside = dir.join(format!("session.{}.jsonl", Timestamp::now().millis()));
    std::fs::rename(path, &aside)?;
    let mut old: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            n.starts_with("session.") && n.ends_with(".jsonl") && n != LOG_NAME
        })
        .collect();
    old.sort();
    while old.len() > KEEP_OLD {
        let _ = std::fs::remove_file(old.remove(0));
    }
    Ok(())
}

fn spawn_syncer(file: File, s: Arc<Syncer>) {
    let _ = std::thread::Builder::new().name("session-sync".into()).spawn(move || {
        loop {
            let target = {
                let mut st = s.state.lock().unwrap();
                while st.1 >= st.0 && !st.2 {
                    st = s.cv.wait(st).unwrap();
                }
                if st.2 && st.1 >= st.0 {
                    return;
                }
                st.0
            };
            if let Err(e) = file.sync_data() {
                tracing::warn!(error = %e, "syncing the session log failed");
            }
            let mut st = s.state.lock().unwrap();
            st.1 = st.1.max(target);
            s.cv.notify_all();
            if st.2 && st.1 >= st.0 {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tool_use(id: &str) -> Message {
        Message {
            role: Role::Assistant,
            content: vec![Block::ToolUse {
                id: id.into(),
                name: "bash".into(),
                input: json!({}),
                invalid_arguments: None,
            }],
        }
    }

    #[tokio::test]
    async fn a_torn_last_record_is_skipped_and_cut_off() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let (mut s, r) = Session::open(tmp.path(), false).unwrap();
            assert!(!r.resumed);
            s.push_message(Message::user_text("hello")).unwrap();
            s.push_message(tool_use("t1")).unwrap();
            s.flush().await;
        }
        let path = log_path(tmp.path());
        let full = std::fs::read(&path).unwrap();
        // Cut the last record mid-line, as a kill -9 mid-write would.
        let cut = full.len() - 10;
        std::fs::write(&path, &full[..cut]).unwrap();
        let (mut s, r) = Session::open(tmp.path(), false).unwrap();
        assert!(r.resumed && r.torn_record_skipped);
        assert_eq!(s.context, vec![Message::user_text("hello")]);
        s.push_message(Message::user_text("again")).unwrap();
        drop(s);
        let (s, r) = Session::open(tmp.path(), false).unwrap();
        assert!(!r.torn_record_skipped && r.bad_records_skipped == 0);
        assert_eq!(s.context.len(), 1, "two user messages in a row are one turn");
        assert_eq!(s.context[0].content.len(), 2);
    }

    #[tokio::test]
    async fn a_tool_use_without_result_gets_an_interrupted_one_that_persists() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let (mut s, _) = Session::open(tmp.path(), false).unwrap();
            s.push_message(Message::user_text("go")).unwrap();
            let mut two = tool_use("a");
            two.content.extend(tool_use("b").content);
            s.push_message(two).unwrap();
            s.push_message(Message::tool_result("a", "done", false)).unwrap();
        }
        let (s, r) = Session::open(tmp.path(), false).unwrap();
        assert_eq!(r.interrupted_results_added, 1);
        let last = &s.context.last().unwrap().content;
        assert_eq!(last.len(), 2, "both results in the turn after the calls");
        assert_eq!(last[1], Message::tool_result("b", INTERRUPTED, true).content[0]);
        drop(s);
        let (_, r) = Session::open(tmp.path(), false).unwrap();
        assert_eq!(r.interrupted_results_added, 0, "the repair was written");
    }

    #[test]
    fn a_missing_result_further_back_rewrites_the_context() {
        let ctx = vec![Message::user_text("a"), tool_use("x"), Message::user_text("b")];
        let (fixed, added, appended_only) = with_results(&ctx);
        assert_eq!((added, appended_only), (1, false));
        assert_eq!(fixed[2], Message::tool_result("x", INTERRUPTED, true));
    }

    #[test]
    fn reset_keeps_a_bounded_number_of_old_logs() {
        let tmp = tempfile::tempdir().unwrap();
        let mut ids = Vec::new();
        for _ in 0..(KEEP_OLD + 3) {
            let (mut s, _) = Session::open(tmp.path(), true).unwrap();
            s.push_message(Message::user_text("x")).unwrap();
            ids.push(s.session_id.clone());
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let (s, r) = Session::open(tmp.path(), true).unwrap();
        assert!(!r.resumed && s.context.is_empty());
        assert!(!ids.contains(&s.session_id));
        let olds = std::fs::read_dir(tmp.path().join(SESSION_DIR)).unwrap().count() - 1;
        assert_eq!(olds, KEEP_OLD);
    }
}
