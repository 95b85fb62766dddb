//! `/tunnels`: a public hostname served by an Agent. Every change is pushed to the Gateways (routes)
//! and to the Agent concerned (services).
//!
//! Wildcards: a `hostname` such as `*.apps.example.com` serves `a.apps.example.com`,
//! `b.apps.example.com`, ... (one label, not `apps.example.com` itself nor `x.a.apps.example.com`);
//! a tunnel of the exact name wins over it. Members cannot overlap other users' names this way
//! (409, see `crate::store`'s overlap rule).
//!
//! Replicas: `agent_ids` lists every Agent serving the tunnel, the primary (`agent_id`) first;
//! Gateways spread requests over them and skip one that is down. On create, give `agent_id` or
//! `agent_ids` (or both, agreeing); on PATCH, `agent_ids` replaces the set and `agent_id` alone
//! changes the primary and keeps the other replicas.
//!
//! Access per tunnel: `access` is `{"mode":"public"}` (default), `{"mode":"login"}` (any user
//! signed in to Control) or `{"mode":"users","allow":["alice@example.com"]}` (e-mails, lower-cased;
//! addresses without an account yet are allowed, to pre-authorise). See `crate::access`.
//!
//! HTTPS per tunnel: `tls` (`acme`, `internal` or `off`; default Control's `default_tls`, itself
//! `acme` unless configured), `https_redirect` (default true: plain HTTP gets a 308 to https, and
//! HTTPS responses carry HSTS), and the read-only `certificate` status (null when `tls` is off):
//! `status` is `pending`, `issued`, `failed` or `waiting` (an hourly ACME order cap holds the
//! order back; `last_error` says "waiting: hourly order limit (...), next try at <time>").
//!
//! TCP, UDP and TLS passthrough: `protocol` `tcp` or `udp` publishes the target on
//! `public_port` of every enabled Gateway (bound at once, unbound on delete or disable; a Gateway
//! that cannot bind it says so in `port_errors` and the others serve); `tls` splices connections
//! whose ClientHello names the hostname, still encrypted, to the target. None of them gets a
//! certificate (`tls` is `off`), a redirect or HTTP limits; `ip_allow`/`ip_deny` and
//! `max_connections` apply, and `proxy_protocol` (`v1`/`v2`) tells the target the client's
//! address. A `tcp` tunnel with `access` other than public opens no public port.
//!
//! Limits per tunnel, enforced by every Gateway on its own (see `kakuremichi_proto::limits`):
//! `ip_allow` / `ip_deny` (CIDR networks or single addresses, IPv4 and IPv6, at most 100 each;
//! deny wins over allow; an empty allow-list admits everyone), `rate_limit_per_second` and
//! `rate_limit_burst` (per client IP, an IPv6 /64; burst null = the rate), and
//! `max_concurrent_requests`; null turns a number off. Refused requests get 403 (IP lists) or 429
//! with `Retry-After`.

