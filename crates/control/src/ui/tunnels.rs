//! Tunnels pages: list with public URL, live status and access mode, create, edit (one form for
//! both, see `templates/macros.html`), enable/disable, delete after a confirmation page.

use super::form::{
    above, CsrfForm, ErrorPage, NoFields, Redraw, ShowsErrors, Ui, UiForm, UiResult,
};
use super::overview;
use super::page::{self as render, done, flash, Done};
use super::viewer::Viewer;
use crate::app::AppState;
use crate::certs::TlsMode;
use crate::error::ApiError;
use crate::ops::limits::LimitsInput;
use crate::ops::{self, tunnels::TunnelInput};
use crate::validate;
use crate::views::traffic::Range;
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kakuremichi_proto::{AccessPolicy, ProxyProtocol, TunnelProtocol};
use minijinja::{context, Value};
use serde::Deserialize;
use std::collections::BTreeSet;

/// The tunnel form's fields (a new field: add it here, in `From<Vec<..>> for TunnelForm`,
/// [`TunnelForm::input`] and in the `tunnel_fields` macro). Serialised for the template under
/// the names the tunnel's page view uses, so one macro renders both. Decoded by hand from the
/// body's pairs: `replica` repeats, which `Form`'s decoder refuses for a struct.
#[derive(serde::Serialize, Deserialize, Default)]
#[serde(from = "Vec<(String, String)>")]
pub struct TunnelForm {
    hostname: String,
    agent_id: String,
    target: String,
    tls: String,
    https_redirect: Option<String>,
    log_requests: Option<String>,
    /// The custom error page's HTML; absent (a form without the field) keeps the tunnel's, blank
    /// removes it.
    error_page: Option<String>,
    enabled: Option<String>,
    /// `public`, `login` or `users`; absent (a form without the choice) keeps the tunnel's policy.
    #[serde(rename = "access_mode")]
    access: String,
    /// The e-mails of a `users` policy, one per line or separated by commas.
    #[serde(rename = "access_allow")]
    allow: String,
    /// The ticked replica agents (one `replica` field each).
    #[serde(rename = "replica_ids")]
    replicas: Vec<String>,
    /// The form showed the replica boxes: none ticked then means "no replicas", not "unchanged".
    #[serde(skip)]
    replicas_shown: bool,
    /// Gateway limits: networks one per line or separated by commas; numbers empty = off.
    ip_allow: Vec<String>,
    ip_deny: Vec<String>,
    rate_limit_per_second: String,
    rate_limit_burst: String,
    max_concurrent_requests: String,
    /// The form showed the limits: empty fields then mean "off", not "unchanged".
    #[serde(skip)]
    limits_shown: bool,
    /// `http`, `tcp`, `udp` or `tls` (a hidden field on edit: it cannot change).
    protocol: String,
    /// Stream settings, used only for the protocols that take them; numbers empty = default.
    public_port: String,
    proxy_protocol: String,
    max_connections: String,
    udp_idle_timeout: String,
    /// The form showed the stream settings: empty numbers then mean "none", not "unchanged".
    #[serde(skip)]
    stream_shown: bool,
}

/// The entries of a list typed one per line or separated by commas, semicolons or spaces.
fn entries(text: &str) -> Vec<String> {
    text.split(|c: char| c == ',' || c == ';' || c.is_whitespace())
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect()
}

/// A number field: empty = off; anything but a whole number is refused here, the bounds in ops.
fn number_field(text: &str, label: &str) -> Result<Option<i64>, ApiError> {
    match text.trim() {
        "" => Ok(None),
        t => t.parse().map(Some).map_err(|_| {
            ApiError::bad_request(format!(
                "{label}: enter a whole number, or leave it empty for no limit"
            ))
        }),
    }
}

impl From<Vec<(String, String)>> for TunnelForm {
    fn from(pairs: Vec<(String, String)>) -> TunnelForm {
        let mut f = TunnelForm::default();
        for (key, value) in pairs {
            match key.as_str() {
                "hostname" => f.hostname = value,
                "agent_id" => f.agent_id = value,
                "target" => f.target = value,
                "tls" => f.tls = value,
                "https_redirect" => f.https_redirect = Some(value),
                "log_requests" => f.log_requests = Some(value),
                "error_page" => f.error_page = Some(value),
                "enabled" => f.enabled = Some(value),
                "access" => f.access = value,
                "allow" => f.allow = value,
                "replica" => f.replicas.push(value),
                "replicas_shown" => f.replicas_shown = true,
                "ip_allow" => f.ip_allow.extend(entries(&value)),
                "ip_deny" => f.ip_deny.extend(entries(&value)),
                "rate_limit_per_second" => f.rate_limit_per_second = value,
                "rate_limit_burst" => f.rate_limit_burst = value,
                "max_concurrent_requests" => f.max_concurrent_requests = value,
                "limits_shown" => f.limits_shown = true,
                "protocol" => f.protocol = value,
                "public_port" => f.public_port = value,
                "proxy_protocol" => f.proxy_protocol = value,
                "max_connections" => f.max_connections = value,
                "udp_idle_timeout" => f.udp_idle_timeout = value,
                "stream_shown" => f.stream_shown = true,
                _ => {}
            }
        }
        f
    }
}

