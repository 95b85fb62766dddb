//! What a running process holds, read from /proc (and a Gateway's admin `/metrics`), for the
//! soak test's leak check: resident memory, threads, open file descriptors (every socket,
//! so leaked connections show), and live tokio tasks where the process reports them.

use std::net::SocketAddr;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Usage {
    pub rss_mib: f64,
    pub threads: u64,
    pub fds: u64,
    /// Live tokio tasks, from a Gateway's admin `/metrics`; `None` for other processes.
    pub tasks: Option<u64>,
}

impl Usage {
    /// The smallest of each figure over `n` readings 200 ms apart. A leak is what stays: the
    /// floor leaves out a download or a connection that happened to be in flight at one reading.
    pub async fn floor(pid: u32, admin: Option<SocketAddr>, n: usize) -> Usage {
        let mut floor = Usage::read(pid, admin).await;
        for _ in 1..n {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let u = Usage::read(pid, admin).await;
            floor = Usage {
                rss_mib: floor.rss_mib.min(u.rss_mib),
                threads: floor.threads.min(u.threads),
                fds: floor.fds.min(u.fds),
                tasks: floor.tasks.zip(u.tasks).map(|(a, b)| a.min(b)),
            };
        }
        floor
    }

    /// One reading; panics if the process is gone (the test expects it alive).
    pub async fn read(pid: u32, admin: Option<SocketAddr>) -> Usage {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("process {pid} gone: {e}"));
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        };
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap_or_else(|e| panic!("process {pid} gone: {e}"))
            .count() as u64;
        let tasks = match admin {
            Some(addr) => Some(tasks(addr).await),
            None => None,
        };
        Usage {
            rss_mib: field("VmRSS:") as f64 / 1024.0,
            threads: field("Threads:"),
            fds,
            tasks,
        }
    }
}

async fn tasks(admin: SocketAddr) -> u64 {
    let metrics: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{admin}/metrics"))
        .header("accept", "application/json")
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .unwrap_or_else(|e| panic!("GET http://{admin}/metrics: {e}"))
        .json()
        .await
        .unwrap();
    metrics["tasks"]
        .as_u64()
        .unwrap_or_else(|| panic!("no task count in {metrics}"))
}

/// How far a figure may grow between the two readings before it counts as a leak: 10 % plus an
/// absolute slack for figures that are small and noisy. RSS: 4 MiB, what eight tunnel
/// connections hold (two 256 KiB buffers each) when a fault cuts them mid-flight and they live on
/// until keep-alive ends them — measured, the Agent's level moves by 3 MiB from one fault to the
/// next without trend; a leak outgrows it in a longer run. Threads: tokio's blocking threads
/// linger 10 s after use. Fds and tasks: connections the load happens to hold open just then.
pub struct Slack {
    pub rss_mib: f64,
    pub threads: u64,
    pub fds: u64,
    pub tasks: u64,
}

pub const SLACK: Slack = Slack {
    rss_mib: 4.0,
    threads: 2,
    fds: 8,
    tasks: 16,
};

impl Usage {
    /// What grew beyond 10 % plus [`SLACK`] since `base`, as readable complaints.
    pub fn grown_since(&self, base: &Usage) -> Vec<String> {
        let limit = |base: f64, slack: f64| base * 1.10 + slack;
        let mut grown = Vec::new();
        if self.rss_mib > limit(base.rss_mib, SLACK.rss_mib) {
            grown.push(format!("RSS {:.1} → {:.1} MiB", base.rss_mib, self.rss_mib));
        }
        let mut count = |what: &str, base: u64, now: u64, slack: u64| {
            if now as f64 > limit(base as f64, slack as f64) {
                grown.push(format!("{what} {base} → {now}"));
            }
        };
        count("threads", base.threads, self.threads, SLACK.threads);
        count("fds", base.fds, self.fds, SLACK.fds);
        if let (Some(b), Some(n)) = (base.tasks, self.tasks) {
            count("tasks", b, n, SLACK.tasks);
        }
        grown
    }
}
