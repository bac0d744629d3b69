//! The agent loop end to end: the agent served on a Unix socket over a temporary workspace, driven through the
//! `agent_wire` routes, calling the scripted model server (both wire formats, streamed) and running real bash.

mod common;

use std::time::{Duration, Instant};

use common::{Agent, delivery, fast_config};
use evershell_agent::testing::{Reply, ScriptedCall, ScriptedModel};
use evershell_core::agent_wire::{AgentTaskState, ModelWire, ThinkingEffort};
use serde_json::Value;

const BOTH: [ModelWire; 2] = [ModelWire::AnthropicMessages, ModelWire::OpenaiChat];

#[tokio::test]
async fn tool_calls_split_across_deltas_and_in_parallel_run_and_complete_in_both_wire_formats() {
    for wire in BOTH {
        let model = ScriptedModel::start().await;
        model.push(Reply::tools_with_text(
            "let me look ✓",
            vec![ScriptedCall::bash("call_a", "echo héllo; echo err >&2"), ScriptedCall::bash("call_b", "pwd; exit 3")],
        ));
        model.push(Reply::text("all done ✓"));
        let mut agent = Agent::start().await;
        let mut d = delivery(&model.base_url(), wire, "say hello");
        d.thinking_effort = Some(ThinkingEffort::High);
        d.uploads = vec!["notes.txt".into()];
        let (code, v) = agent.deliver(&d).await;
        assert_eq!(code, 202, "{v}");
        assert_eq!(v["state"], "running");
        let st = agent.wait_end(&d.task_id).await;
        assert_eq!(st.state, AgentTaskState::Completed, "{wire:?}: {st:?}");
        assert_eq!(st.result.as_deref(), Some("all done ✓"));
        assert_eq!((st.iterations, st.tokens_in, st.tokens_out), (2, 20, 10));
        let reqs = model.requests();
        assert_eq!(reqs.len(), 2);
        let expected_path = if wire == ModelWire::AnthropicMessages { "/v1/messages" } else { "/v1/chat/completions" };
        for r in &reqs {
            assert_eq!(r.path, expected_path);
            assert!(r.header("authorization").is_none() && r.header("x-api-key").is_none(), "{:?}", r.headers);
            assert_eq!(r.body["stream"], true);
            assert_eq!(r.body["model"], "test-model");
            r.assert_every_tool_use_has_result();
        }
        let first = &reqs[0];
        assert!(first.all_text().contains("/data/uploads/"), "the uploads are named");
        if wire == ModelWire::AnthropicMessages {
            assert_eq!(first.header("anthropic-version"), Some("2023-06-01"));
            assert_eq!(first.body["system"], "You are a test agent.");
            assert_eq!(first.body["thinking"]["budget_tokens"], 24_576);
            assert_eq!(first.body["tools"][0]["name"], "bash");
            let desc = first.body["tools"][0]["description"].as_str().unwrap();
            assert!(desc.contains("default 120") && desc.contains("at most 600"), "{desc}");
        } else {
            assert_eq!(first.body["messages"][0]["role"], "system");
            assert_eq!(first.body["reasoning_effort"], "high");
            assert_eq!(first.body["tools"][0]["function"]["name"], "bash");
            // The assistant turn carries both calls, arguments reassembled from the interleaved deltas.
            let calls = &reqs[1].body["messages"][2]["tool_calls"];
            assert_eq!(calls.as_array().unwrap().len(), 2, "{}", reqs[1].body);
            let args: Value = serde_json::from_str(calls[1]["function"]["arguments"].as_str().unwrap()).unwrap();
            assert_eq!(args["command"], "pwd; exit 3");
        }
        let results = reqs[1].tool_results();
        assert_eq!(results.len(), 2);
        assert_eq!(results[0].0, "call_a");
        assert!(results[0].1.contains("héllo\nerr\n") && results[0].1.contains("[exit code 0]"), "{:?}", results[0]);
        assert!(results[1].1.contains("workspace") && results[1].1.contains("[exit code 3]"), "{:?}", results[1]);
        if wire == ModelWire::AnthropicMessages {
            assert!(!results[0].2 && results[1].2, "a non-zero exit is an error result");
        }
        let types: Vec<String> = agent.all_events().await.into_iter().map(|e| e.event_type).collect();
        for t in [
            "session_started",
            "task_started",
            "tool_call_started",
            "tool_call_completed",
            "iteration_completed",
            "task_completed",
        ] {
            assert!(types.iter().any(|x| x == t), "{t} missing from {types:?}");
        }
        assert!(agent.root.join(".evershell/session/session.jsonl").exists());
        agent.shutdown().await;
    }
}

