//! The per-user API rate limit's buckets, in the database when several Control replicas share
//! it (see `guard::ratelimit`, which decides; this only keeps the buckets). One statement takes
//! a token, so replicas taking from one bucket at once never both get the last one.

use super::{Backend, Store, StoreResult};

/// A bucket idle this long is full again (it holds one minute's worth), so deleting it changes
/// nothing.
const FULL_AFTER_MS: i64 = 60_000;

impl Store {
    /// Takes one of `capacity` tokens (refilled at `capacity` per minute) from `user_id`'s
    /// bucket at `now_ms`: `None` when taken, else the tokens it holds (less than one).
    pub async fn take_api_token(
        &self,
        user_id: i64,
        capacity: f64,
        now_ms: i64,
    ) -> StoreResult<Option<f64>> {
        let (least, greatest) = match self.backend() {
            Backend::Sqlite => ("min", "max"),
            Backend::Postgres => ("LEAST", "GREATEST"),
        };
        let refilled = format!(
            "{least}($2, b.tokens + {greatest}(0, $3 - b.last_ms) * $2 / {FULL_AFTER_MS}.0)"
        );
        let take = format!(
            "INSERT INTO api_rate AS b (user_id, tokens, last_ms, granted) \
             VALUES ($1, $2 - 1, $3, 1) ON CONFLICT (user_id) DO UPDATE SET \
             tokens = CASE WHEN {refilled} >= 1 THEN {refilled} - 1 ELSE {refilled} END, \
             granted = CASE WHEN {refilled} >= 1 THEN 1 ELSE 0 END, \
             last_ms = {greatest}(b.last_ms, $3) \
             RETURNING tokens, granted"
        );
        let (tokens, granted): (f64, i64) = sqlx::query_as(&take)
            .bind(user_id)
            .bind(capacity)
            .bind(now_ms)
            .fetch_one(&self.pool)
            .await?;
        // Now and then, forget the buckets that are full again.
        if rand::random::<u16>().is_multiple_of(1024) {
            sqlx::query("DELETE FROM api_rate WHERE last_ms < $1")
                .bind(now_ms - FULL_AFTER_MS)
                .execute(&self.pool)
                .await?;
        }
        Ok((granted == 0).then_some(tokens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_shared_bucket_gives_a_minute_of_burst_then_refills() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let t0 = 1_000_000;
        for _ in 0..60 {
            assert_eq!(store.take_api_token(1, 60.0, t0).await.unwrap(), None);
        }
        let left = store.take_api_token(1, 60.0, t0).await.unwrap().unwrap();
        assert!(left < 1.0, "empty: {left}");
        assert_eq!(store.take_api_token(2, 60.0, t0).await.unwrap(), None);
        // One token a second at 60 per minute; a clock that goes back refills nothing.
        assert_eq!(
            store.take_api_token(1, 60.0, t0 + 1100).await.unwrap(),
            None
        );
        assert!(store
            .take_api_token(1, 60.0, t0 + 900)
            .await
            .unwrap()
            .is_some());
        // After a long idle the bucket is full again, not more.
        for _ in 0..60 {
            assert_eq!(
                store.take_api_token(1, 60.0, t0 + 3_600_000).await.unwrap(),
                None
            );
        }
        assert!(store
            .take_api_token(1, 60.0, t0 + 3_600_000)
            .await
            .unwrap()
            .is_some());
    }
}
