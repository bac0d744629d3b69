//! kill -9 of the agent mid-task: the agent runs as a separate process (this test binary re-executed into
//! `evershell_agent::run`, the code `evershell agent` runs), is killed while a tool call runs, and a new process on
//! the same workspace resumes the session with a result for every tool call.

mod common;

use std::process::{Command, Stdio};

use common::delivery;
use evershell_agent::testing::{Reply, ScriptedCall, ScriptedModel};
use evershell_core::agent_wire::{AgentTaskState, ModelWire};

const CHILD_ENV: &str = "EVERSHELL_TEST_AGENT_CHILD";

/// The child's entry point: a no-op unless re-executed by the test below.
#[test]
fn agent_child_process() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let dir = std::path::PathBuf::from(dir);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(evershell_agent::run(evershell_agent::AgentOptions {
        socket: dir.join("agent.sock"),
        root: dir.join("workspace"),
        pod_id: None,
        hold: None,
        held_marker: None,
    }))
    .unwrap();
}

fn spawn_agent(dir: &std::path::Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["agent_child_process", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .env("EVERSHELL_AGENT_MODEL_RETRY_BASE_MS", "5")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn kill_9_mid_task_then_restart_resumes_with_every_tool_call_answered() {
    let model = ScriptedModel::start().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("workspace");
    std::fs::create_dir(&root).unwrap();
    let socket = dir.path().join("agent.sock");
    let pg_file = root.join("tool.pgid");
    model.push(Reply::tools(vec![
        ScriptedCall::bash("quick", "echo before"),
        ScriptedCall::bash("slow", &format!("echo $$ > {}; exec sleep 300", pg_file.display())),
    ]));

    let mut child = spawn_agent(dir.path());
    common::wait_for_socket(&socket, &mut child).await;
    let d = delivery(&model.base_url(), ModelWire::AnthropicMessages, "the first task");
    let (code, v) = common::request(&socket, "POST", "/v1/tasks", Some(serde_json::to_value(&d).unwrap())).await;
    assert_eq!(code, 202, "{v}");
    // Wait until the slow command runs (its second tool_call_started event).
    let mut after = 0;
    let mut started = 0;
    while started < 2 {
        let (_, page) = common::request(&socket, "GET", &format!("/v1/events?after={after}&wait_ms=30000"), None).await;
        for e in page["events"].as_array().unwrap() {
            after = e["seq"].as_u64().unwrap();
            if e["event_type"] == "tool_call_started" {
                started += 1;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // The orphaned command is ours to end, by its process group.
    let pgid: i32 = loop {
        if let Ok(s) = std::fs::read_to_string(&pg_file)
            && let Ok(p) = s.trim().parse()
        {
            break p;
        }
        tokio::task::yield_now().await;
    };
    unsafe { libc::kill(-pgid, libc::SIGKILL) };

    model.push(Reply::text("resumed fine"));
    let mut child = spawn_agent(dir.path());
    common::wait_for_socket(&socket, &mut child).await;
    let (code, _) = common::request(&socket, "GET", &format!("/v1/tasks/{}", d.task_id), None).await;
    assert_eq!(code, 404, "the new process never saw the killed task");
    let (_, view) = common::request(&socket, "GET", "/v1/session", None).await;
    assert_eq!(view["task_count"], 1, "{view}");
    let d2 = delivery(&model.base_url(), ModelWire::AnthropicMessages, "the second task");
    common::request(&socket, "POST", "/v1/tasks", Some(serde_json::to_value(&d2).unwrap())).await;
    let mut after = 0;
    'wait: loop {
        let (_, page) = common::request(&socket, "GET", &format!("/v1/events?after={after}&wait_ms=30000"), None).await;
        for e in page["events"].as_array().unwrap() {
            after = e["seq"].as_u64().unwrap();
            if e["event_type"] == "task_completed" {
                break 'wait;
            }
        }
    }
    let (_, st) = common::request(&socket, "GET", &format!("/v1/tasks/{}", d2.task_id), None).await;
    assert_eq!(st["state"], serde_json::to_value(AgentTaskState::Completed).unwrap());
    let req = &model.requests()[1];
    req.assert_every_tool_use_has_result();
    let results = req.tool_results();
    assert_eq!(results.len(), 2, "{results:?}");
    assert!(results[0].1.contains("before"), "{results:?}");
    assert!(results[1].1.contains("interrupted") && results[1].2, "{results:?}");
    child.kill().unwrap();
    child.wait().unwrap();
}