impl UiForm for TunnelForm {
    /// After a failed save the form shows what was typed (the e-mail list above all).
    fn kept(&self) -> Value {
        context! { form => Value::from_serialize(self) }
    }
}

impl TunnelForm {
    /// Every agent, primary first, when the form showed the replica boxes.
    fn agent_ids(&self, primary: i64) -> Result<Option<Vec<i64>>, ApiError> {
        if !self.replicas_shown {
            return Ok(None);
        }
        let mut ids = vec![primary];
        for r in &self.replicas {
            let id = r
                .trim()
                .parse()
                .map_err(|_| ApiError::bad_request("pick the replica agents from the list"))?;
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        Ok(Some(ids))
    }

    fn input(&self) -> Result<TunnelInput, ApiError> {
        let agent_id = self
            .agent_id
            .trim()
            .parse()
            .map_err(|_| ApiError::bad_request("pick the agent that serves this tunnel"))?;
        let tls = match self.tls.as_str() {
            "" => None,
            t => Some(
                t.parse::<TlsMode>()
                    .map_err(|_| ApiError::bad_request("TLS must be acme, internal or off"))?,
            ),
        };
        let protocol = match self.protocol.as_str() {
            "" => None,
            p => Some(p.parse::<TunnelProtocol>().map_err(ApiError::bad_request)?),
        };
        let http = protocol.unwrap_or_default() == TunnelProtocol::Http;
        let input = TunnelInput {
            hostname: Some(self.hostname.clone()),
            agent_id: Some(agent_id),
            agent_ids: self.agent_ids(agent_id)?,
            target: Some(self.target.clone()),
            enabled: Some(self.enabled.is_some()),
            // The HTTP fields stay in the page (hidden) for other protocols: not sent on.
            tls: tls.filter(|_| http),
            https_redirect: http.then_some(self.https_redirect.is_some()),
            log_requests: http.then_some(self.log_requests.is_some()),
            error_page: self.error_page.clone().filter(|_| http).map(Some),
            access: self.access()?,
            limits: self.limits(http)?,
            protocol,
            ..TunnelInput::default()
        };
        self.with_stream(input)
    }

    /// The stream settings the form's protocol takes, when the form showed them.
    fn with_stream(&self, mut input: TunnelInput) -> Result<TunnelInput, ApiError> {
        let protocol = input.protocol.unwrap_or_default();
        if !self.stream_shown || protocol == TunnelProtocol::Http {
            return Ok(input);
        }
        let number = |text: &str, label: &str| -> Result<Option<u32>, ApiError> {
            number_field(text, label)?
                .map(|n| {
                    u32::try_from(n)
                        .map_err(|_| ApiError::bad_request(format!("{label}: too large")))
                })
                .transpose()
        };
        if protocol.has_public_port() {
            let port = number(&self.public_port, "Public port")?;
            input.public_port = port
                .map(|p| {
                    u16::try_from(p).map_err(|_| ApiError::bad_request("Public port: 1 to 65535"))
                })
                .transpose()?;
        }
        if protocol != TunnelProtocol::Udp {
            input.proxy_protocol = match self.proxy_protocol.as_str() {
                "" | "off" => Some(ProxyProtocol::Off),
                "v1" => Some(ProxyProtocol::V1),
                "v2" => Some(ProxyProtocol::V2),
                _ => {
                    return Err(ApiError::bad_request(
                        "PROXY protocol must be off, v1 or v2",
                    ))
                }
            };
        }
        input.max_connections = Some(number(&self.max_connections, "Connections per gateway")?);
        if protocol == TunnelProtocol::Udp {
            input.udp_idle_timeout = Some(number(&self.udp_idle_timeout, "UDP idle timeout")?);
        }
        Ok(input)
    }

    /// Every limit, when the form showed them (empty = off); else nothing changes. The request
    /// limits are HTTP's: for other protocols only the IP lists are read.
    fn limits(&self, http: bool) -> Result<LimitsInput, ApiError> {
        if !self.limits_shown {
            return Ok(LimitsInput::default());
        }
        if !http {
            return Ok(LimitsInput {
                ip_allow: Some(self.ip_allow.clone()),
                ip_deny: Some(self.ip_deny.clone()),
                ..LimitsInput::default()
            });
        }
        Ok(LimitsInput {
            ip_allow: Some(self.ip_allow.clone()),
            ip_deny: Some(self.ip_deny.clone()),
            rate_limit_per_second: Some(number_field(
                &self.rate_limit_per_second,
                "Requests per second",
            )?),
            rate_limit_burst: Some(number_field(&self.rate_limit_burst, "Burst")?),
            max_concurrent_requests: Some(number_field(
                &self.max_concurrent_requests,
                "Concurrent requests",
            )?),
        })
    }

    /// The chosen policy; the e-mails are checked here so the message speaks of the form.
    fn access(&self) -> Result<Option<AccessPolicy>, ApiError> {
        match self.access.as_str() {
            "" => Ok(None),
            "public" => Ok(Some(AccessPolicy::Public)),
            "login" => Ok(Some(AccessPolicy::Login)),
            "users" => {
                let allow = self
                    .allow
                    .split(|c: char| c == ',' || c == ';' || c.is_whitespace())
                    .filter(|e| !e.is_empty())
                    .map(|e| {
                        validate::email(e).map_err(|_| {
                            ApiError::bad_request(format!(
                                "Access: {e:?} is not an e-mail address (expected name@example.com)"
                            ))
                        })
                    })
                    .collect::<Result<BTreeSet<_>, _>>()?;
                if allow.is_empty() {
                    return Err(ApiError::bad_request(
                        "Access: list at least one e-mail address under \"Only these people\", \
                         or choose \"Any signed-in user\"",
                    ));
                }
                Ok(Some(AccessPolicy::Users { allow }))
            }
            _ => Err(ApiError::bad_request(
                "Access must be public, login (any signed-in user) or users (only these people)",
            )),
        }
    }
}

/// The list of tunnels; errors of the create form above it, with the form as it was typed.
#[derive(Default)]
pub struct TunnelsPage;

impl Redraw for TunnelsPage {
    async fn draw(
        state: &AppState,
        viewer: &Viewer,
        status: StatusCode,
        ctx: Value,
    ) -> Result<Response, ApiError> {
        let o = overview::load(state, &viewer.user).await?;
        let activity = crate::views::traffic::last_hour_by_tunnel(state).await?;
        let sparklines: std::collections::HashMap<String, String> = activity
            .iter()
            .map(|(id, values)| (id.to_string(), super::chart::sparkline(values)))
            .collect();
        let ctx = context! {
            sparklines => sparklines,
            tunnels => Value::from_serialize(&o.tunnels),
            agents => Value::from_serialize(&o.agents),
            default_tls => state.default_tls.as_str(),
            ..ctx
        };
        Ok(render::page(viewer, status, "tunnels.html", "tunnels", ctx))
    }
}

async fn render_one(
    state: &AppState,
    viewer: &Viewer,
    id: i64,
    status: StatusCode,
    template: &str,
    ctx: Value,
) -> Result<Response, ApiError> {
    let o = overview::load(state, &viewer.user).await?;
    let tunnel = o
        .tunnels
        .iter()
        .find(|t| t["id"].as_i64() == Some(id))
        .ok_or_else(|| ApiError::not_found("tunnel"))?;
    // The tunnel's page has its last hour's charts (also when it shows a form's errors).
    let traffic = match template {
        "tunnel.html" => Some(crate::views::traffic::traffic(state, Some(id), Range::Hour).await?),
        _ => None,
    };
    let ctx = context! {
        tunnel => Value::from_serialize(tunnel),
        agents => Value::from_serialize(&o.agents),
        charts => traffic.as_ref().map(|h| super::chart::traffic_charts(h, true)),
        traffic => traffic.as_ref().map(Value::from_serialize),
        ..ctx
    };
    Ok(render::page(viewer, status, template, "tunnels", ctx))
}

/// Errors of the edit form: on the tunnel's page (its id from the path), with the form as it
/// was typed, not the stored values.
pub struct TunnelPage(i64);

impl ShowsErrors for TunnelPage {
    async fn at(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let Path(id) = Path::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Self(id))
    }

