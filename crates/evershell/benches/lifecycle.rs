//! Workspace lifecycle benchmarks against the release binary, each beside its floor measured in the same run:
//!
//! * `resume`: stopped → idle latency (request to `idle`, `?wait=true`), for an empty workspace and for one holding
//!   100 MB in 2,000 files, over BENCH_RUNS runs (default 20); floor = `tar -I zstd -xf` of the same archive into a
//!   fresh directory + `bwrap … true`. Target: median within 1.5× of the floor.
//! * `stop`: snapshot throughput of the 100 MB workspace (request to `stopped`) vs `tar -I zstd -cf` of the same
//!   files. Target ≥ 0.7×.
//! * `scale`: 200 workspaces created at once until all are `idle` (wall time, server peak RSS); then 1,000 stopped
//!   workspaces in the store and the RSS of a freshly started server that lists them.
//!
//!   cargo bench -p evershell --bench lifecycle [-- resume|stop|scale]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, call, median, p95, rss_mib};
use reqwest::Method;
use serde_json::{Value, json};

fn runs() -> usize {
    std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(20)
}

/// 100 MB in 2,000 files under 40 directories: half text-like (compressible), half random.
fn fixture(dir: &Path) -> u64 {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut total = 0u64;
    let per = 100_000_000 / 2000;
    for i in 0..2000 {
        let p = dir.join(format!("dir{:02}/file{i:04}.{}", i % 40, if i % 2 == 0 { "rs" } else { "bin" }));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let mut buf = Vec::with_capacity(per);
        if i % 2 == 0 {
            while buf.len() < per {
                buf.extend_from_slice(
                    format!("fn item_{i}_{}() -> u64 {{ {} }}\n", buf.len(), state % 1000).as_bytes(),
                );
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
            buf.truncate(per);
        } else {
            buf.resize(per, 0);
            for c in buf.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                c.copy_from_slice(&state.to_le_bytes()[..c.len()]);
            }
        }
        total += buf.len() as u64;
        std::fs::write(p, buf).unwrap();
    }
    total
}

fn copy_tree(from: &Path, to: &Path) {
    let st = Command::new("cp").arg("-a").arg(format!("{}/.", from.display())).arg(to).status().unwrap();
    assert!(st.success());
}

fn only_pod_workspace(s: &Server) -> PathBuf {
    let pods: Vec<_> = std::fs::read_dir(s.data.join("pods"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("pod_")))
        .collect();
    assert_eq!(pods.len(), 1, "{pods:?}");
    pods[0].join("workspace")
}

fn latest_archive(s: &Server, ws: &Value) -> PathBuf {
    let snap = ws["snapshot_ref"].as_str().unwrap();
    let mut stack = vec![s.data.join("snapshots")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else if e.file_name().to_string_lossy() == format!("{snap}.tar.zst") {
                return e.path();
            }
        }
    }
    panic!("archive of {snap} not found")
}

/// The runtime's own bwrap command line, read from a running sandbox: the pod directory it names, and its arguments
/// with the agent replaced by `true` (the status fd, which belongs to the server, dropped; the seccomp descriptors
/// replaced by the floor's own copies of the same programs when it runs).
struct SandboxArgs {
    pod_dir: String,
    args: Vec<String>,
}

fn pod_dir_fallback(p: &Path) -> String {
    p.display().to_string()
}

