//! Personal API tokens: create (the token is returned once) and revoke. Each user manages their own.

use super::audit;
use crate::app::AppState;
use crate::error::ApiError;
use crate::store::{TokenRow, UserRow};
use crate::{secrets, validate};
use serde_json::json;

pub async fn create(
    state: &AppState,
    user: &UserRow,
    name: &str,
) -> Result<(TokenRow, String), ApiError> {
    let name = validate::name(name).map_err(|e| ApiError::bad_request(e.0))?;
    let token = secrets::generate(secrets::API_TOKEN_PREFIX);
    let row = state
        .store
        .create_token(user.id, &name, &secrets::hash(&token))
        .await?;
    let target = format!("token:{} {}", row.id, row.name);
    audit(state, Some(user), "token.create", target, json!({})).await;
    Ok((row, token))
}

pub async fn delete(state: &AppState, user: &UserRow, id: i64) -> Result<(), ApiError> {
    if !state.store.delete_token(user.id, id).await? {
        return Err(ApiError::not_found("token"));
    }
    audit(
        state,
        Some(user),
        "token.revoke",
        format!("token:{id}"),
        json!({}),
    )
    .await;
    Ok(())
}
