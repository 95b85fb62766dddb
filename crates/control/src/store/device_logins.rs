//! Command-line sign-ins waiting for approval (`kakuremichi login`, a device-code flow): the CLI
//! holds a secret device code (stored hashed) and polls; a signed-in user opens the short user
//! code in the browser and approves or denies it. On the first poll after approval the personal
//! API token is created and the row deleted, in one transaction, so a token is handed out once.

use super::{from_now, now, Store, StoreResult, TokenRow};

/// A pending sign-in, as the approval page shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeviceLoginRow {
    pub user_code: String,
    /// The name the token will get.
    pub name: String,
    pub client_ip: Option<String>,
    pub created_at: String,
    pub expires_at: String,
}

/// What starting a sign-in asks for.
pub struct NewDeviceLogin<'a> {
    pub device_hash: &'a str,
    pub user_code: &'a str,
    pub name: &'a str,
    pub client_ip: Option<&'a str>,
    pub lifetime: time::Duration,
    /// Pending sign-ins allowed in all, and from one client address.
    pub max_pending: i64,
    pub max_per_client: i64,
}

/// Why a sign-in was not started.
#[derive(Debug, PartialEq, Eq)]
pub enum StartRefused {
    /// This client address has `max_per_client` pending already.
    TooManyFromClient,
    /// `max_pending` are pending in all.
    Full,
    /// The user code is taken (start again with another).
    CodeTaken,
}

/// What a poll finds.
#[derive(Debug)]
pub enum DevicePoll {
    /// Not decided yet.
    Pending,
    /// Polled again within the same second.
    SlowDown,
    /// Approved: the token was created (its secret is the one whose hash the poll passed).
    Approved {
        user_id: i64,
        token: TokenRow,
    },
    Denied,
    /// Expired, already redeemed, or never started.
    Gone,
}

/// Why `new` may not start now, counting the unexpired sign-ins: all of them, and its client's.
async fn refusal<'c>(
    db: impl sqlx::Executor<'c, Database = super::Db>,
    new: &NewDeviceLogin<'_>,
    now: &str,
) -> StoreResult<Option<StartRefused>> {
    let (all, mine): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(CASE WHEN client_ip = $1 THEN 1 END) FROM device_logins WHERE expires_at > $2",
    )
    .bind(new.client_ip)
    .bind(now)
    .fetch_one(db)
    .await?;
    Ok(if all >= new.max_pending {
        Some(StartRefused::Full)
    } else if new.client_ip.is_some() && mine >= new.max_per_client {
        Some(StartRefused::TooManyFromClient)
    } else {
        None
    })
}

