//! The escape suite: code inside a real pod (a real bubblewrap sandbox running the real agent, reached through the
//! agent's exec route, as any model-written command would run) tries what a host-root escape needs, and every
//! attempt must fail. The tests only ever attempt harmless writes (a value rewritten to itself, a file of the test's
//! own), never a real change to the host. System calls are made with `perl -e 'syscall(…)'` (perl-base is on every
//! Debian system), with the numbers of this build's architecture.
//!
//! Run alone with `cargo nextest run -p evershell --test runtime_escape`.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use evershell_core::exec::{ExecRequest, ExecResult};
use evershell_core::ids::{OrgId, PodId, WorkspaceId};
use evershell_core::lifecycle::PodObservation;
use evershell_runtime::{LocalRuntime, LocalRuntimeConfig, PodRuntime, PodSpec};
use evershell_snapshot::SnapshotStore;

struct Env {
    _tmp: tempfile::TempDir,
    rt: LocalRuntime,
}

impl Drop for Env {
    fn drop(&mut self) {
        evershell_runtime::local::kill_all_sandboxes(self.rt.pods_dir());
    }
}

fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let snapshots = SnapshotStore::local(&tmp.path().join("snapshots")).unwrap();
    let cfg =
        LocalRuntimeConfig::new(tmp.path().join("pods"), PathBuf::from(env!("CARGO_BIN_EXE_evershell")), snapshots);
    let rt = LocalRuntime::new(cfg).expect("bubblewrap must work on this machine");
    Env { _tmp: tmp, rt }
}

fn root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

async fn wait_for(rt: &LocalRuntime, pod: PodId, want: PodObservation) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = rt.observe(pod).await.unwrap();
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "pod {pod} still {got:?}, wanted {want:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn running_pod(rt: &LocalRuntime) -> PodSpec {
    let s = PodSpec { pod_id: PodId::new(), org_id: OrgId::new(), workspace_id: WorkspaceId::new() };
    rt.prepare(&s, None).await.unwrap();
    rt.start(&s).await.unwrap();
    wait_for(rt, s.pod_id, PodObservation::Running).await;
    s
}

/// Run a shell script inside the pod, as the sandbox user.
async fn sh(rt: &LocalRuntime, pod: PodId, script: &str) -> ExecResult {
    let req = ExecRequest {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        stdin: None,
        env: BTreeMap::new(),
        timeout_ms: Some(20_000),
    };
    rt.agent(pod).exec(&req).await.unwrap()
}

/// An argument of a raw system call made from inside the pod.
enum Arg<'a> {
    Int(i64),
    Str(&'a str),
}
use Arg::{Int, Str};

/// `errno` of one raw system call made inside the pod (0 when it succeeded). Strings are passed as pointers.
async fn syscall_errno(rt: &LocalRuntime, pod: PodId, nr: libc::c_long, args: &[Arg<'_>]) -> i32 {
    let mut decl = String::new();
    let mut call = format!("{nr}");
    for (i, a) in args.iter().enumerate() {
        match a {
            Int(n) => call.push_str(&format!(", {n}")),
            Str(s) => {
                decl.push_str(&format!("my $s{i} = \"{s}\"; "));
                call.push_str(&format!(", $s{i}"));
            }
        }
    }
    let script = format!("perl -e '{decl}$! = 0; my $r = syscall({call}); print $r == -1 ? $!+0 : 0'");
    let r = sh(rt, pod, &script).await;
    assert_eq!(r.exit_code, Some(0), "perl failed: {r:?}");
    r.stdout.trim().parse().unwrap_or_else(|_| panic!("unexpected perl output: {r:?}"))
}

fn host_pid_of_agent(rt: &LocalRuntime, pod: PodId) -> i32 {
    let bwrap = rt.sandbox_pid(pod).unwrap();
    let init = children_of(bwrap)[0];
    children_of(init)[0]
}

fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let ppid = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<i32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

fn status_field(pid: i32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix(&format!("{field}:"))).unwrap_or_default().trim().to_string()
}