use super::openapi::{ErrorBody, ReadErrors, WriteErrors};
use crate::app::AppState;
use crate::auth::AuthUser;
use crate::certs::TlsMode;
use crate::error::{about, ApiError, ApiJson, Id};
use crate::ops::limits::LimitsInput;
use crate::ops::{self, tunnels::TunnelInput};
use crate::views::tunnels::{certs_by_name_and_source, shown_cert, view, StreamState, TunnelView};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use kakuremichi_proto::{AccessPolicy, ProxyProtocol, TunnelProtocol};
use serde::Deserialize;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTunnel {
    /// The public name, such as `app.example.com`, or a wildcard `*.apps.example.com` (only the
    /// whole leftmost label may be `*`) serving every name exactly one label below
    /// `apps.example.com` that has no tunnel of its own: exact names win. A wildcard may not
    /// cover another user's tunnel, nor may a name lie under another user's wildcard (409).
    /// With `tls: acme` a wildcard's certificate comes by the dns-01 challenge: its
    /// `_acme-challenge` name must lie in a managed DNS zone, or be a CNAME into one.
    hostname: String,
    agent_id: Option<i64>,
    agent_ids: Option<Vec<i64>>,
    target: String,
    enabled: Option<bool>,
    tls: Option<TlsMode>,
    https_redirect: Option<bool>,
    access: Option<AccessPolicy>,
    ip_allow: Option<Vec<String>>,
    ip_deny: Option<Vec<String>>,
    rate_limit_per_second: Option<i64>,
    rate_limit_burst: Option<i64>,
    max_concurrent_requests: Option<i64>,
    /// `http` (default), `tcp` or `udp` (a public port on every Gateway), or `tls` (passed
    /// through by SNI on the Gateways' HTTPS port; the target terminates TLS). Fixed once created.
    protocol: Option<TunnelProtocol>,
    /// `tcp`/`udp`: the port every Gateway binds; left out, the lowest free port of
    /// `KAKUREMICHI_PORT_RANGE` (20000-29999). 409 when another tunnel or the Gateways use it.
    public_port: Option<u16>,
    /// `tcp`/`tls`: a PROXY protocol header (`v1` text, `v2` binary) before the client's bytes,
    /// so the target sees the client's address. Default `off`.
    proxy_protocol: Option<ProxyProtocol>,
    /// `tcp`/`udp`/`tls`: connections (UDP: flows) at once per Gateway; null = no cap.
    max_connections: Option<u32>,
    /// `udp`: seconds a flow (one client address) may send and receive nothing before the
    /// Gateways and the Agent free it; 1-86400, default 60.
    udp_idle_timeout: Option<u32>,
    /// `http`: `user:password` for HTTP Basic authentication at the Gateways (user 1-64
    /// characters without `:`, password 8-128). Write-only: views show `basic_auth_user`.
    basic_auth: Option<String>,
    /// `http`: every Gateway keeps the tunnel's last 1,000 requests in memory (time, client IP,
    /// method, path without the query, status, duration, bytes), shown on the tunnel page and by
    /// `GET /api/v1/tunnels/{id}/requests`. Default false; nothing is written to disk.
    log_requests: Option<bool>,
    /// `http`: a custom error page, HTML of at most 64 KiB served as is by the Gateways in
    /// place of their own 404/502/503/429/403/401/408 pages, with `{{request_id}}` and
    /// `{{status}}` filled in. Default none (the global page, if any, applies); blank = none.
    error_page: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchTunnel {
    /// A new public name or wildcard (`*.apps.example.com`), as on create.
    hostname: Option<String>,
    agent_id: Option<i64>,
    agent_ids: Option<Vec<i64>>,
    target: Option<String>,
    enabled: Option<bool>,
    tls: Option<TlsMode>,
    https_redirect: Option<bool>,
    access: Option<AccessPolicy>,
    // Absent: unchanged; null: off (an empty list for the IP lists).
    #[serde(default, deserialize_with = "nullable")]
    ip_allow: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "nullable")]
    ip_deny: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "nullable")]
    rate_limit_per_second: Option<Option<i64>>,
    #[serde(default, deserialize_with = "nullable")]
    rate_limit_burst: Option<Option<i64>>,
    #[serde(default, deserialize_with = "nullable")]
    max_concurrent_requests: Option<Option<i64>>,
    /// Must be the tunnel's protocol if sent: it cannot change.
    protocol: Option<TunnelProtocol>,
    public_port: Option<u16>,
    proxy_protocol: Option<ProxyProtocol>,
    #[serde(default, deserialize_with = "nullable")]
    max_connections: Option<Option<u32>>,
    /// null: back to the default (60 s).
    #[serde(default, deserialize_with = "nullable")]
    udp_idle_timeout: Option<Option<u32>>,
    /// `user:password` for HTTP Basic authentication; null turns it off.
    #[serde(default, deserialize_with = "nullable")]
    basic_auth: Option<Option<String>>,
    /// `http`: keep the tunnel's recent requests on the Gateways (the request log).
    log_requests: Option<bool>,
    /// `http`: the custom error page (HTML, at most 64 KiB); null (or blank) removes it.
    #[serde(default, deserialize_with = "nullable")]
    error_page: Option<Option<String>>,
}

/// Tells a field sent as `null` (`Some(None)`) from one left out (`None`, by `serde(default)`).
pub(super) fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Creates a tunnel: `hostname` served by `agent_id` (or `agent_ids`) to `target`.
#[utoipa::path(
    post,
    path = "/api/v1/tunnels",
    tag = "tunnels",
    operation_id = "create_tunnel",
    security(("api_token" = []), ("session_cookie" = [], "csrf_token" = [])),
    request_body = CreateTunnel,
    responses(
        (status = 201, description = "Created", body = TunnelView),
        (status = 409, description = "The hostname or public port is taken", body = ErrorBody),
        WriteErrors,
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiJson(body): ApiJson<CreateTunnel>,
) -> Result<(StatusCode, Json<TunnelView>), ApiError> {
    let input = TunnelInput {
        hostname: Some(body.hostname),
        agent_id: body.agent_id,
        agent_ids: body.agent_ids,
        target: Some(body.target),
        enabled: body.enabled,
        tls: body.tls,
        https_redirect: body.https_redirect,
        access: body.access,
        limits: LimitsInput {
            ip_allow: body.ip_allow,
            ip_deny: body.ip_deny,
            rate_limit_per_second: body.rate_limit_per_second.map(Some),
            rate_limit_burst: body.rate_limit_burst.map(Some),
            max_concurrent_requests: body.max_concurrent_requests.map(Some),
        },
        protocol: body.protocol,
        public_port: body.public_port,
        proxy_protocol: body.proxy_protocol,
        max_connections: body.max_connections.map(Some),
        udp_idle_timeout: body.udp_idle_timeout.map(Some),
        basic_auth: body.basic_auth.map(Some),
        log_requests: body.log_requests,
        error_page: body.error_page.map(Some),
    };
    let row = ops::tunnels::create(&state, &user, input).await?;
    Ok((StatusCode::CREATED, Json(view(&state, row).await?)))
}

