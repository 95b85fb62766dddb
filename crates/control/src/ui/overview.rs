//! Everything the pages show about nodes and tunnels, as the API's views plus what the UI adds
//! (names, live status, whether the viewer may change it), loaded once per page.

use crate::app::AppState;
use crate::error::ApiError;
use crate::ops::can_manage;
use crate::store::access::policy_of;
use crate::store::limits::limits_of;
use crate::store::TunnelLimits;
use crate::store::{NodeKind, NodeRef, UserRow};
use crate::views::{agents, gateways, tunnels};
use kakuremichi_proto::AccessPolicy;
use serde_json::{json, Value};
use std::collections::HashMap;

pub struct Overview {
    pub gateways: Vec<Value>,
    pub agents: Vec<Value>,
    pub tunnels: Vec<Value>,
}

/// Adds `extra`'s keys to the JSON object `base`.
fn with(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
    base
}

/// How the pages show a tunnel's policy: the form's radio value, its e-mail list (one per line)
/// and a short badge label.
fn access_fields(policy: &AccessPolicy) -> Value {
    let (mode, allow, label) = match policy {
        AccessPolicy::Public => ("public", String::new(), "public".to_string()),
        AccessPolicy::Login => ("login", String::new(), "sign-in".to_string()),
        AccessPolicy::Users { allow } => {
            let label = match allow.len() {
                1 => "1 person".to_string(),
                n => format!("{n} people"),
            };
            let list = allow.iter().map(String::as_str).collect::<Vec<_>>();
            ("users", list.join("\n"), label)
        }
    };
    json!({"access_mode": mode, "access_allow": allow, "access_label": label})
}

/// A tunnel's Gateway limits in one line for its page, or "none".
fn limits_label(l: &TunnelLimits) -> String {
    let mut parts = Vec::new();
    if !l.ip_allow.is_empty() {
        parts.push(format!("only from {}", l.ip_allow.join(", ")));
    }
    if !l.ip_deny.is_empty() {
        parts.push(format!("blocks {}", l.ip_deny.join(", ")));
    }
    if let Some(rate) = l.rate_limit_per_second {
        let burst = l.rate_limit_burst.unwrap_or(rate);
        parts.push(format!("{rate} requests/s per visitor (burst {burst})"));
    }
    if let Some(n) = l.max_concurrent_requests {
        parts.push(format!("{n} concurrent requests"));
    }
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join("; ")
    }
}

fn to_json(v: impl serde::Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

pub async fn load(state: &AppState, viewer: &UserRow) -> Result<Overview, ApiError> {
    let online = |kind, id| state.hub.is_online(NodeRef { kind, id });
    let gateway_rows = state.store.list_gateways().await?;
    let serving = gateway_rows
        .iter()
        .any(|g| g.enabled && online(NodeKind::Gateway, g.id));
    let any_gateway_online = !state.hub.online_gateways().is_empty();
    // Why a node runs an older config than Control's (it rejected the latest, or it was too large
    // to send); the pages show it next to the node's status.
    let config_error =
        |kind, id| json!({"config_error": state.hub.config_error(NodeRef { kind, id })});
    let gateways = gateway_rows
        .into_iter()
        .map(|g| {
            let extra = config_error(NodeKind::Gateway, g.id);
            with(to_json(gateways::view(state, g, None)), extra)
        })
        .collect();
    let tunnel_rows = state.store.list_tunnels().await?;
    let mut per_agent: HashMap<i64, usize> = HashMap::new();
    for t in &tunnel_rows {
        *per_agent.entry(t.agent_id).or_default() += 1;
    }
    let mut agent_names = HashMap::new();
    let agents = state
        .store
        .list_agents()
        .await?
        .into_iter()
        .map(|a| {
            agent_names.insert(a.id, a.name.clone());
            let extra = json!({
                "can_manage": can_manage(viewer, a.owner_id),
                "tunnels": per_agent.get(&a.id).copied().unwrap_or(0),
            });
            let error = config_error(NodeKind::Agent, a.id);
            with(with(to_json(agents::view(state, a, None)), extra), error)
        })
        .collect();
    let certs = tunnels::certs_by_name_and_source(state).await?;
    let replicas = state.store.list_replicas().await?;
    let streams = tunnels::StreamState::read(state).await?;
    let tunnels = tunnel_rows
        .into_iter()
        .map(|t| {
            let agent_online = online(NodeKind::Agent, t.agent_id);
            let access = access_fields(&policy_of(&t));
            let limits = limits_label(&limits_of(&t));
            let replica_ids: Vec<i64> = replicas
                .iter()
                .filter(|r| r.tunnel_id == t.id)
                .map(|r| r.agent_id)
                .collect();
            let replica_names: Vec<_> = replica_ids.iter().map(|a| agent_names.get(a)).collect();
            let extra = json!({
                "replica_ids": replica_ids,
                "replica_names": replica_names,
                "agent_name": agent_names.get(&t.agent_id),
                "agent_status": if agent_online { "online" } else { "offline" },
                "reachable": t.enabled && agent_online && serving,
                // A wildcard's URL names no one site: shown as text, not as a link.
                "wildcard": t.hostname.starts_with("*."),
                "can_manage": can_manage(viewer, t.owner_id),
                "limits_label": limits,
            });
            let cert = tunnels::shown_cert(&certs, &t);
            let view = tunnels::TunnelView::new(t, &replicas, cert, any_gateway_online)
                .with_dns(state)
                .with_streams(&streams);
            // Where the pages say the tunnel is reached (`tcp`/`udp`: `public_addresses`).
            let url = json!({"public_url": view.public_url()});
            with(with(with(to_json(view), extra), access), url)
        })
        .collect();
    Ok(Overview {
        gateways,
        agents,
        tunnels,
    })
}
