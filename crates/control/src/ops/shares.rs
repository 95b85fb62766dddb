//! Temporary tunnels (`kakuremichi share 3000`): one request makes an Agent and a tunnel at a
//! random name under the temporary domain (`KAKUREMICHI_TEMPORARY_DOMAIN`), for the command line
//! to run that Agent in the foreground; it deletes both when it stops. If it dies without
//! cleaning up, [`sweep`] deletes them once the Agent has been offline for
//! `KAKUREMICHI_TEMPORARY_TTL` (or at `--expires`).
//!
//! Limits: `max_temporary_tunnels_per_user` at once (admins included; 0 turns them off), names
//! of [`NAME_LETTERS`] random letters (none containing a word of [`BLOCKED`]) or one chosen with
//! `name` if free, lifetimes of [`MIN_EXPIRES`] to [`MAX_EXPIRES`].

use super::{audit, tunnels::TunnelInput};
use crate::app::AppState;
use crate::error::ApiError;
use crate::store::{from_now, AgentRow, NodeKind, NodeRef, TemporaryRow, TunnelRow, UserRow};
use axum::http::StatusCode;
use kakuremichi_proto::AccessPolicy;
use rand::Rng as _;
use serde_json::json;
use std::time::Duration;

/// Letters of a random name (26^12 ≈ 9.5 × 10^16 names).
pub const NAME_LETTERS: usize = 12;
/// Shortest and longest `expires`.
pub const MIN_EXPIRES: Duration = Duration::from_secs(60);
pub const MAX_EXPIRES: Duration = Duration::from_secs(7 * 86_400);
/// Words no random name contains (substrings, so also inside longer words).
pub const BLOCKED: &[&str] = &[
    "anal", "anus", "arse", "ass", "bitch", "boob", "butt", "cock", "coon", "crap", "cum", "cunt",
    "dick", "dyke", "fag", "fuck", "gook", "homo", "jap", "jizz", "kike", "nazi", "nig", "paki",
    "penis", "piss", "poo", "porn", "pussy", "rape", "retard", "sex", "shit", "slut", "spic",
    "tit", "twat", "vagina", "wank", "whore",
];

/// What `kakuremichi share` asks for.
#[derive(Debug, Default)]
pub struct NewShare {
    /// A name of one's own instead of a random one.
    pub name: Option<String>,
    /// Where the Agent sends the traffic (the command line's local app).
    pub target: String,
    /// Default: public.
    pub access: Option<AccessPolicy>,
    /// Deleted after this long whatever happens.
    pub expires: Option<Duration>,
    /// `user:password` asked by the Gateways (HTTP Basic authentication).
    pub basic_auth: Option<String>,
}

/// A temporary tunnel just made: the Agent's key is in here, once.
pub struct Share {
    pub row: TemporaryRow,
    pub agent: AgentRow,
    pub key: String,
    pub tunnel: TunnelRow,
}

/// A random name: [`NAME_LETTERS`] lowercase letters, none containing a blocked word.
pub fn random_name() -> String {
    let mut rng = rand::rngs::OsRng;
    loop {
        let name: String = (0..NAME_LETTERS)
            .map(|_| char::from(b'a' + rng.gen_range(0..26u8)))
            .collect();
        if !BLOCKED.iter().any(|w| name.contains(w)) {
            return name;
        }
    }
}

/// A name given with `--name`: one DNS label.
fn chosen_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim().to_ascii_lowercase();
    let ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(name)
    } else {
        Err(ApiError::bad_request(
            "name must be one DNS label: 1-63 letters, digits or '-', not starting or ending with '-'",
        ))
    }
}

