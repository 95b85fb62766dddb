//! The wireguard-go side of the interoperability test: requirements, the namespace and veth
//! pair with wireguard-go in it (removed on drop), and the shell and polling helpers.

use super::*;
use kakuremichi_testkit::{eventually, peers};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use tokio::io::BufReader;
use tokio::process::Child;

// ---------------------------------------------------------------------------------------------
// Requirements

/// What is missing to run this test, with the package that provides it.
fn missing_requirements() -> Vec<String> {
    let mut missing = Vec::new();
    if !peers::is_root() {
        missing.push("root (to create network namespaces and a TUN device)".to_owned());
    }
    for (binary, package) in [
        ("wireguard-go", "wireguard-go"),
        ("wg", "wireguard-tools"),
        ("ip", "iproute2"),
        ("curl", "curl"),
    ] {
        if peers::find_in_path(&[binary]).is_none() {
            missing.push(format!(
                "`{binary}` (apt-get install -y {package}; Debian package `{package}`)"
            ));
        }
    }
    if !Path::new("/dev/net/tun").exists() {
        missing.push("/dev/net/tun (a TUN device for wireguard-go)".to_owned());
    }
    missing
}

/// True when the test can run; false (after a loud message) when it is skipped. Panics when it
/// cannot run but must (`CI` set or `KAKUREMICHI_REQUIRE_PEERS=1`).
pub(super) fn requirements_met(test: &str) -> bool {
    let missing = missing_requirements();
    let why = (!missing.is_empty()).then(|| {
        format!(
            "the wireguard-go interoperability tests need: {}. Install with: \
             apt-get install -y wireguard-go wireguard-tools iproute2 curl (and run as root)",
            missing.join("; ")
        )
    });
    peers::can_run(test, why)
}

// ---------------------------------------------------------------------------------------------
// The namespace, the veth pair, the processes, and their cleanup

