//! Per-user quotas (admin settings, rows of `settings`) and the counts they are checked against.
//!
//! Counts are checked inside the write transaction that creates the row (`BEGIN IMMEDIATE`
//! serialises writers), so parallel creates cannot overshoot a quota.

use super::Tx;
use super::{Store, StoreError, StoreResult};
use serde::{Deserialize, Serialize};

/// Hard upper bound of `max_allow_list_entries` (the validator's own limit).
pub const MAX_ALLOW_LIST_ENTRIES: u32 = 1000;

/// The quotas, as `GET /api/v1/settings` shows them. Admins' own tunnels and agents are shared
/// (no owner), so the counts apply to members; the API rate applies to everyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Quotas {
    /// Tunnels one member may own.
    pub max_tunnels_per_user: u32,
    /// Agents one member may own.
    pub max_agents_per_user: u32,
    /// E-mail addresses one tunnel's allow-list may hold (at most [`MAX_ALLOW_LIST_ENTRIES`]).
    pub max_allow_list_entries: u32,
    /// API requests per minute per user (token bucket holding one minute's worth).
    pub api_requests_per_minute: u32,
    /// Temporary tunnels (`kakuremichi share`) one user may have at once, admins included;
    /// 0 turns them off.
    pub max_temporary_tunnels_per_user: u32,
}

impl Default for Quotas {
    /// Generous for a home lab, finite for a team.
    fn default() -> Self {
        Self {
            max_tunnels_per_user: 500,
            max_agents_per_user: 100,
            max_allow_list_entries: 200,
            api_requests_per_minute: 600,
            max_temporary_tunnels_per_user: 5,
        }
    }
}

impl Quotas {
    /// Setting names, their allowed ranges, and accessors, in one table.
    pub const FIELDS: [(&'static str, u32, u32); 5] = [
        ("max_tunnels_per_user", 0, 100_000),
        ("max_agents_per_user", 0, 10_000),
        ("max_allow_list_entries", 1, MAX_ALLOW_LIST_ENTRIES),
        ("api_requests_per_minute", 1, 1_000_000),
        ("max_temporary_tunnels_per_user", 0, 1_000),
    ];

    fn field_mut(&mut self, name: &str) -> Option<&mut u32> {
        match name {
            "max_tunnels_per_user" => Some(&mut self.max_tunnels_per_user),
            "max_agents_per_user" => Some(&mut self.max_agents_per_user),
            "max_allow_list_entries" => Some(&mut self.max_allow_list_entries),
            "api_requests_per_minute" => Some(&mut self.api_requests_per_minute),
            "max_temporary_tunnels_per_user" => Some(&mut self.max_temporary_tunnels_per_user),
            _ => None,
        }
    }

    /// Sets quota `name` to `value` if it is one and `value` is in its range; else says what to fix.
    pub fn set(&mut self, name: &str, value: u32) -> Result<(), String> {
        let (_, min, max) = Self::FIELDS
            .iter()
            .find(|(n, ..)| *n == name)
            .ok_or_else(|| format!("unknown quota {name}"))?;
        if !(*min..=*max).contains(&value) {
            return Err(format!("{name} must be between {min} and {max}"));
        }
        if let Some(field) = self.field_mut(name) {
            *field = value;
        }
        Ok(())
    }
}

/// What a member already owns, counted in the creating transaction.
#[derive(Debug, Clone, Copy)]
pub enum Owned {
    Tunnels,
    Agents,
}

impl Owned {
    fn table(self) -> &'static str {
        match self {
            Owned::Tunnels => "tunnels",
            Owned::Agents => "agents",
        }
    }
}

/// A quota to check while creating a row owned by `owner` (`None`: unowned, unchecked).
#[derive(Debug, Clone, Copy)]
pub struct OwnerQuota {
    pub owner: Option<i64>,
    pub max: u32,
    pub what: Owned,
}

impl OwnerQuota {
    /// `StoreError::Quota` when the owner already has `max` rows (nothing is written then).
    pub(crate) async fn check(&self, tx: &mut Tx) -> StoreResult<()> {
        let Some(owner) = self.owner else {
            return Ok(());
        };
        let sql = format!(
            "SELECT COUNT(*) FROM {} WHERE owner_id = $1",
            self.what.table()
        );
        let (count,): (i64,) = sqlx::query_as(&sql)
            .bind(owner)
            .fetch_one(&mut **tx)
            .await?;
        if count >= i64::from(self.max) {
            let (name, noun) = match self.what {
                Owned::Tunnels => ("max_tunnels_per_user", "tunnels"),
                Owned::Agents => ("max_agents_per_user", "agents"),
            };
            return Err(StoreError::Quota(format!(
                "quota exceeded: {name} is {max} and you already own {count} {noun}; delete one or \
                 ask an admin to raise {name} in the settings",
                max = self.max
            )));
        }
        Ok(())
    }
}

impl Store {
    /// The quotas in force (defaults for the ones never set).
    pub async fn quotas(&self) -> StoreResult<Quotas> {
        let [a, b, c, d, e] = Quotas::FIELDS.map(|(name, ..)| name);
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT key, value FROM settings WHERE key IN ($1, $2, $3, $4, $5)")
                .bind(a)
                .bind(b)
                .bind(c)
                .bind(d)
                .bind(e)
                .fetch_all(self.pool())
                .await?;
        let mut quotas = Quotas::default();
        for (key, value) in rows {
            // A value this program would not accept is ignored (the default holds), not fatal.
            if let Ok(v) = value.parse::<u32>() {
                if quotas.set(&key, v).is_err() {
                    tracing::warn!(setting = %key, %value, "ignoring an out-of-range quota setting");
                }
            }
        }
        Ok(quotas)
    }

    /// Stores every quota, in one transaction.
    pub async fn set_quotas(&self, quotas: &Quotas) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        let values = [
            quotas.max_tunnels_per_user,
            quotas.max_agents_per_user,
            quotas.max_allow_list_entries,
            quotas.api_requests_per_minute,
            quotas.max_temporary_tunnels_per_user,
        ];
        for ((name, ..), value) in Quotas::FIELDS.iter().zip(values) {
            sqlx::query(
                "INSERT INTO settings (key, value) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .bind(*name)
            .bind(value.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn quotas_default_round_trip_and_are_range_checked() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        assert_eq!(store.quotas().await.unwrap(), Quotas::default());
        let mut q = Quotas::default();
        q.set("max_agents_per_user", 3).unwrap();
        assert!(q.set("max_allow_list_entries", 1001).is_err());
        assert!(q.set("api_requests_per_minute", 0).is_err());
        assert!(q.set("surprise", 1).is_err());
        store.set_quotas(&q).await.unwrap();
        assert_eq!(store.quotas().await.unwrap().max_agents_per_user, 3);
        // A hand-edited, out-of-range row falls back to the default.
        store
            .set_setting("max_allow_list_entries", "5000")
            .await
            .unwrap();
        assert_eq!(store.quotas().await.unwrap().max_allow_list_entries, 200);
    }
}
