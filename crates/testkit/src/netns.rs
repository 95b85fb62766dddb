//! Test hosts in network namespaces: a public server (Control and Gateways), a NAT router, and an
//! Agent host behind it. Created per test with unique names and addresses in 198.18.0.0/15
//! (reserved for benchmarks, never routed), removed when dropped.
//!
//! ```text
//!  test (root ns) ──veth── server ns ──veth── router ns (masquerade) ──veth── agent ns
//!   198.18.N.1        198.18.N.2  198.18.N.9     198.18.N.10 | .17          198.18.N.18 (/29)
//! ```

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Whether this machine can run namespace tests; otherwise why not (a missing tool or not root).
pub fn netns_unavailable() -> Option<String> {
    if !crate::peers::is_root() {
        return Some("network-namespace tests need root".into());
    }
    for (tool, package) in [("ip", "iproute2"), ("nft", "nftables")] {
        if Command::new(tool).arg("-V").output().is_err() {
            return Some(format!("`{tool}` is missing: apt-get install {package}"));
        }
    }
    None
}

/// Skips (loudly) or fails a test that cannot create network namespaces on this machine.
#[macro_export]
macro_rules! require_netns {
    () => {
        $crate::skip_unless!(module_path!(), $crate::netns::netns_unavailable())
    };
}

/// Runs `command` with `sh -c`; panics with its stderr when it fails.
pub fn sh(command: &str) {
    let out = Command::new("sh").arg("-c").arg(command).output().unwrap();
    assert!(
        out.status.success(),
        "`{command}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The three test hosts and their links; removed when dropped.
pub struct Topology {
    pub id: String,
    pub n: u8,
    pub server: String,
    pub router: String,
    pub agent: String,
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

impl Topology {
    pub fn new() -> Topology {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let n = claim_subnet();
        let id = format!("{:x}x{k}", std::process::id()); // "kt" + id fits IFNAMSIZ
        let t = Topology {
            server: format!("kms{id}"),
            router: format!("kmr{id}"),
            agent: format!("kma{id}"),
            id,
            n,
        };
        t.create();
        t
    }

    /// Address of the server as the test (root namespace) sees it.
    pub fn server_from_test(&self) -> String {
        format!("198.18.{}.2", self.n)
    }

    /// Address of the server as Agents (behind the router) see it.
    pub fn server_public(&self) -> String {
        format!("198.18.{}.9", self.n)
    }

    fn create(&self) {
        let (n, id) = (self.n, &self.id);
        let (s, r, a) = (&self.server, &self.router, &self.agent);
        for ns in [s, r, a] {
            sh(&format!("ip netns add {ns} && ip -n {ns} link set lo up"));
        }
        sh(&format!(
            "ip link add kt{id} type veth peer name ks{id} && ip link set ks{id} netns {s} && \
             ip addr add 198.18.{n}.1/30 dev kt{id} && ip link set kt{id} up && \
             ip -n {s} addr add 198.18.{n}.2/30 dev ks{id} && ip -n {s} link set ks{id} up"
        ));
        sh(&format!(
            "ip -n {s} link add kx{id} type veth peer name ky{id} && ip -n {s} link set ky{id} netns {r} && \
             ip -n {s} addr add 198.18.{n}.9/29 dev kx{id} && ip -n {s} link set kx{id} up && \
             ip -n {r} addr add 198.18.{n}.10/29 dev ky{id} && ip -n {r} link set ky{id} up"
        ));
        sh(&format!(
            "ip -n {r} link add kl{id} type veth peer name ka{id} && ip -n {r} link set ka{id} netns {a} && \
             ip -n {r} addr add 198.18.{n}.17/29 dev kl{id} && ip -n {r} link set kl{id} up && \
             ip -n {a} addr add 198.18.{n}.18/29 dev ka{id} && ip -n {a} link set ka{id} up && \
             ip -n {a} route add default via 198.18.{n}.17"
        ));
        // The router forwards and masquerades: the agent host has no inbound reachability.
        sh(&format!(
            "ip netns exec {r} sysctl -qw net.ipv4.ip_forward=1 && \
             ip netns exec {r} nft add table ip nat && \
             ip netns exec {r} nft add chain ip nat post '{{ type nat hook postrouting priority 100; }}' && \
             ip netns exec {r} nft add rule ip nat post oifname ky{id} masquerade"
        ));
    }

    /// Moves the agent host to another address behind the NAT: its traffic now gets a new NAT
    /// mapping (a new public source port), as when a home router reboots or a laptop roams.
    pub fn change_agent_address(&self) {
        let (n, id, a) = (self.n, &self.id, &self.agent);
        sh(&format!(
            "ip -n {a} addr del 198.18.{n}.18/29 dev ka{id} && ip -n {a} addr add 198.18.{n}.19/29 dev ka{id} && \
             ip -n {a} route replace default via 198.18.{n}.17"
        ));
    }

    /// Cuts (or restores) the link between the router and the server.
    pub fn set_uplink(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        sh(&format!(
            "ip -n {} link set ky{} {state}",
            self.router, self.id
        ));
    }
}

/// Claims a free 198.18.N.0/24 for this topology across every test process on the machine (tests
/// run in parallel processes): an exclusively created lock file per N, removed on drop; a lock
/// older than an hour is taken as left behind by a killed run.
fn claim_subnet() -> u8 {
    let start = std::process::id() as usize;
    for i in 0..250 {
        let n = ((start + i * 7) % 250 + 1) as u8;
        let lock = lock_path(n);
        let stale = std::fs::metadata(&lock)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() > std::time::Duration::from_secs(3600));
        if stale {
            let _ = std::fs::remove_file(&lock);
        }
        if std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
            .is_ok()
        {
            return n;
        }
    }
    panic!(
        "no free 198.18.N.0/24 for a test topology (lock files in {})",
        std::env::temp_dir().display()
    );
}

fn lock_path(n: u8) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("kakuremichi-netns-198.18.{n}.lock"))
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [&self.agent, &self.router, &self.server] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &format!("kt{}", self.id)])
            .output();
        // Only now may another test take the subnet.
        let _ = std::fs::remove_file(lock_path(self.n));
    }
}
