//! Activity: the history route (filters, `after` vs `cursor`, pages) and the SSE streams (order, `Last-Event-ID`
//! replay without gap or duplicate, a lagging subscriber, `:own` filtering, `?api_key=` on these routes only,
//! heartbeat and the maximum duration, rows written by another replica, shutdown).

use std::collections::HashSet;
use std::time::Duration;

use evershell_cli::sse::{Frame, Parser};
use evershell_core::Timestamp;
use evershell_core::audit::{AuditEvent, EventType};
use evershell_core::ids::{OrgId, RoleId, TaskId, UserId, WorkspaceId};
use evershell_core::lifecycle::{Desired, StatusReason, WorkspaceStatus};
use evershell_core::model::WorkspaceRecord;
use evershell_core::scope::MemberRole;
use reqwest::Method;
use serde_json::Value;

use crate::harness::TestServer;

/// A stopped workspace row (no pod, nothing for the reconciler to do) created by `creator`.
async fn quiet_workspace(ts: &TestServer, role_id: &str, creator: Option<&str>) -> WorkspaceId {
    let now = Timestamp::now();
    let ws = WorkspaceRecord {
        id: WorkspaceId::new(),
        org_id: ts.org_id.parse::<OrgId>().unwrap(),
        role_id: role_id.parse::<RoleId>().unwrap(),
        environment: None,
        created_by_user_id: creator.map(|u| u.parse::<UserId>().unwrap()),
        intent: evershell_core::model::Intent { desired: Desired::Stopped, request: None, generation: 0 },
        observed: evershell_core::model::Observation {
            status: WorkspaceStatus::Stopped,
            status_reason: Some(StatusReason::Created),
            last_error: None,
            pod_id: None,
            pod_pack_ids: None,
            snapshot_id: None,
            last_snapshot_error: None,
            adopted: 0,
            generation: 0,
        },
        created_at: now,
        updated_at: now,
        archived_at: None,
    };
    ts.app.store().create_workspace(&ws, &[]).await.unwrap();
    ws.id
}

fn activity(ts: &TestServer, ws: WorkspaceId, t: EventType) -> AuditEvent {
    AuditEvent::system(ts.org_id.parse().unwrap(), t).workspace(ws)
}

/// An open SSE stream, read frame by frame.
struct Sse {
    res: reqwest::Response,
    parser: Parser,
    queued: std::collections::VecDeque<Frame>,
}

impl Sse {
    async fn open(ts: &TestServer, path: &str, token: &str, last_event_id: Option<&str>) -> Sse {
        let mut req = ts.request(Method::GET, path).bearer_auth(token);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}: {}", res.status());
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        Sse { res, parser: Parser::default(), queued: Default::default() }
    }

    /// The next frame, or `None` when the server ended the stream.
    async fn frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.queued.pop_front() {
                return Some(f);
            }
            let chunk = tokio::time::timeout(Duration::from_secs(60), self.res.chunk())
                .await
                .expect("a frame within 60 s")
                .unwrap()?;
            self.queued.extend(self.parser.push(&chunk).unwrap());
        }
    }

    /// The next event (heartbeats skipped), as `(id, JSON)`.
    async fn event(&mut self) -> (String, Value) {
        loop {
            let f = self.frame().await.expect("the stream is still open");
            if let Some(data) = f.data {
                assert_eq!(f.event.as_deref(), Some("activity"));
                let v: Value = serde_json::from_str(&data).unwrap();
                let id = f.id.unwrap();
                assert_eq!(v["id"].as_str(), Some(id.as_str()), "the frame id is the event id");
                return (id, v);
            }
        }
    }

    async fn ids(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(self.event().await.0);
        }
        out
    }
}

fn ids(events: &[AuditEvent]) -> Vec<String> {
    events.iter().map(|e| e.id.to_string()).collect()
}

