//! Alerts page (admins only): the open alerts, the conditions waiting for their delay, the
//! latest alerts, and the channels they go to: add one (webhook or e-mail), send it a test
//! message (the result shown on the page), delete one.

use super::form::{CsrfForm, NoFields, Redraw, Ui, UiForm, UiResult};
use super::page::{self as render, done, flash, Done};
use super::viewer::Viewer;
use crate::app::AppState;
use crate::error::ApiError;
use crate::ops;
use crate::ops::alerts::NewChannel;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::Response;
use minijinja::{context, Value};
use serde::Deserialize;

/// Alerts listed under "Latest".
const RECENT: i64 = 50;

#[derive(Deserialize)]
pub struct CreateForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    format: String,
}

impl UiForm for CreateForm {
    /// What was typed, except the target (a webhook URL often holds a token).
    fn kept(&self) -> Value {
        context! { name => self.name, kind => self.kind, format => self.format }
    }
}

/// The page; errors of its forms above it, a refusal (not an admin) on the error page.
#[derive(Default)]
pub struct AlertsPage;

impl Redraw for AlertsPage {
    fn not_here(e: &ApiError) -> bool {
        matches!(
            e.status(),
            StatusCode::FORBIDDEN | StatusCode::SERVICE_UNAVAILABLE
        )
    }

    async fn draw(
        state: &AppState,
        viewer: &Viewer,
        status: StatusCode,
        ctx: Value,
    ) -> Result<Response, ApiError> {
        ops::require_admin(&viewer.user, "see the alerts")?;
        let alerts = ops::alerts::alerts(state)?;
        let config = alerts.config();
        let rules = context! {
            offline_after => config.offline_after.as_secs(),
            resolve_after => config.resolve_after.as_secs(),
            certificate_days => config.certificate_days,
            error_rate => config.error_rate_percent,
            error_window => config.error_rate_window.as_secs() / 60,
            smtp => config.mailer.is_some(),
        };
        let ctx = context! {
            open => Value::from_serialize(state.store.open_alerts().await?),
            pending => Value::from_serialize(alerts.pending()),
            recent => Value::from_serialize(state.store.recent_alerts(RECENT).await?),
            channels => Value::from_serialize(alerts.channels().await?),
            rules => rules,
            ..ctx
        };
        Ok(render::page(viewer, status, "alerts.html", "alerts", ctx))
    }
}

type AlertsForm<T, I = ()> = CsrfForm<T, AlertsPage, I>;

pub async fn page(ui: Ui<AlertsPage>, Query(q): Query<Done>) -> UiResult {
    let ctx = context! { flash => flash(q.done.as_deref()) };
    ui.run(AlertsPage::draw(&ui.state, &ui.viewer, StatusCode::OK, ctx))
        .await
}

pub async fn create(CsrfForm(ui, (), form): AlertsForm<CreateForm>) -> UiResult {
    ui.run(async {
        let format = Some(form.format.as_str()).filter(|f| !f.is_empty());
        let new = NewChannel {
            name: &form.name,
            kind: &form.kind,
            target: &form.target,
            format,
        };
        ops::alerts::add_channel(&ui.state, &ui.viewer.user, new).await
    })
    .await?;
    Ok(done("/alerts", "channel-created"))
}

/// Sends a test message and shows the page with the outcome.
pub async fn test(CsrfForm(ui, Path(id), _): AlertsForm<NoFields, Path<i64>>) -> UiResult {
    ui.run(async {
        let result = ops::alerts::test_channel(&ui.state, &ui.viewer.user, id).await?;
        let ctx = context! {
            tested => context! { id => id, ok => result.is_ok(), error => result.err() },
        };
        AlertsPage::draw(&ui.state, &ui.viewer, StatusCode::OK, ctx).await
    })
    .await
}

pub async fn delete(CsrfForm(ui, Path(id), _): AlertsForm<NoFields, Path<i64>>) -> UiResult {
    let op = ops::alerts::delete_channel(&ui.state, &ui.viewer.user, id);
    ui.run(op).await?;
    Ok(done("/alerts", "channel-deleted"))
}
