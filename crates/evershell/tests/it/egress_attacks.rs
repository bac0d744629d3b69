//! Attacks from inside a real networked pod through the real `PolicyGate` of a real server (the `egress_rig`
//! set-up): IPv6, raw IPs, a non-HTTP protocol on 443, request smuggling, DNS to outside resolvers (with a
//! random-label lookup of a denied name), CONNECT and redirects to internal addresses, names that resolve to
//! loopback, reading secrets from inside the pod, and egress from an address no running pod owns (an expired token,
//! a cleared address). Each denial must be immediate (a refused connect, a 403/400 or NXDOMAIN well within a bound:
//! never a hang, never a fake success), audited where an org exists (org-less denials are counted in
//! `/metrics`), and nothing may leak (no credential in any answer, no packet of the pod forwarded off the host).
//! Skipped without root, `ip`, `nft`, curl, git and python3.

use std::time::Duration;

use evershell_core::Timestamp;
use evershell_core::ids::WorkspaceId;
use serde_json::{Value, json};

use crate::egress_rig::{EgressRig, KEY_B};

const CAPS: &str = r#"
- name: api
  allow:
    - name: read
      domains: ["api.example.test", "localhost"]
      methods: [GET]
      paths: ["/v1/**"]
  transforms:
    - auth: { credential: up-key }
- name: loopback
  allow:
    - name: by-address
      domains: ["127.0.0.1"]
      methods: [GET]
      paths: ["/**"]
      allow_insecure: true
"#;

const NAMES: &[&str] = &["api.example.test", "denied.example.test"];

/// A refusal must come well within this (the commands themselves allow 20 s, so a hang shows).
const IMMEDIATE_MS: u64 = 5_000;

/// A command's answer.
struct Ran {
    stdout: String,
    stderr: String,
    ms: u64,
}

async fn ran(rig: &EgressRig, script: &str) -> Ran {
    let r = rig.sh(script).await;
    let ran = Ran {
        stdout: r["stdout"].as_str().unwrap_or_default().to_string(),
        stderr: r["stderr"].as_str().unwrap_or_default().to_string(),
        ms: r["duration_ms"].as_u64().unwrap_or(u64::MAX),
    };
    assert!(ran.ms < IMMEDIATE_MS, "not immediate ({} ms): {script}: {r}", ran.ms);
    assert!(!ran.stdout.contains(KEY_B) && !ran.stderr.contains(KEY_B), "the credential leaked: {r}");
    ran
}

/// `curl ARGS` in the pod: (HTTP status, curl's exit code, body).
async fn curl(rig: &EgressRig, args: &str) -> (String, i64, String) {
    let r = ran(
        rig,
        &format!("out=$(curl -s --max-time 20 -o /tmp/body -w '%{{http_code}}' {args}); e=$?; echo \"$out $e\"; cat /tmp/body 2>/dev/null; rm -f /tmp/body"),
    )
    .await;
    let (first, body) = r.stdout.split_once('\n').unwrap_or((r.stdout.as_str(), ""));
    let (code, exit) = first.split_once(' ').unwrap_or((first, "-1"));
    (code.to_string(), exit.trim().parse().unwrap_or(-1), body.to_string())
}

fn denied_body(body: &str, reason: &str) {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not the proxy's JSON: {body}"));
    assert_eq!(v["error"]["code"], "egress_denied", "{v}");
    assert_eq!(v["error"]["details"]["reason"], reason, "{v}");
}

/// The address of the pod (`10.212.a.b`) and of its host end (`…b-1`).
async fn pod_and_host_address(rig: &EgressRig) -> (String, String) {
    let ws: WorkspaceId = rig.ws.parse().unwrap();
    let (_, net) = rig.ts.app.store().pod_network(ws).await.unwrap().expect("the pod's network is recorded");
    let pod: std::net::Ipv4Addr = net.address.parse().unwrap();
    let host = std::net::Ipv4Addr::from(u32::from(pod) - 1);
    (pod.to_string(), host.to_string())
}