fn sandbox_args(pod_dir_path: &Path) -> SandboxArgs {
    let pod_dir = pod_dir_path;
    let rec: Value = serde_json::from_slice(&std::fs::read(pod_dir.join("sandbox.pid")).unwrap()).unwrap();
    let pid = rec["pid"].as_i64().unwrap();
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let all: Vec<String> =
        raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into()).collect();
    // The command is the last mention of the agent binary (the first is its read-only bind).
    let cmd = all.iter().rposition(|a| a == "/opt/evershell/bin/evershell").unwrap();
    let mut args = vec![];
    let mut it = all[1..cmd].iter().cloned();
    while let Some(a) = it.next() {
        if a == "--json-status-fd" {
            it.next();
        } else if a == "--add-seccomp-fd" {
            it.next();
            args.push(a);
            args.push(SECCOMP_FD.into());
        } else {
            args.push(a);
        }
    }
    args.push("true".into());
    // The directory the sandbox was set up in (a spare's place, if it was one): the source bound at /workspace.
    let bound = args.windows(3).find(|w| w[0] == "--bind" && w[2] == "/workspace").map(|w| w[1].clone());
    let pod_dir = bound.and_then(|b| b.strip_suffix("/workspace").map(str::to_string));
    SandboxArgs { pod_dir: pod_dir.unwrap_or_else(|| pod_dir_fallback(pod_dir_path)), args }
}

/// The floor of a resume: extract the archive into a fresh pod-like directory, then start and finish a bubblewrap
/// sandbox over it — with the runtime's own isolation flags (`Some`), or a minimal `bwrap --unshare-all … true`.
/// Placeholder for the seccomp descriptors in replayed arguments.
const SECCOMP_FD: &str = "{seccomp}";

