//! The API's OpenAPI 3.1 document, served at `GET /api/v1/openapi.json` (public, like the health
//! checks). `utoipa` builds it from the `#[utoipa::path]` annotation on each handler and the
//! `ToSchema` derives of the request and response types themselves, so it follows the code; the
//! test `tests/openapi.rs` fails when a route under `/api/v1` is missing from it, and validates it.
//!
//! The types below exist for the document only: shapes the handlers build with `json!` (errors,
//! health) and the error responses most routes share. Those the views need too (a node's
//! `Presence`, a tunnel's `CertificateStatus`) live beside the views in `crate::views`, below
//! this layer.

#![allow(dead_code)] // The shapes below are never built: `utoipa` only reads their definitions.

use super::{
    agents, alerts, backups, device, gateways, inspect, login, nodes, shares, status, tokens,
    traffic, tunnels, users, zones,
};
use axum::Json;
use std::sync::LazyLock;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

/// Every documented operation, and the security schemes they name.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "kakuremichi Control API",
        version = env!("CARGO_PKG_VERSION"),
        description = "Manage Control's tunnels, Agents, Gateways, users, tokens and DNS zones; the node \
            endpoints Gateways and Agents use. Errors are always \
            `{\"error\":{\"code\":\"...\",\"message\":\"...\"}}`. Authenticate with a personal API \
            token (`Authorization: Bearer kmt_...`), or with the session cookie of \
            `POST /api/v1/auth/login`, which must send the session's `X-CSRF-Token` on every \
            request that changes something. See docs/api.md.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        super::healthz,
        super::readyz,
        serve,
        login::login,
        login::logout,
        login::me,
        login::logout_everywhere,
        device::start,
        device::poll,
        users::list,
        users::create,
        users::update,
        users::delete,
        users::invite,
        users::get_settings,
        users::update_settings,
        users::audit,
        tokens::list,
        tokens::create,
        tokens::delete,
        agents::list,
        agents::create,
        agents::get,
        agents::update,
        agents::delete,
        agents::rotate_key,
        gateways::list,
        gateways::create,
        gateways::get,
        gateways::update,
        gateways::delete,
        tunnels::list,
        tunnels::create,
        tunnels::get,
        tunnels::update,
        tunnels::delete,
        inspect::check,
        inspect::requests,
        traffic::tunnel,
        traffic::fleet,
        shares::create,
        shares::list,
        shares::delete,
        zones::list,
        zones::create,
        zones::get,
        zones::update,
        zones::delete,
        zones::check,
        status::get,
        backups::list,
        backups::create,
        alerts::list,
        alerts::channels,
        alerts::create,
        alerts::delete,
        alerts::test,
        nodes::connect,
        nodes::pull_config,
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "health", description = "Liveness, readiness and this document; no authentication."),
        (name = "auth", description = "Browser login sessions over the API."),
        (name = "users", description = "Accounts, invitations, settings (admins) and the audit log."),
        (name = "tokens", description = "Personal API tokens, shown once at creation."),
        (name = "agents", description = "Agents: the nodes next to the services."),
        (name = "gateways", description = "Gateways: the public nodes that receive the traffic."),
        (name = "tunnels", description = "Public hostnames, each served by one or more Agents."),
        (name = "shares", description = "Temporary tunnels (`kakuremichi share`): an Agent and a tunnel at a random name, deleted when the command line stops."),
        (name = "dns", description = "Managed DNS zones (admins): providers, write-only credentials, test connection."),
        (name = "status", description = "What is up, in one call."),
        (name = "backups", description = "Control's backups (admins): the files, the last success and failure, one more now."),
        (name = "alerts", description = "Alerts (admins): open and recent alerts, the rules, and the webhook and e-mail channels they go to."),
        (name = "nodes", description = "Used by Gateways and Agents, with their own credential."),
    )
)]
pub struct ApiDoc;

/// Built once, on the first request.
static DOCUMENT: LazyLock<utoipa::openapi::OpenApi> = LazyLock::new(ApiDoc::openapi);

/// This document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "health",
    operation_id = "openapi_document",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object)),
)]
pub async fn serve() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(&DOCUMENT)
}

/// Names of the security schemes, as the handlers' `security(...)` spell them.
pub const API_TOKEN: &str = "api_token";
pub const SESSION_COOKIE: &str = "session_cookie";
pub const CSRF_TOKEN: &str = "csrf_token";
pub const NODE_CREDENTIAL: &str = "node_credential";

/// Adds the security schemes (the derive has no syntax for them).
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description))
                    .build(),
            )
        };
        components.add_security_scheme(
            API_TOKEN,
            bearer("A personal API token (`kmt_...`), from `POST /api/v1/tokens`."),
        );
        components.add_security_scheme(
            SESSION_COOKIE,
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::auth::SESSION_COOKIE,
                "The login session cookie set by `POST /api/v1/auth/login`: `km_session` over \
                 plain HTTP, `__Host-km_session` when Control is served over HTTPS.",
            ))),
        );
        components.add_security_scheme(
            CSRF_TOKEN,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-CSRF-Token",
                "The session's `csrf_token` from the login response; required with the session \
                 cookie on every request that is not GET, HEAD or OPTIONS.",
            ))),
        );
        components.add_security_scheme(
            NODE_CREDENTIAL,
            bearer("A Gateway token (`kmg_...`) or an Agent API key (`kma_...`)."),
        );
    }
}

/// Every error response: `{"error":{"code":"...","message":"..."}}`.
#[derive(ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(ToSchema)]
pub struct ErrorDetail {
    /// Stable, for programs; it follows the HTTP status.
    code: ErrorCode,
    /// For people: what went wrong and, where it helps, what to do.
    message: String,
}

#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    TooManyRequests,
    BadGateway,
    Unavailable,
    Internal,
}

/// `{"status":"ok"}` of the health checks.
#[derive(ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    status: String,
}

/// Errors of a request that reads, made by a user (session cookie or personal API token).
#[derive(IntoResponses)]
pub enum ReadErrors {
    /// Neither a live session cookie nor a valid personal API token was sent.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// A node credential was sent instead of a user's, or the user may not do this.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// The user's `api_requests_per_minute` is spent.
    #[response(status = 429, headers(("Retry-After" = u64, description = "Seconds to wait")))]
    TooManyRequests(ErrorBody),
    /// Control failed (its log says why).
    #[response(status = 500)]
    Internal(ErrorBody),
}

/// Errors of a request that changes something, made by a user.
#[derive(IntoResponses)]
pub enum WriteErrors {
    /// The body is not the JSON expected (unknown field, wrong type), a value is not valid, or
    /// the id in the path is not an integer.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// Neither a live session cookie nor a valid personal API token was sent.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The CSRF check failed, a node credential was sent, the user may not do this, or a quota
    /// is reached.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// The user's `api_requests_per_minute` is spent.
    #[response(status = 429, headers(("Retry-After" = u64, description = "Seconds to wait")))]
    TooManyRequests(ErrorBody),
    /// Control failed (its log says why).
    #[response(status = 500)]
    Internal(ErrorBody),
}

/// Errors of the node endpoints.
#[derive(IntoResponses)]
pub enum NodeErrors {
    /// No valid Gateway token or Agent API key (or the node was deleted, or its key rotated).
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// Control failed (its log says why).
    #[response(status = 500)]
    Internal(ErrorBody),
}
