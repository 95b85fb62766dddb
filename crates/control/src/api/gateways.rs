//! `/gateways`: create (returns the token, once), list, read, update, delete.

use super::openapi::{ErrorBody, ReadErrors, WriteErrors};
use crate::app::AppState;
use crate::auth::AuthUser;
use crate::error::{about, ApiError, ApiJson, Id};
use crate::ops;
use crate::views::gateways::{view, GatewayView};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGateway {
    name: String,
    public_endpoint: String,
    /// The IPv4 address the internet reaches this Gateway at, for the A records of managed DNS
    /// zones. Default: `public_endpoint`'s address when it is an IPv4 address.
    public_ipv4: Option<String>,
    /// The IPv6 address, for AAAA records. Default: `public_endpoint`'s when it is IPv6.
    public_ipv6: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchGateway {
    name: Option<String>,
    public_endpoint: Option<String>,
    enabled: Option<bool>,
    /// Absent: unchanged; null: back to the default (from `public_endpoint`).
    #[serde(default, deserialize_with = "super::tunnels::nullable")]
    #[schema(value_type = Option<String>)]
    public_ipv4: Option<Option<String>>,
    #[serde(default, deserialize_with = "super::tunnels::nullable")]
    #[schema(value_type = Option<String>)]
    public_ipv6: Option<Option<String>>,
}

/// Creates a Gateway (admins) and returns its token, once.
#[utoipa::path(
    post,
    path = "/api/v1/gateways",
    tag = "gateways",
    operation_id = "create_gateway",
    security(("api_token" = []), ("session_cookie" = [], "csrf_token" = [])),
    request_body = CreateGateway,
    responses(
        (status = 201, description = "Created; `token` is shown this once", body = GatewayView),
        WriteErrors,
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiJson(body): ApiJson<CreateGateway>,
) -> Result<(StatusCode, Json<GatewayView>), ApiError> {
    let addresses = ops::gateways::PublicAddresses {
        ipv4: body.public_ipv4.map(Some),
        ipv6: body.public_ipv6.map(Some),
    };
    let (row, token) =
        ops::gateways::create(&state, &user, &body.name, &body.public_endpoint, addresses).await?;
    Ok((StatusCode::CREATED, Json(view(&state, row, Some(token)))))
}

/// Lists the Gateways.
#[utoipa::path(
    get,
    path = "/api/v1/gateways",
    tag = "gateways",
    operation_id = "list_gateways",
    security(("api_token" = []), ("session_cookie" = [])),
    responses(
        (status = 200, description = "Every Gateway", body = Vec<GatewayView>),
        ReadErrors,
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    _user: AuthUser,
) -> Result<Json<Vec<GatewayView>>, ApiError> {
    let rows = state.store.list_gateways().await?;
    Ok(Json(
        rows.into_iter().map(|g| view(&state, g, None)).collect(),
    ))
}

/// Reads one Gateway.
#[utoipa::path(
    get,
    path = "/api/v1/gateways/{id}",
    tag = "gateways",
    operation_id = "get_gateway",
    security(("api_token" = []), ("session_cookie" = [])),
    params(("id" = i64, Path, description = "The Gateway's id")),
    responses(
        (status = 200, description = "The Gateway", body = GatewayView),
        (status = 400, description = "The id is not an integer", body = ErrorBody),
        (status = 404, description = "No such Gateway", body = ErrorBody),
        ReadErrors,
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    _user: AuthUser,
    Id(id): Id,
) -> Result<Json<GatewayView>, ApiError> {
    let row = state
        .store
        .get_gateway(id)
        .await
        .map_err(about("gateway"))?;
    Ok(Json(view(&state, row, None)))
}

/// Changes a Gateway's name, public endpoint or whether it is enabled (admins).
#[utoipa::path(
    patch,
    path = "/api/v1/gateways/{id}",
    tag = "gateways",
    operation_id = "update_gateway",
    security(("api_token" = []), ("session_cookie" = [], "csrf_token" = [])),
    params(("id" = i64, Path, description = "The Gateway's id")),
    request_body = PatchGateway,
    responses(
        (status = 200, description = "The Gateway as changed", body = GatewayView),
        (status = 404, description = "No such Gateway", body = ErrorBody),
        WriteErrors,
    ),
)]
pub async fn update(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Id(id): Id,
    ApiJson(body): ApiJson<PatchGateway>,
) -> Result<Json<GatewayView>, ApiError> {
    let row = ops::gateways::update(
        &state,
        &user,
        id,
        body.name.as_deref(),
        body.public_endpoint.as_deref(),
        body.enabled,
        ops::gateways::PublicAddresses {
            ipv4: body.public_ipv4,
            ipv6: body.public_ipv6,
        },
    )
    .await?;
    Ok(Json(view(&state, row, None)))
}

/// Deletes a Gateway (admins).
///
/// Its open session, if any, is closed with `revoked`.
#[utoipa::path(
    delete,
    path = "/api/v1/gateways/{id}",
    tag = "gateways",
    operation_id = "delete_gateway",
    security(("api_token" = []), ("session_cookie" = [], "csrf_token" = [])),
    params(("id" = i64, Path, description = "The Gateway's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such Gateway", body = ErrorBody),
        WriteErrors,
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Id(id): Id,
) -> Result<StatusCode, ApiError> {
    ops::gateways::delete(&state, &user, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
