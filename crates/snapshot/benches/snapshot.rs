//! Snapshot throughput against the system `tar -I zstd` baseline, on a ~100 MB / 2,000-file workspace (half
//! source-like text, half random bytes, nested directories). Each of N runs (env `BENCH_RUNS`, default 7) does, in
//! turn: (a) `tar -I zstd -cf`, (b) `SnapshotStore::capture` into a local store (with its read-back check and
//! fsync), (c) `tar -I zstd -xf`, (d) `SnapshotStore::restore`. Prints medians and the capture/tar and restore/tar
//! throughput ratios; CPU times are shown too, as wall times on a shared box are noisy. Every step starts after a
//! `sync`. Then the same four steps on a sparse 8 GiB file (`tar --sparse` for the baseline), with the disk space
//! each restored copy allocates. Run: `cargo bench -p evershell-snapshot --bench snapshot` (`BENCH_EXTRA=1` adds
//! capture into an in-memory store and into a local store without fsync, to show where the time goes).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use evershell_core::ids::{OrgId, SnapshotId, WorkspaceId};
use evershell_snapshot::{SnapshotKeys, SnapshotStore};

const FILES: usize = 2_000;
const TARGET_BYTES: u64 = 100 << 20;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const WORDS: &[&str] = &[
    "fn",
    "let",
    "mut",
    "self",
    "impl",
    "struct",
    "pub",
    "return",
    "match",
    "Some",
    "None",
    "Ok",
    "Err",
    "async",
    "await",
    "String",
    "Vec",
    "usize",
    "config",
    "request",
    "response",
    "workspace",
    "snapshot",
    "error",
    "value",
    "index",
    "buffer",
    "stream",
    "client",
    "handler",
    "=",
    "==",
    "->",
    "=>",
    "{",
    "}",
    "(",
    ")",
    ";",
    "&",
    "::",
];

/// Source-like text: indented lines of words and numbers.
fn text(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 100);
    while out.len() < len {
        let indent = rng.below(4) as usize * 4;
        out.extend(std::iter::repeat_n(b' ', indent));
        for _ in 0..(3 + rng.below(9)) {
            if rng.below(8) == 0 {
                out.extend_from_slice(rng.below(100_000).to_string().as_bytes());
            } else {
                out.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
            }
            out.push(b' ');
        }
        out.push(b'\n');
    }
    out.truncate(len);
    out
}

