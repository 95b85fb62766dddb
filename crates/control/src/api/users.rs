//! Admin routes: `/users` (list, create, change role or password, delete), `/invitations`,
//! `/settings` (open registration, the per-user quotas and the global error page); and `GET /audit` for everyone (admins see every entry, members their own).

use super::login::UserView;
use super::openapi::{ErrorBody, ReadErrors, WriteErrors};
use crate::app::AppState;
use crate::auth::AuthUser;
use crate::error::{about, ApiError, ApiJson, Id};
use crate::ops::{self, require_admin};
use crate::store::{AuditRow, Quotas};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    email: String,
    password: String,
    #[serde(default)]
    is_admin: bool,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchUser {
    is_admin: Option<bool>,
    password: Option<String>,
    email_verified: Option<bool>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInvitation {
    email: String,
    #[serde(default)]
    is_admin: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Invitation {
    email: String,
    /// Shown once; the link is `/register?invite=<token>` on Control.
    token: String,
    path: String,
}

/// `GET /settings`: everything an admin can set.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Settings {
    open_registration: bool,
    #[serde(flatten)]
    quotas: Quotas,
    /// The global custom error page (HTML): served by the Gateways in place of their own pages
    /// for tunnels without a page of their own and for hosts they do not serve; null = none.
    error_page: Option<String>,
}

/// `PATCH /settings`: only the fields sent change.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    open_registration: Option<bool>,
    max_tunnels_per_user: Option<u32>,
    max_agents_per_user: Option<u32>,
    max_allow_list_entries: Option<u32>,
    api_requests_per_minute: Option<u32>,
    max_temporary_tunnels_per_user: Option<u32>,
    /// HTML of at most 64 KiB, `{{request_id}}` and `{{status}}` filled in; null (or blank)
    /// removes it.
    #[serde(default, deserialize_with = "super::tunnels::nullable")]
    error_page: Option<Option<String>>,
}

