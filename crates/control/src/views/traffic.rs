//! A tunnel's (or the whole fleet's) traffic history as the API and the charts show it: evenly
//! spaced points over a range, empty ones included, from the rows the Gateways' reports made
//! (`store::traffic`).

use crate::app::AppState;
use crate::error::ApiError;
use crate::store::traffic::{Counts, HOUR, MINUTE};
use crate::store::{now_ms, timestamp};
use kakuremichi_proto::traffic::latency_quantile_ms;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// How far back a history looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// The last hour, a point a minute.
    Hour,
    /// The last 24 hours, a point every 15 minutes.
    Day,
    /// The last 7 days, a point an hour.
    Week,
}

impl Range {
    pub fn parse(text: Option<&str>) -> Result<Range, ApiError> {
        match text.unwrap_or("1h") {
            "1h" => Ok(Range::Hour),
            "24h" => Ok(Range::Day),
            "7d" => Ok(Range::Week),
            _ => Err(ApiError::bad_request("range must be 1h, 24h or 7d")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Range::Hour => "1h",
            Range::Day => "24h",
            Range::Week => "7d",
        }
    }

    /// The rows read, the seconds between points, and how many points.
    fn grain(self) -> (i64, i64, i64) {
        match self {
            Range::Hour => (MINUTE, 60, 60),
            Range::Day => (MINUTE, 900, 96),
            Range::Week => (HOUR, 3600, 168),
        }
    }
}

/// Requests by status class.
#[derive(Debug, Clone, Copy, Default, Serialize, utoipa::ToSchema)]
pub struct Classes {
    #[serde(rename = "1xx")]
    pub c1: i64,
    #[serde(rename = "2xx")]
    pub c2: i64,
    #[serde(rename = "3xx")]
    pub c3: i64,
    #[serde(rename = "4xx")]
    pub c4: i64,
    #[serde(rename = "5xx")]
    pub c5: i64,
}

/// What was counted over a span.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Span {
    /// HTTP responses by status class.
    pub requests: Classes,
    /// Stream tunnels' connections (UDP: flows).
    pub connections: i64,
    /// Bytes from clients, and to them.
    pub bytes_in: i64,
    pub bytes_out: i64,
    /// Share of the responses that were 5xx (0 without responses).
    pub error_rate: f64,
    /// Time to the response's first byte, median and 95th percentile, in milliseconds
    /// (interpolated within the histogram's buckets); null without responses.
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
}

impl Span {
    fn of(c: &Counts) -> Span {
        let [c1, c2, c3, c4, c5] = c.responses;
        let total = c.requests();
        let mut cumulative = Vec::with_capacity(c.latency.len());
        let mut running = 0u64;
        for n in c.latency {
            running += u64::try_from(n).unwrap_or(0);
            cumulative.push(running);
        }
        Span {
            requests: Classes { c1, c2, c3, c4, c5 },
            connections: c.connections,
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            error_rate: if total > 0 {
                c5 as f64 / total as f64
            } else {
                0.0
            },
            p50_ms: latency_quantile_ms(&cumulative, 0.5),
            p95_ms: latency_quantile_ms(&cumulative, 0.95),
        }
    }
}

/// One point of a history: what was counted in the `step_seconds` from `time`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Point {
    /// The start of the point's span (RFC 3339, UTC).
    pub time: String,
    #[serde(flatten)]
    pub span: Span,
}

/// One Gateway's share of a history.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GatewayShare {
    pub gateway_id: i64,
    pub gateway: String,
    #[serde(flatten)]
    pub span: Span,
}

/// A traffic history.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TrafficView {
    /// `1h`, `24h` or `7d`.
    pub range: &'static str,
    pub step_seconds: i64,
    /// Oldest first, evenly spaced, empty spans included.
    pub points: Vec<Point>,
    /// The whole range.
    pub total: Span,
    /// The whole range, per Gateway that carried anything.
    pub gateways: Vec<GatewayShare>,
}

/// The history of `tunnel`, or of every tunnel, over `range`.
pub async fn traffic(
    state: &AppState,
    tunnel: Option<i64>,
    range: Range,
) -> Result<TrafficView, ApiError> {
    let (resolution, step, count) = range.grain();
    let now_s = now_ms() / 1000;
    let last = now_s - now_s.rem_euclid(step);
    let first = last - step * (count - 1);
    let rows = state.store.traffic(tunnel, resolution, first).await?;
    let mut points: BTreeMap<i64, Counts> = (0..count)
        .map(|i| (first + i * step, Counts::default()))
        .collect();
    let mut by_gateway: HashMap<i64, Counts> = HashMap::new();
    let mut total = Counts::default();
    for row in &rows {
        let at = row.start_s - row.start_s.rem_euclid(step);
        if let Some(point) = points.get_mut(&at) {
            point.add(&row.counts);
        }
        by_gateway
            .entry(row.gateway_id)
            .or_default()
            .add(&row.counts);
        total.add(&row.counts);
    }
    let names: HashMap<i64, String> = state
        .store
        .list_gateways()
        .await?
        .into_iter()
        .map(|g| (g.id, g.name))
        .collect();
    let mut gateways: Vec<GatewayShare> = by_gateway
        .into_iter()
        .map(|(id, c)| GatewayShare {
            gateway_id: id,
            gateway: names
                .get(&id)
                .cloned()
                .unwrap_or_else(|| format!("gateway {id} (deleted)")),
            span: Span::of(&c),
        })
        .collect();
    gateways.sort_by_key(|g| g.gateway_id);
    let time = |s: i64| {
        timestamp(
            time::OffsetDateTime::from_unix_timestamp(s)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
        )
    };
    Ok(TrafficView {
        range: range.as_str(),
        step_seconds: step,
        points: points
            .into_iter()
            .map(|(s, c)| Point {
                time: time(s),
                span: Span::of(&c),
            })
            .collect(),
        total: Span::of(&total),
        gateways,
    })
}

/// Per tunnel with traffic in the last hour: its requests and connections per minute, oldest
/// first (60 values).
pub async fn last_hour_by_tunnel(state: &AppState) -> Result<HashMap<i64, Vec<f64>>, ApiError> {
    let now_s = now_ms() / 1000;
    let last = now_s - now_s.rem_euclid(MINUTE);
    let first = last - 59 * MINUTE;
    let mut out: HashMap<i64, Vec<f64>> = HashMap::new();
    for (tunnel, start, n) in state.store.activity(MINUTE, first).await? {
        let slot = usize::try_from((start - first) / MINUTE).unwrap_or(usize::MAX);
        if let Some(v) = out
            .entry(tunnel)
            .or_insert_with(|| vec![0.0; 60])
            .get_mut(slot)
        {
            *v += n as f64;
        }
    }
    Ok(out)
}