#[tokio::test]
async fn transient_errors_are_retried_then_the_task_fails_with_the_cause() {
    let model = ScriptedModel::start().await;
    model.push(Reply::status(429, "slow down"));
    model.push(Reply::status(503, "overloaded"));
    model.push(Reply::dropped(3, Reply::text("this stream is cut")));
    model.push(Reply::hang());
    model.push(Reply::text("recovered"));
    let mut agent = Agent::start().await;
    let d = delivery(&model.base_url(), ModelWire::AnthropicMessages, "go");
    agent.deliver(&d).await;
    let st = agent.wait_end(&d.task_id).await;
    assert_eq!(st.state, AgentTaskState::Completed, "{st:?}");
    assert_eq!(st.result.as_deref(), Some("recovered"));
    assert_eq!(model.requests().len(), 5);
    let retries: Vec<Value> =
        agent.all_events().await.into_iter().filter(|e| e.event_type == "model_retry").map(|e| e.data).collect();
    assert_eq!(retries.len(), 4);
    assert!(retries[2]["error"].as_str().unwrap().contains("dropped"), "{retries:?}");

    // Always failing: 1 call + 5 retries, then the cause.
    model.set_default(Reply::status(500, "boom"));
    let d = delivery(&model.base_url(), ModelWire::OpenaiChat, "go again");
    agent.deliver(&d).await;
    let st = agent.wait_end(&d.task_id).await;
    assert_eq!(st.state, AgentTaskState::Failed);
    assert_eq!(st.reason.as_deref(), Some("model_error"));
    let cause = st.result.unwrap();
    assert!(cause.contains("HTTP 500") && cause.contains("boom") && cause.contains("5 retries"), "{cause}");
    assert_eq!(model.requests().len(), 5 + 6);

    // A permanent error is not retried.
    model.set_default(Reply::status(400, "bad request"));
    let d = delivery(&model.base_url(), ModelWire::OpenaiChat, "once more");
    agent.deliver(&d).await;
    let st = agent.wait_end(&d.task_id).await;
    assert_eq!(st.reason.as_deref(), Some("model_error"));
    assert_eq!(model.requests().len(), 12);
    agent.shutdown().await;
}

#[tokio::test]
async fn malformed_tool_calls_get_error_results_not_a_crash() {
    for wire in BOTH {
        let model = ScriptedModel::start().await;
        model.push(Reply::tools(vec![
            ScriptedCall::raw("bad_json", "bash", "{\"command\": \"echo x"),
            ScriptedCall::raw("no_tool", "python", "{\"code\": \"1\"}"),
            ScriptedCall::raw("no_command", "bash", "{\"cmd\": \"ls\"}"),
            ScriptedCall::raw("not_object", "bash", "[1,2]"),
        ]));
        model.push(Reply::text("sorry"));
        let mut agent = Agent::start().await;
        let d = delivery(&model.base_url(), wire, "go");
        agent.deliver(&d).await;
        let st = agent.wait_end(&d.task_id).await;
        assert_eq!(st.state, AgentTaskState::Completed, "{st:?}");
        let second = &model.requests()[1];
        second.assert_every_tool_use_has_result();
        let results = second.tool_results();
        assert_eq!(results.len(), 4);
        assert!(results[0].1.contains("not a JSON object"), "{results:?}");
        assert!(results[1].1.contains("unknown tool `python`"), "{results:?}");
        assert!(results[2].1.contains("`command`"), "{results:?}");
        assert!(results[3].1.contains("not a JSON object"), "{results:?}");
        if wire == ModelWire::AnthropicMessages {
            assert!(results.iter().all(|r| r.2));
            // The unparsable call goes back as an object.
            assert!(second.body["messages"][1]["content"][0]["input"].is_object());
        } else {
            let calls = &second.body["messages"][2]["tool_calls"];
            assert_eq!(calls[0]["function"]["arguments"], "{\"command\": \"echo x");
        }
        agent.shutdown().await;
    }
}

