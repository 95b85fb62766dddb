//! Profile: change your password, personal API tokens (create: shown once; list; revoke), and
//! "log out everywhere".

use super::form::{CsrfForm, Redraw, Ui, UiForm, UiResult};
use super::page::{self as render, done, flash, Done};
use super::viewer::Viewer;
use crate::app::AppState;
use crate::error::ApiError;
use crate::ops;
use axum::extract::{Path, Query};
use axum::http::header::SET_COOKIE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use minijinja::{context, Value};
use serde::Deserialize;

#[derive(Deserialize)]
pub struct PasswordForm {
    #[serde(default)]
    current: String,
    #[serde(default)]
    new: String,
}

impl UiForm for PasswordForm {}

#[derive(Deserialize)]
pub struct TokenForm {
    #[serde(default)]
    name: String,
}

impl UiForm for TokenForm {}

/// The profile page; errors of its forms above it.
#[derive(Default)]
pub struct ProfilePage;

impl Redraw for ProfilePage {
    async fn draw(
        state: &AppState,
        viewer: &Viewer,
        status: StatusCode,
        ctx: Value,
    ) -> Result<Response, ApiError> {
        let tokens = state.store.list_tokens(viewer.user.id).await?;
        let ctx = context! { tokens => Value::from_serialize(&tokens), ..ctx };
        Ok(render::page(viewer, status, "profile.html", "profile", ctx))
    }
}

/// A form of this page, its errors shown above it.
type ProfileForm<T, I = ()> = CsrfForm<T, ProfilePage, I>;

pub async fn page(ui: Ui<ProfilePage>, Query(q): Query<Done>) -> UiResult {
    let ctx = context! { flash => flash(q.done.as_deref()) };
    ui.run(ProfilePage::draw(
        &ui.state,
        &ui.viewer,
        StatusCode::OK,
        ctx,
    ))
    .await
}

/// Every session ends with a password change; this one is opened again so the user stays in.
pub async fn change_password(CsrfForm(ui, (), form): ProfileForm<PasswordForm>) -> UiResult {
    let session = ui
        .run(async {
            let user = &ui.viewer.user;
            ops::users::change_own_password(&ui.state, user, form.current, form.new).await?;
            ops::login::start_login_session(&ui.state, user.clone()).await
        })
        .await?;
    let cookie = ops::login::set_cookie(&ui.state, &session.cookie);
    Ok(([(SET_COOKIE, cookie)], done("/profile", "password-changed")).into_response())
}

pub async fn create_token(CsrfForm(ui, (), form): ProfileForm<TokenForm>) -> UiResult {
    ui.run(async {
        let (row, token) = ops::tokens::create(&ui.state, &ui.viewer.user, &form.name).await?;
        let ctx = context! { new_token => context! { name => row.name, token => token } };
        ProfilePage::draw(&ui.state, &ui.viewer, StatusCode::OK, ctx).await
    })
    .await
}

pub async fn delete_token(
    CsrfForm(ui, Path(id), _): ProfileForm<TokenForm, Path<i64>>,
) -> UiResult {
    let op = ops::tokens::delete(&ui.state, &ui.viewer.user, id);
    ui.run(op).await?;
    Ok(done("/profile", "token-deleted"))
}

pub async fn logout_everywhere(CsrfForm(ui, (), _): ProfileForm<TokenForm>) -> UiResult {
    let user = &ui.viewer.user;
    let end = async { Ok(ui.state.store.delete_user_login_sessions(user.id).await?) };
    let ended = ui.run(end).await?;
    let target = format!("user:{} {}", user.id, user.email);
    let detail = serde_json::json!({"sessions": ended});
    ops::audit(
        &ui.state,
        Some(user),
        "user.logout_everywhere",
        target,
        detail,
    )
    .await;
    let cookie = ops::login::set_cookie(&ui.state, "");
    Ok(([(SET_COOKIE, cookie)], Redirect::to("/login")).into_response())
}
