//! Agents page: list with live status; "Add agent" shows the API key once with ready-to-paste
//! commands; rotate the key; delete.

use super::form::{CsrfForm, ErrorPage, NoFields, Redraw, Ui, UiForm, UiResult};
use super::overview;
use super::page::{self as render, done, flash, Done};
use super::viewer::Viewer;
use crate::app::AppState;
use crate::error::ApiError;
use crate::ops;
use crate::store::AgentRow;
use axum::extract::{Path, Query};
use axum::http::header::HOST;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use minijinja::{context, Value};
use serde::Deserialize;

#[derive(Deserialize)]
pub struct CreateForm {
    #[serde(default)]
    name: String,
}

impl UiForm for CreateForm {
    fn kept(&self) -> Value {
        context! { name => self.name }
    }
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

/// The list of agents; errors of its forms above it.
#[derive(Default)]
pub struct AgentsPage;

impl Redraw for AgentsPage {
    async fn draw(
        state: &AppState,
        viewer: &Viewer,
        status: StatusCode,
        ctx: Value,
    ) -> Result<Response, ApiError> {
        let o = overview::load(state, &viewer.user).await?;
        let ctx = context! { agents => Value::from_serialize(&o.agents), ..ctx };
        Ok(render::page(viewer, status, "agents.html", "agents", ctx))
    }
}

pub async fn list(ui: Ui, Query(q): Query<Done>) -> UiResult {
    let ctx = context! { flash => flash(q.done.as_deref()) };
    ui.run(AgentsPage::draw(&ui.state, &ui.viewer, StatusCode::OK, ctx))
        .await
}

/// The key page: shown once, right after creation or rotation.
fn key_page<P>(
    ui: &Ui<P>,
    headers: &HeaderMap,
    agent: &AgentRow,
    key: &str,
    rotated: bool,
) -> Response {
    let ctx = context! {
        agent => context! { id => agent.id, name => agent.name.clone() },
        key => key,
        control_url => control_url(&ui.state, headers),
        download_url => ui.state.download_url.clone(),
        rotated => rotated,
    };
    render::page(&ui.viewer, StatusCode::OK, "agent_key.html", "agents", ctx)
}

pub async fn create(
    headers: HeaderMap,
    CsrfForm(ui, (), form): CsrfForm<CreateForm, AgentsPage>,
) -> UiResult {
    let (agent, key) = ui
        .run(ops::agents::create(&ui.state, &ui.viewer.user, &form.name))
        .await?;
    Ok(key_page(&ui, &headers, &agent, &key, false))
}

pub async fn rotate_key(
    headers: HeaderMap,
    CsrfForm(ui, Path(id), _): CsrfForm<NoFields, ErrorPage, Path<i64>>,
) -> UiResult {
    let (agent, key) = ui
        .run(ops::agents::rotate_key(&ui.state, &ui.viewer.user, id))
        .await?;
    Ok(key_page(&ui, &headers, &agent, &key, true))
}

pub async fn delete(
    CsrfForm(ui, Path(id), _): CsrfForm<NoFields, AgentsPage, Path<i64>>,
) -> UiResult {
    let op = ops::agents::delete(&ui.state, &ui.viewer.user, id);
    ui.run(op).await?;
    Ok(done("/agents", "agent-deleted"))
}
