//! Alert channels (admins): add, delete, test; each audited as the admin's.

use super::{audit, require_admin};
use crate::alerts::{Alerts, ChannelView};
use crate::app::AppState;
use crate::error::ApiError;
use crate::store::UserRow;
use axum::http::StatusCode;
use serde_json::json;
use std::sync::Arc;

/// Control's alerts, or 503 (a state made without them, in tests).
pub fn alerts(state: &AppState) -> Result<&Arc<Alerts>, ApiError> {
    state.alerts.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this Control sends no alerts",
        )
    })
}

/// A channel to add, as the API and the UI take it.
pub struct NewChannel<'a> {
    pub name: &'a str,
    pub kind: &'a str,
    pub target: &'a str,
    pub format: Option<&'a str>,
}

pub async fn add_channel(
    state: &AppState,
    user: &UserRow,
    new: NewChannel<'_>,
) -> Result<ChannelView, ApiError> {
    require_admin(user, "manage alert channels")?;
    let view = alerts(state)?
        .add_channel(new.name, new.kind, new.target, new.format)
        .await?;
    audit(
        state,
        Some(user),
        "alert_channel.created",
        format!("alert_channel:{}", view.name),
        json!({"kind": view.kind, "format": view.format, "hint": view.hint}),
    )
    .await;
    Ok(view)
}

pub async fn delete_channel(state: &AppState, user: &UserRow, id: i64) -> Result<(), ApiError> {
    require_admin(user, "manage alert channels")?;
    alerts(state)?;
    let row = state.store.delete_alert_channel(id).await?;
    audit(
        state,
        Some(user),
        "alert_channel.deleted",
        format!("alert_channel:{}", row.name),
        json!({"kind": row.kind}),
    )
    .await;
    Ok(())
}

/// Sends a test message now; `Err` of the inner result: why it did not arrive.
pub async fn test_channel(
    state: &AppState,
    user: &UserRow,
    id: i64,
) -> Result<Result<(), String>, ApiError> {
    require_admin(user, "test alert channels")?;
    let result = alerts(state)?.test_channel(id).await?;
    audit(
        state,
        Some(user),
        "alert_channel.tested",
        format!("alert_channel:{id}"),
        json!({"delivered": result.is_ok(), "error": result.as_ref().err()}),
    )
    .await;
    Ok(result)
}
