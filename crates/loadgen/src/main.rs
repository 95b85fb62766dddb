//! `kakuremichi-loadgen`: the load tool of `scripts/bench`.
//!
//! - `control`: creates many Gateways and Agents through Control's API, holds one simulated node
//!   session per node (Hello, then reading every pushed config), changes one tunnel repeatedly and
//!   measures how long until every Gateway session has received each change.
//! - `streams`: opens many concurrent slow streams (server-sent events) through a Gateway and holds
//!   them, so the benchmark can read the Gateway's and Agent's memory under that load.
//!
//! Both print one JSON object on stdout (progress goes to stderr).

mod control;
mod streams;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kakuremichi-loadgen",
    about = "Load generator for scripts/bench"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Simulate node sessions against Control and measure config propagation.
    Control(control::Args),
    /// Hold many concurrent slow streams through a Gateway.
    Streams(streams::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let out = runtime.block_on(async {
        match cli.command {
            Command::Control(a) => control::run(a).await,
            Command::Streams(a) => streams::run(a).await,
        }
    })?;
    println!("{out}");
    Ok(())
}

/// Resident memory of a process in MiB, from /proc (0 if unreadable).
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

/// User + system CPU seconds of a process so far, from /proc (clock ticks of 1/100 s, the value
/// of `CLK_TCK` on every Linux this runs on).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which may contain spaces, end with ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let ticks = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(14) + ticks(15)) / 100.0
}

/// The `q` quantile (0..=1) of sorted values, nearest rank.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