impl Store {
    /// Records a new pending sign-in, first deleting expired ones; refused over the limits.
    pub async fn start_device_login(
        &self,
        new: &NewDeviceLogin<'_>,
    ) -> StoreResult<Result<(), StartRefused>> {
        let now = now();
        // Refused without the write lock first: anonymous callers must not queue on it.
        if let Some(refused) = refusal(self.pool(), new, &now).await? {
            return Ok(Err(refused));
        }
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM device_logins WHERE expires_at <= $1")
            .bind(&now)
            .execute(&mut *tx)
            .await?;
        if let Some(refused) = refusal(&mut *tx, new, &now).await? {
            return Ok(Err(refused));
        }
        let inserted = sqlx::query(
            "INSERT INTO device_logins (device_hash, user_code, name, client_ip, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(new.device_hash)
        .bind(new.user_code)
        .bind(new.name)
        .bind(new.client_ip)
        .bind(&now)
        .bind(from_now(new.lifetime))
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Ok(Err(StartRefused::CodeTaken));
        }
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// The undecided, unexpired sign-in with this user code.
    pub async fn pending_device_login(
        &self,
        user_code: &str,
    ) -> StoreResult<Option<DeviceLoginRow>> {
        Ok(sqlx::query_as(
            "SELECT user_code, name, client_ip, created_at, expires_at FROM device_logins \
             WHERE user_code = $1 AND expires_at > $2 AND approved_by IS NULL AND denied = 0",
        )
        .bind(user_code)
        .bind(now())
        .fetch_optional(self.pool())
        .await?)
    }

    /// Approves (for `user_id`) or denies the pending sign-in; false if there is none to decide.
    pub async fn decide_device_login(
        &self,
        user_code: &str,
        user_id: i64,
        approve: bool,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE device_logins SET approved_by = CASE WHEN $3 THEN $2 ELSE NULL END, \
             denied = CASE WHEN $3 THEN 0 ELSE 1 END \
             WHERE user_code = $1 AND expires_at > $4 AND approved_by IS NULL AND denied = 0",
        )
        .bind(user_code)
        .bind(user_id)
        .bind(approve)
        .bind(now())
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// One poll of the CLI. An approved sign-in becomes a personal API token with `token_hash`
    /// and is deleted; a denied or expired one is deleted and reported.
    pub async fn poll_device_login(
        &self,
        device_hash: &str,
        token_hash: &str,
    ) -> StoreResult<DevicePoll> {
        let now = now();
        // An unknown code (a guess, or one already redeemed) is answered without the write lock.
        let known: Option<(i64,)> =
            sqlx::query_as("SELECT id FROM device_logins WHERE device_hash = $1")
                .bind(device_hash)
                .fetch_optional(self.pool())
                .await?;
        if known.is_none() {
            return Ok(DevicePoll::Gone);
        }
        let mut tx = self.write_tx().await?;
        type Found = (i64, String, String, Option<i64>, i64, Option<String>);
        let found: Option<Found> = sqlx::query_as(
            "SELECT id, name, expires_at, approved_by, denied, last_poll_at FROM device_logins \
             WHERE device_hash = $1",
        )
        .bind(device_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((id, name, expires_at, approved_by, denied, last_poll)) = found else {
            return Ok(DevicePoll::Gone);
        };
        let outcome = if let Some(user_id) = approved_by {
            let token: TokenRow = sqlx::query_as(
                "INSERT INTO api_tokens (user_id, name, token_hash, created_at) VALUES ($1, $2, $3, $4) \
                 RETURNING id, name, created_at, last_used_at",
            )
            .bind(user_id)
            .bind(&name)
            .bind(token_hash)
            .bind(&now)
            .fetch_one(&mut *tx)
            .await?;
            DevicePoll::Approved { user_id, token }
        } else if denied != 0 {
            DevicePoll::Denied
        } else if expires_at <= now {
            DevicePoll::Gone
        } else if last_poll.is_some_and(|t| t >= now) {
            return Ok(DevicePoll::SlowDown);
        } else {
            sqlx::query("UPDATE device_logins SET last_poll_at = $1 WHERE id = $2")
                .bind(&now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(DevicePoll::Pending);
        };
        // Decided or expired: the row has served.
        sqlx::query("DELETE FROM device_logins WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new<'a>(hash: &'a str, code: &'a str, ip: &'a str, secs: i64) -> NewDeviceLogin<'a> {
        NewDeviceLogin {
            device_hash: hash,
            user_code: code,
            name: "cli",
            client_ip: Some(ip),
            lifetime: time::Duration::seconds(secs),
            max_pending: 3,
            max_per_client: 2,
        }
    }

    async fn start(
        store: &Store,
        (hash, code, ip, secs): (&str, &str, &str, i64),
    ) -> Result<(), StartRefused> {
        let new = new(hash, code, ip, secs);
        store.start_device_login(&new).await.unwrap()
    }

    #[tokio::test]
    async fn expired_sign_ins_are_gone_and_make_room_and_limits_hold() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        // Already expired: no approval, no poll, and it frees its place at the next start.
        start(&store, ("h1", "AAAA", "10.0.0.1", -1)).await.unwrap();
        assert!(store.pending_device_login("AAAA").await.unwrap().is_none());
        assert!(!store.decide_device_login("AAAA", 1, true).await.unwrap());
        assert!(matches!(
            store.poll_device_login("h1", "t1").await.unwrap(),
            DevicePoll::Gone
        ));
        start(&store, ("h2", "BBBB", "10.0.0.1", 600))
            .await
            .unwrap();
        start(&store, ("h3", "CCCC", "10.0.0.1", 600))
            .await
            .unwrap();
        let third = start(&store, ("h4", "DDDD", "10.0.0.1", 600)).await;
        assert_eq!(third, Err(StartRefused::TooManyFromClient));
        let taken = start(&store, ("h4", "BBBB", "10.0.0.2", 600)).await;
        assert_eq!(taken, Err(StartRefused::CodeTaken));
        start(&store, ("h4", "DDDD", "10.0.0.2", 600))
            .await
            .unwrap();
        let full = start(&store, ("h5", "FFFF", "10.0.0.3", 600)).await;
        assert_eq!(full, Err(StartRefused::Full));
    }

    #[tokio::test]
    async fn an_approved_sign_in_gives_one_token_once() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let user = store
            .create_user("a@example.com", "x", false, true)
            .await
            .unwrap();
        start(&store, ("h1", "AAAA", "10.0.0.1", 600))
            .await
            .unwrap();
        assert!(matches!(
            store.poll_device_login("h1", "t1").await.unwrap(),
            DevicePoll::Pending
        ));
        assert!(store
            .decide_device_login("AAAA", user.id, true)
            .await
            .unwrap());
        assert!(!store
            .decide_device_login("AAAA", user.id, false)
            .await
            .unwrap());
        let DevicePoll::Approved { user_id, token } =
            store.poll_device_login("h1", "t2").await.unwrap()
        else {
            panic!("not approved");
        };
        assert_eq!((user_id, token.name.as_str()), (user.id, "cli"));
        assert_eq!(
            store.user_by_token("t2").await.unwrap().map(|u| u.id),
            Some(user.id)
        );
        assert!(matches!(
            store.poll_device_login("h1", "t3").await.unwrap(),
            DevicePoll::Gone
        ));
        assert_eq!(store.list_tokens(user.id).await.unwrap().len(), 1);
    }
}
