//! Pure decisions of certificate management: when to renew, how long to wait after a failure,
//! what a failure means in words a person can act on, and what a PEM certificate says.

use std::time::Duration;
use time::OffsetDateTime;

/// Why getting a certificate failed, as far as the user needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No Gateway is connected, so nothing could answer the CA.
    NoGateway,
    /// The CA's rate limit; `until` from its Retry-After when it said.
    RateLimited { until: Option<OffsetDateTime> },
    /// The name does not resolve at all.
    Dns { detail: String },
    /// The CA resolved the name but could not connect to it on the challenge's port.
    Connection { port: u16, detail: String },
    /// The CA reached something that is not one of our Gateways (wrong answer).
    WrongServer { detail: String },
    /// The CA refuses the name (policy, CAA, blocklist).
    Rejected { detail: String },
    /// DNS-01 could not be answered: no managed zone, the provider refused, the record did not
    /// show, or the CA did not find it. `detail` is a whole sentence.
    Dns01 { detail: String },
    /// The ACME server could not be reached or misbehaved.
    Ca { detail: String },
    /// Something on our side (key generation, database).
    Internal { detail: String },
}

impl Failure {
    /// Maps an ACME problem document (type URN + detail) to a failure.
    pub fn from_problem(kind: Option<&str>, detail: Option<&str>, port: u16) -> Self {
        let detail = detail.unwrap_or("no detail given").to_string();
        let kind = kind
            .and_then(|k| k.strip_prefix("urn:ietf:params:acme:error:"))
            .unwrap_or("");
        match kind {
            "rateLimited" => Failure::RateLimited {
                until: retry_after_in_detail(&detail),
            },
            "dns" => Failure::Dns { detail },
            "connection" => Failure::Connection { port, detail },
            "unauthorized" | "incorrectResponse" | "tls" => Failure::WrongServer { detail },
            "caa" | "rejectedIdentifier" | "unsupportedIdentifier" => Failure::Rejected { detail },
            _ => Failure::Ca { detail },
        }
    }

    /// A sentence for `last_error`: what happened and what to do.
    pub fn sentence(&self, host: &str) -> String {
        match self {
            Failure::NoGateway => format!(
                "No Gateway is connected to Control, so the CA's check for {host} could not be \
                 answered; start a Gateway and the certificate is ordered again."
            ),
            Failure::RateLimited { until: Some(t) } => format!(
                "CA rate limit until {}; the certificate for {host} is ordered again then.",
                crate::store::timestamp(*t)
            ),
            Failure::RateLimited { until: None } => {
                format!("CA rate limit reached for {host}; the certificate is ordered again later.")
            }
            Failure::Dns { detail } => format!(
                "DNS for {host} does not resolve: create an A (and/or AAAA) record for {host} \
                 pointing at your Gateways' public addresses. The CA said: {detail}"
            ),
            Failure::Connection { port, detail } => format!(
                "DNS for {host} does not point at any Gateway, or port {port} is blocked: the CA \
                 could not connect to {host} on port {port}. Point {host} at your Gateways' public \
                 addresses and open port {port}. The CA said: {detail}"
            ),
            Failure::WrongServer { detail } => format!(
                "DNS for {host} points at a server that is not one of this Control's Gateways (the \
                 CA got a wrong answer); point {host} at your Gateways only. The CA said: {detail}"
            ),
            Failure::Rejected { detail } => format!(
                "The CA refuses to issue for {host} (check CAA records and the name). The CA \
                 said: {detail}"
            ),
            Failure::Dns01 { detail } => {
                format!("The DNS-01 challenge for {host} failed: {detail}")
            }
            Failure::Ca { detail } => {
                format!("The ACME CA could not issue a certificate for {host}: {detail}")
            }
            Failure::Internal { detail } => format!(
                "Control could not get a certificate for {host} because of an internal error: \
                 {detail}"
            ),
        }
    }

    /// The earliest retry the failure itself imposes (a CA's Retry-After).
    pub fn not_before(&self) -> Option<OffsetDateTime> {
        match self {
            Failure::RateLimited { until } => *until,
            _ => None,
        }
    }
}

/// Let's Encrypt writes its limit's end into the detail: "... retry after 2025-01-02 03:04:05 UTC".
fn retry_after_in_detail(detail: &str) -> Option<OffsetDateTime> {
    let at = detail.find("retry after ")? + "retry after ".len();
    let text = detail.get(at..at + 19)?;
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::PrimitiveDateTime::parse(text, &format)
        .ok()
        .map(|t| t.assume_utc())
}

