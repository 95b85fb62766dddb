//! A tunnel as people see it, in the API's JSON and on the UI's pages: its replicas, access
//! policy, limits and certificate status (see `api::tunnels` for what each field means).

use crate::app::AppState;
use crate::certs::{self, TlsMode};
use crate::error::ApiError;
use crate::store::access::policy_of;
use crate::store::limits::limits_of;
use crate::store::{CertRow, ReplicaRow, TunnelLimits, TunnelRow};
use kakuremichi_proto::AccessPolicy;
use serde::Serialize;

#[derive(Serialize, utoipa::ToSchema)]
pub struct TunnelView {
    id: i64,
    /// The public name, or a wildcard such as `*.apps.example.com` (every name one label below;
    /// exact names win).
    hostname: String,
    agent_id: i64,
    /// Every Agent serving the tunnel, the primary first.
    agent_ids: Vec<i64>,
    target: String,
    port: i64,
    enabled: bool,
    tls: TlsMode,
    https_redirect: bool,
    access: AccessPolicy,
    #[serde(flatten)]
    limits: TunnelLimits,
    #[schema(value_type = Option<CertificateStatus>)]
    certificate: Option<serde_json::Value>,
    created_at: String,
    updated_at: String,
    owner_id: Option<i64>,
    /// How the hostname stands in DNS: records managed by Control in a managed zone, or the
    /// addresses to point it at yourself (`null` until Control's first DNS pass).
    dns: Option<crate::dns_records::DnsStatus>,
}

impl TunnelView {
    /// Adds the hostname's DNS status (from the record reconciler).
    pub fn with_dns(mut self, state: &AppState) -> Self {
        self.dns = state.dns_records.status(&self.hostname);
        self
    }

    pub fn new(
        t: TunnelRow,
        replicas: &[ReplicaRow],
        cert: Option<&CertRow>,
        gateways_online: bool,
    ) -> Self {
        // Only this API writes the column, with a validated value.
        let tls = t.tls.parse().unwrap_or(TlsMode::Off);
        let access = policy_of(&t);
        let limits = limits_of(&t);
        let certificate = certs::status_view(&t.hostname, tls, cert, gateways_online);
        Self {
            id: t.id,
            hostname: t.hostname,
            agent_id: t.agent_id,
            agent_ids: std::iter::once(t.agent_id)
                .chain(
                    replicas
                        .iter()
                        .filter(|r| r.tunnel_id == t.id)
                        .map(|r| r.agent_id),
                )
                .collect(),
            target: t.target,
            port: t.port,
            enabled: t.enabled,
            tls,
            https_redirect: t.https_redirect,
            access,
            limits,
            certificate,
            created_at: t.created_at,
            updated_at: t.updated_at,
            owner_id: t.owner_id,
            dns: None,
        }
    }
}

/// The state of a tunnel's certificate (`null` when its `tls` is `off`), as the OpenAPI document
/// describes the JSON `certs::status_view` builds.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Never built: `utoipa` only reads its definition.
pub struct CertificateStatus {
    status: CertificateState,
    /// RFC 3339 expiry of the certificate served.
    not_after: Option<String>,
    issuer: Option<String>,
    /// Why the last order failed, or why it waits.
    last_error: Option<String>,
}

#[derive(utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)] // Never built: `utoipa` only reads its definition.
pub enum CertificateState {
    Pending,
    Issued,
    Failed,
    /// An hourly ACME order cap holds the order back; `last_error` says until when.
    Waiting,
}

/// The view of one tunnel, with its certificate's state.
pub async fn view(state: &AppState, row: TunnelRow) -> Result<TunnelView, ApiError> {
    let cert = state.store.get_certificate(&row.hostname, &row.tls).await?;
    let replicas = state.store.tunnel_replicas(row.id).await?;
    let online = !state.hub.online_gateways().is_empty();
    Ok(TunnelView::new(row, &replicas, cert.as_ref(), online).with_dns(state))
}

/// Every certificate row, by (hostname, source): a tunnel shows the one of its `tls` mode.
pub async fn certs_by_name_and_source(
    state: &AppState,
) -> Result<std::collections::HashMap<(String, String), CertRow>, ApiError> {
    Ok(state
        .store
        .list_certificates()
        .await?
        .into_iter()
        .map(|c| ((c.hostname.clone(), c.source.clone()), c))
        .collect())
}
