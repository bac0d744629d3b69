//! What the agent reports about its sandbox (`GET /v1/info`): hostname, uid/gid and network interfaces, as the
//! process sees them. Lets tests and operators check isolation from the inside without an exec channel.

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Info {
    pub pod_id: Option<String>,
    pub hostname: String,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// Network interfaces of the agent's network namespace (`/proc/net/dev`).
    pub interfaces: Vec<String>,
}

pub fn collect(pod_id: Option<String>) -> Info {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
    let interfaces = std::fs::read_to_string("/proc/net/dev").map(|s| parse_net_dev(&s)).unwrap_or_default();
    // SAFETY: getuid/getgid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    Info { pod_id, hostname, uid, gid, pid: std::process::id(), interfaces }
}

/// Interface names from the text of `/proc/net/dev` (two header lines, then `name: counters…`).
fn parse_net_dev(text: &str) -> Vec<String> {
    let mut names: Vec<String> =
        text.lines().skip(2).filter_map(|l| l.split_once(':')).map(|(n, _)| n.trim().to_string()).collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_net_dev() {
        let text = "Inter-|   Receive\n face |bytes\n    lo: 0 0 0\n  eth0: 1 2 3\n";
        assert_eq!(super::parse_net_dev(text), ["eth0", "lo"]);
    }
}