fn random(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// 2,000 files in 20 × 10 nested directories; sizes vary (1 KiB … ~200 KiB) around a 50 KiB mean.
fn build_fixture(root: &Path) -> u64 {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mean = TARGET_BYTES / FILES as u64;
    let mut total = 0;
    for i in 0..FILES {
        let dir = root.join(format!("pkg{:02}/mod{}/src", i % 20, (i / 20) % 10));
        fs::create_dir_all(&dir).unwrap();
        let size = (1024 + rng.below(2 * (mean - 1024))) as usize;
        let (name, body) = if i % 2 == 0 {
            (format!("file{i:04}.rs"), text(&mut rng, size))
        } else {
            (format!("blob{i:04}.bin"), random(&mut rng, size))
        };
        fs::write(dir.join(name), &body).unwrap();
        total += body.len() as u64;
    }
    total
}

/// Wall time and CPU time of one run.
type Timing = (Duration, Duration);

/// User + system CPU time of this process (`self`) or of its waited-for children.
fn cpu(children: bool) -> Duration {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let who = if children { libc::RUSAGE_CHILDREN } else { libc::RUSAGE_SELF };
    assert_eq!(unsafe { libc::getrusage(who, &mut usage) }, 0);
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Wall time and CPU time of `f`, started with no dirty pages pending (so one step's writeback does not land in
/// the next step's time).
fn timed(children: bool, f: impl FnOnce()) -> Timing {
    unsafe { libc::sync() };
    let (t, c) = (Instant::now(), cpu(children));
    f();
    (t.elapsed(), cpu(children) - c)
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn run(cmd: &mut Command) {
    let status = cmd.status().expect("running a baseline command");
    assert!(status.success(), "{cmd:?} failed");
}

fn fresh_dir(base: &Path, name: &str) -> PathBuf {
    let dir = base.join(name);
    if dir.exists() {
        fs::remove_dir_all(&dir).unwrap();
    }
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probing for tests
    }
    assert!(Command::new("zstd").arg("--version").output().is_ok(), "install zstd (apt-get install -y zstd)");
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(7);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("workspace");
    let content = build_fixture(&src);
    let mb = content as f64 / 1e6;
    println!("fixture: {FILES} files, {mb:.1} MB of content, {runs} runs each");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = SnapshotStore::local(&work.path().join("store")).unwrap();
    let archive = work.path().join("out.tar.zst");
    let mut m: [Vec<Timing>; 4] = Default::default();
    let mut sizes = (0, 0);
    for _ in 0..runs {
        let _ = fs::remove_file(&archive);
        m[0].push(timed(true, || {
            run(Command::new("tar").args(["-I", "zstd", "-cf"]).arg(&archive).arg("-C").arg(&src).arg("."))
        }));
        sizes.0 = fs::metadata(&archive).unwrap().len();

        let keys = SnapshotKeys::new(OrgId::new(), WorkspaceId::new(), SnapshotId::new());
        let ids = (OrgId::new(), WorkspaceId::new(), SnapshotId::new());
        m[1].push(timed(false, || sizes.1 = rt.block_on(store.capture(&src, &keys, ids)).unwrap().archive_bytes));

        let out = fresh_dir(work.path(), "tar-x");
        m[2].push(timed(true, || {
            run(Command::new("tar").args(["-I", "zstd", "-xf"]).arg(&archive).arg("-C").arg(&out))
        }));

        let out = fresh_dir(work.path(), "restore");
        m[3].push(timed(false, || drop(rt.block_on(store.restore(&keys, &out)).unwrap())));
        rt.block_on(store.delete(&keys)).unwrap();
    }
    let line = |name: &str, runs: &[Timing]| {
        let wall = median(runs.iter().map(|r| r.0).collect());
        let cpu = median(runs.iter().map(|r| r.1).collect());
        println!(
            "{name:<36} {:>8.1} ms {:>7.1} MB/s   (cpu {:>7.1} ms)",
            wall.as_secs_f64() * 1e3,
            mb / wall.as_secs_f64(),
            cpu.as_secs_f64() * 1e3
        );
        wall
    };
    let a = line("(a) tar -I zstd -cf", &m[0]);
    let b = line("(b) SnapshotStore::capture", &m[1]);
    let c = line("(c) tar -I zstd -xf", &m[2]);
    let d = line("(d) SnapshotStore::restore", &m[3]);
    println!("archive bytes: tar {} / capture {}", sizes.0, sizes.1);
    println!("capture throughput / tar: {:.2}x (target >= 0.70x)", a.as_secs_f64() / b.as_secs_f64());
    println!("restore throughput / tar: {:.2}x", c.as_secs_f64() / d.as_secs_f64());
    sparse_case(&rt, &store, work.path(), runs);
    if std::env::var_os("BENCH_EXTRA").is_some() {
        extra(&rt, &src, work.path(), runs, &line);
    }
}

/// A disk bomb: one 8 GiB sparse file holding 72 KiB of data (4 KiB at 0, 64 KiB at 3 GiB, 4 KiB at the end),
/// through `tar --sparse -I zstd -cf` / `-xf` and capture / restore. Before holes were kept, the capture read 8 GiB
/// of zeros (~24 s of CPU) and the restore wrote 8.1 GB.
fn sparse_case(rt: &tokio::runtime::Runtime, store: &SnapshotStore, work: &Path, runs: usize) {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let src = fresh_dir(work, "sparse-workspace");
    let img = fs::File::create(src.join("disk.img")).unwrap();
    let mut rng = Rng(7);
    for (offset, len) in [(0u64, 4096usize), (3 << 30, 65536), ((8 << 30) - 4096, 4096)] {
        img.write_all_at(&random(&mut rng, len), offset).unwrap();
    }
    img.set_len(8 << 30).unwrap();
    drop(img);
    let archive = work.join("sparse.tar.zst");
    let mut m: [Vec<Timing>; 4] = Default::default();
    let mut allocated = (0, 0);
    for _ in 0..runs {
        let _ = fs::remove_file(&archive);
        m[0].push(timed(true, || {
            run(Command::new("tar").args(["--sparse", "-I", "zstd", "-cf"]).arg(&archive).arg("-C").arg(&src).arg("."))
        }));
        let keys = SnapshotKeys::new(OrgId::new(), WorkspaceId::new(), SnapshotId::new());
        let ids = (OrgId::new(), WorkspaceId::new(), SnapshotId::new());
        m[1].push(timed(false, || drop(rt.block_on(store.capture(&src, &keys, ids)).unwrap())));
        let out = fresh_dir(work, "sparse-tar-x");
        m[2].push(timed(true, || {
            run(Command::new("tar").args(["-I", "zstd", "-xf"]).arg(&archive).arg("-C").arg(&out))
        }));
        allocated.0 = fs::metadata(out.join("disk.img")).unwrap().blocks() * 512;
        let out = fresh_dir(work, "sparse-restore");
        m[3].push(timed(false, || drop(rt.block_on(store.restore(&keys, &out)).unwrap())));
        allocated.1 = fs::metadata(out.join("disk.img")).unwrap().blocks() * 512;
        rt.block_on(store.delete(&keys)).unwrap();
    }
    println!("sparse 8 GiB file, 72 KiB of data:");
    let names = [
        "(e) tar --sparse -I zstd -cf",
        "(f) SnapshotStore::capture",
        "(g) tar -I zstd -xf",
        "(h) SnapshotStore::restore",
    ];
    for (name, runs) in names.iter().zip(&m) {
        let wall = median(runs.iter().map(|r| r.0).collect());
        let cpu = median(runs.iter().map(|r| r.1).collect());
        println!("{name:<36} {:>8.1} ms   (cpu {:>7.1} ms)", wall.as_secs_f64() * 1e3, cpu.as_secs_f64() * 1e3);
    }
    println!("restored disk.img allocates: tar {} bytes / restore {} bytes", allocated.0, allocated.1);
}

/// Where capture time goes: the same capture into stores without durability costs.
fn extra(
    rt: &tokio::runtime::Runtime,
    src: &Path,
    work: &Path,
    runs: usize,
    line: &dyn Fn(&str, &[Timing]) -> Duration,
) {
    let memory = SnapshotStore::new(std::sync::Arc::new(object_store::memory::InMemory::new()));
    let root = fresh_dir(work, "nofsync");
    let nofsync =
        SnapshotStore::new(std::sync::Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&root).unwrap()));
    for (name, store) in [("(b') capture, in-memory store", &memory), ("(b'') capture, local without fsync", &nofsync)]
    {
        let mut times = vec![];
        for _ in 0..runs {
            let keys = SnapshotKeys::new(OrgId::new(), WorkspaceId::new(), SnapshotId::new());
            let ids = (OrgId::new(), WorkspaceId::new(), SnapshotId::new());
            times.push(timed(false, || drop(rt.block_on(store.capture(src, &keys, ids)).unwrap())));
            rt.block_on(store.delete(&keys)).unwrap();
        }
        line(name, &times);
    }
}