#[tokio::test]
async fn a_model_that_never_stops_ends_with_max_continuations() {
    let model = ScriptedModel::start().await;
    model.set_default(Reply::tools(vec![ScriptedCall::bash("again", "true")]));
    let mut agent = Agent::start().await;
    let mut d = delivery(&model.base_url(), ModelWire::OpenaiChat, "loop");
    d.max_continuations = 2;
    agent.deliver(&d).await;
    let st = agent.wait_end(&d.task_id).await;
    assert_eq!(st.state, AgentTaskState::Failed);
    assert_eq!(st.reason.as_deref(), Some("max_continuations"));
    assert_eq!(st.iterations, 3);
    assert_eq!(model.requests().len(), 3);
    agent.shutdown().await;
}

#[tokio::test]
async fn a_hanging_command_is_killed_with_its_group_and_a_background_child_does_not_hold_the_call() {
    let model = ScriptedModel::start().await;
    let mut agent = Agent::start().await;
    let pid_file = agent.root.join("bg.pid");
    let bg_pid_file = agent.root.join("bg2.pid");
    model.push(Reply::tools(vec![
        ScriptedCall::bash_with_timeout("hang", &format!("sleep 300 & echo $! > {}; wait", pid_file.display()), 1),
        ScriptedCall::bash("bg", &format!("sleep 30 & echo $! > {}; echo started", bg_pid_file.display())),
        ScriptedCall::bash_with_timeout("huge_timeout", "echo quick", 100_000),
    ]));
    model.push(Reply::text("ok"));
    let d = delivery(&model.base_url(), ModelWire::AnthropicMessages, "go");
    let started = Instant::now();
    agent.deliver(&d).await;
    let st = agent.wait_end(&d.task_id).await;
    assert_eq!(st.state, AgentTaskState::Completed);
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    let results = model.requests()[1].tool_results();
    assert!(results[0].1.contains("timed out after 1 s"), "{results:?}");
    assert!(results[1].1.contains("started") && results[1].1.contains("[exit code 0]"), "{results:?}");
    assert!(results[2].1.contains("capped at 600"), "{results:?}");
    // The hung command's background child was in its group and got SIGKILL.
    let child: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
    assert!(stat.is_empty() || stat.contains(") Z"), "{stat}");
    let events = agent.all_events().await;
    let hang =
        events.iter().find(|e| e.event_type == "tool_call_completed" && e.data["tool_use_id"] == "hang").unwrap();
    assert_eq!(hang.data["timed_out"], true);
    assert_eq!(hang.data["signal"], libc::SIGKILL);
    // The background sleep of the second call is still running (by design): end it, by its pid.
    let bg: i32 = std::fs::read_to_string(&bg_pid_file).unwrap().trim().parse().unwrap();
    assert!(std::fs::read_to_string(format!("/proc/{bg}/stat")).is_ok_and(|s| !s.contains(") Z")));
    unsafe { libc::kill(bg, libc::SIGKILL) };
    agent.shutdown().await;
}

