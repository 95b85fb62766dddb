//! The request log (issue #22): per tunnel that asks for it (`log_requests`), the last
//! [`LOG_CAPACITY`] requests in memory, handed to Control on request
//! (`kakuremichi_proto::Query::RequestLog`); and, with `--access-log`, one JSON line per request
//! on stdout. Nothing is written to disk by the Gateway.
//!
//! Requests of tunnels that log nothing pay one branch: no id, no record, no lock. A logged
//! request takes one short lock of its own tunnel's ring when it ends.

use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use http::Request;
use kakuremichi_proto::query::{MAX_METHOD_CHARS, MAX_PATH_CHARS};
use kakuremichi_proto::{Answer, RequestFilter, RequestRecord};

/// Requests a Gateway keeps per logged tunnel.
pub const LOG_CAPACITY: usize = kakuremichi_proto::query::MAX_LOG_RECORDS;

/// A short random id for one request: on the Gateway's own error pages (and their
/// `X-Request-Id`), in the request log and the access log.
pub(crate) fn request_id() -> String {
    format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// The request bytes received for one logged request (set in the request's extensions so the
/// body that forwards it counts them).
#[derive(Debug, Clone, Default)]
pub(crate) struct BytesIn(pub Arc<AtomicU64>);

/// Records a Gateway keeps over every logged tunnel together: with many logged tunnels each
/// keeps fewer than [`LOG_CAPACITY`], so memory stays bounded (about 30 MB at most).
pub const TOTAL_RECORDS: usize = 100_000;
/// Access-log lines waiting for stdout; beyond, lines are dropped (and counted) rather than
/// making requests wait for a slow reader.
const ACCESS_QUEUE: usize = 16_384;

/// Every logged tunnel's ring, and the access log's writer when it is on.
#[derive(Debug, Default)]
pub struct RequestLog {
    rings: ArcSwap<HashMap<i64, Arc<Ring>>>,
    /// Records each ring keeps (see [`TOTAL_RECORDS`]).
    per_ring: AtomicUsize,
    access_log: AtomicBool,
    access: std::sync::OnceLock<AccessWriter>,
}

/// The access log's lines go to a thread of their own, which writes them to stdout.
#[derive(Debug)]
struct AccessWriter {
    lines: std::sync::mpsc::SyncSender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
}

impl AccessWriter {
    fn start() -> Self {
        let (lines, queue) = std::sync::mpsc::sync_channel::<Vec<u8>>(ACCESS_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let seen_dropped = dropped.clone();
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::new(std::io::stdout());
                let mut reported = 0;
                while let Ok(line) = queue.recv() {
                    let _ = out.write_all(&line);
                    // Written out whenever nothing more is waiting.
                    while let Ok(line) = queue.try_recv() {
                        let _ = out.write_all(&line);
                    }
                    let _ = out.flush();
                    let dropped = seen_dropped.load(Ordering::Relaxed);
                    if dropped > reported {
                        tracing::warn!(
                            lines = dropped - reported,
                            "access log: stdout is not read fast enough; lines were dropped"
                        );
                        reported = dropped;
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "access log: cannot start its writer; no line will be written");
        }
        Self { lines, dropped }
    }

    fn write(&self, line: Vec<u8>) {
        if self.lines.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[derive(Debug, Default)]
struct Ring(Mutex<VecDeque<RequestRecord>>);

impl RequestLog {
    /// With `on`, every request is also written to stdout as a JSON line (`--access-log`).
    pub fn set_access_log(&self, on: bool) {
        if on {
            self.access.get_or_init(AccessWriter::start);
        }
        self.access_log.store(on, Ordering::Relaxed);
    }

    fn access_log(&self) -> bool {
        self.access_log.load(Ordering::Relaxed)
    }

    /// Follows a new snapshot: the tunnels that log requests (kept records of tunnels that
    /// still log stay; the others are dropped, so turning logging off forgets).
    pub(crate) fn update(&self, tunnel_ids: impl IntoIterator<Item = i64>) {
        kakuremichi_node::metrics::follow(&self.rings, tunnel_ids);
        let logged = self.rings.load().len().max(1);
        let per_ring = (TOTAL_RECORDS / logged).clamp(1, LOG_CAPACITY);
        self.per_ring.store(per_ring, Ordering::Relaxed);
    }

    /// Whether a request of `tunnel` (none: no route) is recorded anywhere.
    pub(crate) fn wants(&self, tunnel: Option<i64>) -> bool {
        self.access_log() || tunnel.is_some_and(|id| self.rings.load().contains_key(&id))
    }

    /// The records of `tunnel` that pass `filter`, newest first.
    pub fn answer(&self, tunnel: i64, filter: &RequestFilter) -> Answer {
        let Some(ring) = self.rings.load().get(&tunnel).cloned() else {
            return Answer::RequestLog {
                requests: Vec::new(),
            };
        };
        let ring = ring.0.lock().unwrap_or_else(PoisonError::into_inner);
        let requests = ring
            .iter()
            .rev()
            .filter(|r| filter.admits(r))
            .take(filter.limit())
            .cloned()
            .collect();
        Answer::RequestLog { requests }
    }

    fn record(&self, tunnel: Option<i64>, record: RequestRecord) {
        if let Some(writer) = self.access.get().filter(|_| self.access_log()) {
            writer.write(access_line(tunnel, &record));
        }
        let Some(ring) = tunnel.and_then(|id| self.rings.load().get(&id).cloned()) else {
            return;
        };
        let keep = self.per_ring.load(Ordering::Relaxed).max(1);
        let mut ring = ring.0.lock().unwrap_or_else(PoisonError::into_inner);
        while ring.len() >= keep {
            ring.pop_front();
        }
        ring.push_back(record);
    }
}

/// The access log's JSON line for a request.
fn access_line(tunnel: Option<i64>, r: &RequestRecord) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        time_ms: i64,
        request_id: &'a str,
        tunnel: Option<i64>,
        client_ip: &'a str,
        method: &'a str,
        path: &'a str,
        status: u16,
        duration_ms: f64,
        bytes_in: u64,
        bytes_out: u64,
    }
    let line = Line {
        time_ms: r.time_ms,
        request_id: &r.request_id,
        tunnel,
        client_ip: &r.client_ip,
        method: &r.method,
        path: &r.path,
        status: r.status,
        duration_ms: r.duration_us as f64 / 1000.0,
        bytes_in: r.bytes_in,
        bytes_out: r.bytes_out,
    };
    let mut text = serde_json::to_vec(&line).unwrap_or_default();
    text.push(b'\n');
    text
}

/// What is known of a logged request when it arrives.
#[derive(Debug)]
pub(crate) struct Seen {
    log: Arc<RequestLog>,
    tunnel: Option<i64>,
    time_ms: i64,
    client_ip: IpAddr,
    method: String,
    path: String,
    bytes_in: BytesIn,
}

impl Seen {
    /// Notes `req` (and marks its body to be counted).
    pub(crate) fn new<B>(
        log: Arc<RequestLog>,
        req: &mut Request<B>,
        client_ip: IpAddr,
        tunnel: Option<i64>,
    ) -> Self {
        let bytes_in = BytesIn::default();
        req.extensions_mut().insert(bytes_in.clone());
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Self {
            log,
            tunnel,
            time_ms,
            client_ip,
            method: req
                .method()
                .as_str()
                .chars()
                .take(MAX_METHOD_CHARS)
                .collect(),
            path: kakuremichi_proto::query::cut(req.uri().path(), MAX_PATH_CHARS),
            bytes_in,
        }
    }

    /// The response's head left with `status`: the rest is known when its body ends.
    pub(crate) fn responded(self, request_id: String, status: u16) -> Pending {
        Pending {
            seen: self,
            request_id,
            status,
            bytes_out: 0,
        }
    }
}

/// A logged request whose response body is on its way.
#[derive(Debug)]
pub(crate) struct Pending {
    seen: Seen,
    request_id: String,
    status: u16,
    bytes_out: u64,
}

impl Pending {
    pub(crate) fn sent(&mut self, n: usize) {
        self.bytes_out += n as u64;
    }

    /// The body ended (or was dropped) `elapsed` after the request arrived.
    pub(crate) fn finish(self, elapsed: Duration) {
        let Pending {
            seen,
            request_id,
            status,
            bytes_out,
        } = self;
        let record = RequestRecord {
            time_ms: seen.time_ms,
            request_id,
            client_ip: seen.client_ip.to_string(),
            method: seen.method,
            path: seen.path,
            status,
            duration_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            bytes_in: seen.bytes_in.0.load(Ordering::Relaxed),
            bytes_out,
        };
        seen.log.record(seen.tunnel, record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(log: &Arc<RequestLog>, path: &str) -> Seen {
        let mut req = Request::get(path).body(()).unwrap();
        Seen::new(log.clone(), &mut req, "192.0.2.7".parse().unwrap(), Some(1))
    }

    #[test]
    fn a_ring_keeps_the_last_requests_newest_first() {
        let log = Arc::new(RequestLog::default());
        log.update([1]);
        assert!(log.wants(Some(1)));
        assert!(!log.wants(Some(2)) && !log.wants(None));
        for i in 0..LOG_CAPACITY + 10 {
            let status = if i % 2 == 0 { 200 } else { 502 };
            let mut pending =
                seen(&log, &format!("/p/{i}?secret=1")).responded(format!("id{i}"), status);
            pending.sent(5);
            pending.finish(Duration::from_millis(3));
        }
        let Answer::RequestLog { requests } = log.answer(1, &RequestFilter::default()) else {
            panic!()
        };
        assert_eq!(requests.len(), LOG_CAPACITY);
        let last = LOG_CAPACITY + 9;
        assert_eq!(
            requests[0].path,
            format!("/p/{last}"),
            "newest first, query stripped"
        );
        assert_eq!(requests[0].request_id, format!("id{last}"));
        assert_eq!(requests[0].client_ip, "192.0.2.7");
        assert_eq!((requests[0].bytes_out, requests[0].duration_us), (5, 3000));
        let only = RequestFilter {
            status: Some(502),
            path_prefix: Some("/p/10".into()),
            limit: 3,
        };
        let Answer::RequestLog { requests } = log.answer(1, &only) else {
            panic!()
        };
        assert_eq!(requests.len(), 3);
        assert!(requests
            .iter()
            .all(|r| r.status == 502 && r.path.starts_with("/p/10")));
        // With many logged tunnels, each keeps fewer (the Gateway's total is bounded).
        log.update(0..200);
        for _ in 0..LOG_CAPACITY {
            seen(&log, "/x")
                .responded("i".into(), 200)
                .finish(Duration::ZERO);
        }
        let Answer::RequestLog { requests } = log.answer(1, &RequestFilter::default()) else {
            panic!()
        };
        assert_eq!(requests.len(), TOTAL_RECORDS / 200);
        // Logging turned off: what was kept goes.
        log.update([]);
        let Answer::RequestLog { requests } = log.answer(1, &RequestFilter::default()) else {
            panic!()
        };
        assert!(requests.is_empty());
    }

    #[test]
    fn an_access_line_is_one_json_object_without_the_query() {
        let log = Arc::new(RequestLog::default());
        let mut pending = seen(&log, "/login?password=hunter2").responded("abc".into(), 302);
        pending.sent(7);
        let record = RequestRecord {
            time_ms: 5,
            request_id: pending.request_id.clone(),
            client_ip: pending.seen.client_ip.to_string(),
            method: pending.seen.method.clone(),
            path: pending.seen.path.clone(),
            status: pending.status,
            duration_us: 1500,
            bytes_in: 0,
            bytes_out: pending.bytes_out,
        };
        let line = String::from_utf8(access_line(Some(3), &record)).unwrap();
        assert!(
            line.ends_with('\n') && line.matches('\n').count() == 1,
            "{line}"
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"time_ms": 5, "request_id": "abc", "tunnel": 3,
                "client_ip": "192.0.2.7", "method": "GET", "path": "/login", "status": 302,
                "duration_ms": 1.5, "bytes_in": 0, "bytes_out": 7})
        );
    }

    #[test]
    fn request_ids_are_short_and_differ() {
        let (a, b) = (request_id(), request_id());
        assert_eq!(a.len(), 12);
        assert_ne!(a, b);
    }
}
