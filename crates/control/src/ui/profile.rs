//! Profile: change your password, personal API tokens (create: shown once; list; revoke), and
//! "log out everywhere".

use super::page::{self as render, done, flash};
use super::viewer::Viewer;
use crate::app::AppState;
use crate::error::ApiError;
use crate::ops;
use axum::extract::{Path, Query, State};
use axum::http::header::SET_COOKIE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use minijinja::{context, Value};
use serde::Deserialize;

#[derive(Deserialize)]
pub struct Done {
    done: Option<String>,
}

#[derive(Deserialize)]
pub struct PasswordForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    current: String,
    #[serde(default)]
    new: String,
}

#[derive(Deserialize)]
pub struct TokenForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
}

async fn render_page(
    state: &AppState,
    viewer: &Viewer,
    status: StatusCode,
    ctx: Value,
) -> Result<Response, ApiError> {
    let tokens = state.store.list_tokens(viewer.user.id).await?;
    let ctx = context! { tokens => Value::from_serialize(&tokens), ..ctx };
    Ok(render::page(viewer, status, "profile.html", "profile", ctx))
}

async fn show(state: &AppState, viewer: &Viewer, result: Result<Response, ApiError>) -> Response {
    match result {
        Ok(r) => r,
        Err(e) => render_page(state, viewer, e.status(), context! { error => e.message() })
            .await
            .unwrap_or_else(|e| render::error_page(viewer, &e)),
    }
}

pub async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<Done>,
) -> Response {
    let ctx = context! { flash => flash(q.done.as_deref()) };
    let result = render_page(&state, &viewer, StatusCode::OK, ctx).await;
    show(&state, &viewer, result).await
}

/// Every session ends with a password change; this one is opened again so the user stays in.
pub async fn change_password(
    State(state): State<AppState>,
    viewer: Viewer,
    Form(form): Form<PasswordForm>,
) -> Response {
    let result = async {
        viewer.check(&form.csrf)?;
        ops::users::change_own_password(&state, &viewer.user, form.current, form.new).await?;
        let session = ops::login::start_session(&state, viewer.user.clone()).await?;
        let cookie = ops::login::set_cookie(&state, &session.cookie);
        Ok::<_, ApiError>(
            ([(SET_COOKIE, cookie)], done("/profile", "password-changed")).into_response(),
        )
    }
    .await;
    show(&state, &viewer, result).await
}

pub async fn create_token(
    State(state): State<AppState>,
    viewer: Viewer,
    Form(form): Form<TokenForm>,
) -> Response {
    let result = async {
        viewer.check(&form.csrf)?;
        let (row, token) = ops::tokens::create(&state, &viewer.user, &form.name).await?;
        let ctx = context! { new_token => context! { name => row.name, token => token } };
        render_page(&state, &viewer, StatusCode::OK, ctx).await
    }
    .await;
    show(&state, &viewer, result).await
}

pub async fn delete_token(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<i64>,
    Form(form): Form<TokenForm>,
) -> Response {
    let result = async {
        viewer.check(&form.csrf)?;
        ops::tokens::delete(&state, &viewer.user, id).await?;
        Ok::<_, ApiError>(done("/profile", "token-deleted"))
    }
    .await;
    show(&state, &viewer, result).await
}

pub async fn logout_everywhere(
    State(state): State<AppState>,
    viewer: Viewer,
    Form(form): Form<TokenForm>,
) -> Response {
    let result = async {
        viewer.check(&form.csrf)?;
        let ended = state.store.delete_user_sessions(viewer.user.id).await?;
        let target = format!("user:{} {}", viewer.user.id, viewer.user.email);
        let detail = serde_json::json!({"sessions": ended});
        ops::audit(
            &state,
            Some(&viewer.user),
            "user.logout_everywhere",
            target,
            detail,
        )
        .await;
        let cookie = ops::login::set_cookie(&state, "");
        Ok::<_, ApiError>(([(SET_COOKIE, cookie)], Redirect::to("/login")).into_response())
    }
    .await;
    show(&state, &viewer, result).await
}