/// Names and addresses of everything this run creates; dropping it removes all of it.
pub(super) struct Lab {
    pub(super) netns: String,
    pub(super) veth_root: String,
    pub(super) veth_ns: String,
    pub(super) wg_if: String,
    pub(super) root_ip: Ipv4Addr,
    pub(super) ns_ip: Ipv4Addr,
    pub(super) dir: PathBuf,
    /// Long-running processes (wireguard-go, the file server), killed on drop.
    pub(super) children: Vec<(&'static str, Child)>,
}

impl Lab {
    pub(super) fn new() -> Self {
        // Several labs per process when the tests run as threads of one process.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let k = NEXT.fetch_add(1, Ordering::Relaxed) % 4;
        let id = format!("{}x{k}", std::process::id());
        // A /30 out of 198.18.0.0/15 (benchmarking TEST-NET), one per process id and lab.
        let slot = (std::process::id() % (1 << 13)) * 4 + k;
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + slot * 4;
        let dir = std::env::temp_dir().join(format!("kmwg-test-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self {
            netns: format!("kmwg{id}"),
            veth_root: format!("kmwg{id}r"),
            veth_ns: format!("kmwg{id}n"),
            // Not a fixed name like `wgkm0`: wireguard-go's control socket
            // (/var/run/wireguard/NAME.sock) is not per namespace, so parallel runs would clash.
            wg_if: format!("wgkm{id}"),
            root_ip: Ipv4Addr::from(base + 1),
            ns_ip: Ipv4Addr::from(base + 2),
            dir,
            children: Vec::new(),
        }
    }

    pub(super) fn wg_log(&self) -> PathBuf {
        self.dir.join("wireguard-go.log")
    }

    /// Namespace with lo up, and a veth pair: root end `root_ip/30`, namespace end `ns_ip/30`.
    pub(super) async fn create_network(&self) {
        // Leftovers of a killed earlier run with the same process id.
        quiet(&["ip", "netns", "del", &self.netns]);
        quiet(&["ip", "link", "del", &self.veth_root]);
        let (ns, r, n) = (&self.netns, &self.veth_root, &self.veth_ns);
        let root_cidr = format!("{}/30", self.root_ip);
        let ns_cidr = format!("{}/30", self.ns_ip);
        run(&["ip", "netns", "add", ns]).await;
        run(&["ip", "-n", ns, "link", "set", "lo", "up"]).await;
        run(&["ip", "link", "add", r, "type", "veth", "peer", "name", n]).await;
        run(&["ip", "link", "set", n, "netns", ns]).await;
        run(&["ip", "addr", "add", &root_cidr, "dev", r]).await;
        run(&["ip", "link", "set", r, "up"]).await;
        run(&["ip", "-n", ns, "addr", "add", &ns_cidr, "dev", n]).await;
        run(&["ip", "-n", ns, "link", "set", n, "up"]).await;
    }

    /// Starts wireguard-go in the foreground inside the namespace; returns once `wg` reaches it.
    pub(super) async fn start_wireguard_go(&mut self) {
        let log = std::fs::File::create(self.wg_log()).expect("create wireguard-go log");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "wireguard-go",
                "-f",
                &self.wg_if,
            ])
            .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
            .env("LOG_LEVEL", "verbose")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log file"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn wireguard-go");
        let child = RefCell::new(child);
        eventually(STEP, "wireguard-go to come up", || async {
            if let Ok(Some(status)) = child.borrow_mut().try_wait() {
                panic!(
                    "wireguard-go exited at start ({status}):\n{}",
                    std::fs::read_to_string(self.wg_log()).unwrap_or_default()
                );
            }
            let probe = Command::new("ip")
                .args(["netns", "exec", &self.netns, "wg", "show", &self.wg_if])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
            probe.is_ok_and(|s| s.success())
        })
        .await;
        self.children.push(("wireguard-go", child.into_inner()));
    }

    /// Runs this test binary inside the namespace as a file server on `THEIRS`; returns its port.
    pub(super) async fn start_file_server(&mut self, file: &Path) -> u16 {
        let exe = std::env::current_exe().expect("own executable");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(exe)
            .args([
                "--ignored",
                "--exact",
                "netns_file_server",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(SERVE_ENV, format!("{THEIRS} {}", file.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the in-namespace file server");
        let stdout = child.stdout.take().unwrap();
        self.children.push(("file server", child));
        let mut lines = BufReader::new(stdout).lines();
        timeout(STEP, async {
            while let Some(line) = lines.next_line().await.expect("read file server output") {
                if let Some(rest) = line.split_once(READY).map(|(_, r)| r) {
                    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    return digits.parse::<u16>().expect("port in ready line");
                }
            }
            panic!("file server exited before it was ready");
        })
        .await
        .expect("file server ready in time")
    }

    /// Datagrams the namespace's UDP sockets dropped for a full receive buffer, so far (what
    /// bursts too large for wireguard-go's socket cost); `None` when `nstat` cannot tell.
    pub(super) async fn udp_rcvbuf_errors(&self) -> Option<u64> {
        let cmd = self.ns_cmd(&["nstat", "-az", "UdpRcvbufErrors"]);
        let out = Command::new(&cmd[0]).args(&cmd[1..]).output().await.ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().find(|l| l.starts_with("UdpRcvbufErrors"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    pub(super) fn ns_cmd(&self, args: &[&str]) -> Vec<String> {
        ["ip", "netns", "exec", &self.netns]
            .iter()
            .chain(args)
            .map(|s| s.to_string())
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (name, child) in &mut self.children {
            let Some(pid) = child.id() else { continue };
            // SIGTERM first so wireguard-go removes its TUN device and control socket.
            quiet(&["kill", "-TERM", &pid.to_string()]);
            let deadline = Instant::now() + Duration::from_secs(3);
            while !matches!(child.try_wait(), Ok(Some(_))) && Instant::now() < deadline {
                std::thread::sleep(POLL);
            }
            if !matches!(child.try_wait(), Ok(Some(_))) {
                eprintln!("{name} (pid {pid}) ignored SIGTERM; killing it");
                let _ = child.start_kill();
            }
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.wg_log()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- wireguard-go log (last lines) ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.wg_if));
        quiet(&["ip", "netns", "del", &self.netns]);
        // Normally gone with the namespace (its peer end was in there).
        quiet(&["ip", "link", "del", &self.veth_root]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs a command synchronously, ignoring failure and output (cleanup only).
pub(super) fn quiet(args: &[&str]) {
    let _ = std::process::Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Runs a command to completion (with a deadline) and returns its stdout; panics on failure.
pub(super) async fn run(args: &[&str]) -> String {
    run_with_input(args, None).await
}

pub(super) async fn run_with_input(args: &[&str], input: Option<&[u8]>) -> String {
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {args:?}: {e}"));
    if let Some(input) = input {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input).await.unwrap();
    }
    let out = timeout(STEP, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{args:?} did not finish within {STEP:?}"))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