/// The packet counters of the server's nftables rules, by comment (`pod-dns`, `pod-forward`).
fn nft_counter(rig: &EgressRig, comment: &str) -> u64 {
    let table = evershell_runtime::local::network_table(evershell_runtime::local::NetworkPorts {
        proxy: rig.ts.proxy_addr().port(),
        dns: rig.ts.dns_addr().port(),
    });
    let out = std::process::Command::new("nft").args(["-j", "list", "table", "inet", &table]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rule = v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i.get("rule"))
        .find(|r| r["comment"] == comment)
        .unwrap_or_else(|| panic!("no rule `{comment}` in {table}: {v}"));
    rule["expr"].as_array().unwrap().iter().find_map(|e| e["counter"]["packets"].as_u64()).expect("a counter")
}

/// The value of a counter series in `/metrics` (0 when absent).
async fn metric(rig: &EgressRig, series: &str) -> u64 {
    let r = rig.ts.get("/metrics").await;
    let text = String::from_utf8_lossy(&r.bytes).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse::<f64>().ok()))
        .map_or(0, |v| v as u64)
}

#[tokio::test]
async fn ipv6_raw_ips_non_http_and_smuggling_are_refused_at_once_and_audited() {
    let Some(rig) = EgressRig::start(CAPS, NAMES).await else { return };
    let forwarded = nft_counter(&rig, "pod-forward");

    // IPv6: the namespace has no IPv6 at all, so `curl -6` of an allowed name and of a literal fail at once.
    let (code, exit, _) = curl(&rig, "-6 https://api.example.test/v1/x").await;
    assert_eq!(code, "000", "curl -6 got an answer");
    assert_ne!(exit, 0);
    let (code, exit, _) = curl(&rig, "-6 'https://[2606:4700:4700::1111]/'").await;
    assert_eq!((code.as_str(), exit == 0), ("000", false));
    let r = ran(
        &rig,
        "python3 -c \"import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
try:
    s.connect(('2606:4700:4700::1111', 443)); print('connected')
except OSError as e:
    print('refused', e.errno)\"; cat /proc/net/if_inet6 2>/dev/null | wc -l",
    )
    .await;
    let mut lines = r.stdout.lines();
    assert!(lines.next().is_some_and(|l| l.starts_with("refused")), "{}", r.stdout);
    assert_eq!(lines.next(), Some("0"), "the pod has an IPv6 address: {}", r.stdout);

    // A raw IP over TLS: no server name, the handshake is refused, and the connection is audited.
    let (code, exit, _) = curl(&rig, "-k https://192.0.2.10/").await;
    assert_eq!((code.as_str(), exit == 0), ("000", false));
    rig.deny_row("192.0.2.10:443", "no_sni").await;
    // A raw IP over plain HTTP: the pod's own host end, at the API's port. Redirected to the proxy like all TCP:
    // the API is not reachable from the pod, and the request is denied as a raw IP.
    let (_, host) = pod_and_host_address(&rig).await;
    let api_port = rig.ts.url.rsplit(':').next().unwrap().to_string();
    let (code, _, body) = curl(&rig, &format!("http://{host}:{api_port}/v1/health")).await;
    assert_eq!(code, "403", "{body}");
    denied_body(&body, "raw_ip");
    rig.deny_row(&format!("{host}:{api_port}"), "raw_ip").await;

    // Not HTTP on 443 (an SSH banner): closed at once, audited.
    let r = ran(
        &rig,
        "python3 -c \"import socket
s = socket.create_connection(('api.example.test', 443), timeout=20)
s.sendall(b'SSH-2.0-OpenSSH_9.6\\r\\n')
try:
    print('read', len(s.recv(4096)))
except OSError as e:
    print('reset', e.errno)\"",
    )
    .await;
    assert!(
        r.stdout == "read 0\n" || r.stdout.starts_with("reset"),
        "the proxy answered a non-HTTP client: {}",
        r.stdout
    );
    rig.deny_row("192.0.2.1:443", "not_http").await;

    // Smuggling: Content-Length with Transfer-Encoding, over TLS to the allowed host and over plain HTTP.
    let r = ran(
        &rig,
        "python3 -c \"import socket, ssl
head = b'POST /v1/x HTTP/1.1\\r\\nHost: api.example.test\\r\\nContent-Length: 4\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n0\\r\\n\\r\\nGET /v1/smuggled HTTP/1.1\\r\\nHost: api.example.test\\r\\n\\r\\n'
for tls in (True, False):
    raw = socket.create_connection(('api.example.test', 443 if tls else 80), timeout=20)
    s = ssl.create_default_context().wrap_socket(raw, server_hostname='api.example.test') if tls else raw
    s.sendall(head)
    got = b''
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    print(repr(got))\"",
    )
    .await;
    let answers: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(answers.len(), 2, "{}: {}", r.stdout, r.stderr);
    for a in answers {
        assert!(a.starts_with("b'HTTP/1.1 400"), "{a}");
        assert!(a.contains("request_smuggling"), "{a}");
        assert_eq!(a.matches("HTTP/1.1").count(), 1, "the smuggled request was answered: {a}");
    }
    rig.deny_row("api.example.test:443", "request_smuggling").await;
    rig.deny_row("192.0.2.1:80", "request_smuggling").await;

    assert_eq!(nft_counter(&rig, "pod-forward"), forwarded, "a packet of the pod was forwarded off the host");
    rig.stop().await;
}

