//! Users page (admins): list, create with a password, invite by link, make or unmake admin,
//! reset a password, delete; and the settings: open registration and the per-user quotas.

use super::agents::control_url;
use super::page::{self as render, done, flash};
use super::viewer::Viewer;
use crate::app::AppState;
use crate::error::ApiError;
use crate::ops::{self, require_admin};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use minijinja::{context, Value};
use serde::Deserialize;

#[derive(Deserialize)]
pub struct Done {
    done: Option<String>,
}

#[derive(Deserialize)]
pub struct UserForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    is_admin: Option<String>,
}

#[derive(Deserialize)]
pub struct FlagForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    value: String,
}

async fn render_list(
    state: &AppState,
    viewer: &Viewer,
    status: StatusCode,
    ctx: Value,
) -> Result<Response, ApiError> {
    require_admin(&viewer.user, "manage users")?;
    let users: Vec<_> = state
        .store
        .list_users()
        .await?
        .into_iter()
        .map(|u| context! { id => u.id, email => u.email, is_admin => u.is_admin, created_at => u.created_at, email_verified => u.email_verified })
        .collect();
    let open = state.store.open_registration().await?;
    let quotas = Value::from_serialize(state.store.quotas().await?);
    let ctx = context! { users => users, open_registration => open, quotas => quotas, ..ctx };
    Ok(render::page(viewer, status, "users.html", "users", ctx))
}

async fn show(state: &AppState, viewer: &Viewer, result: Result<Response, ApiError>) -> Response {
    match result {
        Ok(r) => r,
        Err(e) if e.status() == StatusCode::FORBIDDEN => render::error_page(viewer, &e),
        Err(e) => {
            let ctx = context! { error => e.message() };
            render_list(state, viewer, e.status(), ctx)
                .await
                .unwrap_or_else(|e| render::error_page(viewer, &e))
        }
    }
}

pub async fn list(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<Done>,
) -> Response {
    let ctx = context! { flash => flash(q.done.as_deref()) };
    let result = render_list(&state, &viewer, StatusCode::OK, ctx).await;
    show(&state, &viewer, result).await
}

pub async fn create(
    State(state): State<AppState>,
    viewer: Viewer,
    Form(form): Form<UserForm>,
) -> Response {
    let result = async {
        viewer.check(&form.csrf)?;
        let admin = form.is_admin.is_some();
        ops::users::create(&state, &viewer.user, &form.email, form.password, admin).await?;
        Ok::<_, ApiError>(done("/users", "user-created"))
    }
    .await;
    show(&state, &viewer, result).await
}

pub async fn invite(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(form): Form<UserForm>,
) -> Response {
    let result = async {
        viewer.check(&form.csrf)?;
        let admin = form.is_admin.is_some();
        let token = ops::users::invite(&state, &viewer.user, &form.email, admin).await?;
        let link = format!("{}/register?invite={token}", control_url(&state, &headers));
        let ctx = context! { invitation => context! { email => form.email.trim().to_lowercase(), link => link } };
        render_list(&state, &viewer, StatusCode::OK, ctx).await
    }
    .await;
    show(&state, &viewer, result).await
}

pub async fn settings(
    State(state): State<AppState>,
    viewer: Viewer,
    Form(form): Form<FlagForm>,
) -> Response {
    let result = async {
        viewer.check(&form.csrf)?;
        ops::users::set_open_registration(&state, &viewer.user, form.value == "true").await?;
        Ok::<_, ApiError>(done("/users", "settings-saved"))
    }
    .await;
    show(&state, &viewer, result).await
}

/// The quotas form: every field is sent; each must be a whole number in its range.
#[derive(Deserialize)]
pub struct QuotaForm {
    #[serde(default)]
    csrf: String,
    #[serde(flatten)]
    values: std::collections::HashMap<String, String>,
}

pub async fn quotas(
    State(state): State<AppState>,
    viewer: Viewer,
    Form(form): Form<QuotaForm>,
) -> Response {
    let result = async {
        viewer.check(&form.csrf)?;
        let mut changes = Vec::new();
        for (name, ..) in crate::store::Quotas::FIELDS {
            if let Some(text) = form.values.get(name) {
                let value = text
                    .trim()
                    .parse::<u32>()
                    .map_err(|_| ApiError::bad_request(format!("{name} must be a whole number")))?;
                changes.push((name, value));
            }
        }
        ops::quotas::update(&state, &viewer.user, &changes).await?;
        Ok::<_, ApiError>(done("/users", "settings-saved"))
    }
    .await;
    show(&state, &viewer, result).await
}

pub async fn set_admin(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<i64>,
    Form(form): Form<FlagForm>,
) -> Response {
    let result = async {
        viewer.check(&form.csrf)?;
        ops::users::set_admin(&state, &viewer.user, id, form.value == "true").await?;
        Ok::<_, ApiError>(done("/users", "user-saved"))
    }
    .await;
    show(&state, &viewer, result).await
}

pub async fn set_verified(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<i64>,
    Form(form): Form<FlagForm>,
) -> Response {
    let result = async {
        viewer.check(&form.csrf)?;
        ops::users::set_email_verified(&state, &viewer.user, id, form.value == "true").await?;
        Ok::<_, ApiError>(done("/users", "user-saved"))
    }
    .await;
    show(&state, &viewer, result).await
}

pub async fn reset_password(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<i64>,
    Form(form): Form<UserForm>,
) -> Response {
    let result = async {
        viewer.check(&form.csrf)?;
        ops::users::reset_password(&state, &viewer.user, id, form.password).await?;
        Ok::<_, ApiError>(done("/users", "user-saved"))
    }
    .await;
    show(&state, &viewer, result).await
}

pub async fn delete(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<i64>,
    Form(form): Form<FlagForm>,
) -> Response {
    let result = async {
        viewer.check(&form.csrf)?;
        ops::users::delete(&state, &viewer.user, id).await?;
        Ok::<_, ApiError>(done("/users", "user-deleted"))
    }
    .await;
    show(&state, &viewer, result).await
}
