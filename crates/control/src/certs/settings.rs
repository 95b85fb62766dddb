//! HTTPS settings of Control: the ACME CA and account, which challenge to use, per-tunnel TLS
//! modes, HSTS and the retry pacing. Secrets (the EAB HMAC key) are masked in `Debug`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Let's Encrypt's production directory, the default CA.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// How a tunnel's hostname gets its certificate.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// From the configured ACME CA (Let's Encrypt by default).
    Acme,
    /// From Control's own CA, for local names and private networks (like Caddy's `tls internal`).
    Internal,
    /// No HTTPS: the hostname is served over plain HTTP only.
    Off,
}

impl TlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Acme => "acme",
            TlsMode::Internal => "internal",
            TlsMode::Off => "off",
        }
    }
}

impl FromStr for TlsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "acme" => Ok(TlsMode::Acme),
            "internal" => Ok(TlsMode::Internal),
            "off" => Ok(TlsMode::Off),
            other => Err(format!(
                "tls {other:?} is not one of \"acme\", \"internal\", \"off\""
            )),
        }
    }
}

/// Which ACME challenge Control asks the CA to validate. HTTP-01 and TLS-ALPN-01 are both always
/// pushed to the Gateways; DNS-01 is written to the hostname's managed DNS zone. A wildcard
/// (`*.apps.example.com`) always uses DNS-01, whatever the choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeChoice {
    /// HTTP-01 first; after a failed attempt, alternate with TLS-ALPN-01.
    Auto,
    /// HTTP-01 only (port 80 must reach a Gateway).
    Http01,
    /// TLS-ALPN-01 only (port 443 must reach a Gateway; port 80 may stay closed).
    TlsAlpn01,
    /// DNS-01 only: a TXT record in a DNS zone Control manages (no port needs to be open).
    Dns01,
}

/// The challenge one attempt answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    Http01,
    TlsAlpn01,
    Dns01,
}

impl ChallengeChoice {
    /// The challenge of attempt number `failures` (0 for the first) for `host`.
    pub fn for_host(self, host: &str, failures: i64) -> Challenge {
        if host.starts_with("*.") {
            return Challenge::Dns01;
        }
        match self {
            ChallengeChoice::Http01 => Challenge::Http01,
            ChallengeChoice::TlsAlpn01 => Challenge::TlsAlpn01,
            ChallengeChoice::Dns01 => Challenge::Dns01,
            ChallengeChoice::Auto if failures % 2 == 1 => Challenge::TlsAlpn01,
            ChallengeChoice::Auto => Challenge::Http01,
        }
    }

    /// Whether orders for `host` need a Gateway to answer the CA (not with DNS-01).
    pub fn needs_gateway(self, host: &str) -> bool {
        !host.starts_with("*.") && self != ChallengeChoice::Dns01
    }
}

impl FromStr for ChallengeChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(ChallengeChoice::Auto),
            "http-01" => Ok(ChallengeChoice::Http01),
            "tls-alpn-01" => Ok(ChallengeChoice::TlsAlpn01),
            "dns-01" => Ok(ChallengeChoice::Dns01),
            other => Err(format!(
                "ACME challenge {other:?} is not one of \"auto\", \"http-01\", \"tls-alpn-01\", \
                 \"dns-01\""
            )),
        }
    }
}

/// The ACME client's settings.
#[derive(Clone)]
pub struct AcmeConfig {
    /// Directory URL (`KAKUREMICHI_ACME_DIRECTORY`).
    pub directory_url: String,
    /// Contact for the account (`KAKUREMICHI_ACME_EMAIL`); the CA may send expiry notices.
    pub email: Option<String>,
    /// PEM file of extra roots trusted for the ACME server itself (`KAKUREMICHI_ACME_CA_ROOTS`).
    pub ca_roots: Option<PathBuf>,
    /// External account binding key id (`KAKUREMICHI_ACME_EAB_KID`).
    pub eab_kid: Option<String>,
    /// External account binding HMAC key, base64url (`KAKUREMICHI_ACME_EAB_HMAC_KEY`). Secret.
    pub eab_hmac_key: Option<String>,
    pub challenge: ChallengeChoice,
    /// First retry delay after a failure; doubles per consecutive failure, with jitter.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_cap: Duration,
    /// How long to wait for every online Gateway to confirm a challenge before validating anyway.
    pub gateways_ready_timeout: Duration,
    /// Hourly caps on ACME orders, per user and per registered domain.
    pub limits: super::limits::OrderLimits,
    /// How long DNS-01 waits for its TXT record to be visible on every authoritative server of
    /// the zone before giving up (`KAKUREMICHI_ACME_DNS_PROPAGATION_TIMEOUT`).
    pub dns_propagation_timeout: Duration,
    /// The recursive resolver (`host:port`) DNS-01 asks for `_acme-challenge` CNAMEs and for the
    /// zones' name servers (`KAKUREMICHI_DNS_RESOLVER`); `None`: the first of /etc/resolv.conf.
    pub dns_resolver: Option<String>,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        Self {
            directory_url: LETS_ENCRYPT.to_string(),
            email: None,
            ca_roots: None,
            eab_kid: None,
            eab_hmac_key: None,
            challenge: ChallengeChoice::Auto,
            retry_base: Duration::from_secs(60),
            retry_cap: Duration::from_secs(6 * 3600),
            gateways_ready_timeout: Duration::from_secs(15),
            limits: super::limits::OrderLimits::default(),
            dns_propagation_timeout: Duration::from_secs(120),
            dns_resolver: None,
        }
    }
}