fn floor(archive: &Path, scratch: &Path, runtime_args: Option<&SandboxArgs>) -> f64 {
    let dir = scratch.join(format!("floor-{}", rand_suffix()));
    for d in ["workspace", "run", "uploads", "etc", "ctl"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    for f in ["passwd", "group", "hosts", "hostname"] {
        std::fs::write(dir.join("etc").join(f), "").unwrap();
    }
    let dest = dir.join("workspace");
    let t = Instant::now();
    let st = Command::new("tar").arg("-I").arg("zstd").arg("-xf").arg(archive).arg("-C").arg(&dest).status().unwrap();
    assert!(st.success());
    let mut bwrap = Command::new("bwrap");
    // The same seccomp programs, one fresh pair of descriptors per run (bwrap reads them to the end).
    let programs = evershell_runtime::local::seccomp_memfds().unwrap();
    let mut fds = programs.iter().map(|f| std::os::fd::AsRawFd::as_raw_fd(f).to_string());
    match runtime_args {
        Some(a) => {
            let here = dir.display().to_string();
            for x in &a.args {
                if x == SECCOMP_FD {
                    bwrap.arg(fds.next().expect("two seccomp programs"));
                } else {
                    bwrap.arg(x.replace(&a.pod_dir, &here));
                }
            }
            // Let bwrap inherit them (memfds are close-on-exec).
            let raw: Vec<i32> = programs.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
            unsafe {
                use std::os::unix::process::CommandExt;
                bwrap.pre_exec(move || {
                    for &fd in &raw {
                        if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        None => {
            bwrap
                .args(["--unshare-all", "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink"])
                .args([
                    "usr/lib64",
                    "/lib64",
                    "--symlink",
                    "usr/bin",
                    "/bin",
                    "--proc",
                    "/proc",
                    "--dev",
                    "/dev",
                    "--bind",
                ])
                .arg(&dest)
                .args(["/workspace", "true"]);
        }
    }
    let st = bwrap.status().unwrap();
    assert!(st.success(), "floor sandbox failed");
    let s = t.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&dir).unwrap();
    s
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Pause between measured operations (see the loop).
const SETTLE: Duration = Duration::from_millis(250);

async fn resume_and_stop(http: &reqwest::Client, s: &Server, ws: &str) -> (f64, f64) {
    let t = Instant::now();
    let r = call(http, s, Method::POST, &format!("/v1/workspaces/{ws}/resume?wait=true&timeout_ms=300000"), None).await;
    let resume = t.elapsed().as_secs_f64();
    assert_eq!(r["status"], "idle", "{r}");
    tokio::time::sleep(SETTLE).await;
    let t = Instant::now();
    let r = call(http, s, Method::POST, &format!("/v1/workspaces/{ws}/stop?wait=true&timeout_ms=300000"), None).await;
    let stop = t.elapsed().as_secs_f64();
    assert_eq!(r["status"], "stopped", "{r}");
    (resume, stop)
}

fn ms(v: f64) -> String {
    format!("{:.1} ms", v * 1000.0)
}

async fn resume_and_stop_bench(which: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let s = common::start(tmp.path(), &[]);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(600)).build().unwrap();
    common::role(&http, &s, "bench").await;
    let n = runs();
    let sizes: &[(&str, bool)] = match std::env::var("BENCH_SIZES").as_deref() {
        Ok("empty") => &[("empty", false)],
        Ok("big") => &[("100 MB / 2,000 files", true)],
        _ => &[("empty", false), ("100 MB / 2,000 files", true)],
    };
    for &(label, big) in sizes {
        let ws = call(&http, &s, Method::POST, "/v1/workspaces?wait=true", Some(json!({"role_name": "bench"}))).await;
        let id = ws["id"].as_str().unwrap().to_string();
        let reference = tmp.path().join(format!("reference-{big}"));
        std::fs::create_dir_all(&reference).unwrap();
        let content = if big {
            let bytes = fixture(&reference);
            copy_tree(&reference, &only_pod_workspace(&s));
            bytes
        } else {
            0
        };
        let runtime_args = sandbox_args(only_pod_workspace(&s).parent().unwrap());
        let stopped =
            call(&http, &s, Method::POST, &format!("/v1/workspaces/{id}/stop?wait=true&timeout_ms=300000"), None).await;
        // The floor extracts a copy: every stop writes a new snapshot and deletes the previous one.
        let archive = tmp.path().join(format!("floor-{big}.tar.zst"));
        std::fs::copy(latest_archive(&s, &stopped), &archive).unwrap();
        let (mut resumes, mut stops, mut floors, mut minimal, mut tars) = (vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..n {
            // A pause before each measured operation lets the kernel finish tearing down the namespaces of the one
            // before (network-namespace cleanup is asynchronous and slows the next `unshare`), for both sides alike.
            tokio::time::sleep(SETTLE).await;
            floors.push(floor(&archive, tmp.path(), Some(&runtime_args)));
            if which != "stop" {
                tokio::time::sleep(SETTLE).await;
                minimal.push(floor(&archive, tmp.path(), None));
            }
            tokio::time::sleep(SETTLE).await;
            let (r, st) = resume_and_stop(&http, &s, &id).await;
            resumes.push(r);
            stops.push(st);
            if big && which != "resume" {
                let out = tmp.path().join("tar-out.tar.zst");
                let t = Instant::now();
                let status = Command::new("tar")
                    .arg("-I")
                    .arg("zstd")
                    .arg("-cf")
                    .arg(&out)
                    .arg("-C")
                    .arg(&reference)
                    .arg(".")
                    .status()
                    .unwrap();
                assert!(status.success());
                tars.push(t.elapsed().as_secs_f64());
                std::fs::remove_file(&out).unwrap();
            }
        }
        let (rm, rp, fm) = (median(&mut resumes.clone()), p95(&mut resumes.clone()), median(&mut floors.clone()));
        if which != "stop" {
            println!("resume, {label}: {n} runs");
            println!("  resume (request → idle)     median {}  p95 {}", ms(rm), ms(rp));
            println!(
                "  floor: tar -I zstd -xf + bwrap true with the runtime's flags  median {}  p95 {}",
                ms(fm),
                ms(p95(&mut floors.clone()))
            );
            println!("  ratio resume/floor (medians) = {:.2}  (target <= 1.5)", rm / fm);
            let mm = median(&mut minimal.clone());
            println!(
                "  (minimal floor: tar -I zstd -xf + bwrap --unshare-all true  median {}; ratio {:.2})",
                ms(mm),
                rm / mm
            );
        }
        if big && which != "resume" {
            let (sm, tm) = (median(&mut stops.clone()), median(&mut tars.clone()));
            let mb = content as f64 / 1e6;
            println!("stop, {label}: {n} runs, {mb:.0} MB of content");
            println!("  stop (request → stopped)    median {}  = {:.0} MB/s", ms(sm), mb / sm);
            println!("  tar -I zstd -cf             median {}  = {:.0} MB/s", ms(tm), mb / tm);
            println!("  ratio stop/tar throughput = {:.2}  (target >= 0.70)", tm / sm);
        }
    }
}

async fn scale() {
    let tmp = tempfile::tempdir().unwrap();
    let s = common::start(tmp.path(), &[]);
    let http =
        reqwest::Client::builder().timeout(Duration::from_secs(600)).pool_max_idle_per_host(256).build().unwrap();
    common::role(&http, &s, "bench").await;
    let (_, base_rss) = rss_mib(s.child.id());
    let mut first_wall = 0.0;
    let mut first_peak = 0.0;
    for batch in 0..5 {
        let t = Instant::now();
        let creates =
            (0..200).map(|_| call(&http, &s, Method::POST, "/v1/workspaces", Some(json!({"role_name": "bench"}))));
        let made: Vec<Value> = futures::future::join_all(creates).await;
        assert_eq!(made.len(), 200);
        loop {
            let l = call(&http, &s, Method::GET, "/v1/workspaces?status=idle", None).await;
            if l["workspaces"].as_array().unwrap().len() == 200 {
                break;
            }
            let failed = call(&http, &s, Method::GET, "/v1/workspaces?status=failed", None).await;
            assert!(failed["workspaces"].as_array().unwrap().is_empty(), "{failed}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let wall = t.elapsed().as_secs_f64();
        let (peak, _) = rss_mib(s.child.id());
        if batch == 0 {
            first_wall = wall;
            first_peak = peak;
            println!(
                "scale: 200 workspaces created at once, all idle after {wall:.2} s; server RSS before {base_rss:.0} MiB, peak {peak:.0} MiB"
            );
        }
        call(&http, &s, Method::POST, "/v1/workspaces/stop-all", None).await;
        loop {
            let l = call(&http, &s, Method::GET, "/v1/workspaces?status=stopped", None).await;
            if l["workspaces"].as_array().unwrap().len() == 200 * (batch + 1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let (data, key) = (s.data.clone(), s.key.clone());
    drop(s);
    // A fresh server over the 1,000 stopped workspaces (sandboxes of the first one are gone with it).
    let log = data.join("serve-2.log");
    let f = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(common::bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("EVERSHELL_LOG", "warn")
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    let url = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.starts_with("evershell listening on ")) {
            break l.trim_start_matches("evershell listening on ").to_string();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let list: Value = http
        .get(format!("{url}/v1/workspaces?include_archived=true"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let n = list["workspaces"].as_array().unwrap().len();
    assert_eq!(n, 1000, "{n}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (peak2, rss2) = rss_mib(child.id());
    println!(
        "scale: fresh server over {n} stopped workspaces (after start-up, recovery and listing all of them): RSS {rss2:.0} MiB, peak {peak2:.0} MiB"
    );
    println!(
        "scale summary: 200 to idle in {first_wall:.2} s, peak RSS {first_peak:.0} MiB; 1,000 stopped: RSS {rss2:.0} MiB"
    );
    let _ = child.kill();
    let _ = child.wait();
    // Its spare pod, set up at start-up, dies with it.
    evershell_runtime::local::kill_all_sandboxes(&data.join("pods"));
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let which = std::env::args().skip(1).find(|a| !a.starts_with('-')).unwrap_or_else(|| "all".into());
    if which == "all" || which == "resume" || which == "stop" {
        resume_and_stop_bench(&which).await;
    }
    if which == "all" || which == "scale" {
        scale().await;
    }
}