#[tokio::test]
async fn a_gigabyte_of_output_costs_bounded_memory_and_reaches_the_model_as_head_and_tail() {
    let model = ScriptedModel::start().await;
    model.push(Reply::tools(vec![ScriptedCall::bash(
        "big",
        "echo FIRST; head -c 1000000000 /dev/zero | tr '\\0' 'x'; echo; echo LAST",
    )]));
    model.push(Reply::text("ok"));
    let mut agent = Agent::start().await;
    let before = common::vm_hwm_kb();
    let d = delivery(&model.base_url(), ModelWire::AnthropicMessages, "go");
    agent.deliver(&d).await;
    let st = agent.wait_end(&d.task_id).await;
    assert_eq!(st.state, AgentTaskState::Completed);
    let grown_mb = (common::vm_hwm_kb().saturating_sub(before)) / 1024;
    assert!(grown_mb < 64, "peak memory grew by {grown_mb} MB");
    let results = model.requests()[1].tool_results();
    let out = &results[0].1;
    assert!(out.starts_with("FIRST\nxxx"), "{}", &out[..50]);
    assert!(out.ends_with("xxx\nLAST\n\n[exit code 0]"), "{}", &out[out.len() - 50..]);
    assert!(out.len() < 30_000 + 200, "{}", out.len());
    let omitted = 1_000_000_012u64 - 30_000;
    assert!(out.contains(&format!("[… {omitted} bytes of output left out …]")), "{}", &out[14_990..15_080]);
    let ev = agent.all_events().await.into_iter().find(|e| e.event_type == "tool_call_completed").unwrap();
    assert_eq!(ev.data["output_bytes"], 1_000_000_012u64);
    assert_eq!(ev.data["output_truncated"], true);
    let kept = ev.data["output"].as_str().unwrap().len();
    assert!(kept > 1_000_000 && kept < (1 << 20) + 200, "{kept}");
    agent.shutdown().await;
}

#[tokio::test]
async fn cancel_during_a_long_command_ends_within_the_grace_and_the_next_task_runs() {
    let model = ScriptedModel::start().await;
    model.push(Reply::tools(vec![ScriptedCall::bash("long", "sleep 300"), ScriptedCall::bash("after", "echo never")]));
    let mut agent = Agent::start().await;
    let mut d = delivery(&model.base_url(), ModelWire::AnthropicMessages, "wait a long time");
    d.cancel_grace_ms = 300;
    agent.deliver(&d).await;
    agent.wait_event(&["tool_call_started"]).await;
    // Busy: another task is refused, the same one is answered idempotently.
    let other = delivery(&model.base_url(), ModelWire::AnthropicMessages, "other");
    let (code, v) = agent.deliver(&other).await;
    assert_eq!((code, v["error"]["code"].as_str()), (409, Some("agent_busy")));
    let (code, v) = agent.deliver(&d).await;
    assert_eq!((code, v["state"].as_str()), (202, Some("running")));
    let (code, _) = agent.request("GET", &format!("/v1/tasks/{}", other.task_id), None).await;
    assert_eq!(code, 404);

    let t = Instant::now();
    let (code, v) = agent.request("POST", &format!("/v1/tasks/{}/cancel", d.task_id), None).await;
    assert_eq!(code, 202, "{v}");
    let st = agent.wait_end(&d.task_id).await;
    assert!(t.elapsed() < Duration::from_secs(3), "cancel took {:?}", t.elapsed());
    assert_eq!(st.state, AgentTaskState::Cancelled);
    assert_eq!(st.reason.as_deref(), Some("cancelled"));
    assert_eq!(model.requests().len(), 1, "no model call after the cancel");

    // The next task runs normally and its request has a result for both calls of the cancelled turn.
    model.push(Reply::text("fine"));
    let next = delivery(&model.base_url(), ModelWire::AnthropicMessages, "next");
    let (code, _) = agent.deliver(&next).await;
    assert_eq!(code, 202);
    let st = agent.wait_end(&next.task_id).await;
    assert_eq!(st.state, AgentTaskState::Completed);
    let req = &model.requests()[1];
    req.assert_every_tool_use_has_result();
    let results = req.tool_results();
    assert!(results[0].1.contains("interrupted"), "{results:?}");
    assert!(results[1].1.contains("not run"), "{results:?}");
    assert!(req.all_text().contains("wait a long time") && req.all_text().contains("next"));
    agent.shutdown().await;
}

