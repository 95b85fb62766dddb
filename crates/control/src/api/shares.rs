//! Temporary tunnels, for `kakuremichi share`: `POST /shares` makes an Agent and a tunnel at a
//! random name under the temporary domain (the Agent's key in the answer, once), `GET /shares`
//! lists the caller's, `DELETE /shares/{id}` deletes one (tunnel and Agent). See
//! `ops::shares` for the limits and the sweeping of abandoned ones.

use super::openapi::{ReadErrors, WriteErrors};
use crate::app::AppState;
use crate::auth::AuthUser;
use crate::error::{ApiError, ApiJson, Id};
use crate::ops;
use crate::ops::shares::NewShare;
use crate::store::TemporaryRow;
use crate::views::agents::{view as agent_view, AgentView};
use crate::views::tunnels::{view as tunnel_view, TunnelView};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use kakuremichi_proto::AccessPolicy;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateShare {
    /// Where the Agent sends the traffic, as it sees it: `localhost:3000`.
    target: String,
    /// A name of one's own (one DNS label) instead of a random one; 409 when taken.
    #[serde(default)]
    name: Option<String>,
    /// Who may open it; default public.
    #[serde(default)]
    access: Option<AccessPolicy>,
    /// Seconds until it is deleted whatever happens (60 to 604800).
    #[serde(default)]
    expires_in: Option<u64>,
    /// `user:password`: the Gateways ask for them (HTTP Basic authentication).
    #[serde(default)]
    basic_auth: Option<String>,
}

/// A temporary tunnel.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ShareView {
    id: i64,
    agent_id: i64,
    tunnel_id: i64,
    created_at: String,
    expires_at: Option<String>,
}

impl From<TemporaryRow> for ShareView {
    fn from(r: TemporaryRow) -> Self {
        Self {
            id: r.id,
            agent_id: r.agent_id,
            tunnel_id: r.tunnel_id,
            created_at: r.created_at,
            expires_at: r.expires_at,
        }
    }
}

/// A temporary tunnel just made: run `agent` (its `api_key` is shown this once).
#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedShare {
    #[serde(flatten)]
    share: ShareView,
    agent: AgentView,
    tunnel: TunnelView,
}

/// Makes a temporary tunnel: an Agent and a tunnel at `<random name>.<temporary domain>`.
#[utoipa::path(
    post,
    path = "/api/v1/shares",
    tag = "shares",
    operation_id = "create_share",
    security(("api_token" = []), ("session_cookie" = [], "csrf_token" = [])),
    request_body = CreateShare,
    responses(
        (status = 201, description = "Made; `agent.api_key` is shown this once", body = CreatedShare),
        WriteErrors,
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiJson(body): ApiJson<CreateShare>,
) -> Result<(StatusCode, Json<CreatedShare>), ApiError> {
    let new = NewShare {
        name: body.name,
        target: body.target,
        access: body.access,
        expires: body.expires_in.map(Duration::from_secs),
        basic_auth: body.basic_auth,
    };
    let made = ops::shares::create(&state, &user, new).await?;
    let created = CreatedShare {
        share: made.row.into(),
        agent: agent_view(&state, made.agent, Some(made.key)),
        tunnel: tunnel_view(&state, made.tunnel).await?,
    };
    Ok((StatusCode::CREATED, Json(created)))
}

/// Lists the caller's temporary tunnels.
#[utoipa::path(
    get,
    path = "/api/v1/shares",
    tag = "shares",
    operation_id = "list_shares",
    security(("api_token" = []), ("session_cookie" = [])),
    responses((status = 200, description = "The caller's, oldest first", body = Vec<ShareView>), ReadErrors),
)]
pub async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Json<Vec<ShareView>>, ApiError> {
    let rows = state.store.temporaries_of(user.id).await?;
    Ok(Json(rows.into_iter().map(ShareView::from).collect()))
}

/// Deletes a temporary tunnel: its tunnel and its Agent. 204.
#[utoipa::path(
    delete,
    path = "/api/v1/shares/{id}",
    tag = "shares",
    operation_id = "delete_share",
    security(("api_token" = []), ("session_cookie" = [], "csrf_token" = [])),
    params(("id" = i64, Path, description = "The temporary tunnel's id")),
    responses((status = 204, description = "Deleted"), WriteErrors),
)]
pub async fn delete(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Id(id): Id,
) -> Result<StatusCode, ApiError> {
    ops::shares::delete(&state, &user, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