#[tokio::test]
async fn no_pod_process_is_host_root_and_none_holds_a_capability() {
    let e = env();
    let pod = running_pod(&e.rt).await.pod_id;
    let agent = host_pid_of_agent(&e.rt, pod);
    let uids: Vec<u32> = status_field(agent, "Uid").split_whitespace().map(|u| u.parse().unwrap()).collect();
    assert!(uids.iter().all(|&u| u != 0), "agent runs with host uid 0: {uids:?}");
    if root() {
        let id = e.rt.pod_identity(pod).expect("a root control plane gives pods their own uid");
        assert!(uids.iter().all(|&u| u == id.uid), "{uids:?} vs {id:?}");
    }
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(agent, set), "0000000000000000", "{set}");
    }
    assert_eq!(status_field(agent, "NoNewPrivs"), "1");
    assert_eq!(status_field(agent, "Seccomp"), "2", "seccomp filter mode");
    // Inside, the same: uid 1000, no capabilities, filtered.
    let r = sh(&e.rt, pod, "id -u; grep -E '^(CapEff|Seccomp):' /proc/self/status").await;
    assert!(r.stdout.starts_with("1000\n"), "{r:?}");
    assert!(r.stdout.contains("CapEff:\t0000000000000000") && r.stdout.contains("Seccomp:\t2"), "{r:?}");
    // A file the pod makes belongs to its own uid on the host.
    sh(&e.rt, pod, "echo mine > /workspace/made-inside").await;
    let owner = std::fs::metadata(e.rt.pod_dir(pod).join("workspace/made-inside")).unwrap().uid();
    assert_ne!(owner, 0);
    e.rt.stop_all().await;
}

#[tokio::test]
async fn kernel_settings_and_sensitive_proc_entries_cannot_be_written_or_read() {
    let e = env();
    let pod = running_pod(&e.rt).await.pod_id;
    // Rewrite values to themselves: harmless if it ever succeeded, and it must not.
    for f in ["kernel/core_pattern", "fs/file-max", "vm/swappiness", "kernel/hostname", "net/core/somaxconn"] {
        let r = sh(&e.rt, pod, &format!("v=$(cat /proc/sys/{f}) && printf '%s\\n' \"$v\" > /proc/sys/{f}")).await;
        assert_ne!(r.exit_code, Some(0), "/proc/sys/{f} was writable: {r:?}");
    }
    // Every writable-looking file under /proc/sys refuses to open for writing.
    let r = sh(
        &e.rt,
        pod,
        "n=0; for f in $(find /proc/sys -type f -perm -u=w 2>/dev/null); do if true 2>/dev/null >> \"$f\"; then \
         echo \"WRITABLE $f\"; fi; n=$((n+1)); done; echo checked $n",
    )
    .await;
    assert!(!r.stdout.contains("WRITABLE"), "{}", r.stdout);
    let checked: usize = r.stdout.trim().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(checked > 50, "only {checked} files under /proc/sys were tried");
    let r = sh(&e.rt, pod, "true >> /proc/sysrq-trigger").await;
    assert_ne!(r.exit_code, Some(0), "/proc/sysrq-trigger writable: {r:?}");
    let mounts = sh(&e.rt, pod, "cat /proc/self/mountinfo").await.stdout;
    for p in ["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus"] {
        let line = mounts.lines().find(|l| l.split_whitespace().nth(4) == Some(p));
        if Path::new(p).exists() {
            let line = line.unwrap_or_else(|| panic!("{p} not covered:\n{mounts}"));
            assert!(line.split_whitespace().nth(5).unwrap().split(',').any(|o| o == "ro"), "{line}");
        }
    }
    // Masked: nothing to read.
    for p in ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/kallsyms", "/proc/sched_debug"] {
        if Path::new(p).exists() {
            let r = sh(&e.rt, pod, &format!("head -c 64 {p} | wc -c")).await;
            assert_eq!(r.stdout.trim(), "0", "{p} readable: {r:?}");
        }
    }
    e.rt.stop_all().await;
}

