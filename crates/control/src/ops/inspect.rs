//! Looking at a tunnel from the nodes' side, live (issue #22): its Agents check its target, its
//! Gateways hand over the requests they logged. Nothing is stored: each call asks the nodes
//! that have a session with this Control replica, at once, and waits a bounded time.

use super::require_owner;
use crate::app::AppState;
use crate::error::{about, ApiError};
use crate::hub::AskError;
use crate::store::{NodeKind, NodeRef, UserRow};
use futures_util::future::join_all;
use kakuremichi_proto::{Answer, Query, RequestFilter, TargetCheck};
use serde::Serialize;
use std::time::Duration;

/// How long an Agent may take to check a target: its own connect timeout (10 s by default) and
/// the first line of an HTTP answer fit in it.
const CHECK_WAIT: Duration = Duration::from_secs(20);
/// How long a Gateway may take to hand over its log.
const LOG_WAIT: Duration = Duration::from_secs(5);

/// What each Agent serving a tunnel found when it connected to the target.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CheckReport {
    pub tunnel_id: i64,
    /// Every Agent that answered reached the target.
    pub ok: bool,
    /// One entry per Agent serving the tunnel, the primary first.
    pub agents: Vec<AgentCheck>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AgentCheck {
    pub agent_id: i64,
    pub agent: String,
    /// The Agent answered and reached the target.
    pub ok: bool,
    /// The target as the Agent has it (`app:3000`); absent when the Agent did not answer.
    pub target: Option<String>,
    /// Milliseconds until the target accepted the connection.
    pub connect_ms: Option<f64>,
    /// The HTTP status line the target answered, or the exact error ("connection refused from
    /// app:3000 (172.18.0.5:3000)"), or why the Agent could not be asked.
    pub detail: String,
}

/// Asks every Agent serving tunnel `id` to connect to its target now.
pub async fn check_target(
    state: &AppState,
    user: &UserRow,
    id: i64,
) -> Result<CheckReport, ApiError> {
    let tunnel = state.store.get_tunnel(id).await.map_err(about("tunnel"))?;
    require_owner(user, tunnel.owner_id, "tunnels")?;
    let replicas = state.store.tunnel_replicas(id).await?;
    let mut agent_ids = vec![tunnel.agent_id];
    agent_ids.extend(replicas.iter().map(|r| r.agent_id));
    let asks = agent_ids.iter().map(|&agent_id| async move {
        let node = NodeRef {
            kind: NodeKind::Agent,
            id: agent_id,
        };
        let name = match state.store.get_agent(agent_id).await {
            Ok(a) => a.name,
            Err(_) => format!("agent {agent_id}"),
        };
        let answer = state
            .hub
            .ask(node, Query::CheckTarget { tunnel_id: id }, CHECK_WAIT)
            .await;
        agent_check(agent_id, name, answer)
    });
    let agents: Vec<AgentCheck> = join_all(asks).await;
    Ok(CheckReport {
        tunnel_id: id,
        ok: agents.iter().all(|a| a.ok),
        agents,
    })
}

fn agent_check(agent_id: i64, agent: String, answer: Result<Answer, AskError>) -> AgentCheck {
    let unanswered = |detail: String| AgentCheck {
        agent_id,
        agent: agent.clone(),
        ok: false,
        target: None,
        connect_ms: None,
        detail,
    };
    match answer {
        Ok(Answer::CheckTarget {
            check:
                TargetCheck {
                    target,
                    ok,
                    connect_us,
                    detail,
                },
        }) => AgentCheck {
            agent_id,
            agent,
            ok,
            target: Some(target),
            connect_ms: connect_us.map(|us| us as f64 / 1000.0),
            detail,
        },
        Ok(Answer::Error { message }) => {
            unanswered(format!("the Agent could not check: {message}"))
        }
        Ok(_) => unanswered("the Agent answered something else".into()),
        Err(e) => unanswered(format!("the Agent was not asked: {e}")),
    }
}