#[tokio::test]
async fn cancel_during_a_model_call_lets_it_finish_and_the_deadline_ends_a_task() {
    let model = ScriptedModel::start().await;
    model.push(Reply::hang());
    model.push(Reply::tools(vec![ScriptedCall::bash("x", "echo should-not-run > ran")]));
    let mut cfg = fast_config();
    cfg.model.response_timeout = Duration::from_secs(1);
    let mut agent = Agent::start_with(cfg).await;
    let d = delivery(&model.base_url(), ModelWire::OpenaiChat, "go");
    agent.deliver(&d).await;
    model.wait_requests(1).await;
    agent.request("POST", &format!("/v1/tasks/{}/cancel", d.task_id), None).await;
    let st = agent.wait_end(&d.task_id).await;
    assert_eq!(st.state, AgentTaskState::Cancelled);
    // The first call timed out and was not retried after the cancel.
    assert_eq!(model.requests().len(), 1);
    assert!(!agent.root.join("ran").exists());

    model.set_default(Reply::hang());
    let mut d = delivery(&model.base_url(), ModelWire::OpenaiChat, "slow");
    d.timeout_seconds = Some(1);
    let t = Instant::now();
    agent.deliver(&d).await;
    let st = agent.wait_end(&d.task_id).await;
    assert_eq!((st.state, st.reason.as_deref()), (AgentTaskState::Failed, Some("task_timeout")));
    assert!(t.elapsed() < Duration::from_secs(5));
    agent.shutdown().await;
}

#[tokio::test]
async fn a_torn_session_record_is_skipped_and_reset_session_starts_fresh() {
    let model = ScriptedModel::start().await;
    model.push(Reply::tools(vec![ScriptedCall::bash("t1", "echo one")]));
    model.push(Reply::text("first done"));
    let mut agent = Agent::start().await;
    let d = delivery(&model.base_url(), ModelWire::AnthropicMessages, "first task");
    agent.deliver(&d).await;
    agent.wait_end(&d.task_id).await;
    agent.shutdown().await;

    // Tear the last record, as a kill -9 mid-write would, then resume in a new agent process.
    let log = agent.root.join(".evershell/session/session.jsonl");
    let full = std::fs::read(&log).unwrap();
    std::fs::write(&log, &full[..full.len() - 7]).unwrap();
    agent.serve(fast_config());
    model.push(Reply::text("second done"));
    let d2 = delivery(&model.base_url(), ModelWire::AnthropicMessages, "second task");
    agent.deliver(&d2).await;
    let resumed = agent.wait_event(&["session_resumed"]).await;
    assert_eq!(resumed.data["load"]["torn_record_skipped"], true, "{}", resumed.data);
    let st = agent.wait_end(&d2.task_id).await;
    assert_eq!(st.state, AgentTaskState::Completed);
    let req = &model.requests()[2];
    req.assert_every_tool_use_has_result();
    let text = req.all_text();
    assert!(text.contains("first task") && text.contains("first done") && text.contains("second task"), "{text}");
    let (_, view) = agent.request("GET", "/v1/session", None).await;
    assert_eq!(view["task_count"], 2, "{view}");

    model.push(Reply::text("fresh"));
    let mut d3 = delivery(&model.base_url(), ModelWire::AnthropicMessages, "third task");
    d3.reset_session = true;
    agent.deliver(&d3).await;
    agent.wait_event(&["session_started"]).await;
    agent.wait_end(&d3.task_id).await;
    let req = &model.requests()[3];
    assert_eq!(req.body["messages"].as_array().unwrap().len(), 1, "{}", req.body);
    assert!(!req.all_text().contains("first task"));
    let olds = std::fs::read_dir(agent.root.join(".evershell/session")).unwrap().count();
    assert_eq!(olds, 2, "the old log is kept beside the new one");
    agent.shutdown().await;
}