impl SettingsPatch {
    fn quota_changes(&self) -> Vec<(&'static str, u32)> {
        [
            ("max_tunnels_per_user", self.max_tunnels_per_user),
            ("max_agents_per_user", self.max_agents_per_user),
            ("max_allow_list_entries", self.max_allow_list_entries),
            ("api_requests_per_minute", self.api_requests_per_minute),
            (
                "max_temporary_tunnels_per_user",
                self.max_temporary_tunnels_per_user,
            ),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
        .collect()
    }
}

/// Lists the users (admins).
#[utoipa::path(
    get,
    path = "/api/v1/users",
    tag = "users",
    operation_id = "list_users",
    security(("api_token" = []), ("session_cookie" = [])),
    responses(
        (status = 200, description = "Every user", body = Vec<UserView>),
        ReadErrors,
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Json<Vec<UserView>>, ApiError> {
    require_admin(&user, "list users")?;
    let users = state.store.list_users().await?;
    Ok(Json(users.into_iter().map(UserView::from).collect()))
}

/// Creates a user (admins).
#[utoipa::path(
    post,
    path = "/api/v1/users",
    tag = "users",
    operation_id = "create_user",
    security(("api_token" = []), ("session_cookie" = [], "csrf_token" = [])),
    request_body = CreateUser,
    responses(
        (status = 201, description = "Created", body = UserView),
        (status = 409, description = "The e-mail is taken", body = ErrorBody),
        (status = 503, description = "Control is busy checking other passwords", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        WriteErrors,
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiJson(body): ApiJson<CreateUser>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    let created =
        ops::users::create(&state, &user, &body.email, body.password, body.is_admin).await?;
    Ok((StatusCode::CREATED, Json(created.into())))
}

/// Changes a user's role, password or verified flag (admins).
#[utoipa::path(
    patch,
    path = "/api/v1/users/{id}",
    tag = "users",
    operation_id = "update_user",
    security(("api_token" = []), ("session_cookie" = [], "csrf_token" = [])),
    params(("id" = i64, Path, description = "The user's id")),
    request_body = PatchUser,
    responses(
        (status = 200, description = "The user as changed", body = UserView),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 503, description = "Control is busy checking other passwords", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        WriteErrors,
    ),
)]
pub async fn update(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Id(id): Id,
    ApiJson(body): ApiJson<PatchUser>,
) -> Result<Json<UserView>, ApiError> {
    require_admin(&user, "change users")?;
    if let Some(password) = body.password {
        ops::users::reset_password(&state, &user, id, password).await?;
    }
    if let Some(is_admin) = body.is_admin {
        ops::users::set_admin(&state, &user, id, is_admin).await?;
    }
    if let Some(verified) = body.email_verified {
        ops::users::set_email_verified(&state, &user, id, verified).await?;
    }
    let row = state.store.get_user(id).await.map_err(about("user"))?;
    Ok(Json(row.into()))
}

/// Deletes a user (admins).
#[utoipa::path(
    delete,
    path = "/api/v1/users/{id}",
    tag = "users",
    operation_id = "delete_user",
    security(("api_token" = []), ("session_cookie" = [], "csrf_token" = [])),
    params(("id" = i64, Path, description = "The user's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such user", body = ErrorBody),
        WriteErrors,
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Id(id): Id,
) -> Result<StatusCode, ApiError> {
    ops::users::delete(&state, &user, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Invites someone by e-mail (admins); the link is shown once.
#[utoipa::path(
    post,
    path = "/api/v1/invitations",
    tag = "users",
    operation_id = "invite_user",
    security(("api_token" = []), ("session_cookie" = [], "csrf_token" = [])),
    request_body = CreateInvitation,
    responses(
        (status = 201, description = "Created; `token` is shown this once", body = Invitation),
        (status = 409, description = "The e-mail is taken", body = ErrorBody),
        WriteErrors,
    ),
)]
pub async fn invite(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiJson(body): ApiJson<CreateInvitation>,
) -> Result<(StatusCode, Json<Invitation>), ApiError> {
    let token = ops::users::invite(&state, &user, &body.email, body.is_admin).await?;
    let invitation = Invitation {
        email: body.email.trim().to_lowercase(),
        path: format!("/register?invite={token}"),
        token,
    };
    Ok((StatusCode::CREATED, Json(invitation)))
}

/// Reads the settings (admins).
#[utoipa::path(
    get,
    path = "/api/v1/settings",
    tag = "users",
    operation_id = "get_settings",
    security(("api_token" = []), ("session_cookie" = [])),
    responses(
        (status = 200, description = "The settings in force", body = Settings),
        ReadErrors,
    ),
)]
pub async fn get_settings(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Json<Settings>, ApiError> {
    require_admin(&user, "read settings")?;
    Ok(Json(Settings {
        open_registration: state.store.open_registration().await?,
        quotas: state.store.quotas().await?,
        error_page: state.store.error_page().await?,
    }))
}

/// Changes the settings (admins).
///
/// Quotas are checked (ranges) before anything is written; the answer is the settings in force.
#[utoipa::path(
    patch,
    path = "/api/v1/settings",
    tag = "users",
    operation_id = "update_settings",
    security(("api_token" = []), ("session_cookie" = [], "csrf_token" = [])),
    request_body = SettingsPatch,
    responses(
        (status = 200, description = "The settings in force", body = Settings),
        WriteErrors,
    ),
)]
pub async fn update_settings(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiJson(body): ApiJson<SettingsPatch>,
) -> Result<Json<Settings>, ApiError> {
    require_admin(&user, "change settings")?;
    // Checked before anything is written, like the quotas.
    let changes = body.quota_changes();
    let error_page = body.error_page.map(ops::error_pages::check).transpose()?;
    let quotas = ops::quotas::update(&state, &user, &changes).await?;
    if let Some(open) = body.open_registration {
        ops::users::set_open_registration(&state, &user, open).await?;
    }
    if let Some(page) = error_page {
        ops::error_pages::set_global(&state, &user, page).await?;
    }
    Ok(Json(Settings {
        open_registration: state.store.open_registration().await?,
        quotas,
        error_page: state.store.error_page().await?,
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// How many entries, 1–500 (default 100).
    limit: Option<i64>,
    /// Only entries older than this entry id.
    before: Option<i64>,
}

/// Reads the audit log: every entry for admins, their own for members.
///
/// Newest first; `limit` (1–500, default 100) and `before` (an entry id) page backwards.
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "users",
    operation_id = "list_audit",
    security(("api_token" = []), ("session_cookie" = [])),
    params(AuditQuery),
    responses(
        (status = 200, description = "Entries, newest first", body = Vec<AuditRow>),
        (status = 400, description = "A query parameter is not valid", body = ErrorBody),
        ReadErrors,
    ),
)]
pub async fn audit(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<AuditRow>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 500"));
    }
    let only = (!user.is_admin).then_some(user.id);
    Ok(Json(state.store.list_audit(only, q.before, limit).await?))
}
