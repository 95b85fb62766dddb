//! Control's configuration: defaults, validation with actionable messages, secrets masked in `Debug`.

use crate::certs::{AcmeConfig, TlsMode};
use crate::secrets::mask_url_password;
use crate::validate::WgNetwork;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Everything `run` needs. The binary fills it from env vars / CLI; tests build it directly.
#[derive(Clone)]
pub struct ControlConfig {
    /// Where the SQLite database (and later certificates) live.
    pub data_dir: PathBuf,
    /// `sqlite:...` or `postgres://...` URL; `None` means `<data_dir>/control.db`, created if
    /// missing.
    pub database_url: Option<String>,
    /// PostgreSQL pool size and statement timeout.
    pub database_pool: crate::store::PoolOptions,
    /// How nodes and browsers reach Control; an `https://` URL makes session cookies `Secure`.
    pub public_url: Option<String>,
    /// Bootstrap: the first admin account, created only while no user exists.
    pub admin_email: Option<String>,
    /// Password of the bootstrap admin. Never logged; masked in `Debug`.
    pub admin_password: Option<String>,
    /// IPv4 CIDR from which WireGuard addresses are allocated to Agents and Gateways.
    pub wg_network: String,
    /// How often Control pings every node session.
    pub heartbeat_interval: Duration,
    /// A node session with no frame from the node for this long is closed.
    pub heartbeat_timeout: Duration,
    /// The ACME CA, account and retry pacing.
    pub acme: AcmeConfig,
    /// TLS mode of tunnels created without one (`kakuremichi up` uses `internal`).
    pub default_tls: TlsMode,
    /// `Strict-Transport-Security` max-age (seconds) sent by Gateways on HTTPS responses of
    /// tunnels that redirect to https; 0 sends no header.
    pub hsts_max_age: u32,
    /// How long an access token (the cookie that admits a user to a protected tunnel) lives;
    /// never past the user's login session. Logout reaches Gateways sooner through revocation.
    pub access_ttl: Duration,
    /// Proxies (CIDR ranges or addresses) whose `X-Forwarded-For` names the client for the
    /// login throttle; empty: trust nobody's, key clients by the TCP peer.
    pub trusted_proxies: Vec<String>,
    /// The A/AAAA records Control keeps in managed zones: TTL and Gateway failover timing.
    pub dns: crate::dns_records::DnsRecordsConfig,
    /// Scheduled backups: when, where, how many kept, what ships them.
    pub backup: crate::backups::BackupConfig,
    /// Where `tcp` and `udp` tunnels created without `public_port` get theirs.
    pub port_range: std::ops::RangeInclusive<u16>,
    /// Temporary tunnels (`kakuremichi share`).
    pub temporary: TemporaryConfig,
    /// Where Control serves its Prometheus `/metrics` (plain HTTP, no authentication: keep it
    /// private); `None`: nowhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Alert rules' thresholds and the SMTP server of e-mail channels.
    pub alerts: crate::alerts::AlertConfig,
    /// Where `install.sh` and the release assets are downloaded from: the "Add agent" page
    /// shows `curl -fsSL <download_url>/install.sh | sh -s -- --agent ...` (a mirror, or a
    /// release of your own build).
    pub download_url: String,
}

/// The project's latest release: install.sh, the binaries, the .deb packages, sha256sums.
pub const DEFAULT_DOWNLOAD_URL: &str =
    "https://github.com/kakuremichi/kakuremichi/releases/latest/download";

/// Temporary tunnels: where their names go, and how long one outlives its command line.
#[derive(Debug, Clone)]
pub struct TemporaryConfig {
    /// The domain random names go under (`KAKUREMICHI_TEMPORARY_DOMAIN`, e.g. `t.example.com`:
    /// point `*.t.example.com` at the Gateways). `None`: temporary tunnels are off.
    pub domain: Option<String>,
    /// A temporary tunnel whose Agent has been offline this long is deleted
    /// (`KAKUREMICHI_TEMPORARY_TTL`): the command line died without cleaning up.
    pub ttl: Duration,
}

impl Default for TemporaryConfig {
    fn default() -> Self {
        Self {
            domain: None,
            ttl: Duration::from_secs(600),
        }
    }
}