/// A DNS query for `name` (type A) sent by Python to `server`:53 over UDP (`tcp`: over TCP) from the pod; prints
/// `rcode=<n> answers=<a.b.c.d,…>` or `timeout`.
fn dns_probe(server: &str, name: &str, tcp: bool) -> String {
    format!(
        "python3 -c \"import socket, struct
q = struct.pack('>HHHHHH', 4242, 0x0100, 1, 0, 0, 0) + b''.join(bytes([len(l)]) + l.encode() for l in '{name}'.split('.')) + b'\\0' + struct.pack('>HH', 1, 1)
if {tcp}:
    s = socket.create_connection(('{server}', 53), timeout=10)
    s.sendall(struct.pack('>H', len(q)) + q)
    m = s.recv(2); n = struct.unpack('>H', m)[0]; r = b''
    while len(r) < n: r += s.recv(n - len(r))
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(10)
    s.sendto(q, ('{server}', 53))
    r, peer = s.recvfrom(4096)
rcode = r[3] & 15; an = struct.unpack('>H', r[6:8])[0]
ips = [socket.inet_ntoa(r[-4:])] if an else []
print('rcode=%d answers=%s' % (rcode, ','.join(ips)))\"",
        tcp = if tcp { "True" } else { "False" },
    )
}

#[tokio::test]
async fn dns_to_outside_resolvers_is_answered_by_our_responder_and_nothing_leaves() {
    let Some(rig) = EgressRig::start(CAPS, NAMES).await else { return };
    let (dns_before, forwarded) = (nft_counter(&rig, "pod-dns"), nft_counter(&rig, "pod-forward"));
    let refused = nft_counter(&rig, "pod-refused");
    // An allowed name asked of 8.8.8.8: answered with the mapped address, which only our responder knows.
    let r = ran(&rig, &dns_probe("8.8.8.8", "api.example.test", false)).await;
    assert_eq!(r.stdout, "rcode=0 answers=192.0.2.1\n", "{}", r.stderr);
    let r = ran(&rig, &dns_probe("8.8.8.8", "api.example.test", true)).await;
    assert_eq!(r.stdout, "rcode=0 answers=192.0.2.1\n", "{}", r.stderr);
    // A random label under a denied name, over UDP to 1.1.1.1 and over TCP to 9.9.9.9: NXDOMAIN from us.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let label = format!("x{nanos:x}{}", std::process::id());
    let exfil_udp = format!("{label}.denied.example.test");
    let exfil_tcp = format!("{label}-t.denied.example.test");
    let r = ran(&rig, &dns_probe("1.1.1.1", &exfil_udp, false)).await;
    assert_eq!(r.stdout, "rcode=3 answers=\n", "{}", r.stderr);
    let r = ran(&rig, &dns_probe("9.9.9.9", &exfil_tcp, true)).await;
    assert_eq!(r.stdout, "rcode=3 answers=\n", "{}", r.stderr);
    // The libc resolver (dig when present) says the same.
    let r = ran(&rig, &format!("getent ahostsv4 {label}.example.com; echo $?")).await;
    assert_ne!(r.stdout.trim(), "0", "{}", r.stdout);
    // Every query went to the redirect (four first packets at least), none was forwarded off the host.
    assert!(nft_counter(&rig, "pod-dns") >= dns_before + 4, "the queries were not redirected to our responder");
    assert_eq!(nft_counter(&rig, "pod-forward"), forwarded, "a DNS packet of the pod was forwarded off the host");
    // What is neither TCP nor DNS is refused at once as it arrives (counted), and never reaches the forward hook.
    let r = ran(
        &rig,
        "python3 -c \"import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(10); s.connect(('1.1.1.1', 5353))
s.send(b'x')
try:
    s.recv(10); print('answered')
except OSError as e:
    print('refused', e.errno)\"",
    )
    .await;
    assert!(r.stdout.starts_with("refused"), "{}", r.stdout);
    assert!(nft_counter(&rig, "pod-refused") > refused, "the early refusal counted nothing");
    assert_eq!(nft_counter(&rig, "pod-forward"), forwarded, "a packet of the pod was forwarded off the host");
    // Each denial is in the workspace's audit, with its transport.
    let path = format!("/v1/workspaces/{}/audit?filter=event_type=egress_dns_denied&limit=100", rig.ws);
    for (name, transport) in [(&exfil_udp, "udp"), (&exfil_tcp, "tcp")] {
        let rows = rig.rows_where(&path, 1, |r| r["destination"] == name.as_str()).await;
        let d = &rows[0];
        assert_eq!((&d["decision"], &d["reason"]), (&json!("deny"), &json!("host_not_allowed")), "{d}");
        assert_eq!(d["details"]["transport"], transport, "{d}");
    }
    rig.stop().await;
}