#[tokio::test]
async fn compaction_runs_once_per_overflow_keeps_instructions_and_is_bounded() {
    let model = ScriptedModel::start().await;
    // Turn 1 reports a context near the limit: the next call is the summary, then the task goes on.
    model.push(Reply::tools(vec![ScriptedCall::bash("c1", "echo one")]).with_usage(900, 10));
    model.push(Reply::text("SUMMARY-ONE"));
    model.push(Reply::text("finished").with_usage(100, 5));
    let mut agent = Agent::start().await;
    let mut d = delivery(&model.base_url(), ModelWire::AnthropicMessages, "the instructions");
    d.max_context_tokens = Some(1000);
    agent.deliver(&d).await;
    let st = agent.wait_end(&d.task_id).await;
    assert_eq!(st.state, AgentTaskState::Completed, "{st:?}");
    let reqs = model.requests();
    assert_eq!(reqs.len(), 3);
    assert!(reqs[1].all_text().contains("about to be cut for length"), "the second call asks for the summary");
    reqs[1].assert_every_tool_use_has_result();
    let after = reqs[2].all_text();
    assert!(after.contains("SUMMARY-ONE") && after.contains("the instructions"), "{after}");
    reqs[2].assert_every_tool_use_has_result();
    let events = agent.all_events().await;
    assert_eq!(events.iter().filter(|e| e.event_type == "compaction_started").count(), 1);
    assert_eq!(events.iter().filter(|e| e.event_type == "compaction_completed").count(), 1);

    // A context that overflows on every turn: three compactions, then `compaction_limit` instead of a loop.
    for i in 0..3 {
        model.push(Reply::tools(vec![ScriptedCall::bash(&format!("o{i}"), "true")]).with_usage(950, 10));
        model.push(Reply::text("summary"));
    }
    model.push(Reply::tools(vec![ScriptedCall::bash("o3", "true")]).with_usage(950, 10));
    model.set_default(Reply::text("must not be asked"));
    let mut d = delivery(&model.base_url(), ModelWire::AnthropicMessages, "overflowing");
    d.max_context_tokens = Some(1000);
    agent.deliver(&d).await;
    let st = agent.wait_end(&d.task_id).await;
    assert_eq!((st.state, st.reason.as_deref()), (AgentTaskState::Failed, Some("compaction_limit")), "{st:?}");
    assert_eq!(model.requests().len(), 3 + 7);
    agent.shutdown().await;
}

#[tokio::test]
async fn events_long_poll_and_carry_the_agent_instance() {
    let model = ScriptedModel::start().await;
    let mut agent = Agent::start().await;
    let (_, v) = agent.request("GET", "/v1/events?after=0&wait_ms=0", None).await;
    let instance = v["agent_instance"].as_str().unwrap().to_string();
    assert_eq!((v["next_after"].as_u64(), v["dropped"].as_u64()), (Some(0), Some(0)));
    let socket = agent.socket.clone();
    let poll =
        tokio::spawn(async move { common::request(&socket, "GET", "/v1/events?after=0&wait_ms=30000", None).await });
    let d = delivery(&model.base_url(), ModelWire::OpenaiChat, "hi");
    agent.deliver(&d).await;
    let (_, page) = poll.await.unwrap();
    assert!(!page["events"].as_array().unwrap().is_empty());
    assert_eq!(page["events"][0]["seq"], 1);
    agent.wait_end(&d.task_id).await;
    agent.shutdown().await;
    agent.serve(fast_config());
    let (_, v) = agent.request("GET", "/v1/events?after=0&wait_ms=0", None).await;
    assert_ne!(v["agent_instance"].as_str().unwrap(), instance, "a new process is a new instance");
    let (code, _) = agent.request("GET", &format!("/v1/tasks/{}", d.task_id), None).await;
    assert_eq!(code, 404, "a restarted agent does not know the task");
    agent.shutdown().await;
}

#[tokio::test]
async fn a_connect_error_is_retried_then_fails_with_the_cause() {
    // A port nobody listens on any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut agent = Agent::start().await;
    let d = delivery(&format!("http://127.0.0.1:{port}"), ModelWire::AnthropicMessages, "go");
    agent.deliver(&d).await;
    let st = agent.wait_end(&d.task_id).await;
    assert_eq!((st.state, st.reason.as_deref()), (AgentTaskState::Failed, Some("model_error")));
    let cause = st.result.unwrap();
    assert!(cause.contains("model request failed") && cause.contains("5 retries"), "{cause}");
    let retries = agent.all_events().await.into_iter().filter(|e| e.event_type == "model_retry").count();
    assert_eq!(retries, 5);
    agent.shutdown().await;
}
