//! Pod networking: each pod gets its own network namespace (`/run/netns/evs-<pod_id>`), joined to the host by a
//! veth pair (`evh<n>` on the host, `evp<n>` in the pod, `n` = the pod's uid index, so names and addresses are unique
//! on the host). Addresses: the pod's /30 of `10.212.0.0/14`, host side `.1`, pod side `.2`, default route via the
//! host side. The namespace belongs to the host's user namespace, so the pod (in its own user namespace) can change
//! nothing in it.
//!
//! Rules, in two places:
//! * in the pod's namespace (`table inet evershell_pod`): IPv6 refused, TCP allowed, DNS (UDP and TCP 53) allowed,
//!   everything else refused at once with an ICMP error (a refused connect, never a hang);
//! * on the host, once (`table inet evershell`): from any `evh*` interface, TCP and UDP port 53 go to the DNS
//!   responder, all other TCP is redirected to the egress proxy (the original destination stays readable with
//!   `SO_ORIGINAL_DST`, since the host's conntrack made the redirect), only those two ports are accepted, and nothing
//!   is ever forwarded. With no proxy listening, a pod's connections are refused at once.
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

/// Whether this host can give pods their own network: root, and `ip` and `nft` that work. `Err` says why not
/// (logged at start-up).
pub fn check_host() -> anyhow::Result<()> {
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
    run(Command::new("nft").args(["-c", "-f", "-"]), Some(&host_rules("evs_probe", "evh0", Ports { proxy: 1, dns: 2 })))
        .context("nftables cannot take the pods' rules")
}

/// The host's rules for one pod's interface, in a table of the pod's own (so servers on one host, each with its
/// own proxy port, never rewrite each other's rules). Replaced as a whole, atomically (declaring the table first
/// makes the delete valid when it does not exist yet).
fn host_rules(table: &str, iface: &str, ports: Ports) -> String {
    let (dns, proxy) = (ports.dns, ports.proxy);
    format!(
        "table inet {table} {{}}
delete table inet {table}
table inet {table} {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname \"{iface}\" meta l4proto {{ tcp, udp }} th dport 53 redirect to :{dns}
    iifname \"{iface}\" meta l4proto tcp redirect to :{proxy}
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname \"{iface}\" tcp dport {proxy} accept
    iifname \"{iface}\" meta l4proto {{ tcp, udp }} th dport {dns} accept
    iifname \"{iface}\" reject with icmpx type admin-prohibited
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname \"{iface}\" drop
    oifname \"{iface}\" drop
  }}
}}
"
    )
}

fn table(pod: &str) -> String {
    format!("evs_{pod}")
}

/// The rules inside a pod's namespace.
fn pod_rules() -> &'static str {
    "table inet evershell_pod {
  chain output {
    type filter hook output priority filter; policy accept;
    oifname \"lo\" accept
    meta nfproto ipv6 reject with icmpx type admin-prohibited
    meta l4proto tcp accept
    meta l4proto { tcp, udp } th dport 53 accept
    reject with icmpx type admin-prohibited
  }
}
"
}

/// Create the pod's namespace, veth pair, addresses, route and rules (in the namespace, and the host's for its
/// interface). Idempotent: an existing namespace is left as it is (a pod restarted after a control-plane restart
/// keeps its network).
pub fn create(pod: &str, index: u32, ports: Ports) -> anyhow::Result<()> {
    let ns = name(pod);
    if Path::new("/run/netns").join(&ns).exists() {
        return Ok(());
    }
    let (host, peer) = addresses(index);
    let (h, p) = (format!("evh{index}"), format!("evp{index}"));
    let made = (|| -> anyhow::Result<()> {
        run(Command::new("ip").args(["netns", "add", &ns]), None)?;
        // A leftover host end of an earlier pod with the same index (crash) goes first.
        let _ = run(Command::new("ip").args(["link", "del", &h]), None);
        let host_cmds =
            format!("link add {h} type veth peer name {p} netns {ns}\naddr add {host}/30 dev {h}\nlink set {h} up\n");
        run(Command::new("ip").args(["-batch", "-"]), Some(&host_cmds))?;
        let pod_cmds = format!(
            "link set lo up\naddr add {peer}/30 dev {p}\nlink set {p} up\nroute add default via {host} dev {p}\n"
        );
        run(Command::new("ip").args(["-n", &ns, "-batch", "-"]), Some(&pod_cmds))?;
        run(Command::new("ip").args(["netns", "exec", &ns, "nft", "-f", "-"]), Some(pod_rules()))?;
        run(Command::new("nft").args(["-f", "-"]), Some(&host_rules(&table(pod), &h, ports)))?;
        Ok(())
    })();
    if let Err(e) = made {
        remove(pod);
        return Err(e.context(format!("setting up the network of pod {pod}")));
    }
    Ok(())
}

/// Open the pod's namespace for `setns` (the sandbox joins it before it drops to the pod's uid).
pub fn open(pod: &str) -> anyhow::Result<OwnedFd> {
    let path = Path::new("/run/netns").join(name(pod));
    let f = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    Ok(f.into())
}

/// Delete the pod's namespace (its veth pair goes with it) and its host rules. Absent is fine.
pub fn remove(pod: &str) {
    let ns = name(pod);
    if Path::new("/run/netns").join(&ns).exists() {
        if let Err(e) = run(Command::new("ip").args(["netns", "del", &ns]), None) {
            tracing::warn!(error = %format!("{e:#}"), "deleting a pod's network namespace failed");
        }
        let t = table(pod);
        let _ =
            run(Command::new("nft").args(["-f", "-"]), Some(&format!("table inet {t} {{}}\ndelete table inet {t}\n")));
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
