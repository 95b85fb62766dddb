//! Gateways page (changes: admins only): list with live status and public endpoint, an enabled
//! switch, delete; "Add gateway" shows the token once with the command that starts it.

use super::agents::control_url;
use super::form::{CsrfForm, NoFields, Redraw, Ui, UiForm, UiResult};
use super::overview;
use super::page::{self as render, done, flash, Done};
use super::viewer::Viewer;
use crate::app::AppState;
use crate::error::ApiError;
use crate::ops;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use minijinja::{context, Value};
use serde::Deserialize;

#[derive(Deserialize)]
pub struct CreateForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    public_endpoint: String,
}

impl UiForm for CreateForm {
    fn kept(&self) -> Value {
        context! { name => self.name, public_endpoint => self.public_endpoint }
    }
}

#[derive(Deserialize)]
pub struct ToggleForm {
    #[serde(default)]
    enabled: String,
}

impl UiForm for ToggleForm {}

/// The list of gateways; errors of its forms above it.
#[derive(Default)]
pub struct GatewaysPage;

impl Redraw for GatewaysPage {
    async fn draw(
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
}

/// A form of this page, its errors shown above the list.
type GatewayForm<T, I = ()> = CsrfForm<T, GatewaysPage, I>;

pub async fn list(ui: Ui, Query(q): Query<Done>) -> UiResult {
    let ctx = context! { flash => flash(q.done.as_deref()) };
    ui.run(GatewaysPage::draw(
        &ui.state,
        &ui.viewer,
        StatusCode::OK,
        ctx,
    ))
    .await
}

pub async fn create(
    headers: HeaderMap,
    CsrfForm(ui, (), form): GatewayForm<CreateForm>,
) -> UiResult {
    let create = ops::gateways::create(
        &ui.state,
        &ui.viewer.user,
        &form.name,
        &form.public_endpoint,
        Default::default(),
    );
    let (gateway, token) = ui.run(create).await?;
    let ctx = context! {
        gateway => context! { id => gateway.id, name => gateway.name, public_endpoint => gateway.public_endpoint },
        token => token,
        control_url => control_url(&ui.state, &headers),
    };
    let page = render::page(
        &ui.viewer,
        StatusCode::OK,
        "gateway_token.html",
        "gateways",
        ctx,
    );
    Ok(page)
}

pub async fn toggle(CsrfForm(ui, Path(id), form): GatewayForm<ToggleForm, Path<i64>>) -> UiResult {
    let enabled = Some(form.enabled == "true");
    let op = ops::gateways::update(
        &ui.state,
        &ui.viewer.user,
        id,
        None,
        None,
        enabled,
        Default::default(),
    );
    ui.run(op).await?;
    Ok(done("/gateways", "gateway-saved"))
}

pub async fn delete(CsrfForm(ui, Path(id), _): GatewayForm<NoFields, Path<i64>>) -> UiResult {
    let op = ops::gateways::delete(&ui.state, &ui.viewer.user, id);
    ui.run(op).await?;
    Ok(done("/gateways", "gateway-deleted"))
}
