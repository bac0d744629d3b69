//! Pod networking: each pod gets its own network namespace (`/run/netns/evs-<pod_id>`), joined to the host by a
//! veth pair (`ev<P>h<n>` on the host, `ev<P>p<n>` in the pod: `P` = the proxy port in hex, so each server's pods
//! share a prefix of their own; `n` = the pod's uid index, claimed host-wide, so names and addresses are unique on
//! the host). Addresses: the pod's /30 of `10.212.0.0/14`, host side `.1`, pod side `.2`, default route via the host
//! side; IPv6 is switched off inside the namespace (no address, no route: an IPv6 connect fails at once). The
//! namespace belongs to the host's user namespace, so the pod (in its own user namespace) can change nothing in it.
//!
//! The rules live on the host, in one table per server (`table inet evershell_<proxy port>`), installed once at
//! start-up and matching the server's interface prefix (`iifname "ev<P>h*"`), so a pod costs no nftables call at all:
//! TCP and UDP port 53 go to the DNS responder, all other TCP is redirected to the egress proxy (the original
//! destination stays readable with `SO_ORIGINAL_DST`, since the host's conntrack made the redirect), only those two
//! ports are accepted, everything else is refused at once with an ICMP error (a refused connect, never a hang), and
//! nothing is ever forwarded. What is neither TCP nor DNS is refused as it arrives (a filter chain at prerouting),
//! not only at the forward hook: with `net.ipv4.ip_forward = 0` the kernel would drop such a packet silently before
//! the forward hook, and the pod would wait for an answer instead of being refused. The DNS redirect, the early
//! refusal and the forward refusal count their packets (`nft list table inet evershell_<port>`: comments
//! `pod-dns`, `pod-refused`, `pod-forward`), which shows what pods sent and that nothing of theirs left the host.
//! With no proxy listening, a pod's connections are refused at once.
//!
//! A pod's set-up is two `ip -batch` processes (the namespace and the host end; then the pod end) and two sysctl
//! writes from a thread joined to the namespace; spare pods are set up with theirs, so a create that takes a spare
//! pays nothing for it.
//!
//! Needs root (or `CAP_NET_ADMIN`) and the `ip` and `nft` commands; without them the runtime says so at start-up and
//! pods keep a namespace of their own with loopback only (bubblewrap's `--unshare-net`).

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// Where the redirected traffic goes on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub proxy: u16,
    pub dns: u16,
}

pub const DEFAULT_PROXY_PORT: u16 = 15001;
pub const DEFAULT_DNS_PORT: u16 = 15053;

/// The pod's namespace name.
pub fn name(pod: &str) -> String {
    format!("evs-{pod}")
}

/// The host and pod addresses of the pod with uid index `index`.
pub fn addresses(index: u32) -> (Ipv4Addr, Ipv4Addr) {
    let base = u32::from(Ipv4Addr::new(10, 212, 0, 0)) + 4 * (index % 65_536);
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}

fn run(cmd: &mut Command, stdin: Option<&str>) -> anyhow::Result<()> {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("running {cmd:?}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        pipe.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{:?} failed ({}): {}", cmd, out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Whether this host can give pods their own network: root, and `ip` and `nft` that work; then the server's host
/// rules are installed (replacing those of an earlier run on the same ports). `Err` says why not (logged at
/// start-up).
pub fn setup_host(ports: Ports) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("pod networking needs root (CAP_NET_ADMIN)");
    }
    for tool in ["ip", "nft"] {
        if !Command::new(tool).arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
        {
            bail!("pod networking needs `{tool}` (apt-get install iproute2 nftables)");
        }
    }
    run(Command::new("nft").args(["-f", "-"]), Some(&host_rules(ports))).context("installing the pods' nftables rules")
}

/// The server's nftables table (`inet` family). It stays when the server stops: pods outlive the control plane,
/// and their traffic must stay confined while it is down.
pub fn table(ports: Ports) -> String {
    format!("evershell_{}", ports.proxy)
}

/// The interface-name prefix of this server's pods (host side `…h<n>`, pod side `…p<n>`).
fn prefix(ports: Ports) -> String {
    format!("ev{:x}", ports.proxy)
}