#[tokio::test]
async fn connect_redirects_and_names_of_internal_addresses_are_denied_and_audited() {
    let Some(rig) = EgressRig::start(CAPS, NAMES).await else { return };
    // An explicit CONNECT to loopback and to the metadata address (the proxy is transparent: no CONNECT at all).
    for target in ["127.0.0.1:22", "169.254.169.254:80"] {
        let r = ran(
            &rig,
            &format!(
                "python3 -c \"import socket
s = socket.create_connection(('192.0.2.1', 80), timeout=20)
s.sendall(b'CONNECT {target} HTTP/1.1\\r\\nHost: {target}\\r\\n\\r\\n')
print(s.recv(65536).decode(errors='replace'))\""
            ),
        )
        .await;
        assert!(r.stdout.starts_with("HTTP/1.1 403"), "{target}: {}", r.stdout);
        assert!(r.stdout.contains("connect_not_supported"), "{}", r.stdout);
        rig.deny_row(target, "connect_not_supported").await;
    }
    // The metadata address asked directly: a raw IP no rule names.
    let (code, _, body) = curl(&rig, "http://169.254.169.254/latest/meta-data/").await;
    assert_eq!(code, "403", "{body}");
    denied_body(&body, "raw_ip");
    // An allowed upstream redirecting there: curl -L makes a new request, and policy decides it.
    let (code, _, body) =
        curl(&rig, "-L 'https://api.example.test/v1/redirect?to=http://169.254.169.254/latest/user-data'").await;
    assert_eq!(code, "403", "the redirect was followed to the metadata address: {body}");
    denied_body(&body, "raw_ip");
    let rows = rig
        .rows_where(&format!("/v1/workspaces/{}/audit?filter=event_type=egress_request&limit=1000", rig.ws), 1, |r| {
            r["destination"] == "169.254.169.254:80" && r["path"] == "/latest/user-data"
        })
        .await;
    assert_eq!(rows[0]["decision"], "deny");
    // Names and addresses the policy allows, but that are (or resolve to) loopback, without `upstream_hosts`: the
    // proxy refuses to dial them.
    let (code, _, body) = curl(&rig, "--resolve localhost:443:192.0.2.1 https://localhost/v1/x").await;
    assert_eq!(code, "403", "{body}");
    denied_body(&body, "internal_address");
    rig.deny_row("localhost:443", "internal_address").await;
    let (code, _, body) = curl(&rig, "-H 'Host: 127.0.0.1' http://192.0.2.1/v1/x").await;
    assert_eq!(code, "403", "{body}");
    denied_body(&body, "internal_address");
    rig.deny_row("127.0.0.1:80", "internal_address").await;
    rig.stop().await;
}

