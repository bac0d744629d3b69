//! The agent loop's own overhead per iteration — the time of an iteration not spent in the model or the tool: the
//! session log, events, building the request, parsing and assembling the streamed answer, bookkeeping — against the
//! scripted model server answering at once, each turn one `bash` call of `true`. The agent serves on its own
//! current-thread runtime (as `evershell agent` does), the model server on another. Target: < 2 ms per iteration.
//!
//!   cargo bench -p evershell-agent --bench loop        (BENCH_ITERATIONS, default 300 per wire format)

use std::time::{Duration, Instant};

use evershell_agent::testing::{Reply, ScriptedCall, ScriptedModel};
use evershell_core::agent_wire::{EventPage, ModelTarget, ModelWire, TaskDelivery, ToolLimits};
use evershell_core::ids::TaskId;

#[path = "../tests/common/mod.rs"]
mod common;

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let iterations: u32 = std::env::var("BENCH_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let model_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let model = model_rt.block_on(ScriptedModel::start());
    model.set_default(Reply::tools(vec![ScriptedCall::bash("call_1", "true")]));

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("workspace");
    std::fs::create_dir(&root).unwrap();
    let socket = dir.path().join("agent.sock");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = {
        let socket = socket.clone();
        let root = root.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = evershell_agent::bind(&socket).unwrap();
                let cfg = evershell_agent::task::LoopConfig::default();
                evershell_agent::serve_with(listener, root, None, cfg, async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
            })
        })
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        while tokio::net::UnixStream::connect(&socket).await.is_err() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        println!("agent loop overhead per iteration ({iterations} iterations per wire format, model answering at once, tool `true`)");
        let mut after = 0u64;
        for wire in [ModelWire::AnthropicMessages, ModelWire::OpenaiChat] {
            let d = TaskDelivery {
                task_id: TaskId::new(),
                description: "benchmark".into(),
                uploads: vec![],
                model: ModelTarget { wire, base_url: model.base_url(), model: "bench".into() },
                system_prompt: "bench".into(),
                thinking_effort: None,
                max_continuations: iterations - 1,
                max_context_tokens: None,
                timeout_seconds: None,
                reset_session: true,
                limits: ToolLimits::default(),
                cancel_grace_ms: 1000,
            };
            let started = Instant::now();
            let (code, v) = common::request(&socket, "POST", "/v1/tasks", Some(serde_json::to_value(&d).unwrap())).await;
            assert_eq!(code, 202, "{v}");
            let (mut overhead, mut model_ms, mut tool_ms) = (Vec::new(), Vec::new(), Vec::new());
            let wall;
            'wait: loop {
                let (_, page) = common::request(&socket, "GET", &format!("/v1/events?after={after}&wait_ms=30000"), None).await;
                let page: EventPage = serde_json::from_value(page).unwrap();
                for e in page.events {
                    after = e.seq;
                    match e.event_type.as_str() {
                        "iteration_completed" => {
                            overhead.push(e.data["overhead_ms"].as_f64().unwrap());
                            model_ms.push(e.data["model_ms"].as_f64().unwrap());
                            tool_ms.push(e.data["tool_ms"].as_f64().unwrap());
                        }
                        "task_failed" | "task_completed" => {
                            wall = started.elapsed();
                            assert_eq!(e.data["reason"], "max_continuations", "{}", e.data);
                            break 'wait;
                        }
                        _ => {}
                    }
                }
            }
            let n = overhead.len() as f64;
            let sum = |v: &[f64]| v.iter().sum::<f64>();
            let external = (wall.as_secs_f64() * 1000.0 - sum(&model_ms) - sum(&tool_ms)) / n;
            let mut sorted = overhead.clone();
            sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let first: Vec<f64> = overhead.iter().take(50).copied().collect();
            let last: Vec<f64> = overhead.iter().rev().take(50).copied().collect();
            println!(
                "  {wire:?}: overhead median {:.3} ms, p95 {:.3} ms, max {:.3} ms (first 50 mean {:.3}, last 50 mean {:.3}); \
                 task wall less model and tool time / iterations {:.3} ms; model {:.3} ms and tool {:.3} ms mean",
                pct(&sorted, 0.5),
                pct(&sorted, 0.95),
                pct(&sorted, 1.0),
                sum(&first) / first.len() as f64,
                sum(&last) / last.len() as f64,
                external,
                sum(&model_ms) / n,
                sum(&tool_ms) / n,
            );
            let median = pct(&sorted, 0.5);
            println!("  target < 2 ms per iteration: {}", if median < 2.0 { "met" } else { "NOT met" });
        }
    });
    let _ = stop_tx.send(());
    agent.join().unwrap();
}
