//! Personal API tokens: `POST/GET /tokens`, `DELETE /tokens/{id}`. A token is shown once, at creation.

use crate::app::AppState;
use crate::auth::AuthUser;
use crate::error::{ApiError, ApiJson, Id};
use crate::ops;
use crate::store::TokenRow;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    name: String,
}

#[derive(Serialize)]
pub struct CreatedToken {
    id: i64,
    name: String,
    token: String,
    created_at: String,
}

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

pub async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Json<Vec<TokenRow>>, ApiError> {
    Ok(Json(state.store.list_tokens(user.id).await?))
}

pub async fn delete(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Id(id): Id,
) -> Result<StatusCode, ApiError> {
    ops::tokens::delete(&state, &user, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
