//! Each tunnel's traffic history (issue #22): per tunnel, Gateway and minute (kept 48 hours)
//! or hour (kept 30 days), what the Gateways reported. The hub turns the Gateways' cumulative
//! counters into differences (`hub::traffic`); this adds them to both rows of their minute and
//! hour, and reads them back summed.

use super::{Store, StoreResult};
use sqlx::Row;

/// A minute's row and an hour's.
pub const MINUTE: i64 = 60;
pub const HOUR: i64 = 3600;
/// How long minute rows and hour rows are kept.
pub const KEEP_MINUTES_S: i64 = 48 * HOUR;
pub const KEEP_HOURS_S: i64 = 30 * 24 * HOUR;

/// The counted columns, in [`Counts::values`]'s order.
const COLUMNS: [&str; 21] = [
    "r1",
    "r2",
    "r3",
    "r4",
    "r5",
    "connections",
    "bytes_in",
    "bytes_out",
    "l0",
    "l1",
    "l2",
    "l3",
    "l4",
    "l5",
    "l6",
    "l7",
    "l8",
    "l9",
    "l10",
    "l11",
    "l12",
];

/// What was counted in one bucket (or over several, summed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// HTTP responses by status class, 1xx to 5xx.
    pub responses: [i64; 5],
    pub connections: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
    /// Responses by time to first byte, one count per latency bucket (not cumulative), the
    /// last beyond the last bound.
    pub latency: [i64; 13],
}

impl Counts {
    fn values(&self) -> [i64; 21] {
        let mut v = [0; 21];
        v[..5].copy_from_slice(&self.responses);
        v[5] = self.connections;
        v[6] = self.bytes_in;
        v[7] = self.bytes_out;
        v[8..].copy_from_slice(&self.latency);
        v
    }

    fn from_values(v: &[i64]) -> Self {
        let mut c = Counts::default();
        c.responses.copy_from_slice(&v[..5]);
        c.connections = v[5];
        c.bytes_in = v[6];
        c.bytes_out = v[7];
        c.latency.copy_from_slice(&v[8..21]);
        c
    }

    pub fn add(&mut self, other: &Counts) {
        for (a, b) in self.responses.iter_mut().zip(other.responses) {
            *a = a.saturating_add(b);
        }
        self.connections = self.connections.saturating_add(other.connections);
        self.bytes_in = self.bytes_in.saturating_add(other.bytes_in);
        self.bytes_out = self.bytes_out.saturating_add(other.bytes_out);
        for (a, b) in self.latency.iter_mut().zip(other.latency) {
            *a = a.saturating_add(b);
        }
    }

    pub fn requests(&self) -> i64 {
        self.responses.iter().sum()
    }
}

/// Counts to add: tunnel, Gateway, the minute they fall in (Unix seconds), the counts.
pub type TrafficAdd = (i64, i64, i64, Counts);

/// One bucket of a Gateway, summed over the tunnels asked for.
#[derive(Debug, Clone, Copy)]
pub struct TrafficRow {
    pub gateway_id: i64,
    pub start_s: i64,
    pub counts: Counts,
}

