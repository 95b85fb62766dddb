//! A tunnel seen from its nodes, live: its Agents check the target, its Gateways hand over the
//! requests they logged (see `ops::inspect`).

use super::openapi::{ErrorBody, ReadErrors, WriteErrors};
use crate::app::AppState;
use crate::auth::AuthUser;
use crate::error::{ApiError, Id};
use crate::ops::inspect::{self, CheckReport, RequestLog};
use axum::extract::{Query, State};
use axum::Json;
use kakuremichi_proto::query::MAX_LOG_RECORDS;
use kakuremichi_proto::RequestFilter;
use serde::Deserialize;

/// Asks every Agent serving the tunnel to connect to its target now and say how it went: the
/// connect time and, for `http` tunnels, the status line the target answers to `GET /`; or the
/// exact error ("connection refused from app:3000 (172.18.0.5:3000)"). Agents without a
/// session are listed with why they were not asked. Changes nothing.
#[utoipa::path(
    post,
    path = "/api/v1/tunnels/{id}/check",
    tag = "tunnels",
    operation_id = "check_tunnel",
    security(("api_token" = []), ("session_cookie" = [], "csrf_token" = [])),
    params(("id" = i64, Path, description = "The tunnel's id")),
    responses(
        (status = 200, description = "What each Agent found", body = CheckReport),
        (status = 404, description = "No such tunnel", body = ErrorBody),
        WriteErrors,
    ),
)]
pub async fn check(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Id(id): Id,
) -> Result<Json<CheckReport>, ApiError> {
    Ok(Json(inspect::check_target(&state, &user, id).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// Only this status (`502`) or class (`5xx`).
    status: Option<String>,
    /// Only paths starting with this (`/api/`).
    path: Option<String>,
    /// At most this many, newest first (1–1000, default 100).
    limit: Option<u32>,
}

/// The tunnel's recent requests, newest first, as every online Gateway kept them in memory
/// (tunnels with `log_requests`; each Gateway keeps the last 1,000): time, client IP, method,
/// path without the query, status, duration, bytes, Gateway, and the request id shown on the
/// Gateway's error pages. `gateways` says which Gateways answered.
#[utoipa::path(
    get,
    path = "/api/v1/tunnels/{id}/requests",
    tag = "tunnels",
    operation_id = "tunnel_requests",
    security(("api_token" = []), ("session_cookie" = [])),
    params(("id" = i64, Path, description = "The tunnel's id"), LogQuery),
    responses(
        (status = 200, description = "The requests, newest first", body = RequestLog),
        (status = 400, description = "A query parameter is not valid", body = ErrorBody),
        (status = 404, description = "No such tunnel", body = ErrorBody),
        ReadErrors,
    ),
)]
pub async fn requests(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Id(id): Id,
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<RequestLog>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let filter = log_filter(q)?;
    Ok(Json(inspect::request_log(&state, &user, id, filter).await?))
}

/// The filter a query asks for, checked.
pub fn log_filter(q: LogQuery) -> Result<RequestFilter, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_LOG_RECORDS as u32).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_LOG_RECORDS}"
        )));
    }
    let path = q.path.filter(|p| !p.is_empty());
    if path
        .as_ref()
        .is_some_and(|p| p.len() > kakuremichi_proto::query::MAX_PATH_CHARS)
    {
        return Err(ApiError::bad_request("path is too long"));
    }
    Ok(RequestFilter {
        status: q
            .status
            .filter(|s| !s.is_empty())
            .map(|s| inspect::status_filter(&s))
            .transpose()?,
        path_prefix: path,
        limit,
    })
}