#[tokio::test]
async fn history_filters_by_task_and_type_pages_and_refuses_after_with_cursor() {
    let ts = TestServer::start().await;
    let (_, rid, _) = ts.role("coder").await;
    let a = quiet_workspace(&ts, &rid, None).await;
    let b = quiet_workspace(&ts, &rid, None).await;
    let (t1, t2) = (TaskId::new(), TaskId::new());
    let base = Timestamp::now().millis() - 60_000;
    let mut rows = Vec::new();
    for i in 0..8 {
        let t = if i % 2 == 0 { EventType::SnapshotSaved } else { EventType::WorkspaceReady };
        let mut e = activity(&ts, a, t).task(if i < 5 { t1 } else { t2 });
        e.timestamp = Timestamp::from_millis(base + i * 10);
        rows.push(e);
    }
    // Not activity of `a`: an `audit` row of `a`, and activity of `b`.
    let other =
        vec![activity(&ts, a, EventType::WorkspaceStopRequested), activity(&ts, b, EventType::WorkspaceReady).task(t1)];
    ts.app.record_activity(&rows).await.unwrap();
    ts.app.record_activity(&other[..1]).await.unwrap_err();
    ts.app.store().append_audit(&other).await.unwrap();

    let list = |q: String| {
        let ts = &ts;
        async move { ts.get(&format!("/v1/workspaces/{a}/activity{q}")).await }
    };
    let got = |r: &crate::harness::Resp| -> Vec<String> {
        r.ok()["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_string()).collect()
    };
    let mut newest_first = ids(&rows);
    newest_first.reverse();
    let all = list(String::new()).await;
    assert_eq!(got(&all), newest_first, "only this workspace's activity, newest first");
    assert!(all.json.get("cursor").is_none());
    assert_eq!(got(&list(format!("?task_id={t1}&order=asc")).await), ids(&rows[..5]));
    assert_eq!(got(&list(format!("?task_id={t2}&order=asc")).await), ids(&rows[5..]));
    let saved: Vec<String> = ids(&rows).into_iter().step_by(2).collect();
    assert_eq!(got(&list("?event_type=snapshot_saved&order=asc".into()).await), saved);
    // `after` is strict.
    // RFC 3339 in UTC (`…Z`): nothing in it needs escaping in a query string.
    let after = serde_json::to_value(rows[2].timestamp).unwrap().as_str().unwrap().to_string();
    assert!(after.ends_with('Z'), "{after}");
    assert_eq!(got(&list(format!("?after={after}&order=asc")).await), ids(&rows[3..]));
    // Pages of 3 cover every event once.
    let (mut seen, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let q = match &cursor {
            Some(c) => format!("?order=asc&limit=3&cursor={c}"),
            None => "?order=asc&limit=3".into(),
        };
        let page = list(q).await;
        seen.extend(got(&page));
        match page.json["cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, ids(&rows));
    // `after` with `cursor`, a bad cursor, a bad task id, an unknown type.
    let first = list("?limit=3".into()).await;
    let cur = first.ok()["cursor"].as_str().unwrap().to_string();
    list(format!("?limit=3&cursor={cur}&after={after}")).await.expect(400, "validation_error");
    list("?cursor=garbage".into()).await.expect(400, "invalid_cursor");
    list("?task_id=ws_nope".into()).await.expect(400, "validation_error");
    list("?event_type=nope".into()).await.expect(400, "validation_error");
}

#[tokio::test]
async fn stream_delivers_in_order_and_a_reconnect_gets_exactly_the_missed_events() {
    let ts = TestServer::start().await;
    let (_, rid, _) = ts.role("coder").await;
    let ws = quiet_workspace(&ts, &rid, None).await;
    let mut s = Sse::open(&ts, "/v1/activity/stream", &ts.key, None).await;
    let first: Vec<AuditEvent> = (0..5).map(|_| activity(&ts, ws, EventType::SnapshotSaved)).collect();
    for e in &first {
        ts.app.record_activity(std::slice::from_ref(e)).await.unwrap();
    }
    assert_eq!(s.ids(5).await, ids(&first), "in order");
    drop(s);
    // Written while nobody listens.
    let missed: Vec<AuditEvent> = (0..3).map(|_| activity(&ts, ws, EventType::WorkspaceReady)).collect();
    for e in &missed {
        ts.app.record_activity(std::slice::from_ref(e)).await.unwrap();
    }
    let last = first.last().unwrap().id.to_string();
    let mut s = Sse::open(&ts, "/v1/activity/stream", &ts.key, Some(&last)).await;
    assert_eq!(s.ids(3).await, ids(&missed), "exactly the missed ones, from the store");
    // Then live, without a gap or a repeat: the next event is the next one written.
    let live = activity(&ts, ws, EventType::SnapshotDeleted);
    ts.app.record_activity(std::slice::from_ref(&live)).await.unwrap();
    assert_eq!(s.event().await.0, live.id.to_string());
    // The workspace stream shows the same, and a reconnect there too.
    let mut w = Sse::open(&ts, &format!("/v1/workspaces/{ws}/activity/stream"), &ts.key, Some(&last)).await;
    let mut want = ids(&missed);
    want.push(live.id.to_string());
    assert_eq!(w.ids(4).await, want);
    // A Last-Event-ID that is not an event id.
    let r =
        ts.raw(ts.request(Method::GET, "/v1/activity/stream").bearer_auth(&ts.key).header("last-event-id", "x")).await;
    r.expect(400, "invalid_cursor");
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_the_feed_still_gets_every_event_once() {
    let ts = TestServer::start().await;
    let (_, rid, _) = ts.role("coder").await;
    let ws = quiet_workspace(&ts, &rid, None).await;
    let mut s = Sse::open(&ts, "/v1/activity/stream", &ts.key, None).await;
    // More than the feed holds, written while the subscriber reads nothing: it must lag and catch up from the store.
    let n = evershell_store::FEED_CAPACITY + 1000;
    let events: Vec<AuditEvent> = (0..n).map(|_| activity(&ts, ws, EventType::SnapshotSaved)).collect();
    for chunk in events.chunks(500) {
        ts.app.record_activity(chunk).await.unwrap();
    }
    let mut got = s.ids(n).await;
    let marker = activity(&ts, ws, EventType::WorkspaceReady);
    ts.app.record_activity(std::slice::from_ref(&marker)).await.unwrap();
    assert_eq!(s.event().await.0, marker.id.to_string(), "nothing repeated before the next event");
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), n);
    let mut want = ids(&events);
    want.sort();
    got.sort();
    assert_eq!(got, want);
}

#[tokio::test]
async fn own_callers_see_only_their_workspaces_and_api_key_query_works_on_streams_only() {
    let ts = TestServer::start().await;
    let (_, rid, _) = ts.role("coder").await;
    let (uid, token) = ts.user("member@acme.example", MemberRole::Member).await;
    let mine = quiet_workspace(&ts, &rid, Some(&uid)).await;
    let theirs = quiet_workspace(&ts, &rid, None).await;
    let mut s = Sse::open(&ts, "/v1/activity/stream", &token, None).await;
    let seq = [
        activity(&ts, theirs, EventType::WorkspaceReady),
        activity(&ts, mine, EventType::WorkspaceReady),
        activity(&ts, theirs, EventType::SnapshotSaved),
        activity(&ts, mine, EventType::SnapshotSaved),
        activity(&ts, mine, EventType::WorkspaceStopped),
    ];
    for e in &seq {
        ts.app.record_activity(std::slice::from_ref(e)).await.unwrap();
    }
    assert_eq!(s.ids(3).await, ids(&[seq[1].clone(), seq[3].clone(), seq[4].clone()]));
    // Another member's workspace: its stream and history are not visible.
    let r =
        ts.raw(ts.request(Method::GET, &format!("/v1/workspaces/{theirs}/activity/stream")).bearer_auth(&token)).await;
    r.expect(403, "workspace_not_visible");
    ts.call(Method::GET, &format!("/v1/workspaces/{theirs}/activity"), Some(&token), None)
        .await
        .expect(403, "workspace_not_visible");

    // `?api_key=`: accepted on the two streams, refused everywhere else, never a session token.
    let http = reqwest::Client::new();
    let q = |path: &str, cred: &str| http.get(format!("{}{path}?api_key={cred}", ts.url)).send();
    for path in ["/v1/activity/stream".to_string(), format!("/v1/workspaces/{mine}/activity/stream")] {
        let r = q(&path, &ts.key).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        assert_eq!(q(&path, &token).await.unwrap().status(), 401, "a session JWT in the query: {path}");
    }
    for path in ["/v1/workspaces".to_string(), format!("/v1/workspaces/{mine}/activity"), "/v1/audit".into()] {
        assert_eq!(q(&path, &ts.key).await.unwrap().status(), 401, "{path}");
    }
}

#[tokio::test]
async fn the_stream_heartbeats_and_ends_at_its_maximum_duration() {
    let ts = TestServer::start_with(|c| {
        c.activity.heartbeat_ms = 50;
        c.activity.max_duration_ms = 600;
    })
    .await;
    let started = std::time::Instant::now();
    let mut s = Sse::open(&ts, "/v1/activity/stream", &ts.key, None).await;
    let mut heartbeats = 0;
    while let Some(f) = s.frame().await {
        assert_eq!(f.comment.as_deref(), Some("heartbeat"), "nothing else was written: {f:?}");
        heartbeats += 1;
    }
    assert!(started.elapsed() >= Duration::from_millis(600), "ended early: {:?}", started.elapsed());
    assert!(heartbeats >= 2, "{heartbeats} heartbeats");
}

#[tokio::test]
async fn rows_written_by_another_replica_arrive_through_the_store_poll() {
    let a = TestServer::start_with(|c| c.activity.poll_interval_ms = 100).await;
    let (_, rid, _) = a.role("coder").await;
    let ws = quiet_workspace(&a, &rid, None).await;
    // A second server process on the same database: its writes never reach `a`'s in-process feed.
    let key_file = a.dir.path().join("master.key");
    let b = TestServer::start_at_with(crate::harness::private_tempdir(), a.db_url.clone(), false, |c| {
        c.master_key_file = Some(key_file)
    })
    .await;
    let mut s = Sse::open(&a, &format!("/v1/workspaces/{ws}/activity/stream"), &a.key, None).await;
    let e = activity(&a, ws, EventType::WorkspaceReady);
    b.app.record_activity(std::slice::from_ref(&e)).await.unwrap();
    let local = activity(&a, ws, EventType::SnapshotSaved);
    a.app.record_activity(std::slice::from_ref(&local)).await.unwrap();
    let got = s.ids(2).await;
    assert_eq!(got.iter().collect::<HashSet<_>>(), [e.id.to_string(), local.id.to_string()].iter().collect());
    let next = activity(&a, ws, EventType::SnapshotDeleted);
    a.app.record_activity(std::slice::from_ref(&next)).await.unwrap();
    assert_eq!(s.event().await.0, next.id.to_string(), "the poll did not repeat anything");
    b.stop().await;
}

#[tokio::test]
async fn a_real_workspace_becoming_ready_is_streamed_and_listed_and_shutdown_ends_streams() {
    let ts = TestServer::start().await;
    ts.role("coder").await;
    let mut s = Sse::open(&ts, "/v1/activity/stream", &ts.key, None).await;
    let ws = ts.idle_workspace("coder", &ts.key).await;
    let (_, e) = loop {
        let (id, e) = s.event().await;
        if e["event_type"] == "workspace_ready" {
            break (id, e);
        }
    };
    assert_eq!(e["workspace_id"], ws.as_str());
    assert_eq!(e["category"], "activity");
    let h = ts.get(&format!("/v1/workspaces/{ws}/activity?event_type=workspace_ready")).await;
    assert_eq!(h.ok()["events"][0]["id"], e["id"]);
    // Shutting down ends the open stream instead of waiting for it.
    let stop = tokio::spawn(async move { ts.stop().await });
    while s.frame().await.is_some() {}
    tokio::time::timeout(Duration::from_secs(60), stop).await.expect("shutdown is not held by the stream").unwrap();
}