#[tokio::test]
async fn dangerous_system_calls_are_refused_by_the_filter() {
    let e = env();
    let pod = running_pod(&e.rt).await.pod_id;
    sh(&e.rt, pod, "mkdir -p /tmp/m").await;
    let mount =
        syscall_errno(&e.rt, pod, libc::SYS_mount, &[Str("none"), Str("/tmp/m"), Str("tmpfs"), Int(0), Int(0)]).await;
    assert_eq!(mount, libc::EPERM, "mount");
    assert_eq!(syscall_errno(&e.rt, pod, libc::SYS_umount2, &[Str("/tmp"), Int(0)]).await, libc::EPERM, "umount2");
    assert_eq!(syscall_errno(&e.rt, pod, libc::SYS_pivot_root, &[Str("/tmp"), Str("/tmp/m")]).await, libc::EPERM);
    // keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0) works for any unprivileged process without the
    // filter: an EPERM here is the filter's.
    assert_eq!(syscall_errno(&e.rt, pod, libc::SYS_keyctl, &[Int(0), Int(-3), Int(0)]).await, libc::EPERM, "keyctl");
    assert_eq!(
        syscall_errno(&e.rt, pod, libc::SYS_add_key, &[Str("user"), Str("k"), Str("v"), Int(1), Int(-3)]).await,
        libc::EPERM
    );
    assert_eq!(syscall_errno(&e.rt, pod, libc::SYS_bpf, &[Int(0), Int(0), Int(0)]).await, libc::EPERM, "bpf");
    assert_eq!(
        syscall_errno(&e.rt, pod, libc::SYS_perf_event_open, &[Int(0), Int(0), Int(-1), Int(-1), Int(0)]).await,
        libc::EPERM
    );
    assert_eq!(syscall_errno(&e.rt, pod, libc::SYS_userfaultfd, &[Int(0)]).await, libc::EPERM, "userfaultfd");
    assert_eq!(syscall_errno(&e.rt, pod, libc::SYS_io_uring_setup, &[Int(1), Int(0)]).await, libc::EPERM, "io_uring");
    assert_eq!(syscall_errno(&e.rt, pod, libc::SYS_init_module, &[Int(0), Int(0), Str("")]).await, libc::EPERM);
    assert_eq!(syscall_errno(&e.rt, pod, libc::SYS_kexec_load, &[Int(0), Int(0), Int(0), Int(0)]).await, libc::EPERM);
    // New namespaces: unshare and clone with namespace flags, setns; clone3 answers ENOSYS (libc falls back).
    let newuser = libc::CLONE_NEWUSER;
    assert_eq!(syscall_errno(&e.rt, pod, libc::SYS_unshare, &[Int(newuser.into())]).await, libc::EPERM);
    let newns = libc::CLONE_NEWNS;
    assert_eq!(syscall_errno(&e.rt, pod, libc::SYS_unshare, &[Int(newns.into())]).await, libc::EPERM);
    assert_eq!(syscall_errno(&e.rt, pod, libc::SYS_setns, &[Int(0), Int(0)]).await, libc::EPERM, "setns");
    assert_eq!(syscall_errno(&e.rt, pod, libc::SYS_clone3, &[Int(0), Int(0)]).await, libc::ENOSYS, "clone3");
    // Ordinary process creation still works (fork + exec through libc's clone), and so does a user tool.
    let r = sh(&e.rt, pod, "unshare -U true; echo $?; (echo sub) | cat").await;
    assert!(r.stdout.ends_with("sub\n") && !r.stdout.starts_with("0\n"), "{r:?}");
    #[cfg(target_arch = "x86_64")]
    {
        // The x32 numbering of an allowed call is refused too, so no deny rule can be bypassed through it.
        let x32_getpid = 0x4000_0000 + libc::SYS_getpid;
        assert_eq!(syscall_errno(&e.rt, pod, x32_getpid, &[]).await, libc::EPERM, "x32 ABI");
    }
    e.rt.stop_all().await;
}

