//! The egress path end to end through a real networked pod with the real gate: `evershell serve` (root, `runtime.
//! network = true`) runs the policy gate and the DNS responder in-process; a workspace whose role's caps allow
//! `api.example.test` runs commands through `POST /v1/workspaces/{id}/sandbox/exec`. The name is mapped by
//! `[proxy] upstream_hosts` to a local HTTPS upstream (its own test CA, given as `proxy.upstream_ca_file`) that
//! echoes the headers it received. curl, Python's urllib and `git clone` reach it with the org's credential injected
//! although the pod never holds it; a denied host gets the 403 `egress_denied` JSON, a `%2e%2e` path trick is
//! denied, DNS answers the allowed name and gives NXDOMAIN (audited) for a denied one, and the rows are in
//! `GET /v1/audit` and the workspace's audit. Skipped without root, `ip`, `nft`, curl, git and python3.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::egress_rig::{EgressRig, KEY_A, KEY_B, run};

const CAPS: &str = r#"
- name: api
  allow:
    - name: read
      domains: ["api.example.test"]
      methods: [GET]
      paths: ["/v1/**", "/repo.git/**"]
  transforms:
    - auth: { credential: up-key }
"#;

#[tokio::test]
async fn a_networked_pod_goes_through_the_real_gate_with_its_credential_injected_and_dns_policed() {
    let Some(rig) = EgressRig::start(CAPS, &["api.example.test", "denied.example.test"]).await else { return };
    let (ts, ws, key) = (&rig.ts, rig.ws.clone(), rig.key.clone());
    // A bare repository served as dumb HTTP.
    let src = rig.tmp.join("src");
    let git = |args: &[&str]| {
        run(Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"])
            .args(args))
    };
    git(&["init", "-q", src.to_str().unwrap()]);
    std::fs::write(src.join("README"), "cloned through the policy gate\n").unwrap();
    git(&["-C", src.to_str().unwrap(), "add", "README"]);
    git(&["-C", src.to_str().unwrap(), "commit", "-q", "-m", "first"]);
    let bare = rig.www.join("repo.git");
    git(&["clone", "-q", "--bare", src.to_str().unwrap(), bare.to_str().unwrap()]);
    git(&["-C", bare.to_str().unwrap(), "update-server-info"]);

    // The allowed host: the upstream sees the org's credential in place of the agent's own header.
    let r = rig.sh("curl -sS -H 'x-api-key: agent-guess' https://api.example.test/v1/x").await;
    assert_eq!(r["exit_code"], 0, "{r}");
    let echoed: Value = serde_json::from_str(r["stdout"].as_str().unwrap()).unwrap_or_else(|_| panic!("{r}"));
    assert_eq!(echoed["path"], "/v1/x");
    assert_eq!(echoed["headers"]["x-api-key"], key.as_str(), "{echoed}");
    let r = rig.sh(
        "python3 -c \"import urllib.request, json; print(json.load(urllib.request.urlopen('https://api.example.test/v1/py'))['path'])\"",
    )
    .await;
    assert_eq!((r["exit_code"].as_i64(), r["stdout"].as_str()), (Some(0), Some("/v1/py\n")), "{r}");
    let r = rig.sh("git clone -q https://api.example.test/repo.git /tmp/r && cat /tmp/r/README").await;
    assert_eq!(
        (r["exit_code"].as_i64(), r["stdout"].as_str()),
        (Some(0), Some("cloned through the policy gate\n")),
        "{r}"
    );

    // The pod never held the key: not in any process's environment, nor in its files.
    let probe = format!(
        "k={KEY_A}; k=\"${{k}}{KEY_B}\"; grep -ls \"$k\" /proc/[0-9]*/environ; \
         grep -rls \"$k\" /workspace /tmp /home /etc /run /root 2>/dev/null; echo probed"
    );
    let r = rig.sh(&probe).await;
    assert_eq!(r["stdout"], "probed\n", "the credential is readable inside the pod: {r}");

    // A denied host (its name given by hand: DNS would not answer it): the proxy's 403 JSON.
    let r = rig
        .sh("curl -s -w '\\n%{http_code}' --resolve denied.example.test:443:192.0.2.1 https://denied.example.test/v1/x")
        .await;
    let out = r["stdout"].as_str().unwrap();
    let (body, code) = out.rsplit_once('\n').unwrap();
    assert_eq!(code, "403", "{r}");
    let body: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{r}"));
    assert_eq!(body["error"]["code"], "egress_denied", "{body}");
    assert!(!out.contains(KEY_B));
    // A path trick on the allowed host: normalised to /admin, which no rule allows.
    let r = rig.sh("curl -s --path-as-is -w '\\n%{http_code}' 'https://api.example.test/v1/%2e%2e/admin'").await;
    let out = r["stdout"].as_str().unwrap();
    assert!(out.ends_with("\n403") && out.contains("egress_denied"), "{r}");
    assert!(!out.contains(KEY_B));

    // DNS: the allowed name answers, a denied one is NXDOMAIN.
    let r = rig.sh("getent ahostsv4 api.example.test").await;
    assert_eq!(r["exit_code"], 0, "{r}");
    assert!(r["stdout"].as_str().unwrap().contains("192.0.2.1"), "{r}");
    let exfil = "c2VjcmV0.denied.example.test";
    let r = rig.sh(&format!("getent ahostsv4 {exfil}")).await;
    assert_ne!(r["exit_code"], 0, "{r}");

    // Outside the pods, the same responder resolves nothing, not even the allowed name.
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dns_at = std::net::SocketAddr::from(([127, 0, 0, 1], ts.dns_addr().port()));
    sock.send_to(&evershell_proxy::dns::query(7, "api.example.test", 1), dns_at).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(10), sock.recv(&mut buf)).await.expect("no DNS answer").unwrap();
    assert_eq!(evershell_proxy::dns::parse_response(&buf[..n]), Some((7, 3, vec![])));

    // The rows, in the org's audit and the workspace's.
    let dns = rig.rows("/v1/audit?filter=event_type=egress_dns_denied&limit=100", 1).await;
    let d = dns.iter().find(|r| r["destination"] == exfil.to_ascii_lowercase()).unwrap_or_else(|| panic!("{dns:?}"));
    assert_eq!(
        (&d["actor"], &d["category"], &d["decision"]),
        (&json!("policy-engine"), &json!("activity"), &json!("deny"))
    );
    assert_eq!((&d["reason"], &d["workspace_id"]), (&json!("host_not_allowed"), &json!(ws.as_str())));
    let ws_dns = rig.rows(&format!("/v1/workspaces/{ws}/audit?filter=event_type=egress_dns_denied"), 1).await;
    assert!(ws_dns.iter().any(|r| r["destination"] == exfil.to_ascii_lowercase()));
    let reqs = rig.rows("/v1/audit?filter=event_type=egress_request&limit=100", 5).await;
    let allowed: Vec<&str> = reqs
        .iter()
        .filter(|r| r["decision"] == "allow" && r["details"]["transforms"] == json!(["auth:up-key"]))
        .filter_map(|r| r["path"].as_str())
        .collect();
    for p in ["/v1/x", "/v1/py", "/repo.git/info/refs"] {
        assert!(allowed.iter().any(|a| a.starts_with(p)), "no allow row for {p}: {allowed:?}");
    }
    let denied = |host: &str, path: &str| {
        reqs.iter().any(|r| {
            r["decision"] == "deny"
                && r["destination"] == format!("{host}:443")
                && r["path"] == path
                && r["workspace_id"] == ws.as_str()
        })
    };
    assert!(denied("denied.example.test", "/v1/x"), "{reqs:?}");
    assert!(denied("api.example.test", "/admin"), "{reqs:?}");
    let ws_reqs = rig.rows(&format!("/v1/workspaces/{ws}/audit?filter=event_type=egress_request&limit=100"), 5).await;
    assert_eq!(ws_reqs.len(), reqs.len());
    let all = ts.get("/v1/audit?limit=1000").await;
    assert!(!String::from_utf8_lossy(&all.bytes).contains(&key), "the credential reached the audit log");
    rig.stop().await;
}