/// Lists the tunnels.
#[utoipa::path(
    get,
    path = "/api/v1/tunnels",
    tag = "tunnels",
    operation_id = "list_tunnels",
    security(("api_token" = []), ("session_cookie" = [])),
    responses(
        (status = 200, description = "Every tunnel", body = Vec<TunnelView>),
        ReadErrors,
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    _user: AuthUser,
) -> Result<Json<Vec<TunnelView>>, ApiError> {
    let rows = state.store.list_tunnels().await?;
    let replicas = state.store.list_replicas().await?;
    let certs = certs_by_name_and_source(&state).await?;
    let online = !state.hub.online_gateways().is_empty();
    let streams = StreamState::read(&state).await?;
    Ok(Json(
        rows.into_iter()
            .map(|t| {
                let cert = shown_cert(&certs, &t);
                TunnelView::new(t, &replicas, cert, online)
                    .with_dns(&state)
                    .with_streams(&streams)
            })
            .collect(),
    ))
}

/// Reads one tunnel.
#[utoipa::path(
    get,
    path = "/api/v1/tunnels/{id}",
    tag = "tunnels",
    operation_id = "get_tunnel",
    security(("api_token" = []), ("session_cookie" = [])),
    params(("id" = i64, Path, description = "The tunnel's id")),
    responses(
        (status = 200, description = "The tunnel", body = TunnelView),
        (status = 400, description = "The id is not an integer", body = ErrorBody),
        (status = 404, description = "No such tunnel", body = ErrorBody),
        ReadErrors,
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    _user: AuthUser,
    Id(id): Id,
) -> Result<Json<TunnelView>, ApiError> {
    let row = state.store.get_tunnel(id).await.map_err(about("tunnel"))?;
    Ok(Json(view(&state, row).await?))
}

/// Changes a tunnel: only the fields sent; `null` turns a limit off.
#[utoipa::path(
    patch,
    path = "/api/v1/tunnels/{id}",
    tag = "tunnels",
    operation_id = "update_tunnel",
    security(("api_token" = []), ("session_cookie" = [], "csrf_token" = [])),
    params(("id" = i64, Path, description = "The tunnel's id")),
    request_body = PatchTunnel,
    responses(
        (status = 200, description = "The tunnel as changed", body = TunnelView),
        (status = 404, description = "No such tunnel", body = ErrorBody),
        (status = 409, description = "The hostname is taken", body = ErrorBody),
        WriteErrors,
    ),
)]
pub async fn update(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Id(id): Id,
    ApiJson(body): ApiJson<PatchTunnel>,
) -> Result<Json<TunnelView>, ApiError> {
    let input = TunnelInput {
        hostname: body.hostname,
        agent_id: body.agent_id,
        agent_ids: body.agent_ids,
        target: body.target,
        enabled: body.enabled,
        tls: body.tls,
        https_redirect: body.https_redirect,
        access: body.access,
        limits: LimitsInput {
            ip_allow: body.ip_allow.map(Option::unwrap_or_default),
            ip_deny: body.ip_deny.map(Option::unwrap_or_default),
            rate_limit_per_second: body.rate_limit_per_second,
            rate_limit_burst: body.rate_limit_burst,
            max_concurrent_requests: body.max_concurrent_requests,
        },
        protocol: body.protocol,
        public_port: body.public_port,
        proxy_protocol: body.proxy_protocol,
        max_connections: body.max_connections,
        udp_idle_timeout: body.udp_idle_timeout,
        basic_auth: body.basic_auth,
        log_requests: body.log_requests,
        error_page: body.error_page,
    };
    let row = ops::tunnels::update(&state, &user, id, input).await?;
    Ok(Json(view(&state, row).await?))
}

/// Deletes a tunnel.
#[utoipa::path(
    delete,
    path = "/api/v1/tunnels/{id}",
    tag = "tunnels",
    operation_id = "delete_tunnel",
    security(("api_token" = []), ("session_cookie" = [], "csrf_token" = [])),
    params(("id" = i64, Path, description = "The tunnel's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such tunnel", body = ErrorBody),
        WriteErrors,
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Id(id): Id,
) -> Result<StatusCode, ApiError> {
    ops::tunnels::delete(&state, &user, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