    async fn show(&self, state: &AppState, viewer: &Viewer, e: ApiError, kept: Value) -> Response {
        above(viewer, e, kept, |status, ctx| {
            render_one(state, viewer, self.0, status, "tunnel.html", ctx)
        })
        .await
    }
}

pub async fn list(ui: Ui, Query(q): Query<Done>) -> UiResult {
    let ctx = context! { flash => flash(q.done.as_deref()) };
    ui.run(TunnelsPage::draw(
        &ui.state,
        &ui.viewer,
        StatusCode::OK,
        ctx,
    ))
    .await
}

pub async fn create(CsrfForm(ui, (), form): CsrfForm<TunnelForm, TunnelsPage>) -> UiResult {
    let t = ui
        .run(async {
            let input = TunnelInput {
                enabled: Some(true),
                ..form.input()?
            };
            ops::tunnels::create(&ui.state, &ui.viewer.user, input).await
        })
        .await?;
    Ok(done(&format!("/tunnels/{}", t.id), "tunnel-created"))
}

/// The tunnel page's query: a confirmation, and the request log's search.
#[derive(Deserialize, Default)]
pub struct ShowQuery {
    done: Option<String>,
    /// `502` or `5xx`.
    status: Option<String>,
    /// A path prefix.
    path: Option<String>,
}

