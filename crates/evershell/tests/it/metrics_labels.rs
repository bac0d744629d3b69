//! `/metrics` stays bounded: 1,000 requests with invented methods and invented paths add no series, and no raw
//! path or method reaches a label.

use reqwest::Method;

use crate::harness::TestServer;

async fn scrape(ts: &TestServer) -> String {
    let r = ts.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(r.status, 200);
    String::from_utf8(r.bytes).unwrap()
}

async fn invent(ts: &TestServer, batch: &str) {
    for i in 0..500 {
        let m = Method::from_bytes(format!("M{batch}X{i}").as_bytes()).unwrap();
        // A real route with an invented method (405), and an invented path under a real route's template.
        ts.call(m, "/v1/agent-roles", Some(&ts.key), None).await;
        ts.call(Method::GET, &format!("/v1/agent-roles/role_{batch}{i}"), Some(&ts.key), None).await;
    }
    for i in 0..100 {
        ts.call(Method::GET, &format!("/v1/nothing-{batch}-{i}"), Some(&ts.key), None).await;
    }
}

#[tokio::test]
async fn invented_methods_and_paths_do_not_grow_metrics() {
    let ts = TestServer::start().await;
    scrape(&ts).await; // so the scrape's own series exist before the first count
    invent(&ts, "a").await;
    let first = scrape(&ts).await;
    invent(&ts, "b").await;
    let second = scrape(&ts).await;
    for text in [&first, &second] {
        assert!(!text.contains("MaX") && !text.contains("MbX"), "an invented method is a label");
        assert!(!text.contains("role_a") && !text.contains("role_b"), "a raw path is a label");
        assert!(!text.contains("nothing-"), "an unmatched path is a label");
    }
    assert!(second.contains(r#"method="other""#), "invented methods are counted as `other`");
    assert!(second.contains(r#"route="/v1/agent-roles/{id}""#), "routes are labelled by template");
    let series = |t: &str| t.lines().filter(|l| !l.starts_with('#')).count();
    assert_eq!(series(&first), series(&second), "the second 1,000 invented requests added series");
    ts.stop().await;
}
