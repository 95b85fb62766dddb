//! Checking a tunnel's Gateway limits as a caller sends them (API or form) and turning them into
//! a [`LimitsPatch`]. Every quantity has a bound: the lists reach every Gateway in every snapshot,
//! and the numbers size the Gateways' limiter state.
//!
//! Precedence, as documented for users: `ip_deny` wins over `ip_allow`; an empty `ip_allow`
//! admits every address that is not denied.

use crate::error::ApiError;
use crate::store::{LimitsPatch, TunnelLimits};
use crate::validate;

/// Most networks one list may hold.
pub const MAX_IP_ENTRIES: usize = 100;
/// Bounds of `rate_limit_per_second`, `rate_limit_burst` and `max_concurrent_requests`.
pub const MAX_RATE: i64 = 100_000;
pub const MAX_BURST: i64 = 100_000;
pub const MAX_CONCURRENT: i64 = 100_000;

/// The limits fields of a request; `None` = not sent (default on create, unchanged on update),
/// `Some(None)` = sent as `null` (off).
#[derive(Debug, Clone, Default)]
pub struct LimitsInput {
    pub ip_allow: Option<Vec<String>>,
    pub ip_deny: Option<Vec<String>>,
    pub rate_limit_per_second: Option<Option<i64>>,
    pub rate_limit_burst: Option<Option<i64>>,
    pub max_concurrent_requests: Option<Option<i64>>,
}

impl LimitsInput {
    /// Validates every field sent; `current` (the stored limits, default on create) is only used
    /// to check the fields against each other.
    pub fn check(&self, current: &TunnelLimits) -> Result<LimitsPatch, ApiError> {
        let patch = LimitsPatch {
            ip_allow: self
                .ip_allow
                .as_deref()
                .map(|l| list(l, "ip_allow"))
                .transpose()?,
            ip_deny: self
                .ip_deny
                .as_deref()
                .map(|l| list(l, "ip_deny"))
                .transpose()?,
            rate_limit_per_second: number(
                self.rate_limit_per_second,
                "rate_limit_per_second",
                MAX_RATE,
            )?,
            rate_limit_burst: number(self.rate_limit_burst, "rate_limit_burst", MAX_BURST)?,
            max_concurrent_requests: number(
                self.max_concurrent_requests,
                "max_concurrent_requests",
                MAX_CONCURRENT,
            )?,
        };
        let next = patch.apply(current.clone());
        if next.rate_limit_per_second.is_none() && matches!(patch.rate_limit_burst, Some(Some(_))) {
            return Err(ApiError::bad_request(
                "rate_limit_burst needs rate_limit_per_second: set a rate too, or leave the burst out",
            ));
        }
        Ok(patch)
    }
}

/// The canonical networks of one list, duplicates dropped, order kept.
fn list(entries: &[String], field: &str) -> Result<Vec<String>, ApiError> {
    if entries.len() > MAX_IP_ENTRIES {
        return Err(ApiError::bad_request(format!(
            "{field} lists {} networks; at most {MAX_IP_ENTRIES} are allowed (use wider CIDR \
             networks to cover more addresses)",
            entries.len()
        )));
    }
    let mut out: Vec<String> = Vec::with_capacity(entries.len());
    for entry in entries {
        let net = validate::ip_network(entry)
            .map_err(|e| ApiError::bad_request(format!("{field}: {e}")))?;
        if !out.contains(&net) {
            out.push(net);
        }
    }
    Ok(out)
}

fn number(
    value: Option<Option<i64>>,
    field: &str,
    max: i64,
) -> Result<Option<Option<u32>>, ApiError> {
    match value {
        None => Ok(None),
        Some(None) => Ok(Some(None)),
        Some(Some(n)) if (1..=max).contains(&n) => Ok(Some(u32::try_from(n).ok())),
        Some(Some(n)) => Err(ApiError::bad_request(format!(
            "{field} must be between 1 and {max}, or null for no limit (got {n})"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(input: LimitsInput) -> String {
        input
            .check(&TunnelLimits::default())
            .unwrap_err()
            .message()
            .to_string()
    }

    #[test]
    fn lists_are_canonical_and_bounded() {
        let input = LimitsInput {
            ip_allow: Some(vec![
                "192.0.2.0/24".into(),
                "2001:DB8::/48".into(),
                "192.0.2.0/24".into(),
                "198.51.100.7/32".into(),
            ]),
            ..Default::default()
        };
        let patch = input.check(&TunnelLimits::default()).unwrap();
        assert_eq!(
            patch.ip_allow.unwrap(),
            ["192.0.2.0/24", "2001:db8::/48", "198.51.100.7"]
        );
        let many = (0..=MAX_IP_ENTRIES)
            .map(|i| format!("10.0.{i}.0/24"))
            .collect();
        assert!(msg(LimitsInput {
            ip_deny: Some(many),
            ..Default::default()
        })
        .contains("at most 100"));
        assert!(msg(LimitsInput {
            ip_deny: Some(vec!["10.0.0.1/8".into()]),
            ..Default::default()
        })
        .starts_with("ip_deny: \"10.0.0.1/8\" has host bits set"));
    }

    #[test]
    fn numbers_are_bounded_and_burst_needs_a_rate() {
        for (field, input) in [
            (
                "rate_limit_per_second",
                LimitsInput {
                    rate_limit_per_second: Some(Some(0)),
                    ..Default::default()
                },
            ),
            (
                "rate_limit_burst",
                LimitsInput {
                    rate_limit_per_second: Some(Some(5)),
                    rate_limit_burst: Some(Some(100_001)),
                    ..Default::default()
                },
            ),
            (
                "max_concurrent_requests",
                LimitsInput {
                    max_concurrent_requests: Some(Some(-1)),
                    ..Default::default()
                },
            ),
        ] {
            assert!(msg(input).starts_with(field));
        }
        assert!(msg(LimitsInput {
            rate_limit_burst: Some(Some(5)),
            ..Default::default()
        })
        .contains("needs rate_limit_per_second"));
        // Turning the rate off clears the burst.
        let current = TunnelLimits {
            rate_limit_per_second: Some(5),
            rate_limit_burst: Some(10),
            ..Default::default()
        };
        let off = LimitsInput {
            rate_limit_per_second: Some(None),
            ..Default::default()
        };
        let next = off.check(&current).unwrap().apply(current);
        assert_eq!(next, TunnelLimits::default());
    }
}