pub use crate::store::DEFAULT_PORT_RANGE;

/// Parses a port range such as `20000-29999` (a single port is a range of one).
pub fn parse_port_range(text: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let bad = || format!("{text:?} is not a port range such as 20000-29999");
    let (first, last) = text
        .trim()
        .split_once('-')
        .unwrap_or((text.trim(), text.trim()));
    let first: u16 = first.trim().parse().map_err(|_| bad())?;
    let last: u16 = last.trim().parse().map_err(|_| bad())?;
    if first == 0 || first > last {
        return Err(bad());
    }
    Ok(first..=last)
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            database_url: None,
            database_pool: crate::store::PoolOptions::default(),
            public_url: None,
            admin_email: None,
            admin_password: None,
            wg_network: "10.77.0.0/16".to_string(),
            heartbeat_interval: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(25),
            acme: AcmeConfig::default(),
            default_tls: TlsMode::Acme,
            hsts_max_age: 31_536_000,
            access_ttl: Duration::from_secs(12 * 3600),
            trusted_proxies: Vec::new(),
            dns: Default::default(),
            backup: Default::default(),
            port_range: DEFAULT_PORT_RANGE,
            temporary: TemporaryConfig::default(),
            metrics_listen: None,
            alerts: Default::default(),
            download_url: DEFAULT_DOWNLOAD_URL.to_string(),
        }
    }
}

impl fmt::Debug for ControlConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlConfig")
            .field("data_dir", &self.data_dir)
            .field(
                "database_url",
                &self.database_url.as_deref().map(mask_url_password),
            )
            .field("public_url", &self.public_url)
            .field("admin_email", &self.admin_email)
            .field(
                "admin_password",
                &self.admin_password.as_ref().map(|_| "<redacted>"),
            )
            .field("wg_network", &self.wg_network)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("heartbeat_timeout", &self.heartbeat_timeout)
            .field("acme", &self.acme)
            .field("default_tls", &self.default_tls)
            .field("hsts_max_age", &self.hsts_max_age)
            .field("access_ttl", &self.access_ttl)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("port_range", &self.port_range)
            .field("temporary", &self.temporary)
            .field("download_url", &self.download_url)
            .finish()
    }
}

/// A configuration value that cannot work; the message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("data_dir must not be empty; set it to a writable directory such as ./data")]
    EmptyDataDir,
    #[error("wg_network {value:?} is invalid: {reason}")]
    WgNetwork { value: String, reason: String },
    #[error(
        "database_url {0:?} is not supported: use a sqlite: URL such as sqlite:///var/lib/kakuremichi/control.db, \
         a postgres:// URL such as postgres://kakuremichi:PASSWORD@db.internal/kakuremichi, \
         or leave it unset to use <data_dir>/control.db"
    )]
    DatabaseUrl(String),
    #[error("public_url {0:?} must start with http:// or https:// (for example https://control.example.com)")]
    PublicUrl(String),
    #[error("admin_email and admin_password must be set together (set both to create the first admin, or neither)")]
    AdminIncomplete,
    #[error(
        "admin_email {0:?} is not an email address (expected something like admin@example.com)"
    )]
    AdminEmail(String),
    #[error("admin_password must not be empty")]
    AdminPassword,
    #[error("heartbeat_interval must be greater than zero")]
    HeartbeatInterval,
    #[error(
        "heartbeat_timeout ({timeout:?}) must be longer than heartbeat_interval ({interval:?}); \
         about 2.5 times the interval is a good value"
    )]
    HeartbeatTimeout {
        timeout: Duration,
        interval: Duration,
    },
    #[error("{0}")]
    Acme(String),
    #[error("access_ttl ({0:?}) must be between 1 minute and 7 days")]
    AccessTtl(Duration),
    #[error("temporary domain {value:?}: {reason}; give a domain such as t.example.com")]
    TemporaryDomain { value: String, reason: String },
    #[error("temporary_ttl ({0:?}) must be between 1 second and 7 days")]
    TemporaryTtl(Duration),
    #[error("{0}")]
    TrustedProxy(#[from] crate::guard::proxies::BadProxy),
    #[error(
        "download_url {0:?} must be an http:// or https:// URL of letters, digits and -._~/:%+@ only \
         (it is shown inside a shell command), e.g. https://downloads.example.com/kakuremichi"
    )]
    DownloadUrl(String),
}

