//! `/dns/zones` (admins only): add, list, read, change, delete, and check a managed DNS zone.
//! The config's write-only fields (`key_secret`, `api_key`, `api_token`) are accepted, never
//! returned: a view names the ones that are set under `secrets`.

use super::openapi::{ErrorBody, ReadErrors, WriteErrors};
use crate::app::AppState;
use crate::auth::AuthUser;
use crate::error::{ApiError, ApiJson, Id};
use crate::ops;
use crate::views::zones::{check_view, view, CheckView, ZoneView};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateZone {
    /// The zone's name, e.g. `example.com`.
    #[schema(example = "example.com")]
    zone: String,
    /// `rfc2136`, `powerdns` or `cloudflare`.
    #[schema(example = "rfc2136")]
    provider: String,
    /// The provider's settings. `rfc2136`: `{"server": "host:port", "key_name", "key_algorithm":
    /// "hmac-sha256", "key_secret"*}`; `powerdns`: `{"api_url", "api_key"*, "server_id"}`;
    /// `cloudflare`: `{"api_token"*, "zone_id"}`; fields marked * are write-only.
    #[schema(value_type = Object)]
    config: Value,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchZone {
    /// A new provider (needs its whole config).
    provider: Option<String>,
    /// Fields to change: absent ones keep their value (the secret need not be sent again),
    /// `null` removes one.
    #[schema(value_type = Option<Object>)]
    config: Option<Value>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Delete the zone even when its records cannot be removed (they stay in DNS).
    #[serde(default)]
    keep_records: bool,
}

/// Adds a managed DNS zone (admins).
#[utoipa::path(
    post,
    path = "/api/v1/dns/zones",
    tag = "dns",
    operation_id = "create_dns_zone",
    security(("api_token" = []), ("session_cookie" = [], "csrf_token" = [])),
    request_body = CreateZone,
    responses(
        (status = 201, description = "Added; write-only fields are not shown", body = ZoneView),
        (status = 409, description = "The zone is already managed", body = ErrorBody),
        WriteErrors,
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiJson(body): ApiJson<CreateZone>,
) -> Result<(StatusCode, Json<ZoneView>), ApiError> {
    let row = ops::zones::create(&state, &user, &body.zone, &body.provider, body.config).await?;
    Ok((StatusCode::CREATED, Json(view(row))))
}

/// Lists the managed DNS zones (admins).
#[utoipa::path(
    get,
    path = "/api/v1/dns/zones",
    tag = "dns",
    operation_id = "list_dns_zones",
    security(("api_token" = []), ("session_cookie" = [])),
    responses(
        (status = 200, description = "Every managed zone", body = Vec<ZoneView>),
        ReadErrors,
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Json<Vec<ZoneView>>, ApiError> {
    let rows = ops::zones::list(&state, &user).await?;
    Ok(Json(rows.into_iter().map(view).collect()))
}

/// Reads one managed DNS zone (admins).
#[utoipa::path(
    get,
    path = "/api/v1/dns/zones/{id}",
    tag = "dns",
    operation_id = "get_dns_zone",
    security(("api_token" = []), ("session_cookie" = [])),
    params(("id" = i64, Path, description = "The zone's id")),
    responses(
        (status = 200, description = "The zone", body = ZoneView),
        (status = 400, description = "The id is not an integer", body = ErrorBody),
        (status = 404, description = "No such zone", body = ErrorBody),
        ReadErrors,
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Id(id): Id,
) -> Result<Json<ZoneView>, ApiError> {
    Ok(Json(view(ops::zones::get(&state, &user, id).await?)))
}

/// Changes a zone's provider or config (admins); fields absent from `config` keep their value.
#[utoipa::path(
    patch,
    path = "/api/v1/dns/zones/{id}",
    tag = "dns",
    operation_id = "update_dns_zone",
    security(("api_token" = []), ("session_cookie" = [], "csrf_token" = [])),
    params(("id" = i64, Path, description = "The zone's id")),
    request_body = PatchZone,
    responses(
        (status = 200, description = "The zone as changed", body = ZoneView),
        (status = 404, description = "No such zone", body = ErrorBody),
        WriteErrors,
    ),
)]
pub async fn update(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Id(id): Id,
    ApiJson(body): ApiJson<PatchZone>,
) -> Result<Json<ZoneView>, ApiError> {
    let op = ops::zones::update(&state, &user, id, body.provider.as_deref(), body.config);
    Ok(Json(view(op.await?)))
}

/// Deletes a zone (admins), after removing the DNS records kakuremichi wrote in it.
///
/// When the provider fails to remove them the zone is kept (502, saying what failed), unless
/// `keep_records=true`: then the zone is deleted and the records stay in DNS.
#[utoipa::path(
    delete,
    path = "/api/v1/dns/zones/{id}",
    tag = "dns",
    operation_id = "delete_dns_zone",
    security(("api_token" = []), ("session_cookie" = [], "csrf_token" = [])),
    params(("id" = i64, Path, description = "The zone's id"), DeleteQuery),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such zone", body = ErrorBody),
        (status = 409, description = "The zone's provider cannot be opened (see keep_records)", body = ErrorBody),
        (status = 502, description = "The provider failed to remove the records; the zone is kept", body = ErrorBody),
        WriteErrors,
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Id(id): Id,
    Query(q): Query<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    ops::zones::delete(&state, &user, id, q.keep_records).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Tests the connection (admins): whether the zone is served and the credentials may change it.
///
/// Always 200 when the zone exists: `ok` says whether it works, `error` exactly what failed.
#[utoipa::path(
    post,
    path = "/api/v1/dns/zones/{id}/check",
    tag = "dns",
    operation_id = "check_dns_zone",
    security(("api_token" = []), ("session_cookie" = [], "csrf_token" = [])),
    params(("id" = i64, Path, description = "The zone's id")),
    responses(
        (status = 200, description = "What the check found", body = CheckView),
        (status = 404, description = "No such zone", body = ErrorBody),
        WriteErrors,
    ),
)]
pub async fn check(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Id(id): Id,
) -> Result<Json<CheckView>, ApiError> {
    let c = ops::zones::check(&state, &user, id).await?;
    Ok(Json(check_view(&c.row, &c.result, c.elapsed)))
}
