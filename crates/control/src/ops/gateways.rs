//! Gateways (admins only): create (the token is returned once), update, delete.

use super::{audit, require_admin};
use crate::app::AppState;
use crate::error::{about, ApiError};
use crate::store::{GatewayPatch, GatewayRow, UserRow};
use crate::{secrets, validate};
use serde_json::json;

fn endpoint(input: &str) -> Result<String, ApiError> {
    validate::host_port(input, "public_endpoint").map_err(|e| ApiError::bad_request(e.0))
}

/// Creates a gateway; returns it with its token (shown once).
pub async fn create(
    state: &AppState,
    user: &UserRow,
    name: &str,
    public_endpoint: &str,
) -> Result<(GatewayRow, String), ApiError> {
    require_admin(user, "add gateways")?;
    let name = validate::name(name).map_err(|e| ApiError::bad_request(e.0))?;
    let public_endpoint = endpoint(public_endpoint)?;
    let token = secrets::generate(secrets::GATEWAY_TOKEN_PREFIX);
    let row = state
        .store
        .create_gateway(
            &name,
            &public_endpoint,
            &secrets::hash(&token),
            &state.network,
        )
        .await?;
    state.hub.changed();
    tracing::info!(gateway_id = row.id, wg_address = %row.wg_address, "gateway created");
    let detail = json!({"public_endpoint": row.public_endpoint});
    audit(state, Some(user), "gateway.create", target(&row), detail).await;
    Ok((row, token))
}

pub async fn update(
    state: &AppState,
    user: &UserRow,
    id: i64,
    name: Option<&str>,
    public_endpoint: Option<&str>,
    enabled: Option<bool>,
) -> Result<GatewayRow, ApiError> {
    require_admin(user, "change gateways")?;
    let patch = GatewayPatch {
        name: name
            .map(validate::name)
            .transpose()
            .map_err(|e| ApiError::bad_request(e.0))?,
        public_endpoint: public_endpoint.map(endpoint).transpose()?,
        enabled,
        ..GatewayPatch::default()
    };
    let row = state
        .store
        .update_gateway(id, &patch)
        .await
        .map_err(about("gateway"))?;
    state.hub.changed();
    let detail =
        json!({"name": patch.name, "public_endpoint": patch.public_endpoint, "enabled": enabled});
    audit(state, Some(user), "gateway.update", target(&row), detail).await;
    Ok(row)
}

/// Its open session, if any, is closed with `revoked`.
pub async fn delete(state: &AppState, user: &UserRow, id: i64) -> Result<(), ApiError> {
    require_admin(user, "delete gateways")?;
    let current = state
        .store
        .get_gateway(id)
        .await
        .map_err(about("gateway"))?;
    state
        .store
        .delete_gateway(id)
        .await
        .map_err(about("gateway"))?;
    state.hub.changed();
    tracing::info!(gateway_id = id, "gateway deleted");
    audit(
        state,
        Some(user),
        "gateway.delete",
        target(&current),
        json!({}),
    )
    .await;
    Ok(())
}

fn target(g: &GatewayRow) -> String {
    format!("gateway:{} {}", g.id, g.name)
}