/// The server's rules for all its pods' interfaces, in a table of its own (so servers on one host, each with its
/// own proxy port, never rewrite each other's rules). Replaced as a whole, atomically (declaring the table first
/// makes the delete valid when it does not exist yet).
fn host_rules(ports: Ports) -> String {
    let (dns, proxy, table) = (ports.dns, ports.proxy, table(ports));
    let pods = format!("{}h*", prefix(ports));
    format!(
        "table inet {table} {{}}
delete table inet {table}
table inet {table} {{
  chain refuse {{
    type filter hook prerouting priority mangle; policy accept;
    iifname \"{pods}\" meta l4proto tcp accept
    iifname \"{pods}\" udp dport 53 accept
    iifname \"{pods}\" counter reject with icmpx type admin-prohibited comment \"pod-refused\"
  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname \"{pods}\" meta l4proto {{ tcp, udp }} th dport 53 counter redirect to :{dns} comment \"pod-dns\"
    iifname \"{pods}\" meta l4proto tcp redirect to :{proxy}
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname \"{pods}\" tcp dport {proxy} accept
    iifname \"{pods}\" meta l4proto {{ tcp, udp }} th dport {dns} accept
    iifname \"{pods}\" reject with icmpx type admin-prohibited
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname \"{pods}\" counter reject with icmpx type admin-prohibited comment \"pod-forward\"
    oifname \"{pods}\" drop
  }}
}}
"
    )
}

/// The host and pod interface names of the pod with index `index`.
pub fn interfaces(ports: Ports, index: u32) -> (String, String) {
    let p = prefix(ports);
    (format!("{p}h{index}"), format!("{p}p{index}"))
}

fn iface_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Create the pod's namespace, veth pair, addresses and route, with IPv6 off inside. Idempotent: a namespace whose
/// host end is in place is left as it is (a pod restarted after a control-plane restart keeps its network); one
/// without (a server on other ports made it) is made again.
pub fn create(pod: &str, index: u32, ports: Ports) -> anyhow::Result<()> {
    let ns = name(pod);
    let (h, p) = interfaces(ports, index);
    if Path::new("/run/netns").join(&ns).exists() {
        if iface_exists(&h) {
            return Ok(());
        }
        remove(pod);
    }
    let (host, peer) = addresses(index);
    let made = (|| -> anyhow::Result<()> {
        let mut host_cmds = format!("netns add {ns}\n");
        // A leftover host end of an earlier pod with the same index (crash) goes first.
        if iface_exists(&h) {
            host_cmds.push_str(&format!("link del {h}\n"));
        }
        host_cmds.push_str(&format!(
            "link add {h} type veth peer name {p} netns {ns}\naddr add {host}/30 dev {h}\nlink set {h} up\n"
        ));
        run(Command::new("ip").args(["-batch", "-"]), Some(&host_cmds))?;
        disable_ipv6(&ns)?;
        let pod_cmds = format!(
            "link set lo up\naddr add {peer}/30 dev {p}\nlink set {p} up\nroute add default via {host} dev {p}\n"
        );
        run(Command::new("ip").args(["-n", &ns, "-batch", "-"]), Some(&pod_cmds))?;
        Ok(())
    })();
    if let Err(e) = made {
        remove(pod);
        return Err(e.context(format!("setting up the network of pod {pod}")));
    }
    Ok(())
}

/// Switch IPv6 off for every interface of the namespace `ns`, from a thread of its own joined to it (sysctls under
/// `/proc/sys/net` are those of the opener's network namespace).
fn disable_ipv6(ns: &str) -> anyhow::Result<()> {
    let path = Path::new("/run/netns").join(ns);
    let f = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<()> {
            use std::os::fd::AsRawFd;
            // SAFETY: setns(2) of this short-lived thread only; it ends right after.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("joining the pod's network namespace");
            }
            if !Path::new("/proc/sys/net/ipv6").exists() {
                return Ok(()); // IPv6 is off in this kernel altogether.
            }
            for conf in ["all", "default"] {
                let p = format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6");
                std::fs::write(&p, b"1").with_context(|| format!("writing {p}"))?;
            }
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the namespace thread panicked")))
    })
}

/// Open the pod's namespace for `setns` (the sandbox joins it before it drops to the pod's uid).
pub fn open(pod: &str) -> anyhow::Result<OwnedFd> {
    let path = Path::new("/run/netns").join(name(pod));
    let f = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    Ok(f.into())
}

/// Delete the pod's namespace (its veth pair goes with it). Absent is fine.
pub fn remove(pod: &str) {
    let ns = name(pod);
    if Path::new("/run/netns").join(&ns).exists() {
        if let Err(e) = run(Command::new("ip").args(["netns", "del", &ns]), None) {
            tracing::warn!(error = %format!("{e:#}"), "deleting a pod's network namespace failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_a_private_slash_30_per_index() {
        assert_eq!(addresses(0), (Ipv4Addr::new(10, 212, 0, 1), Ipv4Addr::new(10, 212, 0, 2)));
        assert_eq!(addresses(1), (Ipv4Addr::new(10, 212, 0, 5), Ipv4Addr::new(10, 212, 0, 6)));
        assert_eq!(addresses(65_535), (Ipv4Addr::new(10, 215, 255, 253), Ipv4Addr::new(10, 215, 255, 254)));
        assert_eq!(name("pod_x"), "evs-pod_x");
    }
}