impl fmt::Debug for AcmeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeConfig")
            .field("directory_url", &self.directory_url)
            .field("email", &self.email)
            .field("ca_roots", &self.ca_roots)
            .field("eab_kid", &self.eab_kid)
            .field(
                "eab_hmac_key",
                &self.eab_hmac_key.as_ref().map(|_| "<redacted>"),
            )
            .field("challenge", &self.challenge)
            .field("retry_base", &self.retry_base)
            .field("retry_cap", &self.retry_cap)
            .field("gateways_ready_timeout", &self.gateways_ready_timeout)
            .field("limits", &self.limits)
            .field("dns_propagation_timeout", &self.dns_propagation_timeout)
            .field("dns_resolver", &self.dns_resolver)
            .finish()
    }
}

impl AcmeConfig {
    /// Checks the values; the message says what to change.
    pub fn validate(&self) -> Result<(), String> {
        if !self.directory_url.starts_with("https://") {
            return Err(format!(
                "KAKUREMICHI_ACME_DIRECTORY {:?} must be an https:// URL, e.g. {LETS_ENCRYPT} \
                 (or https://acme-staging-v02.api.letsencrypt.org/directory for testing)",
                self.directory_url
            ));
        }
        if self.eab_kid.is_some() != self.eab_hmac_key.is_some() {
            return Err("KAKUREMICHI_ACME_EAB_KID and KAKUREMICHI_ACME_EAB_HMAC_KEY must be set together (your CA shows both)".into());
        }
        if let Some(email) = &self.email {
            crate::validate::email(email).map_err(|_| {
                format!("KAKUREMICHI_ACME_EMAIL {email:?} is not an e-mail address")
            })?;
        }
        if let Some(path) = &self.ca_roots {
            if !path.is_file() {
                return Err(format!(
                    "KAKUREMICHI_ACME_CA_ROOTS {} is not a readable file (expected PEM certificates)",
                    path.display()
                ));
            }
        }
        if let Some(resolver) = &self.dns_resolver {
            let ok = resolver
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
            if !ok {
                return Err(format!(
                    "KAKUREMICHI_DNS_RESOLVER {resolver:?} must be host:port, e.g. 192.0.2.53:53"
                ));
            }
        }
        if self.dns_propagation_timeout.is_zero() {
            return Err("KAKUREMICHI_ACME_DNS_PROPAGATION_TIMEOUT must be at least 1 s".into());
        }
        if self.retry_base.is_zero() || self.retry_cap < self.retry_base {
            return Err("ACME retry delays must be positive, the cap at least the base".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_modes_and_challenges() {
        assert_eq!("internal".parse::<TlsMode>().unwrap(), TlsMode::Internal);
        assert!("ACME".parse::<TlsMode>().is_err());
        assert_eq!(
            "tls-alpn-01".parse::<ChallengeChoice>().unwrap(),
            ChallengeChoice::TlsAlpn01
        );
        assert_eq!(
            "dns-01".parse::<ChallengeChoice>().unwrap(),
            ChallengeChoice::Dns01
        );
        assert!("dns".parse::<ChallengeChoice>().is_err());
    }

    #[test]
    fn auto_alternates_after_failures_and_wildcards_use_dns01() {
        let auto = ChallengeChoice::Auto;
        assert_eq!(auto.for_host("a.example.com", 0), Challenge::Http01);
        assert_eq!(auto.for_host("a.example.com", 1), Challenge::TlsAlpn01);
        assert_eq!(auto.for_host("a.example.com", 2), Challenge::Http01);
        assert_eq!(
            ChallengeChoice::TlsAlpn01.for_host("a.example.com", 0),
            Challenge::TlsAlpn01
        );
        assert_eq!(
            ChallengeChoice::Http01.for_host("a.example.com", 1),
            Challenge::Http01
        );
        assert_eq!(
            ChallengeChoice::Dns01.for_host("a.example.com", 1),
            Challenge::Dns01
        );
        for choice in [ChallengeChoice::Auto, ChallengeChoice::Http01] {
            assert_eq!(choice.for_host("*.apps.example.com", 0), Challenge::Dns01);
            assert!(!choice.needs_gateway("*.apps.example.com"));
            assert!(choice.needs_gateway("apps.example.com"));
        }
        assert!(!ChallengeChoice::Dns01.needs_gateway("apps.example.com"));
    }

    #[test]
    fn validation_and_masking() {
        AcmeConfig::default().validate().unwrap();
        let c = AcmeConfig {
            eab_kid: Some("kid".into()),
            eab_hmac_key: Some("super-secret-hmac".into()),
            ..Default::default()
        };
        c.validate().unwrap();
        assert!(!format!("{c:?}").contains("super-secret-hmac"));
        for bad in [
            AcmeConfig {
                directory_url: "http://x".into(),
                ..Default::default()
            },
            AcmeConfig {
                eab_kid: Some("kid".into()),
                ..Default::default()
            },
            AcmeConfig {
                email: Some("nope".into()),
                ..Default::default()
            },
            AcmeConfig {
                ca_roots: Some("/nonexistent/roots.pem".into()),
                ..Default::default()
            },
            AcmeConfig {
                dns_resolver: Some("192.0.2.53".into()),
                ..Default::default()
            },
        ] {
            assert!(bad.validate().is_err());
        }
    }
}
