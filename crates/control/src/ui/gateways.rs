//! Gateways page (changes: admins only): list with live status and public endpoint, an enabled
//! switch, delete; "Add gateway" shows the token once with the command that starts it.

use super::agents::control_url;
use super::overview;
use super::page::{self as render, done, flash};
use super::viewer::Viewer;
use crate::app::AppState;
use crate::error::ApiError;
use crate::ops;
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
pub struct CreateForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    public_endpoint: String,
}

#[derive(Deserialize)]
pub struct ToggleForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    enabled: String,
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn render_list(
    state: &AppState,
    viewer: &Viewer,
    status: StatusCode,
    ctx: Value,
) -> Result<Response, ApiError> {
    let o = overview::load(state, &viewer.user).await?;
    let ctx = context! { gateways => Value::from_serialize(&o.gateways), ..ctx };
    Ok(render::page(
        viewer,
        status,
        "gateways.html",
        "gateways",
        ctx,
    ))
}

async fn list_or_error(state: &AppState, viewer: &Viewer, e: ApiError, ctx: Value) -> Response {
    let ctx = context! { error => e.message(), ..ctx };
    render_list(state, viewer, e.status(), ctx)
        .await
        .unwrap_or_else(|e| render::error_page(viewer, &e))
}

pub async fn list(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<Done>,
) -> Response {
    let ctx = context! { flash => flash(q.done.as_deref()) };
    render_list(&state, &viewer, StatusCode::OK, ctx)
        .await
        .unwrap_or_else(|e| render::error_page(&viewer, &e))
}

pub async fn create(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(form): Form<CreateForm>,
) -> Response {
    let result = async {
        viewer.check(&form.csrf)?;
        ops::gateways::create(&state, &viewer.user, &form.name, &form.public_endpoint).await
    }
    .await;
    match result {
        Ok((gateway, token)) => {
            let ctx = context! {
                gateway => context! { id => gateway.id, name => gateway.name, public_endpoint => gateway.public_endpoint },
                token => token,
                control_url => control_url(&state, &headers),
            };
            render::page(
                &viewer,
                StatusCode::OK,
                "gateway_token.html",
                "gateways",
                ctx,
            )
        }
        Err(e) => {
            let ctx = context! { name => form.name, public_endpoint => form.public_endpoint };
            list_or_error(&state, &viewer, e, ctx).await
        }
    }
}

pub async fn toggle(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<i64>,
    Form(form): Form<ToggleForm>,
) -> Response {
    let result = async {
        viewer.check(&form.csrf)?;
        let enabled = Some(form.enabled == "true");
        ops::gateways::update(&state, &viewer.user, id, None, None, enabled).await
    }
    .await;
    match result {
        Ok(_) => done("/gateways", "gateway-saved"),
        Err(e) => list_or_error(&state, &viewer, e, context! {}).await,
    }
}

pub async fn delete(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<i64>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let result = async {
        viewer.check(&form.csrf)?;
        ops::gateways::delete(&state, &viewer.user, id).await
    }
    .await;
    match result {
        Ok(()) => done("/gateways", "gateway-deleted"),
        Err(e) => list_or_error(&state, &viewer, e, context! {}).await,
    }
}
