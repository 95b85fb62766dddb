//! `AppState`, what every request handler and operation is given: the store, the node hub, the
//! abuse-resistance services and a few settings. Cheap to clone (one `Arc`).
//!
//! It sits below `auth`, `ops` and the front ends (API, UI, access) that all take it, and above
//! everything it holds (`store`, `hub`, `guard`, `config`), so none of those can reach back up.

use crate::certs::TlsMode;
use crate::hub::Hub;
use crate::store::Store;
use crate::validate::WgNetwork;
use std::ops::Deref;
use std::sync::Arc;

/// Shared state of every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub store: Store,
    pub hub: Arc<Hub>,
    pub network: WgNetwork,
    pub secure_cookies: bool,
    /// Verified against for unknown e-mails, so a failed login takes as long either way.
    pub dummy_password_hash: String,
    /// The one bounded pool every Argon2 computation goes through.
    pub passwords: Arc<crate::guard::hashing::Passwords>,
    /// Peers whose `X-Forwarded-For` names the client (for the per-client login throttle).
    pub trusted_proxies: crate::guard::proxies::TrustedProxies,
    /// TLS mode of tunnels created without one.
    pub default_tls: TlsMode,
    /// Where `tcp`/`udp` tunnels created without `public_port` get one.
    pub port_range: std::ops::RangeInclusive<u16>,
    /// Lifetime of the access tokens minted for protected tunnels.
    pub access_ttl: std::time::Duration,
    /// Failed logins per account and per IP.
    pub throttle: crate::guard::throttle::Throttle,
    /// API requests per user (`api_requests_per_minute`).
    pub api_rate: crate::guard::ratelimit::ApiRateLimit,
    /// The managed DNS zones (their secrets sealed with the data directory's key).
    pub zones: crate::zones::Zones,
    /// The managed A/AAAA records: each tunnel's DNS status, and a nudge after zone changes.
    pub dns_records: Arc<crate::dns_records::DnsRecords>,
    /// Temporary tunnels' domain and lifetime without their command line.
    pub temporary: crate::config::TemporaryConfig,
    /// The backups Control makes (`None` in tests' states: the API answers 503).
    pub backups: Option<Arc<crate::backups::Backups>>,
    /// Control's alerts (`None` in tests' states: the API answers 503).
    pub alerts: Option<Arc<crate::alerts::Alerts>>,
    /// Where install.sh comes from (the "Add agent" page's one-line install).
    pub download_url: String,
}

impl AppState {
    pub fn new(
        hub: Arc<Hub>,
        network: WgNetwork,
        secure_cookies: bool,
        dummy_password_hash: String,
    ) -> Self {
        // Tests' states: secrets sealed with a key that dies with the process.
        let zones = crate::zones::Zones::new(
            hub.store().clone(),
            Arc::new(crate::secrets::Sealer::ephemeral()),
        );
        let dns_records =
            crate::dns_records::DnsRecords::new(hub.clone(), zones.clone(), Default::default());
        let throttle = crate::guard::throttle::Throttle::for_store(hub.store());
        let api_rate = crate::guard::ratelimit::ApiRateLimit::for_store(hub.store());
        Self(Arc::new(Inner {
            store: hub.store().clone(),
            hub,
            network,
            secure_cookies,
            dummy_password_hash,
            passwords: Arc::new(crate::guard::hashing::Passwords::for_this_host()),
            trusted_proxies: Default::default(),
            default_tls: TlsMode::Acme,
            port_range: crate::config::DEFAULT_PORT_RANGE,
            access_ttl: crate::config::ControlConfig::default().access_ttl,
            throttle,
            api_rate,
            zones,
            dns_records,
            temporary: Default::default(),
            backups: None,
            alerts: None,
            download_url: crate::config::DEFAULT_DOWNLOAD_URL.to_string(),
        }))
    }

    /// Uses the reconciler Control runs; only before the state is shared.
    pub fn with_dns_records(mut self, records: Arc<crate::dns_records::DnsRecords>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.0) {
            inner.dns_records = records;
        }
        self
    }

    /// Uses `zones` (sealed with the data directory's key); only before the state is shared.
    pub fn with_zones(mut self, zones: crate::zones::Zones) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.0) {
            inner.zones = zones;
        }
        self
    }

    /// Sets the TLS mode of tunnels created without one; only before the state is shared.
    pub fn with_default_tls(mut self, mode: TlsMode) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.0) {
            inner.default_tls = mode;
        }
        self
    }

    /// Sets where public ports are picked from; only before the state is shared.
    pub fn with_port_range(mut self, range: std::ops::RangeInclusive<u16>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.0) {
            inner.port_range = range;
        }
        self
    }

    /// Shares the password pool Control started with; only before the state is shared.
    pub fn with_passwords(mut self, pool: Arc<crate::guard::hashing::Passwords>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.0) {
            inner.passwords = pool;
        }
        self
    }

    /// Sets the proxies trusted to name the client; only before the state is shared.
    pub fn with_trusted_proxies(mut self, proxies: crate::guard::proxies::TrustedProxies) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.0) {
            inner.trusted_proxies = proxies;
        }
        self
    }

    /// Uses the backups Control schedules; only before the state is shared.
    pub fn with_backups(mut self, backups: Arc<crate::backups::Backups>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.0) {
            inner.backups = Some(backups);
        }
        self
    }

    /// Uses Control's alerts; only before the state is shared.
    pub fn with_alerts(mut self, alerts: Arc<crate::alerts::Alerts>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.0) {
            inner.alerts = Some(alerts);
        }
        self
    }

    /// Sets the temporary tunnels' domain and TTL; only before the state is shared.
    pub fn with_temporary(mut self, temporary: crate::config::TemporaryConfig) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.0) {
            inner.temporary = temporary;
        }
        self
    }

    /// Sets the lifetime of access tokens; only before the state is shared.
    pub fn with_access_ttl(mut self, ttl: std::time::Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.0) {
            inner.access_ttl = ttl;
        }
        self
    }

    /// Where the "Add agent" page's install line downloads from; only before the state is shared.
    pub fn with_download_url(mut self, url: String) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.0) {
            inner.download_url = url;
        }
        self
    }
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Counts every request a route answered, by route template, method and status
/// (`kakuremichi_control_api_requests_total`). Methods outside the standard ones count as
/// `other`, so a client cannot add series.
pub async fn count_request(
    axum::extract::State(state): axum::extract::State<AppState>,
    route: Option<axum::extract::MatchedPath>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::Method;
    let method = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let response = next.run(request).await;
    let route = route.as_ref().map_or("unmatched", |r| r.as_str());
    state
        .hub
        .metrics()
        .request(route, method, response.status().as_u16());
    response
}
