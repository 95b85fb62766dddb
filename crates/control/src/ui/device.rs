//! `/device`: where a signed-in user approves or denies a command-line sign-in
//! (`kakuremichi login`, see `ops::device_login`). The CLI links `/device?code=XXXX-XXXX`; the
//! page shows who asks (token name, address, time) next to the code the terminal shows, so a
//! code sent by somebody else is recognised. Not signed in: the login page brings the user back.

use super::form::{CsrfForm, Redraw, Ui, UiForm, UiResult};
use super::page as render;
use super::viewer::Viewer;
use crate::app::AppState;
use crate::error::ApiError;
use crate::ops;
use crate::ops::device_login::{normalize, show, unknown_code};
use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::Response;
use minijinja::{context, Value};
use serde::Deserialize;

/// The device page; errors of its form on it.
#[derive(Default)]
pub struct DevicePage;

impl Redraw for DevicePage {
    async fn draw(
        _state: &AppState,
        viewer: &Viewer,
        status: StatusCode,
        ctx: Value,
    ) -> Result<Response, ApiError> {
        Ok(render::page(viewer, status, "device.html", "profile", ctx))
    }
}

#[derive(Deserialize)]
pub struct CodeQuery {
    code: Option<String>,
}

pub async fn page(ui: Ui<DevicePage>, Query(q): Query<CodeQuery>) -> UiResult {
    ui.run(async {
        let Some(typed) = q.code.filter(|c| !c.trim().is_empty()) else {
            return DevicePage::draw(&ui.state, &ui.viewer, StatusCode::OK, context! {}).await;
        };
        let found = match normalize(&typed) {
            Some(letters) => ui.state.store.pending_device_login(&letters).await?,
            None => None,
        };
        let Some(mut pending) = found else {
            return Err(unknown_code());
        };
        pending.user_code = show(&pending.user_code);
        let ctx = context! { pending => context! {
            user_code => pending.user_code,
            name => pending.name,
            client_ip => pending.client_ip,
            created_at => pending.created_at,
            expires_at => pending.expires_at,
        } };
        DevicePage::draw(&ui.state, &ui.viewer, StatusCode::OK, ctx).await
    })
    .await
}

#[derive(Deserialize)]
pub struct DecisionForm {
    #[serde(default)]
    code: String,
    #[serde(default)]
    decision: String,
}

impl UiForm for DecisionForm {
    fn kept(&self) -> Value {
        context! { code => self.code }
    }
}

pub async fn decide(CsrfForm(ui, (), form): CsrfForm<DecisionForm, DevicePage>) -> UiResult {
    ui.run(async {
        let approve = match form.decision.as_str() {
            "approve" => true,
            "deny" => false,
            _ => return Err(ApiError::bad_request("decision must be approve or deny")),
        };
        ops::device_login::decide(&ui.state, &ui.viewer.user, &form.code, approve).await?;
        let decided = if approve { "approved" } else { "denied" };
        let ctx = context! { decided => decided };
        DevicePage::draw(&ui.state, &ui.viewer, StatusCode::OK, ctx).await
    })
    .await
}
