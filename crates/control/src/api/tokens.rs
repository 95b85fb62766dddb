//! Personal API tokens: `POST/GET /tokens`, `DELETE /tokens/{id}`. A token is shown once, at creation.

use super::authn::AuthUser;
use super::error::{ApiError, ApiJson, Id};
use super::AppState;
use crate::store::TokenRow;
use crate::{secrets, validate};
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
    let name = validate::name(&body.name).map_err(|e| ApiError::bad_request(e.0))?;
    let token = secrets::generate(secrets::API_TOKEN_PREFIX);
    let row = state
        .store
        .create_token(user.id, &name, &secrets::hash(&token))
        .await?;
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
    if state.store.delete_token(user.id, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("token"))
    }
}