impl Store {
    /// Adds `adds` to their minute's and hour's rows, in one transaction.
    pub async fn add_traffic(&self, adds: &[TrafficAdd]) -> StoreResult<()> {
        if adds.is_empty() {
            return Ok(());
        }
        let names = COLUMNS.join(", ");
        let params: Vec<String> = (5..5 + COLUMNS.len()).map(|i| format!("${i}")).collect();
        let sums: Vec<String> = COLUMNS
            .iter()
            .map(|c| format!("{c} = traffic.{c} + excluded.{c}"))
            .collect();
        let sql = format!(
            "INSERT INTO traffic (tunnel_id, gateway_id, resolution, start_s, {names}) \
             VALUES ($1, $2, $3, $4, {}) \
             ON CONFLICT (tunnel_id, gateway_id, resolution, start_s) DO UPDATE SET {}",
            params.join(", "),
            sums.join(", ")
        );
        let mut tx = self.write_tx().await?;
        for (tunnel, gateway, minute, counts) in adds {
            for resolution in [MINUTE, HOUR] {
                let mut q = sqlx::query(&sql)
                    .bind(*tunnel)
                    .bind(*gateway)
                    .bind(resolution)
                    .bind(minute - minute.rem_euclid(resolution));
                for v in counts.values() {
                    q = q.bind(v);
                }
                q.execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// The rows of `resolution` from `from_s` on, per Gateway and bucket, summed over every
    /// tunnel or over `tunnel` only; oldest first.
    pub async fn traffic(
        &self,
        tunnel: Option<i64>,
        resolution: i64,
        from_s: i64,
    ) -> StoreResult<Vec<TrafficRow>> {
        let sums: Vec<String> = COLUMNS
            .iter()
            .map(|c| format!("CAST(SUM({c}) AS BIGINT)"))
            .collect();
        let only = if tunnel.is_some() {
            "AND tunnel_id = $3"
        } else {
            ""
        };
        let sql = format!(
            "SELECT gateway_id, start_s, {} FROM traffic WHERE resolution = $1 AND start_s >= $2 \
             {only} GROUP BY gateway_id, start_s ORDER BY start_s, gateway_id",
            sums.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(resolution).bind(from_s);
        if let Some(t) = tunnel {
            q = q.bind(t);
        }
        let rows = q.fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| {
                let mut values = [0i64; 21];
                for (i, v) in values.iter_mut().enumerate() {
                    *v = r.try_get::<Option<i64>, _>(i + 2)?.unwrap_or(0);
                }
                Ok(TrafficRow {
                    gateway_id: r.try_get(0)?,
                    start_s: r.try_get(1)?,
                    counts: Counts::from_values(&values),
                })
            })
            .collect()
    }

    /// Per tunnel and bucket of `resolution` from `from_s` on: its requests and connections,
    /// every Gateway together (the tunnel list's sparklines).
    pub async fn activity(
        &self,
        resolution: i64,
        from_s: i64,
    ) -> StoreResult<Vec<(i64, i64, i64)>> {
        let rows = sqlx::query(
            "SELECT tunnel_id, start_s, CAST(SUM(r1 + r2 + r3 + r4 + r5 + connections) AS BIGINT) \
             FROM traffic WHERE resolution = $1 AND start_s >= $2 GROUP BY tunnel_id, start_s",
        )
        .bind(resolution)
        .bind(from_s)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get::<Option<i64>, _>(2)?.unwrap_or(0),
                ))
            })
            .collect()
    }

    /// Per tunnel, from the minute rows from `from_s` on, every Gateway together: its HTTP
    /// responses and how many of them were 5xx (the error-rate alert).
    pub async fn error_counts(&self, from_s: i64) -> StoreResult<Vec<(i64, i64, i64)>> {
        let rows = sqlx::query(
            "SELECT tunnel_id, CAST(SUM(r1 + r2 + r3 + r4 + r5) AS BIGINT), \
             CAST(SUM(r5) AS BIGINT) FROM traffic WHERE resolution = $1 AND start_s >= $2 \
             GROUP BY tunnel_id",
        )
        .bind(MINUTE)
        .bind(from_s)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    r.try_get::<Option<i64>, _>(1)?.unwrap_or(0),
                    r.try_get::<Option<i64>, _>(2)?.unwrap_or(0),
                ))
            })
            .collect()
    }

    /// Deletes minute rows older than 48 hours and hour rows older than 30 days; how many.
    pub async fn trim_traffic(&self, now_s: i64) -> StoreResult<u64> {
        let result = sqlx::query(
            "DELETE FROM traffic WHERE (resolution = $1 AND start_s < $2) \
             OR (resolution = $3 AND start_s < $4)",
        )
        .bind(MINUTE)
        .bind(now_s - KEEP_MINUTES_S)
        .bind(HOUR)
        .bind(now_s - KEEP_HOURS_S)
        .execute(self.pool())
        .await?;
        Ok(result.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rows_add_up_and_age_out() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let now = 1_800_000_000 - 1_800_000_000 % HOUR;
        let ok = |n| Counts {
            responses: [0, n, 0, 0, 0],
            bytes_out: 10 * n,
            ..Counts::default()
        };
        // Two reports in one minute add up; another minute of the same hour too.
        store.add_traffic(&[(1, 7, now, ok(2))]).await.unwrap();
        store
            .add_traffic(&[
                (1, 7, now, ok(3)),
                (1, 7, now + MINUTE, ok(1)),
                (2, 7, now, ok(9)),
            ])
            .await
            .unwrap();
        let minutes = store.traffic(Some(1), MINUTE, now).await.unwrap();
        let counted: Vec<(i64, i64)> = minutes
            .iter()
            .map(|r| (r.start_s, r.counts.responses[1]))
            .collect();
        assert_eq!(counted, [(now, 5), (now + MINUTE, 1)]);
        let hours = store.traffic(Some(1), HOUR, now).await.unwrap();
        assert_eq!(hours.len(), 1);
        assert_eq!(hours[0].counts.responses[1], 6);
        assert_eq!(hours[0].counts.bytes_out, 60);
        // Every tunnel together.
        let all = store.traffic(None, HOUR, now).await.unwrap();
        assert_eq!(all[0].counts.responses[1], 15);
        let mut activity = store.activity(MINUTE, now).await.unwrap();
        activity.sort();
        assert_eq!(activity, [(1, now, 5), (1, now + MINUTE, 1), (2, now, 9)]);
        // Minutes go after 48 hours, hours after 30 days.
        assert_eq!(store.trim_traffic(now + KEEP_MINUTES_S).await.unwrap(), 0);
        assert_eq!(
            store
                .trim_traffic(now + KEEP_MINUTES_S + HOUR)
                .await
                .unwrap(),
            3
        );
        assert_eq!(store.traffic(Some(1), HOUR, 0).await.unwrap().len(), 1);
        assert_eq!(
            store.trim_traffic(now + KEEP_HOURS_S + HOUR).await.unwrap(),
            2
        );
        assert!(store.traffic(None, HOUR, 0).await.unwrap().is_empty());
    }
}