/// The requests the Gateways logged for a tunnel, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RequestLog {
    pub tunnel_id: i64,
    /// Whether the tunnel logs requests now (`log_requests`); when false, only what the
    /// Gateways kept from before is shown, until they restart.
    pub log_requests: bool,
    pub requests: Vec<LoggedRequest>,
    /// Every Gateway asked, and whether it answered.
    pub gateways: Vec<GatewayAnswer>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LoggedRequest {
    /// When the request arrived (RFC 3339, UTC, milliseconds).
    pub time: String,
    /// The id on the Gateway's error pages and in its access log.
    pub request_id: String,
    pub client_ip: String,
    pub method: String,
    /// Without the query string.
    pub path: String,
    pub status: u16,
    pub duration_ms: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub gateway_id: i64,
    pub gateway: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GatewayAnswer {
    pub gateway_id: i64,
    pub gateway: String,
    pub ok: bool,
    /// Why the Gateway's requests are missing, when they are.
    pub error: Option<String>,
}

/// A status filter as users write it: `502`, or a class such as `5xx`.
pub fn status_filter(text: &str) -> Result<u16, ApiError> {
    let text = text.trim().to_ascii_lowercase();
    let bad = || ApiError::bad_request("status must be a code such as 502 or a class such as 5xx");
    if let Some(class) = text.strip_suffix("xx") {
        return match class.parse::<u16>() {
            Ok(c @ 1..=5) => Ok(c),
            _ => Err(bad()),
        };
    }
    match text.parse::<u16>() {
        Ok(code @ 100..=599) => Ok(code),
        _ => Err(bad()),
    }
}

/// Asks every online Gateway for tunnel `id`'s logged requests matching `filter`.
pub async fn request_log(
    state: &AppState,
    user: &UserRow,
    id: i64,
    filter: RequestFilter,
) -> Result<RequestLog, ApiError> {
    let tunnel = state.store.get_tunnel(id).await.map_err(about("tunnel"))?;
    require_owner(user, tunnel.owner_id, "tunnels")?;
    let mut gateways = state.store.list_gateways().await?;
    let online = state.hub.online_gateways();
    gateways.retain(|g| online.iter().any(|n| n.id == g.id));
    let limit = filter.limit();
    let asks = gateways.iter().map(|g| {
        let query = Query::RequestLog {
            tunnel_id: id,
            filter: filter.clone(),
        };
        let node = NodeRef {
            kind: NodeKind::Gateway,
            id: g.id,
        };
        async move { (g, state.hub.ask(node, query, LOG_WAIT).await) }
    });
    let mut requests = Vec::new();
    let mut answers = Vec::new();
    for (g, answer) in join_all(asks).await {
        let error = match answer {
            Ok(Answer::RequestLog { requests: logged }) => {
                requests.extend(logged.into_iter().filter(|r| filter.admits(r)).map(|r| {
                    LoggedRequest {
                        time: time_of(r.time_ms),
                        request_id: r.request_id,
                        client_ip: r.client_ip,
                        method: r.method,
                        path: r.path,
                        status: r.status,
                        duration_ms: r.duration_us as f64 / 1000.0,
                        bytes_in: r.bytes_in,
                        bytes_out: r.bytes_out,
                        gateway_id: g.id,
                        gateway: g.name.clone(),
                    }
                }));
                None
            }
            Ok(Answer::Error { message }) => Some(message),
            Ok(_) => Some("the Gateway answered something else".into()),
            Err(e) => Some(e.to_string()),
        };
        answers.push(GatewayAnswer {
            gateway_id: g.id,
            gateway: g.name.clone(),
            ok: error.is_none(),
            error,
        });
    }
    // Newest first over every Gateway (RFC 3339 in UTC with fixed width sorts as time).
    requests.sort_by(|a, b| b.time.cmp(&a.time));
    requests.truncate(limit);
    Ok(RequestLog {
        tunnel_id: id,
        log_requests: tunnel.log_requests,
        requests,
        gateways: answers,
    })
}

/// Milliseconds since the epoch as RFC 3339 with milliseconds, in UTC.
fn time_of(ms: i64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    at.format(&format).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_filters_take_codes_and_classes() {
        assert_eq!(status_filter("502").unwrap(), 502);
        assert_eq!(status_filter("5xx").unwrap(), 5);
        assert_eq!(status_filter("4XX").unwrap(), 4);
        for bad in ["6xx", "0xx", "99", "600", "abc", ""] {
            assert!(status_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_are_rfc3339_with_milliseconds() {
        assert_eq!(time_of(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