impl ControlConfig {
    /// Checks every value; the first problem found is returned with a message saying what to fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::EmptyDataDir);
        }
        WgNetwork::parse(&self.wg_network).map_err(|e| ConfigError::WgNetwork {
            value: self.wg_network.clone(),
            reason: e.to_string(),
        })?;
        if let Some(url) = &self.database_url {
            if crate::store::Backend::of_url(url).is_none() {
                return Err(ConfigError::DatabaseUrl(mask_url_password(url)));
            }
        }
        if let Some(url) = &self.public_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::PublicUrl(url.clone()));
            }
        }
        match (&self.admin_email, &self.admin_password) {
            (None, None) => {}
            (Some(email), Some(password)) => {
                crate::validate::email(email)
                    .map_err(|_| ConfigError::AdminEmail(email.clone()))?;
                if password.is_empty() {
                    return Err(ConfigError::AdminPassword);
                }
            }
            _ => return Err(ConfigError::AdminIncomplete),
        }
        if self.heartbeat_interval.is_zero() {
            return Err(ConfigError::HeartbeatInterval);
        }
        if let Some(domain) = &self.temporary.domain {
            // A domain of one label (`localhost`, for `up`) is fine: the names are below it.
            let below = format!("name.{domain}");
            crate::validate::hostname(&below).map_err(|e| ConfigError::TemporaryDomain {
                value: domain.clone(),
                reason: e.0,
            })?;
        }
        let ttl = self.temporary.ttl;
        if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(7 * 86_400) {
            return Err(ConfigError::TemporaryTtl(ttl));
        }
        if self.heartbeat_timeout <= self.heartbeat_interval {
            return Err(ConfigError::HeartbeatTimeout {
                timeout: self.heartbeat_timeout,
                interval: self.heartbeat_interval,
            });
        }
        self.acme.validate().map_err(ConfigError::Acme)?;
        if self.access_ttl < Duration::from_secs(60)
            || self.access_ttl > Duration::from_secs(7 * 24 * 3600)
        {
            return Err(ConfigError::AccessTtl(self.access_ttl));
        }
        crate::guard::proxies::TrustedProxies::parse(&self.trusted_proxies)?;
        if !download_url_is_valid(&self.download_url) {
            return Err(ConfigError::DownloadUrl(self.download_url.clone()));
        }
        Ok(())
    }

    /// The parsed WireGuard network; only valid after [`ControlConfig::validate`].
    pub(crate) fn network(&self) -> Result<WgNetwork, ConfigError> {
        WgNetwork::parse(&self.wg_network).map_err(|e| ConfigError::WgNetwork {
            value: self.wg_network.clone(),
            reason: e.to_string(),
        })
    }

    /// Session cookies get `Secure` when browsers reach Control over HTTPS.
    pub(crate) fn secure_cookies(&self) -> bool {
        self.public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"))
    }
}