#[tokio::test]
async fn the_pod_reads_no_credential_secret_or_key_of_the_platform() {
    let Some(rig) = EgressRig::start(CAPS, NAMES).await else { return };
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let secret = format!("s3cr3t-{nanos:x}");
    let owner = rig.ts.login(&rig.ts.owner_email.clone()).await;
    let body = json!({"name": "probe", "value": secret});
    rig.ts.call(reqwest::Method::POST, "/v1/secrets", Some(&owner), Some(body)).await.ok();
    // A request that uses the credential, so the proxy holds it in memory while we look.
    let (code, _, body) = curl(&rig, "https://api.example.test/v1/ok").await;
    assert_eq!((code.as_str(), body.as_str()), ("200", "ok"));
    let data = rig.ts.dir.path().to_path_buf();
    let ca_key = std::fs::read_to_string(data.join("egress-ca").join("ca.key")).expect("the platform CA key");
    let mut needles: Vec<String> = vec![rig.key.clone(), secret.clone()];
    // Lines of the key's base64 (each long enough to be unmistakable).
    needles.extend(ca_key.lines().filter(|l| l.len() >= 40).take(3).map(str::to_string));
    if let Ok(m) = std::fs::read_to_string(data.join("master.key")) {
        needles.extend(m.lines().filter(|l| l.trim().len() >= 16).map(|l| l.trim().to_string()));
    }
    // Try the obvious paths first: none can be read.
    let r = ran(
        &rig,
        &format!(
            "cat {ca}; ls {d}; cat {d}/master.key; cat /proc/1/environ | tr '\\0' '\\n'; env; echo done",
            ca = data.join("egress-ca").join("ca.key").display(),
            d = data.display()
        ),
    )
    .await;
    assert!(r.stdout.ends_with("done\n"), "{}", r.stdout);
    let seen = format!("{}{}", r.stdout, r.stderr);
    for n in &needles {
        assert!(!seen.contains(n.as_str()), "the pod read a platform secret: {seen}");
    }
    assert!(!seen.contains("PRIVATE KEY"), "the pod read a private key: {seen}");
    // Then search for each value, split in two so no command line carries it whole: every process's environment
    // and every writable tree of the pod. The probe finds a canary planted in the pod (so it can fail).
    let probe = |n: &str| {
        let (a, b) = n.split_at(n.len() / 2);
        format!(
            "n='{a}'; n=\"${{n}}{b}\"; grep -lsF -e \"$n\" /proc/[0-9]*/environ; \
             grep -rlsF -e \"$n\" /workspace /tmp /home /etc /run /root /var/tmp /dev/shm 2>/dev/null; \
             env | grep -qF -e \"$n\" && echo in-env; echo probed"
        )
    };
    let canary = format!("canary-{nanos:x}");
    let (ca, nb) = canary.split_at(8);
    let r = rig.sh(&format!("c='{ca}'; echo \"${{c}}{nb}\" > /workspace/planted; {}", probe(&canary))).await;
    assert_eq!(r["stdout"], "/workspace/planted\nprobed\n", "the probe does not find what is there: {r}");
    for n in &needles {
        let r = rig.sh(&probe(n)).await;
        assert_eq!(r["stdout"], "probed\n", "a platform secret is readable inside the pod: {r}");
    }
    rig.stop().await;
}

