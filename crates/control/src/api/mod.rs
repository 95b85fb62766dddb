//! The HTTP API (`/api/v1`), health endpoints and the node endpoints, as one axum router.

pub(crate) mod agents;
mod auth;
pub(crate) mod authn;
pub(crate) mod gateways;
mod nodes;
pub(crate) mod status;
mod tokens;
pub(crate) mod tunnels;
mod users;

use crate::certs::TlsMode;
use crate::error::{self, ApiError};
use crate::hub::Hub;
use crate::store::Store;
use crate::validate::WgNetwork;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use kakuremichi_proto::{CONNECT_PATH, PULL_CONFIG_PATH};
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
    /// Lifetime of the access tokens minted for protected tunnels.
    pub access_ttl: std::time::Duration,
    /// Failed logins per account and per IP.
    pub throttle: crate::guard::throttle::Throttle,
    /// API requests per user (`api_requests_per_minute`).
    pub api_rate: crate::guard::ratelimit::ApiRateLimit,
}

impl AppState {
    pub fn new(
        hub: Arc<Hub>,
        network: WgNetwork,
        secure_cookies: bool,
        dummy_password_hash: String,
    ) -> Self {
        Self(Arc::new(Inner {
            store: hub.store().clone(),
            hub,
            network,
            secure_cookies,
            dummy_password_hash,
            passwords: Arc::new(crate::guard::hashing::Passwords::for_this_host()),
            trusted_proxies: Default::default(),
            default_tls: TlsMode::Acme,
            access_ttl: crate::ControlConfig::default().access_ttl,
            throttle: Default::default(),
            api_rate: Default::default(),
        }))
    }

    /// Sets the TLS mode of tunnels created without one; only before the state is shared.
    pub fn with_default_tls(mut self, mode: TlsMode) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.0) {
            inner.default_tls = mode;
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

    /// Sets the lifetime of access tokens; only before the state is shared.
    pub fn with_access_ttl(mut self, ttl: std::time::Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.0) {
            inner.access_ttl = ttl;
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

/// Every route of Control: the API (JSON errors) and the web UI (HTML pages), with the
/// security headers on every response.
pub fn router(state: AppState) -> Router {
    api_router()
        .merge(crate::ui::router())
        // Browser-facing pages of per-tunnel access control: HTML, not JSON errors.
        .merge(crate::access::authorize::routes())
        .fallback(crate::ui::not_found)
        .layer(axum::middleware::map_response(crate::ui::security_headers))
        .with_state(state)
}

fn api_router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/auth/login", post(auth::login))
        .route("/api/v1/auth/logout", post(auth::logout))
        .route("/api/v1/auth/me", get(auth::me))
        .route(
            "/api/v1/auth/logout-everywhere",
            post(auth::logout_everywhere),
        )
        .route("/api/v1/users", get(users::list).post(users::create))
        .route(
            "/api/v1/users/{id}",
            axum::routing::patch(users::update).delete(users::delete),
        )
        .route("/api/v1/invitations", post(users::invite))
        .route(
            "/api/v1/settings",
            get(users::get_settings).patch(users::update_settings),
        )
        .route("/api/v1/audit", get(users::audit))
        .route("/api/v1/agents/{id}/rotate-key", post(agents::rotate_key))
        .route("/api/v1/tokens", get(tokens::list).post(tokens::create))
        .route("/api/v1/tokens/{id}", axum::routing::delete(tokens::delete))
        .route("/api/v1/agents", get(agents::list).post(agents::create))
        .route(
            "/api/v1/agents/{id}",
            get(agents::get)
                .patch(agents::update)
                .delete(agents::delete),
        )
        .route(
            "/api/v1/gateways",
            get(gateways::list).post(gateways::create),
        )
        .route(
            "/api/v1/gateways/{id}",
            get(gateways::get)
                .patch(gateways::update)
                .delete(gateways::delete),
        )
        .route("/api/v1/tunnels", get(tunnels::list).post(tunnels::create))
        .route(
            "/api/v1/tunnels/{id}",
            get(tunnels::get)
                .patch(tunnels::update)
                .delete(tunnels::delete),
        )
        .route("/api/v1/status", get(status::get))
        .route(CONNECT_PATH, get(nodes::connect))
        .route(PULL_CONFIG_PATH, get(nodes::pull_config))
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::map_response(error::json_errors))
}

/// Unknown `/api/...` routes (the UI's fallback sends them here).
pub async fn api_not_found() -> ApiError {
    error::not_found().await
}

/// Liveness: the process answers.
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Readiness: the database answers.
async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    match state.store.ping().await {
        Ok(()) => Ok(Json(serde_json::json!({ "status": "ok" }))),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the database is not reachable",
            ))
        }
    }
}

/// `"online"` while the node has an open session.
fn status(online: bool) -> &'static str {
    if online {
        "online"
    } else {
        "offline"
    }
}