/// Delay before attempt `failures + 1`: `base · 2^(failures-1)` capped, then jittered into
/// `[d/2, d]` so many failing names do not retry in lockstep. Never zero.
pub fn backoff(failures: i64, base: Duration, cap: Duration) -> Duration {
    let exp = u32::try_from(failures.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    let ceiling = base
        .saturating_mul(1u32 << exp)
        .min(cap)
        .max(Duration::from_millis(100));
    let half = ceiling / 2;
    half + half.mul_f64(rand::random::<f64>())
}

/// Renewal time without ARI: two thirds into the certificate's lifetime.
pub fn two_thirds(not_before: OffsetDateTime, not_after: OffsetDateTime) -> OffsetDateTime {
    not_before + (not_after - not_before) * 2 / 3
}

/// A uniformly random moment in an ARI suggested window (RFC 9773 §4.2), clamped to "now" so a
/// window in the past means "renew at once".
pub fn in_window(start: OffsetDateTime, end: OffsetDateTime) -> OffsetDateTime {
    let span = (end - start).max(time::Duration::ZERO);
    start + span * rand::random::<f64>()
}

/// What the leaf of a PEM chain says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// The issuer's common name (or the whole issuer name when it has none).
    pub issuer: String,
    /// DER of the leaf, for the ARI certificate identifier.
    pub leaf_der: Vec<u8>,
}

/// Parses the first certificate of a PEM chain.
pub fn cert_info(chain_pem: &str) -> Result<CertInfo, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain_pem.as_bytes())
        .map_err(|e| format!("the CA's certificate is not PEM: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| format!("the CA's certificate cannot be parsed: {e}"))?;
    let issuer = cert
        .issuer()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| cert.issuer().to_string());
    Ok(CertInfo {
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        issuer,
        leaf_der: pem.contents.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let (base, cap) = (Duration::from_secs(10), Duration::from_secs(300));
        for _ in 0..50 {
            let first = backoff(1, base, cap);
            assert!(
                first >= Duration::from_secs(5) && first <= base,
                "{first:?}"
            );
            let third = backoff(3, base, cap);
            assert!(third >= Duration::from_secs(20) && third <= Duration::from_secs(40));
            let late = backoff(60, base, cap);
            assert!(late >= cap / 2 && late <= cap);
        }
        assert!(backoff(0, Duration::ZERO, Duration::ZERO) > Duration::ZERO);
    }

    #[test]
    fn renewal_points() {
        let nb = time::macros::datetime!(2025-01-01 0:00 UTC);
        let na = time::macros::datetime!(2025-04-01 0:00 UTC);
        assert_eq!(
            two_thirds(nb, na),
            time::macros::datetime!(2025-03-02 0:00 UTC)
        );
        for _ in 0..20 {
            let t = in_window(nb, na);
            assert!(t >= nb && t <= na);
        }
        assert_eq!(in_window(na, nb), na, "an inverted window means its start");
    }

    #[test]
    fn problems_become_actionable_sentences() {
        let f = Failure::from_problem(
            Some("urn:ietf:params:acme:error:connection"),
            Some("connection refused"),
            80,
        );
        let s = f.sentence("myapp.example.com");
        assert!(
            s.starts_with("DNS for myapp.example.com does not point at any Gateway"),
            "{s}"
        );
        assert!(s.contains("port 80") && s.contains("connection refused"));
        let rl = Failure::from_problem(
            Some("urn:ietf:params:acme:error:rateLimited"),
            Some("too many certificates already issued, retry after 2025-01-02 03:04:05 UTC: see https://x"),
            80,
        );
        assert_eq!(
            rl.not_before(),
            Some(time::macros::datetime!(2025-01-02 3:04:05 UTC))
        );
        assert!(rl
            .sentence("a.test")
            .starts_with("CA rate limit until 2025-01-02T03:04:05Z"));
        let dns = Failure::from_problem(Some("urn:ietf:params:acme:error:dns"), None, 443);
        assert!(dns.sentence("a.test").contains("does not resolve"));
        assert!(matches!(
            Failure::from_problem(Some("urn:x"), Some("?"), 80),
            Failure::Ca { .. }
        ));
    }
}
