//! Users page (admins): list, create with a password, invite by link, make or unmake admin,
//! reset a password, delete; and the settings: open registration, the per-user quotas and the
//! global error page.

use super::agents::control_url;
use super::form::{CsrfForm, Redraw, Ui, UiForm, UiResult};
use super::page::{self as render, done, flash, Done};
use super::viewer::Viewer;
use crate::app::AppState;
use crate::error::ApiError;
use crate::ops::{self, require_admin};
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use minijinja::{context, Value};
use serde::Deserialize;

#[derive(Deserialize)]
pub struct UserForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    is_admin: Option<String>,
}

impl UiForm for UserForm {}

#[derive(Deserialize)]
pub struct FlagForm {
    #[serde(default)]
    value: String,
}

impl UiForm for FlagForm {}

/// The quotas form: every field is sent; each must be a whole number in its range.
#[derive(Deserialize)]
pub struct QuotaForm {
    #[serde(flatten)]
    values: std::collections::HashMap<String, String>,
}

impl UiForm for QuotaForm {}

/// The global error page form: the page's HTML, empty for none.
#[derive(Deserialize)]
pub struct ErrorPageForm {
    #[serde(default)]
    error_page: String,
}

impl UiForm for ErrorPageForm {}

/// The list of users (admins only); errors of its forms above it, a refusal (not an admin, a
/// stale form) on the error page.
#[derive(Default)]
pub struct UsersPage;

impl Redraw for UsersPage {
    fn not_here(e: &ApiError) -> bool {
        e.status() == StatusCode::FORBIDDEN
    }

    async fn draw(
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
        let error_page = state.store.error_page().await?;
        let ctx = context! { users => users, open_registration => open, quotas => quotas, error_page => error_page, ..ctx };
        Ok(render::page(viewer, status, "users.html", "users", ctx))
    }
}

/// A form of this page, its errors shown above the list.
type UsersForm<T, I = ()> = CsrfForm<T, UsersPage, I>;

pub async fn list(ui: Ui<UsersPage>, Query(q): Query<Done>) -> UiResult {
    let ctx = context! { flash => flash(q.done.as_deref()) };
    ui.run(UsersPage::draw(&ui.state, &ui.viewer, StatusCode::OK, ctx))
        .await
}

pub async fn create(CsrfForm(ui, (), form): UsersForm<UserForm>) -> UiResult {
    let admin = form.is_admin.is_some();
    let create = ops::users::create(
        &ui.state,
        &ui.viewer.user,
        &form.email,
        form.password,
        admin,
    );
    ui.run(create).await?;
    Ok(done("/users", "user-created"))
}

pub async fn invite(headers: HeaderMap, CsrfForm(ui, (), form): UsersForm<UserForm>) -> UiResult {
    let admin = form.is_admin.is_some();
    ui.run(async {
        let token = ops::users::invite(&ui.state, &ui.viewer.user, &form.email, admin).await?;
        let link = format!("{}/register?invite={token}", control_url(&ui.state, &headers));
        let ctx = context! { invitation => context! { email => form.email.trim().to_lowercase(), link => link } };
        UsersPage::draw(&ui.state, &ui.viewer, StatusCode::OK, ctx).await
    })
    .await
}

pub async fn settings(CsrfForm(ui, (), form): UsersForm<FlagForm>) -> UiResult {
    let open = form.value == "true";
    let op = ops::users::set_open_registration(&ui.state, &ui.viewer.user, open);
    ui.run(op).await?;
    Ok(done("/users", "settings-saved"))
}

pub async fn quotas(CsrfForm(ui, (), form): UsersForm<QuotaForm>) -> UiResult {
    ui.run(async {
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
        ops::quotas::update(&ui.state, &ui.viewer.user, &changes).await
    })
    .await?;
    Ok(done("/users", "settings-saved"))
}

pub async fn error_page(CsrfForm(ui, (), form): UsersForm<ErrorPageForm>) -> UiResult {
    let op = ops::error_pages::set_global(&ui.state, &ui.viewer.user, Some(form.error_page));
    ui.run(op).await?;
    Ok(done("/users", "settings-saved"))
}

pub async fn set_admin(CsrfForm(ui, Path(id), form): UsersForm<FlagForm, Path<i64>>) -> UiResult {
    let admin = form.value == "true";
    let op = ops::users::set_admin(&ui.state, &ui.viewer.user, id, admin);
    ui.run(op).await?;
    Ok(done("/users", "user-saved"))
}

pub async fn set_verified(
    CsrfForm(ui, Path(id), form): UsersForm<FlagForm, Path<i64>>,
) -> UiResult {
    let verified = form.value == "true";
    let op = ops::users::set_email_verified(&ui.state, &ui.viewer.user, id, verified);
    ui.run(op).await?;
    Ok(done("/users", "user-saved"))
}

pub async fn reset_password(
    CsrfForm(ui, Path(id), form): UsersForm<UserForm, Path<i64>>,
) -> UiResult {
    let op = ops::users::reset_password(&ui.state, &ui.viewer.user, id, form.password);
    ui.run(op).await?;
    Ok(done("/users", "user-saved"))
}

pub async fn delete(CsrfForm(ui, Path(id), _): UsersForm<FlagForm, Path<i64>>) -> UiResult {
    let op = ops::users::delete(&ui.state, &ui.viewer.user, id);
    ui.run(op).await?;
    Ok(done("/users", "user-deleted"))
}
