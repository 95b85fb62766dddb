//! Steady load for the fault and soak tests: a task that keeps doing one kind of operation (a
//! request, a checked download, a WebSocket round trip) and records when each finished and whether it
//! succeeded, so a test can count what failed during a fault and when things worked again.

use crate::eventually;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every operation's end time and outcome, shared between the load task and the test.
#[derive(Clone, Default)]
pub struct Record(Arc<Mutex<Vec<(Instant, bool)>>>);

impl Record {
    pub fn push(&self, ok: bool) {
        self.0.lock().unwrap().push((Instant::now(), ok));
    }
}

/// A load task; aborted when dropped.
pub struct Load {
    record: Record,
    task: tokio::task::JoinHandle<()>,
}

/// How often [`Load::start`] sends a request.
pub const PACE: Duration = Duration::from_millis(25);

impl Load {
    /// Runs `work`, which pushes one result per operation into the [`Record`] it is given.
    pub fn spawn<F, Fut>(work: F) -> Load
    where
        F: FnOnce(Record) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let record = Record::default();
        let task = tokio::spawn(work(record.clone()));
        Load { record, task }
    }

    /// `GET /` through one Gateway every [`PACE`]; a 200 within 2 s is a success.
    pub fn start(gateway: SocketAddr, host: &'static str) -> Load {
        Self::requests(gateway, host, PACE)
    }

    /// `GET /` through one Gateway every `pace`; a 200 within 2 s is a success.
    pub fn requests(gateway: SocketAddr, host: &'static str, pace: Duration) -> Load {
        Load::spawn(move |record| async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap();
            let mut pace = tokio::time::interval(pace);
            loop {
                pace.tick().await;
                let ok = matches!(
                    http.get(format!("http://{gateway}/")).header("host", host).send().await,
                    Ok(r) if r.status() == 200
                );
                record.push(ok);
            }
        })
    }

    /// Downloads `/bytes?n=size` through one Gateway every `pace`; a 200 whose every byte
    /// matches the pattern within 15 s is a success.
    pub fn downloads(gateway: SocketAddr, host: &'static str, size: u64, pace: Duration) -> Load {
        Load::spawn(move |record| async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .unwrap();
            let mut pace = tokio::time::interval(pace);
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                pace.tick().await;
                record.push(download_ok(&http, gateway, host, size).await);
            }
        })
    }

    /// WebSocket sessions with `/ws` through one Gateway: `messages` echoed round trips, one
    /// every `pace`, then a close and a new session, so a Gateway draining on SIGTERM waits
    /// for a session at most that long. Each round trip answered within 2 s is a success; a
    /// session that cannot be opened counts as one failure.
    pub fn websockets(
        gateway: SocketAddr,
        host: &'static str,
        messages: usize,
        pace: Duration,
    ) -> Load {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
        Load::spawn(move |record| async move {
            let mut pace = tokio::time::interval(pace);
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                pace.tick().await;
                let mut request = format!("ws://{gateway}/ws").into_client_request().unwrap();
                request.headers_mut().insert("host", host.parse().unwrap());
                let opened = tokio::time::timeout(
                    Duration::from_secs(2),
                    tokio_tungstenite::connect_async(request),
                );
                let Ok(Ok((mut ws, _))) = opened.await else {
                    record.push(false);
                    continue;
                };
                for i in 0..messages {
                    let text = format!("soak {i}");
                    let round_trip = async {
                        ws.send(Message::text(text.clone())).await.ok()?;
                        match ws.next().await? {
                            Ok(Message::Text(echo)) => Some(echo.as_str() == text),
                            _ => Some(false),
                        }
                    };
                    let ok = tokio::time::timeout(Duration::from_secs(2), round_trip)
                        .await
                        .is_ok_and(|r| r == Some(true));
                    record.push(ok);
                    if !ok {
                        break;
                    }
                    pace.tick().await;
                }
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
            }
        })
    }

    /// (succeeded, failed) among operations that finished after `since`.
    pub fn since(&self, since: Instant) -> (usize, usize) {
        self.between(since, None)
    }

    /// (succeeded, failed) among operations that finished in `[from, until)` (no end: up to now).
    pub fn between(&self, from: Instant, until: Option<Instant>) -> (usize, usize) {
        let results = self.record.0.lock().unwrap();
        let within = results
            .iter()
            .filter(|(t, _)| *t >= from && until.is_none_or(|u| *t < u));
        let ok = within.clone().filter(|(_, ok)| *ok).count();
        (ok, within.count() - ok)
    }

    /// When operations succeeded again after `fault`: the first success after the last failure
    /// (`fault` itself when nothing failed); `None` while the latest operation still failed.
    pub fn recovered_at(&self, fault: Instant) -> Option<Instant> {
        let results = self.record.0.lock().unwrap();
        let after: Vec<_> = results.iter().filter(|(t, _)| *t >= fault).collect();
        match after.iter().rposition(|(_, ok)| !ok) {
            None => after.first().map(|_| fault),
            Some(i) => after.get(i + 1).map(|(t, _)| *t),
        }
    }

    pub fn first_success_after(&self, t: Instant) -> Option<Instant> {
        self.record
            .0
            .lock()
            .unwrap()
            .iter()
            .find(|(at, ok)| *at >= t && *ok)
            .map(|(at, _)| *at)
    }

    /// Waits until `n` operations after `since` have finished.
    pub async fn settle(&self, since: Instant, n: usize) {
        eventually(Duration::from_secs(20), "load requests finish", || async {
            let (ok, failed) = self.since(since);
            (ok + failed >= n).then_some(())
        })
        .await;
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Keeps a fault in place for `length`, the duration the scenario prescribes.
pub async fn hold(length: Duration) {
    let until = Instant::now() + length;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    while Instant::now() < until {
        tick.tick().await;
    }
}

/// One checked download (see [`crate::download`], which panics where a load must count).
async fn download_ok(http: &reqwest::Client, gw: SocketAddr, host: &str, size: u64) -> bool {
    let sent = http
        .get(format!("http://{gw}/bytes?n={size}"))
        .header("host", host)
        .send()
        .await;
    let Ok(mut resp) = sent
        .map_err(drop)
        .and_then(|r| r.error_for_status().map_err(drop))
    else {
        return false;
    };
    let mut offset = 0u64;
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let intact = chunk
                    .iter()
                    .enumerate()
                    .all(|(k, b)| *b == kakuremichi::hello::pattern_byte(offset + k as u64));
                if !intact {
                    return false;
                }
                offset += chunk.len() as u64;
            }
            Ok(None) => return offset == size,
            Err(_) => return false,
        }
    }
}
