//! Traffic history: a tunnel's and the whole fleet's, from the counters every Gateway reports
//! every 10 s (see `views::traffic`).

use super::openapi::{ErrorBody, ReadErrors};
use crate::app::AppState;
use crate::auth::AuthUser;
use crate::error::{about, ApiError, Id};
use crate::views::traffic::{self, Range, TrafficView};
use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RangeQuery {
    /// `1h` (a point a minute, the default), `24h` (every 15 minutes) or `7d` (an hour).
    range: Option<String>,
}

fn range(
    query: Result<Query<RangeQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Range, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    Range::parse(q.range.as_deref())
}

/// A tunnel's traffic over the last hour, day or week: requests by status class, bytes in and
/// out, error rate and time to first byte (p50, p95) per point, in total and per Gateway.
/// Minutes are kept 48 hours, hours 30 days.
#[utoipa::path(
    get,
    path = "/api/v1/tunnels/{id}/traffic",
    tag = "tunnels",
    operation_id = "tunnel_traffic",
    security(("api_token" = []), ("session_cookie" = [])),
    params(("id" = i64, Path, description = "The tunnel's id"), RangeQuery),
    responses(
        (status = 200, description = "The tunnel's history", body = TrafficView),
        (status = 400, description = "A query parameter is not valid", body = ErrorBody),
        (status = 404, description = "No such tunnel", body = ErrorBody),
        ReadErrors,
    ),
)]
pub async fn tunnel(
    State(state): State<AppState>,
    _user: AuthUser,
    Id(id): Id,
    query: Result<Query<RangeQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<TrafficView>, ApiError> {
    let range = range(query)?;
    state.store.get_tunnel(id).await.map_err(about("tunnel"))?;
    Ok(Json(traffic::traffic(&state, Some(id), range).await?))
}

/// Every tunnel's traffic together, as [`tunnel`] gives one's.
#[utoipa::path(
    get,
    path = "/api/v1/traffic",
    tag = "tunnels",
    operation_id = "fleet_traffic",
    security(("api_token" = []), ("session_cookie" = [])),
    params(RangeQuery),
    responses(
        (status = 200, description = "The fleet's history", body = TrafficView),
        (status = 400, description = "A query parameter is not valid", body = ErrorBody),
        ReadErrors,
    ),
)]
pub async fn fleet(
    State(state): State<AppState>,
    _user: AuthUser,
    query: Result<Query<RangeQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<TrafficView>, ApiError> {
    let range = range(query)?;
    Ok(Json(traffic::traffic(&state, None, range).await?))
}
