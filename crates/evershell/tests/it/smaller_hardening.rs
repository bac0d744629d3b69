//! The smaller hardening items through the real server: file listings are capped (`truncated`), `filter=` is bounded
//! (400, not 500), cookie-authenticated writes need JSON or `X-Requested-With`, and the session cookie is `Secure`
//! whenever the server is reached over TLS.

use reqwest::Method;
use serde_json::json;

use crate::harness::{PASSWORD, TestServer};

#[tokio::test]
async fn file_listings_are_capped_and_say_so() {
    let ts = TestServer::start_with(|c| c.limits.max_list_entries = 5).await;
    ts.role("coder").await;
    let ws = ts.idle_workspace("coder", &ts.key).await;
    for i in 0..8 {
        ts.put_file(&ws, &format!("f{i}.txt"), b"x".to_vec()).await.ok();
    }
    let live = ts.get(&format!("/v1/workspaces/{ws}/sandbox/files")).await;
    assert_eq!((live.ok()["entries"].as_array().unwrap().len(), &live.json["truncated"]), (5, &json!(true)));
    let r = ts.post_empty(&format!("/v1/workspaces/{ws}/stop?wait=true&timeout_ms=60000")).await;
    assert_eq!(r.ok()["status"], "stopped");
    let snap = ts.get(&format!("/v1/workspaces/{ws}/snapshot/files")).await;
    assert_eq!(snap.ok()["entries"].as_array().unwrap().len(), 5, "{}", snap.json);
    assert_eq!(snap.json["truncated"], true);
    // The files beyond the cap are still there to read.
    assert_eq!(ts.get(&format!("/v1/workspaces/{ws}/snapshot/files/f7.txt")).await.ok()["content"], "x");
    ts.stop().await;
}

#[tokio::test]
async fn too_many_audit_filters_are_a_400() {
    let ts = TestServer::start().await;
    let many: String = (0..2000).map(|_| "filter=actor!=&").collect();
    let r = ts.get(&format!("/v1/audit?{many}")).await;
    r.expect(400, "validation_error");
    assert_eq!(r.fields(), vec!["filter"]);
    let values: String = (0..1001).map(|i| format!("r{i},")).collect();
    ts.get(&format!("/v1/audit?filter=reason={values}")).await.expect(400, "validation_error");
    let fifty: String = (0..50).map(|_| "filter=actor!=&").collect();
    assert_eq!(ts.get(&format!("/v1/audit?{fifty}")).await.status, 200, "the bound itself is accepted");
    ts.stop().await;
}

async fn login_cookie(ts: &TestServer, headers: &[(&str, &str)]) -> String {
    let mut r = ts
        .request(Method::POST, "/v1/auth/login")
        .json(&json!({"email": ts.owner_email, "password": PASSWORD, "org": ts.org_slug}));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = ts.raw(r).await;
    assert_eq!(r.status, 200, "{}", r.json);
    r.headers["set-cookie"].to_str().unwrap().to_string()
}

#[tokio::test]
async fn cookie_writes_need_json_or_a_custom_header() {
    let ts = TestServer::start().await;
    let set = login_cookie(&ts, &[]).await;
    let cookie = set.split(';').next().unwrap().to_string();
    // A body-less POST with only the cookie: refused (it is what a cross-site form could send), and nothing made.
    let r = ts.raw(ts.request(Method::POST, "/v1/api-keys").header("cookie", &cookie)).await;
    r.expect(403, "permission_denied");
    let form = ts
        .raw(
            ts.request(Method::POST, "/v1/api-keys")
                .header("cookie", &cookie)
                .header("content-type", "text/plain")
                .body(r#"{"label":"x","permission_set":"read_only"}"#),
        )
        .await;
    form.expect(403, "permission_denied");
    let body = json!({"label": "console", "permission_set": "read_only"});
    let ok = ts.raw(ts.request(Method::POST, "/v1/api-keys").header("cookie", &cookie).json(&body)).await;
    assert_eq!(ok.status, 201, "{}", ok.json);
    let ok = ts
        .raw(
            ts.request(Method::DELETE, &format!("/v1/api-keys/{}", ok.json["id"].as_str().unwrap()))
                .header("cookie", &cookie)
                .header("x-requested-with", "console"),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.json);
    // Reads need nothing more; bearer tokens are not affected.
    assert_eq!(ts.raw(ts.request(Method::GET, "/v1/me/session").header("cookie", &cookie)).await.status, 200);
    assert_eq!(ts.raw(ts.request(Method::POST, "/v1/workspaces/stop-all").bearer_auth(&ts.key)).await.status, 200);
    ts.stop().await;
}

#[tokio::test]
async fn the_cookie_is_secure_over_tls() {
    let ts = TestServer::start().await;
    assert!(!login_cookie(&ts, &[]).await.contains("Secure"), "plain http: no Secure");
    assert!(login_cookie(&ts, &[("x-forwarded-proto", "https")]).await.contains("; Secure"));
    assert!(login_cookie(&ts, &[("forwarded", "for=1.2.3.4;proto=https")]).await.contains("; Secure"));
    ts.stop().await;
    let ts = TestServer::start_with(|c| c.http.secure_cookies = true).await;
    assert!(login_cookie(&ts, &[]).await.contains("; Secure"), "configured: always Secure");
    ts.stop().await;
}