#[tokio::test]
async fn the_host_its_processes_its_loopback_and_other_pods_are_out_of_reach() {
    let e = env();
    let a = running_pod(&e.rt).await.pod_id;
    let b = running_pod(&e.rt).await.pod_id;
    std::fs::write(e.rt.pod_dir(b).join("workspace/secret"), b"b's own").unwrap();

    // Processes outside: not visible, not signalable, not traceable.
    let me = std::process::id() as i64;
    let r = sh(&e.rt, a, &format!("kill -0 {me} 2>/dev/null; echo rc=$?")).await;
    assert!(r.stdout.contains("rc=1"), "{r:?}");
    let ptrace =
        syscall_errno(&e.rt, a, libc::SYS_ptrace, &[Int(libc::PTRACE_ATTACH.into()), Int(me), Int(0), Int(0)]).await;
    assert_eq!(ptrace, libc::ESRCH, "ptrace of a host process");
    let b_agent = host_pid_of_agent(&e.rt, b) as i64;
    assert_eq!(syscall_errno(&e.rt, a, libc::SYS_kill, &[Int(b_agent), Int(0)]).await, libc::ESRCH);

    // The host's loopback: the pod's 127.0.0.1 is its own.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let r = sh(&e.rt, a, &format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo CONNECTED")).await;
    assert!(!r.stdout.contains("CONNECTED"), "reached the host's loopback: {r:?}");
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_err(), "a connection reached the host listener");

    // Another pod's workspace and agent socket, by their host paths (which a pod can learn from mountinfo).
    let b_dir = e.rt.pod_dir(b);
    let r = sh(
        &e.rt,
        a,
        &format!("cat {0}/workspace/secret; echo x > {0}/workspace/evil; ls {0}/run; echo rc=$?", b_dir.display()),
    )
    .await;
    assert!(!r.stdout.contains("b's own") && r.stdout.contains("rc=2"), "{r:?}");
    assert!(!b_dir.join("workspace/evil").exists());
    if root() {
        let (ia, ib) = (e.rt.pod_identity(a).unwrap(), e.rt.pod_identity(b).unwrap());
        assert_ne!(ia.uid, ib.uid, "two pods share a host uid");
    }

    // Files outside /workspace, /tmp and /data/uploads cannot change.
    for p in ["/newfile", "/usr/evil", "/etc/evil", "/opt/evershell/bin/evershell", "/run/evershell-ctl/release"] {
        let r = sh(&e.rt, a, &format!("true >> {p}")).await;
        assert_ne!(r.exit_code, Some(0), "{p} writable: {r:?}");
    }
    let r = sh(&e.rt, a, "echo ok > /workspace/w && echo ok > /tmp/t && echo ok > /data/uploads/u && echo fine").await;
    assert_eq!(r.stdout, "fine\n", "{r:?}");
    e.rt.stop_all().await;
}

/// A socket on the host that records whether anything connected to it.
fn victim_socket(dir: &Path) -> (PathBuf, std::os::unix::net::UnixListener) {
    let path = dir.join("victim.sock");
    let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
    l.set_nonblocking(true).unwrap();
    (path, l)
}

#[tokio::test]
async fn links_planted_where_the_host_writes_never_redirect_it() {
    let e = env();
    let s = running_pod(&e.rt).await;
    let pod = s.pod_id;
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim.txt");
    std::fs::write(&victim, b"untouched").unwrap();
    let (victim_sock, listener) = victim_socket(outside.path());
    // Links everywhere the host reads or writes inside the pod's writable directories.
    let plant = format!(
        "cd /run/evershell && rm -f agent.sock held && ln -s {sock} agent.sock && ln -s {v} held && \
         ln -s {v} /data/uploads/file && ln -s {v} /workspace/link && mkfifo /run/evershell/fifo; \
         ln -s {v} /run/evershell-ctl/release 2>/dev/null; echo planted",
        sock = victim_sock.display(),
        v = victim.display()
    );
    let r = sh(&e.rt, pod, &plant).await;
    assert_eq!(r.stdout, "planted\n", "{r:?}");
    // The agent socket is a link now: the control plane refuses to follow it.
    assert!(e.rt.agent(pod).health().await.is_err());
    assert!(listener.accept().is_err(), "the control plane connected to a host socket through a planted link");
    // Crash the sandbox (kill its init from outside) and start it again on the same files (the reattach path).
    let init = children_of(e.rt.sandbox_pid(pod).unwrap())[0];
    unsafe { libc::kill(init, libc::SIGKILL) };
    wait_for(&e.rt, pod, PodObservation::Exited).await;
    e.rt.start(&s).await.unwrap();
    wait_for(&e.rt, pod, PodObservation::Running).await;
    e.rt.agent(pod).health().await.unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"untouched", "a host file changed through a planted link");
    assert!(listener.accept().is_err());
    let meta = std::fs::symlink_metadata(&victim).unwrap();
    assert!(meta.is_file());
    e.rt.stop_all().await;
}

