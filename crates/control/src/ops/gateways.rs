//! Gateways (admins only): create (the token is returned once), update, delete.

use super::{audit, require_admin};
use crate::app::AppState;
use crate::error::{about, ApiError};
use crate::store::{GatewayPatch, GatewayRow, UserRow};
use crate::{secrets, validate};
use serde_json::json;

fn endpoint(input: &str) -> Result<String, ApiError> {
    validate::host_port(input, "public_endpoint").map_err(|e| ApiError::bad_request(e.0))
}

/// `public_ipv4` / `public_ipv6` as a request gives them: `None` leaves the stored value,
/// `Some(None)` clears it (back to the address of `public_endpoint`).
#[derive(Debug, Default)]
pub struct PublicAddresses {
    pub ipv4: Option<Option<String>>,
    pub ipv6: Option<Option<String>>,
}

/// One address of a patch: unchanged (`None`), cleared (`Some(None)`) or set.
type Change = Option<Option<String>>;

impl PublicAddresses {
    /// Checked and normalised: an IPv4 (IPv6) unicast address, not unspecified or multicast.
    fn checked(self) -> Result<(Change, Change), ApiError> {
        fn one(
            value: Option<Option<String>>,
            field: &str,
            v6: bool,
        ) -> Result<Option<Option<String>>, ApiError> {
            let Some(Some(text)) = value else {
                return Ok(value);
            };
            let bad = |why: &str| ApiError::bad_request(format!("{field} {text:?} {why}"));
            let ip: std::net::IpAddr = text
                .trim()
                .parse()
                .map_err(|_| bad("is not an IP address"))?;
            if ip.is_ipv6() != v6 {
                return Err(bad(if v6 {
                    "is not an IPv6 address"
                } else {
                    "is not an IPv4 address"
                }));
            }
            let broadcast = matches!(ip, std::net::IpAddr::V4(a) if a.is_broadcast());
            if ip.is_unspecified() || ip.is_multicast() || broadcast {
                return Err(bad(
                    "cannot be a Gateway's address (unspecified, multicast or broadcast)",
                ));
            }
            Ok(Some(Some(ip.to_string())))
        }
        Ok((
            one(self.ipv4, "public_ipv4", false)?,
            one(self.ipv6, "public_ipv6", true)?,
        ))
    }
}

/// Creates a gateway; returns it with its token (shown once).
pub async fn create(
    state: &AppState,
    user: &UserRow,
    name: &str,
    public_endpoint: &str,
    addresses: PublicAddresses,
) -> Result<(GatewayRow, String), ApiError> {
    require_admin(user, "add gateways")?;
    let name = validate::name(name).map_err(|e| ApiError::bad_request(e.0))?;
    let public_endpoint = endpoint(public_endpoint)?;
    let (public_ipv4, public_ipv6) = addresses.checked()?;
    let token = secrets::generate(secrets::GATEWAY_TOKEN_PREFIX);
    let row = state
        .store
        .create_gateway(
            &name,
            &public_endpoint,
            &secrets::hash(&token),
            &state.network,
        )
        .await?;
    let row = if public_ipv4.is_some() || public_ipv6.is_some() {
        let patch = GatewayPatch {
            public_ipv4,
            public_ipv6,
            ..GatewayPatch::default()
        };
        state.store.update_gateway(row.id, &patch).await?
    } else {
        row
    };
    state.hub.changed();
    tracing::info!(gateway_id = row.id, wg_address = %row.wg_address, "gateway created");
    let detail = json!({"public_endpoint": row.public_endpoint,
        "public_ipv4": row.public_ipv4, "public_ipv6": row.public_ipv6});
    audit(state, Some(user), "gateway.create", target(&row), detail).await;
    Ok((row, token))
}

pub async fn update(
    state: &AppState,
    user: &UserRow,
    id: i64,
    name: Option<&str>,
    public_endpoint: Option<&str>,
    enabled: Option<bool>,
    addresses: PublicAddresses,
) -> Result<GatewayRow, ApiError> {
    require_admin(user, "change gateways")?;
    let (public_ipv4, public_ipv6) = addresses.checked()?;
    let patch = GatewayPatch {
        name: name
            .map(validate::name)
            .transpose()
            .map_err(|e| ApiError::bad_request(e.0))?,
        public_endpoint: public_endpoint.map(endpoint).transpose()?,
        enabled,
        public_ipv4,
        public_ipv6,
    };
    let row = state
        .store
        .update_gateway(id, &patch)
        .await
        .map_err(about("gateway"))?;
    state.hub.changed();
    let detail = json!({"name": patch.name, "public_endpoint": patch.public_endpoint,
        "enabled": enabled, "public_ipv4": patch.public_ipv4, "public_ipv6": patch.public_ipv6});
    audit(state, Some(user), "gateway.update", target(&row), detail).await;
    Ok(row)
}

/// Its open session, if any, is closed with `revoked`.
pub async fn delete(state: &AppState, user: &UserRow, id: i64) -> Result<(), ApiError> {
    require_admin(user, "delete gateways")?;
    let current = state
        .store
        .get_gateway(id)
        .await
        .map_err(about("gateway"))?;
    state
        .store
        .delete_gateway(id)
        .await
        .map_err(about("gateway"))?;
    state.hub.changed();
    tracing::info!(gateway_id = id, "gateway deleted");
    audit(
        state,
        Some(user),
        "gateway.delete",
        target(&current),
        json!({}),
    )
    .await;
    Ok(())
}

fn target(g: &GatewayRow) -> String {
    format!("gateway:{} {}", g.id, g.name)
}
