//! Changing the per-user quotas (admins only), for both the API and the web UI.
//!
//! Which quota applies to whom: counts (`max_tunnels_per_user`, `max_agents_per_user`) apply to
//! members, whose tunnels and agents are theirs; what an admin creates is shared (no owner) and
//! not counted. `max_allow_list_entries` is a property of each tunnel and applies to everyone,
//! and so does `api_requests_per_minute`. An admin raises any of them here.

use super::{audit, require_admin};
use crate::app::AppState;
use crate::error::ApiError;
use crate::store::{Quotas, UserRow};
use serde_json::json;

/// Applies `changes` (setting name → new value) to the quotas in force, all or nothing.
pub async fn update(
    state: &AppState,
    admin: &UserRow,
    changes: &[(&str, u32)],
) -> Result<Quotas, ApiError> {
    require_admin(admin, "change settings")?;
    let mut quotas = state.store.quotas().await?;
    for (name, value) in changes {
        quotas.set(name, *value).map_err(ApiError::bad_request)?;
    }
    if changes.is_empty() {
        return Ok(quotas);
    }
    state.store.set_quotas(&quotas).await?;
    state.api_rate.set_rate(quotas.api_requests_per_minute);
    tracing::info!(?quotas, "quotas changed");
    let detail: serde_json::Map<String, serde_json::Value> = changes
        .iter()
        .map(|(name, value)| (name.to_string(), json!(value)))
        .collect();
    audit(
        state,
        Some(admin),
        "settings.update",
        "settings".into(),
        detail.into(),
    )
    .await;
    Ok(quotas)
}