#[tokio::test]
async fn the_sandbox_log_is_capped_and_rotated_and_pod_code_cannot_reach_its_pipe() {
    let tmp = tempfile::tempdir().unwrap();
    let snapshots = SnapshotStore::local(&tmp.path().join("snapshots")).unwrap();
    let mut cfg =
        LocalRuntimeConfig::new(tmp.path().join("pods"), PathBuf::from(env!("CARGO_BIN_EXE_evershell")), snapshots);
    cfg.sandbox_log_bytes = 4096;
    let e = Env { rt: LocalRuntime::new(cfg).unwrap(), _tmp: tmp };
    let pod = running_pod(&e.rt).await.pod_id;
    // The agent (pid 2) and the sandbox's init hold the log pipe; pod code cannot open it through /proc.
    let r =
        sh(&e.rt, pod, "for p in 1 2; do for f in 1 2; do echo x > /proc/$p/fd/$f && echo OPENED; done; done").await;
    assert!(!r.stdout.contains("OPENED"), "pod code reached the log pipe: {r:?}");
    // The agent logs a line per command: 60 of them are several times the cap.
    for _ in 0..60 {
        sh(&e.rt, pod, "true").await;
    }
    let last = ExecRequest { argv: vec!["/bin/true".into()], stdin: None, env: BTreeMap::new(), timeout_ms: None };
    e.rt.agent(pod).exec(&last).await.unwrap();
    let dir = e.rt.pod_dir(pod);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(dir.join("sandbox.log")).unwrap_or_default().contains("program=/bin/true") {
        assert!(Instant::now() < deadline, "the last command's log line never reached sandbox.log");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let len = |n: &str| std::fs::metadata(dir.join(n)).map(|m| m.len()).unwrap_or(0);
    assert!(len("sandbox.log.1") > 0, "never rotated");
    assert!(
        len("sandbox.log") <= 4096 && len("sandbox.log.1") <= 4096,
        "{} {}",
        len("sandbox.log"),
        len("sandbox.log.1")
    );
    // The log is root's, in the pod's root-owned directory.
    assert_eq!(std::fs::metadata(dir.join("sandbox.log")).unwrap().uid(), unsafe { libc::geteuid() });
    e.rt.stop_all().await;
}

/// The original destination of a redirected connection (`SO_ORIGINAL_DST`).
fn original_dst(s: &tokio::net::TcpStream) -> std::net::SocketAddrV4 {
    use std::os::fd::AsRawFd;
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let r = unsafe {
        libc::getsockopt(s.as_raw_fd(), libc::SOL_IP, 80, (&mut addr as *mut libc::sockaddr_in).cast(), &mut len)
    };
    assert_eq!(r, 0, "SO_ORIGINAL_DST: {}", std::io::Error::last_os_error());
    std::net::SocketAddrV4::new(u32::from_be(addr.sin_addr.s_addr).into(), u16::from_be(addr.sin_port))
}

/// Deletes a test runtime's host rules when the test ends (a server leaves them in place for its running pods).
struct HostRules(evershell_runtime::local::NetworkPorts);

impl Drop for HostRules {
    fn drop(&mut self) {
        let t = evershell_runtime::local::network_table(self.0);
        let _ = std::process::Command::new("nft").args(["delete", "table", "inet", &t]).status();
    }
}

#[tokio::test]
async fn a_networked_pod_reaches_only_the_proxy_and_the_dns_responder() {
    if !root() {
        eprintln!("skipped: pod networking needs root");
        return;
    }
    // Stand-ins for the proxy and the DNS responder, on ports of this test's own.
    let proxy = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let dns = tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap();
    let ports = evershell_runtime::local::NetworkPorts {
        proxy: proxy.local_addr().unwrap().port(),
        dns: dns.local_addr().unwrap().port(),
    };
    let tmp = tempfile::tempdir().unwrap();
    let snapshots = SnapshotStore::local(&tmp.path().join("snapshots")).unwrap();
    let mut cfg =
        LocalRuntimeConfig::new(tmp.path().join("pods"), PathBuf::from(env!("CARGO_BIN_EXE_evershell")), snapshots);
    cfg.network = Some(ports);
    let e = Env { rt: LocalRuntime::new(cfg).unwrap(), _tmp: tmp };
    let _rules = HostRules(ports);
    assert!(e.rt.networked(), "this host (root, ip, nft) must give pods a network");
    let pod = running_pod(&e.rt).await.pod_id;
    let info = e.rt.agent(pod).info().await.unwrap();
    let ifaces: Vec<String> = serde_json::from_value(info["interfaces"].clone()).unwrap();
    let pod_if = format!("ev{:x}p", ports.proxy);
    assert!(ifaces.contains(&"lo".to_string()) && ifaces.iter().any(|i| i.starts_with(&pod_if)), "{ifaces:?}");
    // No IPv6 inside: no address, not even on loopback.
    let r = sh(&e.rt, pod, "cat /proc/net/if_inet6 | wc -l").await;
    assert_eq!(r.stdout.trim(), "0", "{r:?}");

    // Any TCP destination lands on the proxy, which can read where it was going (TEST-NET: nothing is sent out).
    let connect = tokio::spawn({
        let rt_pod = pod;
        let agent = e.rt.agent(rt_pod);
        async move {
            let req = ExecRequest {
                argv: vec![
                    "bash".into(),
                    "-c".into(),
                    "exec 3<>/dev/tcp/192.0.2.1/443 && echo hello >&3 && echo CONNECTED".into(),
                ],
                stdin: None,
                env: BTreeMap::new(),
                timeout_ms: Some(20_000),
            };
            agent.exec(&req).await.unwrap()
        }
    });
    let (mut conn, peer) =
        tokio::time::timeout(Duration::from_secs(20), proxy.accept()).await.expect("no connection").unwrap();
    assert_eq!(original_dst(&conn), "192.0.2.1:443".parse().unwrap());
    let std::net::IpAddr::V4(peer) = peer.ip() else { panic!("{peer}") };
    assert_eq!(peer.octets()[..2], [10, 212], "the pod's own address: {peer}");
    let mut buf = [0u8; 6];
    tokio::io::AsyncReadExt::read_exact(&mut conn, &mut buf).await.unwrap();
    assert_eq!(&buf, b"hello\n");
    assert!(connect.await.unwrap().stdout.contains("CONNECTED"));

    // DNS to any resolver lands on the responder.
    sh(&e.rt, pod, "bash -c \"printf q > /dev/udp/192.0.2.53/53\"").await;
    let mut b = [0u8; 16];
    let (n, from) =
        tokio::time::timeout(Duration::from_secs(20), dns.recv_from(&mut b)).await.expect("no query").unwrap();
    assert_eq!((&b[..n], from.ip()), (&b"q"[..], std::net::IpAddr::V4(peer)));

    // IPv6 and other UDP are refused at once; so is TCP when no proxy listens.
    let started = Instant::now();
    let r = sh(&e.rt, pod, "bash -c 'exec 3<>/dev/tcp/2001:db8::1/443 && echo CONNECTED6'; echo done").await;
    assert!(!r.stdout.contains("CONNECTED6") && started.elapsed() < Duration::from_secs(5), "{r:?}");
    let r =
        sh(&e.rt, pod, "printf x > /dev/udp/192.0.2.1/123; printf y > /dev/udp/192.0.2.1/123 && echo SENT-TWICE").await;
    assert!(!r.stdout.contains("SENT"), "other UDP is not refused: {r:?}");
    drop(proxy);
    let started = Instant::now();
    let r = sh(&e.rt, pod, "bash -c 'exec 3<>/dev/tcp/192.0.2.1/80 && echo CONNECTED'; echo done").await;
    assert!(!r.stdout.contains("CONNECTED") && started.elapsed() < Duration::from_secs(5), "{r:?}");
    e.rt.remove(pod).await.unwrap();
    // The namespace goes with the pod's files, in the background, right after the removal.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/run/netns/evs-{pod}")).exists() {
        assert!(Instant::now() < deadline, "the pod's namespace outlived it");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The first spare the runtime counts as ready other than `not`.
async fn wait_ready_spare(rt: &LocalRuntime, not: &[PodId]) -> PodId {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(pod) = rt.ready_spares().into_iter().find(|p| !not.contains(p)) {
            return pod;
        }
        assert!(Instant::now() < deadline, "no spare pod became ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Checks inside a pod: the bundle at every path and variable holds the platform CA, the key is nowhere.
async fn assert_trusts_the_ca_and_cannot_read_its_key(rt: &LocalRuntime, pod: PodId, cert: &str, key: &Path) {
    let body = cert.lines().nth(1).unwrap();
    let r = sh(rt, pod, "env | sort").await;
    for (var, path) in evershell_runtime::local::CA_ENV {
        assert!(r.stdout.contains(&format!("{var}={path}\n")), "{var} not set: {r:?}");
    }
    let r = sh(
        rt,
        pod,
        "for f in /etc/ssl/certs/ca-certificates.crt \"$SSL_CERT_FILE\" \"$REQUESTS_CA_BUNDLE\" \"$CURL_CA_BUNDLE\" \
         \"$GIT_SSL_CAINFO\" \"$PIP_CERT\" \"$NODE_EXTRA_CA_CERTS\"; do grep -c BEGIN.CERTIFICATE \"$f\"; done",
    )
    .await;
    let counts: Vec<usize> = r.stdout.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(counts.len(), 7, "{r:?}");
    assert!(counts[..6].iter().all(|&c| c > 1), "the system roots stay: {r:?}");
    assert_eq!(counts[6], 1, "NODE_EXTRA_CA_CERTS is the platform CA alone: {r:?}");
    let r = sh(rt, pod, &format!("grep -l '{body}' /etc/ssl/certs/ca-certificates.crt \"$SSL_CERT_FILE\"")).await;
    assert_eq!(r.stdout.lines().count(), 2, "{r:?}");
    // The bundle cannot be changed from inside.
    let r = sh(
        rt,
        pod,
        "echo x >> /etc/ssl/certs/ca-certificates.crt && echo WROTE; echo x >> \"$SSL_CERT_FILE\" && echo WROTE",
    )
    .await;
    assert!(!r.stdout.contains("WROTE"), "{r:?}");
    // The key: not at its host path, not in any file or environment the pod can read.
    let r = sh(
        rt,
        pod,
        &format!(
            "cat {} && echo READ; grep -rls KEY-MARKER /etc /run /workspace /data /tmp /opt /proc/self/environ \
             /proc/1/environ 2>/dev/null; echo end",
            key.display()
        ),
    )
    .await;
    assert_eq!(r.stdout, "end\n", "{r:?}");
}

#[tokio::test]
async fn pods_and_spares_trust_the_platform_ca_and_never_see_its_key() {
    let tmp = tempfile::tempdir().unwrap();
    let ca_dir = tmp.path().join("egress-ca");
    std::fs::create_dir(&ca_dir).unwrap();
    let snapshots = SnapshotStore::local(&tmp.path().join("snapshots")).unwrap();
    let mut cfg =
        LocalRuntimeConfig::new(tmp.path().join("pods"), PathBuf::from(env!("CARGO_BIN_EXE_evershell")), snapshots);
    cfg.spare_pods = 1;
    cfg.egress_ca_file = Some(ca_dir.join("ca.pem"));
    let e = Env { rt: LocalRuntime::new(cfg).unwrap(), _tmp: tmp };
    // A spare set up before the proxy made its CA…
    let early = wait_ready_spare(&e.rt, &[]).await;
    let cert = "-----BEGIN CERTIFICATE-----\nMIIBevershellTestPlatformCA0123456789\n-----END CERTIFICATE-----\n";
    let key = ca_dir.join("ca.key");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&key).unwrap();
        std::io::Write::write_all(&mut f, b"-----BEGIN PRIVATE KEY-----\nKEY-MARKER\n-----END PRIVATE KEY-----\n")
            .unwrap();
    }
    std::fs::write(ca_dir.join("ca.pem"), cert).unwrap();
    // …is not handed out once the CA exists: the pod is set up afresh, and trusts it.
    let first = e.rt.reserve_pod();
    assert_ne!(first, early, "a spare that does not trust the CA was handed out");
    let s = PodSpec { pod_id: first, org_id: OrgId::new(), workspace_id: WorkspaceId::new() };
    e.rt.prepare(&s, None).await.unwrap();
    e.rt.start(&s).await.unwrap();
    wait_for(&e.rt, first, PodObservation::Running).await;
    assert_trusts_the_ca_and_cannot_read_its_key(&e.rt, first, cert, &key).await;
    // The spares set up since trust it too.
    let spare = wait_ready_spare(&e.rt, &[early]).await;
    assert_eq!(e.rt.reserve_pod(), spare);
    let s = PodSpec { pod_id: spare, org_id: OrgId::new(), workspace_id: WorkspaceId::new() };
    e.rt.prepare(&s, None).await.unwrap();
    e.rt.start(&s).await.unwrap();
    wait_for(&e.rt, spare, PodObservation::Running).await;
    assert_trusts_the_ca_and_cannot_read_its_key(&e.rt, spare, cert, &key).await;
    e.rt.shutdown().await;
    e.rt.stop_all().await;
}
