//! The pod's seccomp filter, modelled on the container runtimes' default profile: the system calls an unprivileged
//! workload never needs and a container escape usually does (mounting, new namespaces, kernel keyrings, BPF, perf,
//! userfaultfd, module and kexec loading, clock and swap control, reboot, open-by-handle) answer `EPERM`; `clone3`
//! answers `ENOSYS` (its flags sit behind a pointer a filter cannot read, so libc falls back to `clone`, whose
//! namespace flags are checked); on x86_64 the x32 ABI is refused outright. Everything else is allowed.
//!
//! The programs are generated once per runtime (seccompiler for the deny list, a five-instruction guard written here
//! for what seccompiler cannot express) and handed to bubblewrap through `--add-seccomp-fd` as sealed memfds.
//! bubblewrap also sets `no_new_privs`, which loading a filter requires.

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::{FromRawFd, OwnedFd};

use anyhow::{Context, anyhow};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch, sock_filter,
};

/// Refused outright with `EPERM`.
const DENIED: &[(&str, libc::c_long)] = &[
    ("acct", libc::SYS_acct),
    ("add_key", libc::SYS_add_key),
    ("bpf", libc::SYS_bpf),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("clock_settime", libc::SYS_clock_settime),
    ("delete_module", libc::SYS_delete_module),
    ("finit_module", libc::SYS_finit_module),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fsopen", libc::SYS_fsopen),
    ("fspick", libc::SYS_fspick),
    ("init_module", libc::SYS_init_module),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("kexec_load", libc::SYS_kexec_load),
    ("keyctl", libc::SYS_keyctl),
    ("mount", libc::SYS_mount),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("move_mount", libc::SYS_move_mount),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("open_tree", libc::SYS_open_tree),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("pivot_root", libc::SYS_pivot_root),
    ("quotactl", libc::SYS_quotactl),
    ("reboot", libc::SYS_reboot),
    ("request_key", libc::SYS_request_key),
    ("setns", libc::SYS_setns),
    ("settimeofday", libc::SYS_settimeofday),
    ("swapoff", libc::SYS_swapoff),
    ("swapon", libc::SYS_swapon),
    ("syslog", libc::SYS_syslog),
    ("umount2", libc::SYS_umount2),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("vhangup", libc::SYS_vhangup),
    #[cfg(target_arch = "x86_64")]
    ("ioperm", libc::SYS_ioperm),
    #[cfg(target_arch = "x86_64")]
    ("iopl", libc::SYS_iopl),
    #[cfg(target_arch = "x86_64")]
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    #[cfg(target_arch = "x86_64")]
    ("nfsservctl", libc::SYS_nfsservctl),
    #[cfg(target_arch = "x86_64")]
    ("sysfs", libc::SYS_sysfs),
    #[cfg(target_arch = "x86_64")]
    ("_sysctl", libc::SYS__sysctl),
    #[cfg(target_arch = "x86_64")]
    ("uselib", libc::SYS_uselib),
    #[cfg(target_arch = "x86_64")]
    ("ustat", libc::SYS_ustat),
];

/// Namespace flags `clone` and `unshare` may not carry.
const NAMESPACE_FLAGS: &[libc::c_int] = &[
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWCGROUP,
    0x80, // CLONE_NEWTIME
];

/// The two compiled programs, as the raw `sock_filter` arrays bubblewrap reads.
pub struct Programs {
    pub deny: Vec<u8>,
    pub guard: Vec<u8>,
}

/// Names of the system calls the filter refuses (for the docs and the escape suite).
pub fn denied_names() -> impl Iterator<Item = &'static str> {
    DENIED.iter().map(|(n, _)| *n).chain(["clone/unshare with namespace flags", "clone3 (ENOSYS)"])
}

fn target() -> anyhow::Result<TargetArch> {
    std::env::consts::ARCH.try_into().map_err(|e| anyhow!("no seccomp support for {}: {e:?}", std::env::consts::ARCH))
}

/// Build both programs for this machine's architecture.
pub fn build() -> anyhow::Result<Programs> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED.iter().map(|&(_, nr)| (nr, vec![])).collect();
    // clone(flags, …) and unshare(flags): any namespace bit set → EPERM. Rules of one syscall are alternatives.
    let ns_rules = || -> anyhow::Result<Vec<SeccompRule>> {
        NAMESPACE_FLAGS
            .iter()
            .map(|&f| {
                let bit = f as u32 as u64;
                let cond = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(bit), bit)?;
                Ok(SeccompRule::new(vec![cond])?)
            })
            .collect()
    };
    rules.insert(libc::SYS_clone, ns_rules()?);
    rules.insert(libc::SYS_unshare, ns_rules()?);
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), target()?)?;
    let deny: BpfProgram = filter.try_into().context("compiling the seccomp filter")?;
    Ok(Programs { deny: serialise(&deny), guard: serialise(&guard()) })
}

/// `clone3` → ENOSYS everywhere; on x86_64 every x32 system call (number with bit 30 set) → EPERM, so the deny
/// list cannot be bypassed through the x32 numbering. The architecture itself is checked by the deny program.
fn guard() -> Vec<sock_filter> {
    const LD_NR: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JGE: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let stmt = |code, k| sock_filter { code, jt: 0, jf: 0, k };
    let jump = |code, k, jt, jf| sock_filter { code, jt, jf, k };
    let errno = |e: i32| libc::SECCOMP_RET_ERRNO | (e as u32 & libc::SECCOMP_RET_DATA);
    let x32 = cfg!(target_arch = "x86_64");
    let mut p = vec![
        // seccomp_data.nr is at offset 0.
        stmt(LD_NR, 0),
        jump(JEQ, libc::SYS_clone3 as u32, 0, 1),
        stmt(RET, errno(libc::ENOSYS)),
    ];
    if x32 {
        p.push(jump(JGE, 0x4000_0000, 0, 1));
        p.push(stmt(RET, errno(libc::EPERM)));
    }
    p.push(stmt(RET, libc::SECCOMP_RET_ALLOW));
    p
}

fn serialise(prog: &[sock_filter]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prog.len() * 8);
    for f in prog {
        out.extend_from_slice(&f.code.to_ne_bytes());
        out.push(f.jt);
        out.push(f.jf);
        out.extend_from_slice(&f.k.to_ne_bytes());
    }
    out
}

/// A read-only, sealed memfd holding `bytes`, positioned at the start, for bubblewrap to read.
pub fn memfd(name: &str, bytes: &[u8]) -> anyhow::Result<OwnedFd> {
    let cname = std::ffi::CString::new(name)?;
    // SAFETY: plain syscall; the descriptor is owned at once.
    let raw = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error()).context("memfd_create");
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut f = std::fs::File::from(fd);
    f.write_all(bytes)?;
    f.seek(SeekFrom::Start(0))?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl on a descriptor we own.
    if unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&f), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(std::io::Error::last_os_error()).context("sealing the seccomp memfd");
    }
    Ok(f.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_compile_and_stay_small() {
        let p = build().unwrap();
        assert_eq!(p.deny.len() % 8, 0);
        assert!(p.deny.len() / 8 < 512, "{} instructions", p.deny.len() / 8);
        assert_eq!(p.guard.len() % 8, 0);
        assert!(denied_names().any(|n| n == "mount"));
    }

    #[test]
    fn memfd_reads_back() {
        use std::io::Read;
        let fd = memfd("t", b"abc").unwrap();
        let mut s = String::new();
        std::fs::File::from(fd).read_to_string(&mut s).unwrap();
        assert_eq!(s, "abc");
    }
}
