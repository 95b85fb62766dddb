//! Wildcard tunnels must not capture other people's names. A wildcard `*.apps.example.com`
//! serves every name one label below `apps.example.com` that has no tunnel of its own (the exact
//! name wins in the Gateways), so without this rule a member could publish `*.apps.example.com`
//! and take every new name under it, or sit an exact tunnel inside someone else's wildcard.
//!
//! Checked inside the write transaction, so two concurrent writes cannot both slip through:
//! a wildcard is refused while a tunnel of another owner lies under it, and an exact name is
//! refused while a wildcard of another owner covers it. The same owner may have both (exact
//! wins); an admin may write either (admins arbitrate names).

use super::Tx;
use super::{StoreError, StoreResult};
use crate::validate::covering_wildcard;

/// Refuses `hostname` (normalised) for a tunnel owned by `owner` when it overlaps a tunnel of
/// another owner through a wildcard; `skip` is the tunnel being renamed.
pub(super) async fn require_no_foreign_overlap(
    tx: &mut Tx,
    hostname: &str,
    owner: Option<i64>,
    skip: Option<i64>,
) -> StoreResult<()> {
    let others: Vec<(i64, String, Option<i64>)> = match hostname.strip_prefix("*.") {
        // Hostnames hold only letters, digits, '-' and '.', so the pattern has no LIKE escapes.
        Some(parent) => {
            sqlx::query_as("SELECT id, hostname, owner_id FROM tunnels WHERE hostname LIKE $1")
                .bind(format!("%.{parent}"))
                .fetch_all(&mut **tx)
                .await?
        }
        None => match covering_wildcard(hostname) {
            Some(wildcard) => {
                sqlx::query_as("SELECT id, hostname, owner_id FROM tunnels WHERE hostname = $1")
                    .bind(wildcard)
                    .fetch_all(&mut **tx)
                    .await?
            }
            None => return Ok(()),
        },
    };
    let foreign = others.into_iter().find(|(id, other, other_owner)| {
        Some(*id) != skip && *other_owner != owner && overlaps(hostname, other)
    });
    match foreign {
        None => Ok(()),
        Some((_, other, _)) if hostname.starts_with("*.") => Err(StoreError::Conflict(format!(
            "hostname {hostname} would cover {other}, a tunnel of another user; choose a \
             wildcard no other user's tunnel lies under, or ask an admin"
        ))),
        Some((_, other, _)) => Err(StoreError::Conflict(format!(
            "hostname {hostname} lies under {other}, a wildcard tunnel of another user; choose \
             another name, or ask an admin"
        ))),
    }
}

/// True when one of the two names is a wildcard covering the other.
fn overlaps(a: &str, b: &str) -> bool {
    covering_wildcard(a).as_deref() == Some(b) || covering_wildcard(b).as_deref() == Some(a)
}

#[cfg(test)]
mod tests {
    use super::overlaps;

    #[test]
    fn a_wildcard_overlaps_only_names_one_label_below() {
        assert!(overlaps("*.apps.test", "a.apps.test"));
        assert!(overlaps("a.apps.test", "*.apps.test"));
        assert!(!overlaps("*.apps.test", "apps.test"));
        assert!(!overlaps("*.apps.test", "x.a.apps.test"));
        assert!(!overlaps("*.apps.test", "*.a.apps.test"));
        assert!(!overlaps("a.apps.test", "b.apps.test"));
    }
}
