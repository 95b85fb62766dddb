//! The HTTP API (`/api/v1`), health endpoints and the node endpoints, as one axum router.

mod agents;
mod alerts;
mod backups;
mod device;
mod gateways;
mod inspect;
mod login;
mod nodes;
mod openapi;
mod shares;
mod status;
mod tokens;
mod traffic;
mod tunnels;
mod users;
mod zones;

use crate::app::AppState;
use crate::error::{self, ApiError};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use kakuremichi_proto::{CONNECT_PATH, PULL_CONFIG_PATH};

/// The API's routes, with JSON errors (the UI and the access hand-off are merged beside them
/// in `lib.rs`).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/openapi.json", get(openapi::serve))
        .route("/api/v1/auth/login", post(login::login))
        .route("/api/v1/auth/logout", post(login::logout))
        .route("/api/v1/auth/me", get(login::me))
        .route("/api/v1/auth/device", post(device::start))
        .route("/api/v1/auth/device/token", post(device::poll))
        .route(
            "/api/v1/auth/logout-everywhere",
            post(login::logout_everywhere),
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
        .route("/api/v1/tunnels/{id}/check", post(inspect::check))
        .route("/api/v1/tunnels/{id}/requests", get(inspect::requests))
        .route("/api/v1/tunnels/{id}/traffic", get(traffic::tunnel))
        .route("/api/v1/traffic", get(traffic::fleet))
        .route("/api/v1/shares", get(shares::list).post(shares::create))
        .route("/api/v1/shares/{id}", axum::routing::delete(shares::delete))
        .route("/api/v1/dns/zones", get(zones::list).post(zones::create))
        .route(
            "/api/v1/dns/zones/{id}",
            get(zones::get).patch(zones::update).delete(zones::delete),
        )
        .route("/api/v1/dns/zones/{id}/check", post(zones::check))
        .route("/api/v1/status", get(status::get))
        .route("/api/v1/backups", get(backups::list).post(backups::create))
        .route("/api/v1/alerts", get(alerts::list))
        .route(
            "/api/v1/alerts/channels",
            get(alerts::channels).post(alerts::create),
        )
        .route(
            "/api/v1/alerts/channels/{id}",
            axum::routing::delete(alerts::delete),
        )
        .route("/api/v1/alerts/channels/{id}/test", post(alerts::test))
        .route(CONNECT_PATH, get(nodes::connect))
        .route(PULL_CONFIG_PATH, get(nodes::pull_config))
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::map_response(error::json_errors))
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    operation_id = "healthz",
    responses((status = 200, description = "The process answers", body = openapi::Health)),
)]
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Readiness: the database answers.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    operation_id = "readyz",
    responses(
        (status = 200, description = "The database answers", body = openapi::Health),
        (status = 503, description = "The database is not reachable", body = openapi::ErrorBody),
    ),
)]
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
