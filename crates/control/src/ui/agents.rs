//! Agents page: list with live status; "Add agent" shows the API key once with ready-to-paste
//! commands; rotate the key; delete.

use super::overview;
use super::page::{self as render, done, flash};
use super::viewer::Viewer;
use crate::app::AppState;
use crate::error::ApiError;
use crate::ops;
use crate::store::AgentRow;
use axum::extract::{Path, Query, State};
use axum::http::header::HOST;
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
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// The Control URL as the browser reached it: what an agent on the same network would use.
pub fn control_url(state: &AppState, headers: &HeaderMap) -> String {
    let host = headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost:8780");
    let scheme = if state.secure_cookies {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{host}")
}

async fn render_list(
    state: &AppState,
    viewer: &Viewer,
    status: StatusCode,
    ctx: Value,
) -> Result<Response, ApiError> {
    let o = overview::load(state, &viewer.user).await?;
    let ctx = context! { agents => Value::from_serialize(&o.agents), ..ctx };
    Ok(render::page(viewer, status, "agents.html", "agents", ctx))
}

fn or_error(viewer: &Viewer, r: Result<Response, ApiError>) -> Response {
    r.unwrap_or_else(|e| render::error_page(viewer, &e))
}

pub async fn list(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<Done>,
) -> Response {
    let ctx = context! { flash => flash(q.done.as_deref()) };
    or_error(
        &viewer,
        render_list(&state, &viewer, StatusCode::OK, ctx).await,
    )
}

/// The key page: shown once, right after creation or rotation.
fn key_page(
    state: &AppState,
    viewer: &Viewer,
    headers: &HeaderMap,
    agent: &AgentRow,
    key: &str,
    rotated: bool,
) -> Response {
    let ctx = context! {
        agent => context! { id => agent.id, name => agent.name.clone() },
        key => key,
        control_url => control_url(state, headers),
        rotated => rotated,
    };
    render::page(viewer, StatusCode::OK, "agent_key.html", "agents", ctx)
}

pub async fn create(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(form): Form<CreateForm>,
) -> Response {
    let result = async {
        viewer.check(&form.csrf)?;
        ops::agents::create(&state, &viewer.user, &form.name).await
    }
    .await;
    match result {
        Ok((agent, key)) => key_page(&state, &viewer, &headers, &agent, &key, false),
        Err(e) => {
            let ctx = context! { error => e.message(), name => form.name };
            or_error(&viewer, render_list(&state, &viewer, e.status(), ctx).await)
        }
    }
}

pub async fn rotate_key(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let result = async {
        viewer.check(&form.csrf)?;
        ops::agents::rotate_key(&state, &viewer.user, id).await
    }
    .await;
    match result {
        Ok((agent, key)) => key_page(&state, &viewer, &headers, &agent, &key, true),
        Err(e) => render::error_page(&viewer, &e),
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
        ops::agents::delete(&state, &viewer.user, id).await
    }
    .await;
    match result {
        Ok(()) => done("/agents", "agent-deleted"),
        Err(e) => {
            let ctx = context! { error => e.message() };
            or_error(&viewer, render_list(&state, &viewer, e.status(), ctx).await)
        }
    }
}
