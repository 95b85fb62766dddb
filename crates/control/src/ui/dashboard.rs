//! The dashboard: counts and live status of Gateways, Agents and tunnels, and what needs
//! attention first, each item with the next step.

use super::form::{Ui, UiResult};
use super::overview;
use super::page as render;
use super::viewer::Viewer;
use crate::app::AppState;
use crate::error::ApiError;
use axum::http::StatusCode;
use axum::response::Response;
use minijinja::{context, Value};
use serde::Serialize;
use serde_json::Value as Json;

/// One thing to look at, most urgent first.
#[derive(Serialize)]
struct Attention {
    level: &'static str,
    text: String,
    action: &'static str,
    href: String,
}

fn is(v: &Json, key: &str, value: &str) -> bool {
    v[key].as_str() == Some(value)
}

fn attention(
    o: &overview::Overview,
    is_admin: bool,
    backups: Option<&crate::backups::BackupState>,
) -> Vec<Attention> {
    let mut items = Vec::new();
    let mut add = |level, text: String, action, href: String| {
        items.push(Attention {
            level,
            text,
            action,
            href,
        })
    };
    if let Some(b) = backups.filter(|b| b.needs_attention) {
        let text = match &b.last_error {
            Some(why) => format!("The last backup failed: {why}"),
            None => "No backup was made for two days.".to_string(),
        };
        add("bad", text, "See the backups", "#backups".into());
    }
    if o.gateways.is_empty() {
        let action = if is_admin {
            "Add a gateway"
        } else {
            "Ask an admin"
        };
        add(
            "bad",
            "No gateway exists yet: nothing can reach your tunnels from the internet.".into(),
            action,
            "/gateways".into(),
        );
    }
    for g in o.gateways.iter().filter(|g| is(g, "status", "offline")) {
        add(
            "bad",
            format!("Gateway {} is offline.", g["name"].as_str().unwrap_or("?")),
            "Start it with its token",
            "/gateways".into(),
        );
    }
    for (page, n) in [("/gateways", &o.gateways), ("/agents", &o.agents)]
        .into_iter()
        .flat_map(|(page, nodes)| nodes.iter().map(move |n| (page, n)))
    {
        if let Some(why) = n["config_error"].as_str() {
            let name = n["name"].as_str().unwrap_or("?");
            add(
                "bad",
                format!("{name} runs an older config: {why}"),
                "See its status",
                page.into(),
            );
        }
    }
    if o.agents.is_empty() {
        add(
            "warn",
            "No agent yet: an agent runs next to your apps and connects out to the gateways."
                .into(),
            "Add an agent",
            "/agents".into(),
        );
    }
    for a in o.agents.iter().filter(|a| is(a, "status", "offline")) {
        let n = a["tunnels"].as_u64().unwrap_or(0);
        add(
            "warn",
            format!(
                "Agent {} is offline; {n} tunnel(s) cannot be served.",
                a["name"].as_str().unwrap_or("?")
            ),
            "Start the agent",
            "/agents".into(),
        );
    }
    for t in &o.tunnels {
        let host = t["hostname"].as_str().unwrap_or("?");
        let href = format!("/tunnels/{}", t["id"]);
        if is(&t["certificate"], "status", "failed") {
            let why = t["certificate"]["last_error"]
                .as_str()
                .unwrap_or("unknown error");
            add(
                "bad",
                format!("The certificate for {host} failed: {why}"),
                "Open the tunnel",
                href,
            );
        } else if t["enabled"] == Json::Bool(false) {
            add(
                "info",
                format!("Tunnel {host} is disabled."),
                "Enable it",
                href,
            );
        }
    }
    if o.tunnels.is_empty() && !o.agents.is_empty() {
        add(
            "info",
            "No tunnel yet: publish your first app.".into(),
            "Create a tunnel",
            "/tunnels".into(),
        );
    }
    items
}

pub async fn page_handler(state: &AppState, viewer: &Viewer) -> Result<Response, ApiError> {
    let o = overview::load(state, &viewer.user).await?;
    let count = |items: &[Json]| {
        context! {
            total => items.len(),
            online => items.iter().filter(|i| is(i, "status", "online")).count(),
        }
    };
    let reachable = o
        .tunnels
        .iter()
        .filter(|t| t["reachable"] == Json::Bool(true))
        .count();
    // Admins see the state of Control's backups (the audit log's last success and failure).
    let backups = match state.backups.as_ref().filter(|_| viewer.user.is_admin) {
        Some(b) => Some((b.state(time::OffsetDateTime::now_utc()).await?, b.config())),
        None => None,
    };
    let backup_view = backups.as_ref().map(|(s, config)| {
        let file = s.last_file.as_deref().map(|f| {
            std::path::Path::new(f)
                .file_name()
                .map_or(f.to_string(), |n| n.to_string_lossy().into_owned())
        });
        context! {
            last_success => s.last_success,
            last_file => file,
            last_shipped => s.last_shipped,
            last_error => s.last_error,
            needs_attention => s.needs_attention,
            encrypted => config.key.is_some(),
            command => config.command.is_some(),
            schedule => config.at.map(|(h, m)| format!("{h:02}:{m:02} UTC")),
        }
    });
    // Admins see the open alerts (`None`: not an admin, or a Control without alerts).
    let open_alerts = match state.alerts.as_ref().filter(|_| viewer.user.is_admin) {
        Some(_) => Some(state.store.open_alerts().await?),
        None => None,
    };
    // The fleet's last hour, drawn once there is a tunnel to carry anything.
    let charts = match o.tunnels.is_empty() {
        true => Vec::new(),
        false => {
            let h = crate::views::traffic::traffic(state, None, crate::views::traffic::Range::Hour)
                .await?;
            super::chart::traffic_charts(&h, true)
        }
    };
    let ctx = context! {
        charts => charts,
        alerts => open_alerts.map(Value::from_serialize),
        backups => backup_view,
        gateways => count(&o.gateways),
        agents => count(&o.agents),
        tunnels => context! { total => o.tunnels.len(), reachable => reachable },
        attention => Value::from_serialize(attention(
            &o,
            viewer.user.is_admin,
            backups.as_ref().map(|(s, _)| s),
        )),
        tunnel_list => Value::from_serialize(&o.tunnels),
    };
    Ok(render::page(
        viewer,
        StatusCode::OK,
        "dashboard.html",
        "dashboard",
        ctx,
    ))
}

pub async fn page(ui: Ui) -> UiResult {
    ui.run(page_handler(&ui.state, &ui.viewer)).await
}