/// The download URL goes into a command users paste into a shell: a URL with nothing a shell
/// would interpret (no quotes, spaces, `$`, `;`, `&`, backticks...), of a sane length.
fn download_url_is_valid(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    rest.is_some_and(|rest| {
        !rest.is_empty()
            && !rest.starts_with('/')
            && url.len() <= 2048
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~/:%+@".contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_urls_are_shell_safe_http_urls() {
        let with = |url: &str| ControlConfig {
            download_url: url.into(),
            ..Default::default()
        };
        for good in [
            DEFAULT_DOWNLOAD_URL,
            "http://10.0.0.5:8000/dist",
            "https://mirror.example.com/kakuremichi/v0.1.0",
        ] {
            assert!(with(good).validate().is_ok(), "{good}");
        }
        for bad in [
            "",
            "ftp://example.com",
            "https://",
            "https:///path",
            "https://x.example.com/$(reboot)",
            "https://x.example.com/a b",
            "https://x.example.com/a;rm",
            "https://x.example.com/'",
            "https://x.example.com/`id`",
            "https://x.example.com/a&b",
            "example.com/dist",
        ] {
            assert!(
                matches!(with(bad).validate(), Err(ConfigError::DownloadUrl(_))),
                "{bad}"
            );
        }
        let long = format!("https://example.com/{}", "a".repeat(3000));
        assert!(with(&long).validate().is_err());
    }

    #[test]
    fn temporary_domains_and_ttls_are_checked() {
        let with = |domain: &str, secs: u64| ControlConfig {
            temporary: TemporaryConfig {
                domain: Some(domain.into()),
                ttl: Duration::from_secs(secs),
            },
            ..Default::default()
        };
        assert!(
            with("localhost", 600).validate().is_ok(),
            "up's one-label domain"
        );
        assert!(with("t.example.com", 1).validate().is_ok());
        for (domain, secs) in [
            ("bad domain", 600),
            ("https://t.example.com", 600),
            ("t.example.com", 0),
        ] {
            assert!(with(domain, secs).validate().is_err(), "{domain} {secs}");
        }
    }

    #[test]
    fn default_is_valid() {
        ControlConfig::default().validate().unwrap();
    }

    #[test]
    fn debug_masks_password() {
        let c = ControlConfig {
            admin_password: Some("hunter2-secret".into()),
            ..Default::default()
        };
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2-secret"));
        assert!(dbg.contains("<redacted>"));
    }

    #[test]
    fn debug_masks_database_credentials() {
        let c = ControlConfig {
            database_url: Some("postgres://km:s3cret@db/km".into()),
            ..Default::default()
        };
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cret"), "{dbg}");
        assert!(dbg.contains("postgres://<redacted>@db/km"), "{dbg}");
    }

    #[test]
    fn secure_cookies_follow_public_url() {
        let https = ControlConfig {
            public_url: Some("https://c.example.com".into()),
            ..Default::default()
        };
        let http = ControlConfig {
            public_url: Some("http://c.example.com".into()),
            ..Default::default()
        };
        assert!(https.secure_cookies());
        assert!(!http.secure_cookies());
        assert!(!ControlConfig::default().secure_cookies());
    }

    #[test]
    fn bad_values_are_explained() {
        let bad = [
            ControlConfig {
                wg_network: "10.77.0.0".into(),
                ..Default::default()
            },
            ControlConfig {
                wg_network: "10.77.0.0/31".into(),
                ..Default::default()
            },
            ControlConfig {
                wg_network: "10.77.0.0/7".into(),
                ..Default::default()
            },
            ControlConfig {
                wg_network: "fd00::/64".into(),
                ..Default::default()
            },
            ControlConfig {
                wg_network: "10.77.0.1/16".into(),
                ..Default::default()
            },
            ControlConfig {
                database_url: Some("mysql://x".into()),
                ..Default::default()
            },
            ControlConfig {
                public_url: Some("control.example.com".into()),
                ..Default::default()
            },
            ControlConfig {
                admin_email: Some("a@b.c".into()),
                ..Default::default()
            },
            ControlConfig {
                admin_password: Some("pw".into()),
                ..Default::default()
            },
            ControlConfig {
                admin_email: Some("nope".into()),
                admin_password: Some("pw".into()),
                ..Default::default()
            },
            ControlConfig {
                admin_email: Some("a@b.c".into()),
                admin_password: Some(String::new()),
                ..Default::default()
            },
            ControlConfig {
                heartbeat_interval: Duration::ZERO,
                ..Default::default()
            },
            ControlConfig {
                heartbeat_timeout: Duration::from_secs(5),
                ..Default::default()
            },
            ControlConfig {
                data_dir: PathBuf::new(),
                ..Default::default()
            },
            ControlConfig {
                access_ttl: Duration::from_secs(5),
                ..Default::default()
            },
            ControlConfig {
                trusted_proxies: vec!["10.0.0.0/8".into(), "proxy.example".into()],
                ..Default::default()
            },
        ];
        for c in bad {
            let err = c.validate().expect_err(&format!("{c:?}"));
            assert!(!err.to_string().is_empty());
        }
    }
}
