//! Processes of the built binary, killed when dropped, their logs shown when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The built `kakuremichi` binary. Cargo builds it before the integration tests of the
/// `kakuremichi` package (the only ones that start processes) and puts it next to their `deps/`
/// directory; nextest names it in `NEXTEST_BIN_EXE_kakuremichi`; `KAKUREMICHI_BIN` overrides both.
pub fn bin() -> PathBuf {
    for var in ["KAKUREMICHI_BIN", "NEXTEST_BIN_EXE_kakuremichi"] {
        if let Some(path) = std::env::var_os(var) {
            return PathBuf::from(path);
        }
    }
    let test = std::env::current_exe().expect("the test binary's path");
    // <target>/<profile>/deps/<test>-<hash> → <target>/<profile>/kakuremichi
    let profile_dir = test
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in <target>/<profile>/deps");
    profile_dir.join(format!("kakuremichi{}", std::env::consts::EXE_SUFFIX))
}

/// What a child process logs (kept in its log file; the last lines are printed when a test
/// fails): handshakes included, so a tunnel that never comes up says which side stayed silent.
const CHILD_LOG: &str = "info,kakuremichi_tunnel=debug,boringtun=debug";

/// A child process killed when dropped; its log is printed if the test fails.
pub struct Proc {
    name: &'static str,
    child: Child,
    log: std::path::PathBuf,
}

impl Proc {
    pub fn spawn(name: &'static str, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Proc {
        Self::spawn_in(None, name, dir, args, env)
    }

    /// Like [`Proc::spawn`], inside network namespace `netns` when given (`ip netns exec` execs
    /// the binary, so the pid is the binary's own).
    pub fn spawn_in(
        netns: Option<&str>,
        name: &'static str,
        dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let bin = bin();
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let child = command
            .args(args)
            .envs(env.iter().copied())
            .env(
                "KAKUREMICHI_LOG",
                std::env::var("KAKUREMICHI_TEST_CHILD_LOG").unwrap_or_else(|_| CHILD_LOG.into()),
            )
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        Proc { name, child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Proc {
    /// Sends SIGTERM, as `docker stop` or systemd would, and returns at once.
    pub fn sigterm(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {}", self.child.id());
    }

    /// Waits until the process has exited, at most `within`; its exit status, `None` if still running.
    pub async fn wait_exit(
        &mut self,
        within: std::time::Duration,
    ) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// `kill -9`, as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, as an orderly restart would, and waits (without blocking the runtime) until the
    /// process has exited after draining; returns how long that took.
    pub async fn terminate(mut self, within: std::time::Duration) -> std::time::Duration {
        let start = std::time::Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill(1)");
        assert!(sent.success(), "kill -TERM {} failed", self.name);
        let name = self.name;
        crate::eventually(within, &format!("{name} exits after SIGTERM"), || {
            let exited = matches!(self.child.try_wait(), Ok(Some(_)));
            std::future::ready(exited.then_some(()))
        })
        .await;
        start.elapsed()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Whether it had died or hung is half the diagnosis of a failed test.
        let state = match self.child.try_wait() {
            Ok(Some(status)) => format!("had exited: {status}"),
            _ => std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("State:"))
                        .map(str::to_owned)
                })
                .unwrap_or_default(),
        };
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- {} (pid {}) {state} ----", self.name, self.child.id());
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let keep = std::env::var("KAKUREMICHI_TEST_LOG_LINES")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(30);
            let tail: Vec<&str> = log.lines().rev().take(keep).collect();
            eprintln!("---- last lines of {} ----", self.name);
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}
