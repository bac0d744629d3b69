//! The committed OpenAPI document (`docs/openapi.json`) must equal what the server serves. Regenerate it with
//! `UPDATE_OPENAPI=1 cargo nextest run -p evershell openapi_drift`.

use reqwest::Method;

use crate::harness::TestServer;

#[tokio::test]
async fn committed_openapi_matches_the_served_document() {
    let ts = TestServer::start().await;
    let served = ts.call(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(served.status, 200);
    let served = serde_json::to_string_pretty(&served.json).unwrap() + "\n";
    assert_eq!(served.matches("\"openapi\": \"3.1").count(), 1, "OpenAPI 3.1");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &served).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == served,
        "docs/openapi.json is stale: regenerate it with `UPDATE_OPENAPI=1 cargo nextest run -p evershell openapi_drift`"
    );
    // The closed error-code enum is published.
    let doc: serde_json::Value = serde_json::from_str(&served).unwrap();
    let codes = doc["components"]["schemas"]["ErrorCode"]["enum"].as_array().unwrap();
    for c in evershell_core::ErrorCode::ALL {
        assert!(codes.contains(&serde_json::json!(c.as_str())), "{c:?} missing from the document");
    }
    ts.stop().await;
}