#[tokio::test]
async fn an_expired_token_is_audited_and_an_address_no_pod_owns_is_counted() {
    let Some(rig) = EgressRig::start(CAPS, NAMES).await else { return };
    let (ts, ws_id): (_, WorkspaceId) = (&rig.ts, rig.ws.parse().unwrap());
    let store = ts.app.store();
    let (pod, recorded) = store.pod_network(ws_id).await.unwrap().expect("recorded");
    // Hold the workspace's lease while the pod's network is altered (the reconciler would renew it otherwise).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let fence = loop {
        let now = Timestamp::now();
        if let Some(f) = store.claim_workspace(ws_id, "attack-test", now, now.plus_millis(120_000)).await.unwrap() {
            break f;
        }
        assert!(tokio::time::Instant::now() < deadline, "the reconciler never let the workspace go");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Until the gate's identity cache (a second) lets go, the old answer may stand: poll for the new reason.
    let until_reason = |reason: &'static str| {
        let rig = &rig;
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let (code, _, body) =
                    curl(rig, "--resolve api.example.test:443:192.0.2.1 https://api.example.test/v1/ok").await;
                if body.contains(reason) {
                    assert_eq!(code, "403", "{body}");
                    return;
                }
                assert!(tokio::time::Instant::now() < deadline, "still not {reason}: {code} {body}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let mut expired = recorded.clone();
    expired.capability_expires_at = Timestamp::now().plus_millis(-1_000);
    let w = store.set_pod_network(ws_id, pod, Some(&expired), &fence).await.unwrap();
    assert_eq!(w, evershell_store::ObservationWrite::Written);
    until_reason("capability_invalid").await;
    rig.deny_row("api.example.test:443", "capability_invalid").await;

    // An address no pod owns (the recorded one cleared): denied, and counted server-side (no org to audit under).
    let requests = "evershell_egress_unknown_peer_denials_total{kind=\"request\"}";
    let dns = "evershell_egress_unknown_peer_denials_total{kind=\"dns\"}";
    let (req_before, dns_before) = (metric(&rig, requests).await, metric(&rig, dns).await);
    let w = store.set_pod_network(ws_id, pod, None, &fence).await.unwrap();
    assert_eq!(w, evershell_store::ObservationWrite::Written);
    until_reason("unknown_peer").await;
    let r = ran(&rig, &dns_probe("8.8.8.8", "api.example.test", false)).await;
    assert_eq!(r.stdout, "rcode=3 answers=\n", "an unknown address was answered: {}", r.stderr);
    assert!(metric(&rig, requests).await > req_before, "the unknown peer's request was not counted");
    assert!(metric(&rig, dns).await > dns_before, "the unknown peer's DNS query was not counted");
    // From the host (outside the pod network) the proxy closes the connection at once, counted too.
    let outside = "evershell_egress_unknown_peer_denials_total{kind=\"outside_peers\"}";
    let before = metric(&rig, outside).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", ts.proxy_addr().port())).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read(&mut s, &mut buf))
        .await
        .expect("closed, not held");
    assert!(n.map_or(true, |n| n == 0));
    assert!(metric(&rig, outside).await > before);

    // Put the network back and let the reconciler have the workspace again.
    let w = store.set_pod_network(ws_id, pod, Some(&recorded), &fence).await.unwrap();
    assert_eq!(w, evershell_store::ObservationWrite::Written);
    store.release_workspace(ws_id, &fence).await.unwrap();
    let (code, _, body) = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = curl(&rig, "https://api.example.test/v1/ok").await;
            if got.0 == "200" || tokio::time::Instant::now() > deadline {
                break got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert_eq!(code, "200", "{body}");
    rig.stop().await;
}
