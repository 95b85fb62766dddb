//! Personal API tokens: `POST/GET /tokens`, `DELETE /tokens/{id}`. A token is shown once, at creation.

use super::openapi::{ErrorBody, ReadErrors, WriteErrors};
use crate::app::AppState;
use crate::auth::AuthUser;
use crate::error::{ApiError, ApiJson, Id};
use crate::ops;
use crate::store::TokenRow;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    name: String,
}

/// A new token; `token` is shown this once.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedToken {
    id: i64,
    name: String,
    token: String,
    created_at: String,
}

/// Creates a personal API token for the caller.
#[utoipa::path(
    post,
    path = "/api/v1/tokens",
    tag = "tokens",
    operation_id = "create_token",
    security(("api_token" = []), ("session_cookie" = [], "csrf_token" = [])),
    request_body = CreateToken,
    responses(
        (status = 201, description = "Created; `token` is shown this once", body = CreatedToken),
        WriteErrors,
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiJson(body): ApiJson<CreateToken>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let (row, token) = ops::tokens::create(&state, &user, &body.name).await?;
    let created = CreatedToken {
        id: row.id,
        name: row.name,
        token,
        created_at: row.created_at,
    };
    Ok((StatusCode::CREATED, Json(created)))
}

/// Lists the caller's tokens.
#[utoipa::path(
    get,
    path = "/api/v1/tokens",
    tag = "tokens",
    operation_id = "list_tokens",
    security(("api_token" = []), ("session_cookie" = [])),
    responses(
        (status = 200, description = "The caller's tokens (never the secrets)", body = Vec<TokenRow>),
        ReadErrors,
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Json<Vec<TokenRow>>, ApiError> {
    Ok(Json(state.store.list_tokens(user.id).await?))
}

/// Revokes one of the caller's tokens.
#[utoipa::path(
    delete,
    path = "/api/v1/tokens/{id}",
    tag = "tokens",
    operation_id = "delete_token",
    security(("api_token" = []), ("session_cookie" = [], "csrf_token" = [])),
    params(("id" = i64, Path, description = "The token's id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such token of the caller", body = ErrorBody),
        WriteErrors,
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Id(id): Id,
) -> Result<StatusCode, ApiError> {
    ops::tokens::delete(&state, &user, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
