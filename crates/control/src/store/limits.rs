//! Per-tunnel Gateway limits in the database: five columns of `tunnels` (migration 0006), read
//! into [`TunnelLimits`] and turned into the snapshot's [`RouteLimits`].
//!
//! The IP lists are JSON arrays of canonical networks (`validate::ip_network`); the numbers are
//! NULL when off. Only the API writes them, with validated values.

use super::TunnelRow;
use crate::validate;
use kakuremichi_proto::{RateLimit, RouteLimits};

/// The limits of one tunnel as stored (and as the API shows them).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct TunnelLimits {
    pub ip_allow: Vec<String>,
    pub ip_deny: Vec<String>,
    pub rate_limit_per_second: Option<u32>,
    /// `None` = the same as `rate_limit_per_second`.
    pub rate_limit_burst: Option<u32>,
    pub max_concurrent_requests: Option<u32>,
}

/// A change of limits; `None` leaves a field as is, `Some(None)` turns a number off.
#[derive(Debug, Clone, Default)]
pub struct LimitsPatch {
    pub ip_allow: Option<Vec<String>>,
    pub ip_deny: Option<Vec<String>>,
    pub rate_limit_per_second: Option<Option<u32>>,
    pub rate_limit_burst: Option<Option<u32>>,
    pub max_concurrent_requests: Option<Option<u32>>,
}

impl LimitsPatch {
    pub fn is_empty(&self) -> bool {
        self.ip_allow.is_none()
            && self.ip_deny.is_none()
            && self.rate_limit_per_second.is_none()
            && self.rate_limit_burst.is_none()
            && self.max_concurrent_requests.is_none()
    }

    /// `current` with this patch applied. Turning the rate off clears the burst with it, so a
    /// stale burst never comes back when a rate is set again.
    pub fn apply(&self, current: TunnelLimits) -> TunnelLimits {
        let mut next = TunnelLimits {
            ip_allow: self.ip_allow.clone().unwrap_or(current.ip_allow),
            ip_deny: self.ip_deny.clone().unwrap_or(current.ip_deny),
            rate_limit_per_second: self
                .rate_limit_per_second
                .unwrap_or(current.rate_limit_per_second),
            rate_limit_burst: self.rate_limit_burst.unwrap_or(current.rate_limit_burst),
            max_concurrent_requests: self
                .max_concurrent_requests
                .unwrap_or(current.max_concurrent_requests),
        };
        if next.rate_limit_per_second.is_none() {
            next.rate_limit_burst = None;
        }
        next
    }
}

/// The columns' values: `(ip_allow, ip_deny, per_second, burst, max_concurrent)`.
pub(super) fn encode(
    limits: &TunnelLimits,
) -> (String, String, Option<i64>, Option<i64>, Option<i64>) {
    let list = |l: &Vec<String>| serde_json::to_string(l).unwrap_or_else(|_| "[]".into());
    (
        list(&limits.ip_allow),
        list(&limits.ip_deny),
        limits.rate_limit_per_second.map(i64::from),
        limits.rate_limit_burst.map(i64::from),
        limits.max_concurrent_requests.map(i64::from),
    )
}

/// The limits stored in a tunnel row; numbers out of range read as off (they cannot be written).
pub fn limits_of(row: &TunnelRow) -> TunnelLimits {
    let list = |json: &str| serde_json::from_str::<Vec<String>>(json).unwrap_or_default();
    let number = |n: Option<i64>| n.and_then(|n| u32::try_from(n).ok()).filter(|n| *n > 0);
    TunnelLimits {
        ip_allow: list(&row.ip_allow),
        ip_deny: list(&row.ip_deny),
        rate_limit_per_second: number(row.rate_limit_per_second),
        rate_limit_burst: number(row.rate_limit_burst),
        max_concurrent_requests: number(row.max_concurrent_requests),
    }
}

/// What a Gateway enforces for `row`, or `None` when the stored lists cannot be read: the tunnel
/// is then left out of the snapshots (fail closed) rather than served without its deny list.
pub fn route_limits(row: &TunnelRow) -> Option<RouteLimits> {
    let list = |json: &str| -> Option<Vec<_>> {
        serde_json::from_str::<Vec<String>>(json)
            .ok()?
            .iter()
            .map(|n| validate::parse_ip_network(n))
            .collect()
    };
    let limits = limits_of(row);
    Some(RouteLimits {
        ip_allow: list(&row.ip_allow)?,
        ip_deny: list(&row.ip_deny)?,
        rate: limits.rate_limit_per_second.map(|per_second| RateLimit {
            per_second,
            burst: limits.rate_limit_burst.unwrap_or(per_second),
        }),
        max_concurrent_requests: limits.max_concurrent_requests,
    })
}