/// Requests shown on the tunnel page at most.
const LOG_ROWS: u32 = 100;

pub async fn show(ui: Ui, Path(id): Path<i64>, Query(q): Query<ShowQuery>) -> UiResult {
    let flash = flash(q.done.as_deref());
    ui.run(tunnel_page(
        &ui.state,
        &ui.viewer,
        id,
        &q,
        context! { flash => flash },
    ))
    .await
}

/// The tunnel's page with its request log (searched as `q` asks) and `extra` in its context.
async fn tunnel_page(
    state: &AppState,
    viewer: &Viewer,
    id: i64,
    q: &ShowQuery,
    extra: Value,
) -> Result<Response, ApiError> {
    let requests = request_log(state, viewer, id, q).await?;
    let ctx = context! {
        requests => requests,
        log_status => q.status,
        log_path => q.path,
        ..extra
    };
    render_one(state, viewer, id, StatusCode::OK, "tunnel.html", ctx).await
}

/// The requests the Gateways logged for the tunnel, when it logs them and the viewer manages
/// it (client addresses are not for every reader).
async fn request_log(
    state: &AppState,
    viewer: &Viewer,
    id: i64,
    q: &ShowQuery,
) -> Result<Option<Value>, ApiError> {
    let tunnel = state
        .store
        .get_tunnel(id)
        .await
        .map_err(crate::error::about("tunnel"))?;
    if !tunnel.log_requests || !ops::can_manage(&viewer.user, tunnel.owner_id) {
        return Ok(None);
    }
    let filter = kakuremichi_proto::RequestFilter {
        status: q
            .status
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .map(ops::inspect::status_filter)
            .transpose()?,
        path_prefix: q.path.clone().filter(|p| !p.is_empty()),
        limit: LOG_ROWS,
    };
    let log = ops::inspect::request_log(state, &viewer.user, id, filter).await?;
    Ok(Some(Value::from_serialize(&log)))
}

/// The "Test" button: every Agent of the tunnel connects to the target now; the page shows
/// what each found.
pub async fn check(
    CsrfForm(ui, Path(id), _): CsrfForm<NoFields, TunnelPage, Path<i64>>,
) -> UiResult {
    ui.run(async {
        let report = ops::inspect::check_target(&ui.state, &ui.viewer.user, id).await?;
        let extra = context! { check => Value::from_serialize(&report) };
        tunnel_page(&ui.state, &ui.viewer, id, &ShowQuery::default(), extra).await
    })
    .await
}

pub async fn update(
    CsrfForm(ui, Path(id), form): CsrfForm<TunnelForm, TunnelPage, Path<i64>>,
) -> UiResult {
    ui.run(async { ops::tunnels::update(&ui.state, &ui.viewer.user, id, form.input()?).await })
        .await?;
    Ok(done(&format!("/tunnels/{id}"), "tunnel-saved"))
}

/// Enable or disable in one click (the form says which).
#[derive(Deserialize)]
pub struct ToggleForm {
    #[serde(default)]
    enabled: String,
}

impl UiForm for ToggleForm {}

pub async fn toggle(
    CsrfForm(ui, Path(id), form): CsrfForm<ToggleForm, ErrorPage, Path<i64>>,
) -> UiResult {
    let input = TunnelInput {
        enabled: Some(form.enabled == "true"),
        ..Default::default()
    };
    let op = ops::tunnels::update(&ui.state, &ui.viewer.user, id, input);
    ui.run(op).await?;
    Ok(done(&format!("/tunnels/{id}"), "tunnel-saved"))
}

pub async fn confirm_delete(ui: Ui, Path(id): Path<i64>) -> UiResult {
    let page = render_one(
        &ui.state,
        &ui.viewer,
        id,
        StatusCode::OK,
        "tunnel_delete.html",
        context! {},
    );
    ui.run(page).await
}

pub async fn delete(
    CsrfForm(ui, Path(id), _): CsrfForm<NoFields, ErrorPage, Path<i64>>,
) -> UiResult {
    let op = ops::tunnels::delete(&ui.state, &ui.viewer.user, id);
    ui.run(op).await?;
    Ok(done("/tunnels", "tunnel-deleted"))
}

#[cfg(test)]
mod tests;
