//! DNS page (admins only): the managed zones with their non-secret settings and which
//! write-only fields are set; add a zone (its config as JSON, with an example per provider),
//! check one ("test connection", the result shown on the page), delete one after confirming.

use super::form::{CsrfForm, ErrorPage, NoFields, Redraw, Ui, UiForm, UiResult};
use super::page::{self as render, done, flash, Done};
use super::viewer::Viewer;
use crate::app::AppState;
use crate::error::ApiError;
use crate::ops;
use crate::views::zones::{check_view, view};
use crate::zones::PROVIDERS;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::Response;
use minijinja::{context, Value};
use serde::Deserialize;

/// An example config per provider, shown as help and as the placeholder.
const EXAMPLES: &[(&str, &str)] = &[
    (
        "rfc2136",
        r#"{"server": "ns1.example.com:53", "key_name": "kakuremichi.", "key_algorithm": "hmac-sha256", "key_secret": "base64 secret from tsig-keygen"}"#,
    ),
    (
        "powerdns",
        r#"{"api_url": "http://127.0.0.1:8081", "api_key": "the API key", "server_id": "localhost"}"#,
    ),
    (
        "cloudflare",
        r#"{"api_token": "a token with Zone.DNS:Edit", "zone_id": "the zone's id"}"#,
    ),
];

#[derive(Deserialize)]
pub struct CreateForm {
    #[serde(default)]
    zone: String,
    #[serde(default)]
    provider: String,
    #[serde(default)]
    config: String,
}

impl UiForm for CreateForm {
    /// What was typed, except the write-only fields' values (not echoed into the page).
    fn kept(&self) -> Value {
        let config = match serde_json::from_str::<serde_json::Value>(&self.config) {
            Ok(serde_json::Value::Object(mut m)) => {
                for (_, fields) in PROVIDERS {
                    for f in *fields {
                        m.remove(*f);
                    }
                }
                serde_json::Value::Object(m).to_string()
            }
            _ => self.config.clone(),
        };
        context! { zone => self.zone, provider => self.provider, config => config }
    }
}

/// The list of zones; errors of its forms above it, a refusal (not an admin) on the error page.
#[derive(Default)]
pub struct DnsPage;

impl Redraw for DnsPage {
    fn not_here(e: &ApiError) -> bool {
        e.status() == StatusCode::FORBIDDEN
    }

    async fn draw(
        state: &AppState,
        viewer: &Viewer,
        status: StatusCode,
        ctx: Value,
    ) -> Result<Response, ApiError> {
        let zones: Vec<_> = ops::zones::list(state, &viewer.user)
            .await?
            .into_iter()
            .map(view)
            .collect();
        let providers: Vec<_> = EXAMPLES
            .iter()
            .map(|(name, example)| {
                let secrets = PROVIDERS
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, f)| f.join(", "))
                    .unwrap_or_default();
                context! { name => name, example => example, secrets => secrets }
            })
            .collect();
        let ctx = context! {
            zones => Value::from_serialize(&zones),
            providers => providers,
            ..ctx
        };
        Ok(render::page(viewer, status, "dns.html", "dns", ctx))
    }
}

/// A form of this page, its errors shown above the list.
type DnsForm<T, I = ()> = CsrfForm<T, DnsPage, I>;

pub async fn list(ui: Ui<DnsPage>, Query(q): Query<Done>) -> UiResult {
    let ctx = context! { flash => flash(q.done.as_deref()) };
    ui.run(DnsPage::draw(&ui.state, &ui.viewer, StatusCode::OK, ctx))
        .await
}

pub async fn create(CsrfForm(ui, (), form): DnsForm<CreateForm>) -> UiResult {
    ui.run(async {
        let config = serde_json::from_str(form.config.trim())
            .map_err(|e| ApiError::bad_request(format!("the config is not valid JSON: {e}")))?;
        ops::zones::create(
            &ui.state,
            &ui.viewer.user,
            &form.zone,
            &form.provider,
            config,
        )
        .await
    })
    .await?;
    Ok(done("/dns", "zone-created"))
}

/// Runs the zone's check and shows the page with its result.
pub async fn check(CsrfForm(ui, Path(id), _): DnsForm<NoFields, Path<i64>>) -> UiResult {
    ui.run(async {
        let c = ops::zones::check(&ui.state, &ui.viewer.user, id).await?;
        let result = check_view(&c.row, &c.result, c.elapsed);
        let ctx = context! { check => Value::from_serialize(&result), check_id => id };
        DnsPage::draw(&ui.state, &ui.viewer, StatusCode::OK, ctx).await
    })
    .await
}

/// Asks before deleting.
pub async fn confirm_delete(ui: Ui<DnsPage>, Path(id): Path<i64>) -> UiResult {
    ui.run(async {
        let zone = view(ops::zones::get(&ui.state, &ui.viewer.user, id).await?);
        let ctx = context! { zone => Value::from_serialize(&zone) };
        Ok(render::page(
            &ui.viewer,
            StatusCode::OK,
            "dns_delete.html",
            "dns",
            ctx,
        ))
    })
    .await
}

pub async fn delete(
    CsrfForm(ui, Path(id), _): CsrfForm<NoFields, ErrorPage, Path<i64>>,
) -> UiResult {
    let op = ops::zones::delete(&ui.state, &ui.viewer.user, id, false);
    ui.run(op).await?;
    Ok(done("/dns", "zone-deleted"))
}