pub async fn create(state: &AppState, user: &UserRow, new: NewShare) -> Result<Share, ApiError> {
    let Some(domain) = state.temporary.domain.clone() else {
        return Err(ApiError::forbidden(
            "temporary tunnels are off on this Control: its admin sets KAKUREMICHI_TEMPORARY_DOMAIN \
             (e.g. t.example.com, with *.t.example.com pointing at the Gateways)",
        ));
    };
    let max = state.store.quotas().await?.max_temporary_tunnels_per_user;
    let mine = state.store.temporaries_of(user.id).await?.len();
    if mine >= max as usize {
        return Err(ApiError::forbidden(if max == 0 {
            "temporary tunnels are turned off (max_temporary_tunnels_per_user is 0)".to_string()
        } else {
            format!(
                "quota exceeded: max_temporary_tunnels_per_user is {max} and you have {mine}; stop \
                 one or ask an admin to raise it"
            )
        }));
    }
    let expires_at = match new.expires {
        Some(d) if !(MIN_EXPIRES..=MAX_EXPIRES).contains(&d) => {
            return Err(ApiError::bad_request(
                "expires must be between 1 minute and 7 days",
            ))
        }
        Some(d) => Some(from_now(time::Duration::seconds(d.as_secs() as i64))),
        None => None,
    };
    let chosen = new.name.as_deref().map(chosen_name).transpose()?;
    // A random name is taken with odds of 10^-13 per try; a chosen one is the user's to change.
    let tries = if chosen.is_some() { 1 } else { 3 };
    for attempt in 1..=tries {
        let label = chosen.clone().unwrap_or_else(random_name);
        let hostname = format!("{label}.{domain}");
        let (agent, key) = super::agents::create(state, user, &format!("share {hostname}")).await?;
        let input = TunnelInput {
            hostname: Some(hostname.clone()),
            agent_id: Some(agent.id),
            target: Some(new.target.clone()),
            access: new.access.clone(),
            basic_auth: new.basic_auth.clone().map(Some),
            ..Default::default()
        };
        let tunnel = match super::tunnels::create(state, user, input).await {
            Ok(t) => t,
            Err(e) => {
                remove(state, agent.id, None).await;
                if e.status() == StatusCode::CONFLICT && attempt < tries {
                    continue;
                }
                return Err(e);
            }
        };
        let added = state
            .store
            .add_temporary(user.id, agent.id, tunnel.id, expires_at.as_deref())
            .await;
        let row = match added {
            Ok(row) => row,
            Err(e) => {
                remove(state, agent.id, Some(tunnel.id)).await;
                return Err(e.into());
            }
        };
        tracing::info!(%hostname, share = row.id, "temporary tunnel created");
        audit(
            state,
            Some(user),
            "share.create",
            format!("share:{} {hostname}", row.id),
            json!({"expires_at": row.expires_at}),
        )
        .await;
        return Ok(Share {
            row,
            agent,
            key,
            tunnel,
        });
    }
    Err(ApiError::internal())
}

/// Deletes a temporary tunnel (its tunnel and Agent) of `user`'s, or any for an admin.
pub async fn delete(state: &AppState, user: &UserRow, id: i64) -> Result<(), ApiError> {
    let row = state
        .store
        .temporary(id)
        .await?
        .filter(|r| user.is_admin || r.owner_id == user.id)
        .ok_or_else(|| ApiError::not_found("temporary tunnel"))?;
    remove(state, row.agent_id, Some(row.tunnel_id)).await;
    audit(
        state,
        Some(user),
        "share.delete",
        format!("share:{id}"),
        json!({}),
    )
    .await;
    Ok(())
}

/// Deletes the tunnel and the Agent (the row goes with them) at once, and tells the nodes.
/// Failures are logged: the sweeper tries again.
async fn remove(state: &AppState, agent_id: i64, tunnel_id: Option<i64>) {
    if let Err(e) = state.store.delete_temporary(agent_id, tunnel_id).await {
        tracing::warn!(agent_id, ?tunnel_id, error = %e, "could not delete a temporary tunnel");
    }
    state.hub.changed();
}

/// Deletes the temporary tunnels past `expires_at`, and those whose Agent is offline and was
/// last seen more than the TTL ago; how many.
pub async fn sweep(state: &AppState) -> Result<usize, ApiError> {
    let ttl = time::Duration::seconds(state.temporary.ttl.as_secs().max(1) as i64);
    let stale_before = from_now(-ttl);
    let now = crate::store::now();
    let mut swept = 0;
    for row in state.store.temporaries_to_sweep(&stale_before).await? {
        let expired = row.expires_at.as_deref().is_some_and(|e| e <= now.as_str());
        let online = state.hub.is_online(NodeRef {
            kind: NodeKind::Agent,
            id: row.agent_id,
        });
        if !expired && online {
            continue;
        }
        remove(state, row.agent_id, Some(row.tunnel_id)).await;
        let why = if expired { "expired" } else { "agent gone" };
        tracing::info!(share = row.id, why, "temporary tunnel deleted");
        audit(
            state,
            None,
            "share.sweep",
            format!("share:{}", row.id),
            json!({"why": why}),
        )
        .await;
        swept += 1;
    }
    Ok(swept)
}

/// Runs [`sweep`] every quarter of the TTL (between 250 ms and 10 s) until `stop`.
pub async fn run_sweeper(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let every =
        (state.temporary.ttl / 4).clamp(Duration::from_millis(250), Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = sweep(&state).await {
            tracing::warn!(error = %e.message(), "sweeping temporary tunnels failed; trying again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_thousand_random_names_are_distinct_and_clean() {
        let names: std::collections::HashSet<String> = (0..10_000).map(|_| random_name()).collect();
        assert_eq!(names.len(), 10_000, "no collision");
        for name in &names {
            assert_eq!(name.len(), NAME_LETTERS);
            assert!(name.bytes().all(|b| b.is_ascii_lowercase()), "{name}");
            assert!(!BLOCKED.iter().any(|w| name.contains(w)), "{name}");
        }
    }

    #[test]
    fn chosen_names_are_one_dns_label() {
        assert_eq!(chosen_name(" Demo-1 ").unwrap(), "demo-1");
        for bad in ["", "-a", "a-", "a.b", "a b", "é", &"a".repeat(64)] {
            assert!(chosen_name(bad).is_err(), "{bad:?}");
        }
    }
}
