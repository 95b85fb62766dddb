//! Many concurrent slow streams: N HTTP/1.1 connections, each a server-sent-events response that
//! stays open, held for a while. While all are open, samples the resident memory of the given
//! processes (the Gateway and the Agent) and reports the peak.

use crate::rss_mib;
use anyhow::{bail, Context};
use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

#[derive(clap::Args)]
pub struct Args {
    /// Where to connect (the Gateway's or the origin's listener).
    #[arg(long)]
    connect: SocketAddr,
    /// Host name to send (and SNI, with --https).
    #[arg(long)]
    host: String,
    /// Use HTTPS (the certificate is not verified: this measures load, not trust).
    #[arg(long)]
    https: bool,
    /// Request path of one stream.
    #[arg(long, default_value = "/sse?n=1000000&interval_ms=1000")]
    path: String,
    /// Number of concurrent streams.
    #[arg(short = 'n', long, default_value_t = 1000)]
    streams: usize,
    /// Seconds to hold every stream open once all are established.
    #[arg(long, default_value_t = 5.0)]
    hold_secs: f64,
    /// Processes whose memory to sample while the streams are open: NAME=PID.
    #[arg(long = "pid", value_parser = parse_pid)]
    pids: Vec<(String, u32)>,
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
}

fn parse_pid(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s.split_once('=').ok_or("expected NAME=PID")?;
    Ok((name.to_string(), pid.parse().map_err(|e| format!("{e}"))?))
}

pub async fn run(a: Args) -> anyhow::Result<Value> {
    let scheme = if a.https { "https" } else { "http" };
    let port = a.connect.port();
    let client = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .danger_accept_invalid_certs(true)
        .resolve(&a.host, a.connect)
        .pool_max_idle_per_host(0)
        .connect_timeout(Duration::from_secs(a.timeout_secs))
        .build()?;
    let url = format!("{scheme}://{}:{port}{}", a.host, a.path);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(a.streams);
    for _ in 0..a.streams {
        let (client, url, ready, mut stop) = (
            client.clone(),
            url.clone(),
            ready_tx.clone(),
            stop_rx.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let res = match client.get(&url).send().await {
                Ok(r) if r.status().is_success() => r,
                Ok(r) => return ready.send(Err(format!("HTTP {}", r.status()))),
                Err(e) => return ready.send(Err(e.to_string())),
            };
            let mut body = res.bytes_stream();
            match body.next().await {
                Some(Ok(_)) => {}
                other => return ready.send(Err(format!("stream ended early: {other:?}"))),
            }
            let _ = ready.send(Ok(()));
            loop {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    chunk = body.next() => if !matches!(chunk, Some(Ok(_))) { break },
                }
            }
            Ok(())
        }));
        // Pace the openings a little so the listen backlog is not the thing measured.
        if tasks.len() % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    drop(ready_tx);
    let deadline = started + Duration::from_secs(a.timeout_secs);
    let mut open = 0;
    while open < a.streams {
        match tokio::time::timeout_at(deadline.into(), ready_rx.recv()).await {
            Ok(Some(Ok(()))) => open += 1,
            Ok(Some(Err(e))) => bail!("a stream failed after {open} were open: {e}"),
            Ok(None) => bail!("streams ended ({open} open)"),
            Err(_) => bail!(
                "only {open} of {} streams open after {}s",
                a.streams,
                a.timeout_secs
            ),
        }
    }
    let open_s = started.elapsed().as_secs_f64();
    eprintln!(
        "loadgen: {open} streams open in {open_s:.1}s; holding {}s",
        a.hold_secs
    );

    let mut peak: Vec<f64> = vec![0.0; a.pids.len()];
    let hold_until = Instant::now() + Duration::from_secs_f64(a.hold_secs);
    loop {
        for (i, (_, pid)) in a.pids.iter().enumerate() {
            peak[i] = peak[i].max(rss_mib(*pid));
        }
        if Instant::now() >= hold_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every stream must still be open at the end of the hold.
    let still_open = tasks.iter().filter(|t| !t.is_finished()).count();
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await.context("stream task")?;
    }
    let mut rss = Map::new();
    for ((name, _), mib) in a.pids.iter().zip(peak) {
        rss.insert(format!("{name}_rss_mib"), json!(mib));
    }
    Ok(json!({
        "streams": a.streams,
        "open_s": open_s,
        "still_open_at_end": still_open,
        "peak": rss,
    }))
}
