//! The error contract: the envelope on every failure (unknown route, wrong method, malformed JSON, unknown fields,
//! wrong types, too large), `X-Request-Id` on every response, and health.

use reqwest::Method;
use serde_json::json;

use crate::harness::TestServer;

#[tokio::test]
async fn every_failure_answers_with_the_envelope_and_a_request_id() {
    let ts = TestServer::start().await;
    // Unknown route, authenticated or not.
    ts.get("/v1/nope").await.expect(404, "not_found");
    ts.call(Method::GET, "/nowhere", None, None).await.expect(404, "not_found");
    // Wrong method on a known route.
    ts.call(Method::DELETE, "/v1/providers", Some(&ts.key), None).await.expect(405, "method_not_allowed");
    // Malformed JSON, wrong Content-Type, empty body.
    let r = ts
        .raw(
            ts.request(Method::POST, "/v1/providers")
                .bearer_auth(&ts.key)
                .header("content-type", "application/json")
                .body("{\"name\":"),
        )
        .await;
    r.expect(400, "validation_error");
    assert_eq!(r.fields(), vec!["body"]);
    let r = ts
        .raw(
            ts.request(Method::POST, "/v1/providers")
                .bearer_auth(&ts.key)
                .header("content-type", "text/plain")
                .body("x"),
        )
        .await;
    r.expect(415, "unsupported_media_type");
    // Unknown field, wrong type, missing field: named precisely.
    let r =
        ts.post("/v1/providers", json!({"name": "p", "kind": "anthropic", "domain": "a.com", "colour": "red"})).await;
    r.expect(400, "validation_error");
    assert_eq!(r.fields(), vec!["colour"]);
    let r = ts.post("/v1/providers", json!({"name": 5, "kind": "anthropic", "domain": "a.com"})).await;
    r.expect(400, "validation_error");
    assert_eq!(r.fields(), vec!["name"]);
    let r = ts.post("/v1/providers", json!({"name": "p", "kind": "anthropic"})).await;
    r.expect(400, "validation_error");
    assert_eq!(r.fields(), vec!["domain"]);
    let r = ts.post("/v1/providers", json!({"name": "p", "kind": "cohere", "domain": "a.com"})).await;
    r.expect(400, "validation_error");
    assert_eq!(r.fields(), vec!["kind"]);
    // Too large.
    let big = "x".repeat(2 << 20);
    let r = ts
        .post("/v1/providers", json!({"name": "p", "kind": "anthropic", "domain": "a.com", "display_name": big}))
        .await;
    r.expect(413, "payload_too_large");
    // Nothing was created by any of that.
    assert_eq!(ts.get("/v1/providers").await.ok()["providers"], json!([]));
    ts.stop().await;
}

#[tokio::test]
async fn request_ids_are_echoed_when_sane_and_generated_otherwise() {
    let ts = TestServer::start().await;
    let r = ts.raw(ts.request(Method::GET, "/healthz").header("x-request-id", "trace-abc.123")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-request-id"], "trace-abc.123");
    let r = ts.raw(ts.request(Method::GET, "/v1/providers").header("x-request-id", "bad id with spaces")).await;
    r.expect(401, "unauthenticated");
    let id = r.headers["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(id, "bad id with spaces");
    assert_eq!(r.json["error"]["request_id"], id.as_str());
    ts.stop().await;
}

#[tokio::test]
async fn health_and_metrics() {
    let ts = TestServer::start().await;
    let r = ts.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["status"], "ok");
    let _ = ts.get("/v1/providers").await;
    let r = ts.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.bytes).unwrap();
    assert!(text.contains("evershell_http_requests_total"), "{text}");
    ts.stop().await;
}

#[tokio::test]
async fn health_is_503_when_the_store_is_gone() {
    let ts = TestServer::start_on(crate::harness::Db::Postgres).await;
    assert_eq!(ts.call(Method::GET, "/healthz", None, None).await.status, 200);
    evershell_store::testing::drop_postgres_database(&ts.db_url).await;
    let r = ts.call(Method::GET, "/healthz", None, None).await;
    r.expect(503, "unavailable");
    ts.stop().await;
}
