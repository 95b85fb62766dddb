//! Certificates by hostname and source (issued or being obtained), the log of ACME orders (for
//! the hourly caps) and the ACME account.
//!
//! One row per (hostname, source): switching a tunnel between `acme` and `internal` keeps each
//! source's certificate, failure count and retry time, so no toggle resets a backoff or throws
//! away a certificate that is still good.

use super::{from_now, now, Store, StoreResult};

const COLUMNS: &str = "hostname, source, status, cert_pem, not_after, issuer, renew_at, \
                       last_error, failures, next_attempt_at";

/// One hostname's certificate state (without its key, which only snapshots need).
#[derive(Clone, sqlx::FromRow)]
pub struct CertRow {
    pub hostname: String,
    pub source: String,
    pub status: String,
    pub cert_pem: Option<String>,
    pub not_after: Option<String>,
    pub issuer: Option<String>,
    pub renew_at: Option<String>,
    pub last_error: Option<String>,
    pub failures: i64,
    pub next_attempt_at: Option<String>,
}

impl std::fmt::Debug for CertRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertRow")
            .field("hostname", &self.hostname)
            .field("source", &self.source)
            .field("status", &self.status)
            .field("not_after", &self.not_after)
            .field("renew_at", &self.renew_at)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

/// One ACME order in the log (see [`Store::log_acme_order`]).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AcmeOrderRow {
    /// Registered domain (eTLD+1) of the hostname.
    pub domain: String,
    /// The tunnel's owner; `None` = the admins.
    pub owner_id: Option<i64>,
    pub ordered_at: String,
}

/// A freshly issued certificate, ready to store.
pub struct NewCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: String,
    pub issuer: String,
    pub renew_at: String,
}

impl Store {
    pub async fn list_certificates(&self) -> StoreResult<Vec<CertRow>> {
        let sql = format!("SELECT {COLUMNS} FROM certificates ORDER BY hostname");
        Ok(sqlx::query_as(&sql).fetch_all(self.pool()).await?)
    }

    /// The state of `hostname`'s certificate from `source` (`acme` or `internal`).
    pub async fn get_certificate(
        &self,
        hostname: &str,
        source: &str,
    ) -> StoreResult<Option<CertRow>> {
        let sql = format!("SELECT {COLUMNS} FROM certificates WHERE hostname = $1 AND source = $2");
        Ok(sqlx::query_as(&sql)
            .bind(hostname)
            .bind(source)
            .fetch_optional(self.pool())
            .await?)
    }

    /// Stores an issued certificate, replacing what the hostname had from the same source.
    pub async fn save_issued(&self, hostname: &str, source: &str, c: &NewCert) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO certificates (hostname, source, status, cert_pem, key_pem, not_after, issuer, \
             renew_at, last_error, failures, next_attempt_at, updated_at) \
             VALUES ($1, $2, 'issued', $3, $4, $5, $6, $7, NULL, 0, NULL, $8) \
             ON CONFLICT (hostname, source) DO UPDATE SET status = 'issued', \
             cert_pem = excluded.cert_pem, key_pem = excluded.key_pem, not_after = excluded.not_after, \
             issuer = excluded.issuer, renew_at = excluded.renew_at, last_error = NULL, failures = 0, \
             next_attempt_at = NULL, updated_at = excluded.updated_at",
        )
        .bind(hostname)
        .bind(source)
        .bind(&c.cert_pem)
        .bind(&c.key_pem)
        .bind(&c.not_after)
        .bind(&c.issuer)
        .bind(&c.renew_at)
        .bind(now())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Records a failed attempt. A hostname that still holds a certificate from this source
    /// stays `issued` (it keeps being served while renewal retries); otherwise it becomes `failed`.
    /// Makes every ACME certificate that failed and was never issued due now (its failure count,
    /// and so the backoff after another failure, is kept): a DNS zone added or changed may be
    /// what it lacked (DNS-01, or the A records HTTP-01 needs). Returns how many.
    pub async fn retry_failed_acme_now(&self) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE certificates SET next_attempt_at = NULL \
             WHERE source = 'acme' AND status = 'failed' AND cert_pem IS NULL \
             AND next_attempt_at IS NOT NULL",
        )
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }

    pub async fn record_failure(
        &self,
        hostname: &str,
        source: &str,
        error: &str,
        failures: i64,
        next_attempt_at: &str,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO certificates (hostname, source, status, last_error, failures, next_attempt_at, \
             updated_at) VALUES ($1, $2, 'failed', $3, $4, $5, $6) \
             ON CONFLICT (hostname, source) DO UPDATE SET \
             status = CASE WHEN certificates.cert_pem IS NOT NULL THEN 'issued' ELSE 'failed' END, \
             last_error = excluded.last_error, failures = excluded.failures, \
             next_attempt_at = excluded.next_attempt_at, updated_at = excluded.updated_at",
        )
        .bind(hostname)
        .bind(source)
        .bind(error)
        .bind(failures)
        .bind(next_attempt_at)
        .bind(now())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Records that an attempt is held back (an hourly order cap) until `next_attempt_at`, with
    /// `note` saying so. Not a failure: the failure count and any certificate stay.
    pub async fn record_waiting(
        &self,
        hostname: &str,
        source: &str,
        note: &str,
        next_attempt_at: &str,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO certificates (hostname, source, status, last_error, failures, next_attempt_at, \
             updated_at) VALUES ($1, $2, 'waiting', $3, 0, $4, $5) \
             ON CONFLICT (hostname, source) DO UPDATE SET \
             status = CASE WHEN certificates.cert_pem IS NOT NULL THEN 'issued' ELSE 'waiting' END, \
             last_error = excluded.last_error, next_attempt_at = excluded.next_attempt_at, \
             updated_at = excluded.updated_at",
        )
        .bind(hostname)
        .bind(source)
        .bind(note)
        .bind(next_attempt_at)
        .bind(now())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Logs an ACME order just started, for the hourly caps; prunes entries older than a day.
    pub async fn log_acme_order(
        &self,
        hostname: &str,
        domain: &str,
        owner_id: Option<i64>,
    ) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM acme_orders WHERE ordered_at < $1")
            .bind(from_now(-time::Duration::DAY))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO acme_orders (hostname, domain, owner_id, ordered_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(hostname)
        .bind(domain)
        .bind(owner_id)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// ACME orders started at or after `since` (RFC 3339), oldest first.
    pub async fn acme_orders_since(&self, since: &str) -> StoreResult<Vec<AcmeOrderRow>> {
        Ok(sqlx::query_as(
            "SELECT domain, owner_id, ordered_at FROM acme_orders \
             WHERE ordered_at >= $1 ORDER BY ordered_at, id",
        )
        .bind(since)
        .fetch_all(self.pool())
        .await?)
    }

    /// The stored ACME account credentials (JSON) for a directory URL.
    pub async fn acme_account(&self, directory: &str) -> StoreResult<Option<String>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT credentials FROM acme_accounts WHERE directory = $1")
                .bind(directory)
                .fetch_optional(self.pool())
                .await?;
        Ok(row.map(|r| r.0))
    }

    pub async fn save_acme_account(&self, directory: &str, credentials: &str) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO acme_accounts (directory, credentials, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (directory) DO UPDATE SET credentials = excluded.credentials",
        )
        .bind(directory)
        .bind(credentials)
        .bind(now())
        .execute(self.pool())
        .await?;
        Ok(())
    }
}

/// Whether a tunnel with certificate row `own` shows the wildcard's one label up instead: it
/// holds no certificate yet, and the Gateways serve the wildcard's for its name meanwhile (a
/// temporary tunnel's name under its domain's wildcard is never ordered on its own).
pub fn lacks_certificate(own: Option<&CertRow>) -> bool {
    own.is_none_or(|r| r.cert_pem.is_none())
}

/// The certificate row `t` shows, from every row by (hostname, source): its own of its `tls`
/// mode, or the covering wildcard's while it has none (see `lacks_certificate`).
pub fn shown_cert<'a>(
    certs: &'a std::collections::HashMap<(String, String), CertRow>,
    t: &super::TunnelRow,
) -> Option<&'a CertRow> {
    let own = certs.get(&(t.hostname.clone(), t.tls.clone()));
    if !lacks_certificate(own) {
        return own;
    }
    crate::validate::covering_wildcard(&t.hostname)
        .and_then(|w| certs.get(&(w, t.tls.clone())))
        .filter(|above| !lacks_certificate(Some(above)))
        .or(own)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(n: &str) -> NewCert {
        NewCert {
            cert_pem: format!("cert{n}"),
            key_pem: format!("key{n}"),
            not_after: "2030-01-01T00:00:00Z".into(),
            issuer: "CA".into(),
            renew_at: "2029-01-01T00:00:00Z".into(),
        }
    }

    #[tokio::test]
    async fn a_zone_change_makes_only_failed_unissued_acme_certificates_due() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let later = "2030-01-01T00:00:00Z";
        for (host, source) in [
            ("a.test", "acme"),
            ("b.test", "acme"),
            ("c.test", "internal"),
        ] {
            store
                .record_failure(host, source, "boom", 3, later)
                .await
                .unwrap();
        }
        store
            .save_issued("b.test", "acme", &cert("1"))
            .await
            .unwrap();
        store
            .record_failure("b.test", "acme", "renewal failed", 1, later)
            .await
            .unwrap();
        assert_eq!(store.retry_failed_acme_now().await.unwrap(), 1);
        let row = |host: &'static str, source: &'static str| {
            let store = store.clone();
            async move { store.get_certificate(host, source).await.unwrap().unwrap() }
        };
        let a = row("a.test", "acme").await;
        assert_eq!(
            (a.next_attempt_at, a.failures),
            (None, 3),
            "due now, backoff kept"
        );
        assert_eq!(
            row("b.test", "acme").await.next_attempt_at.as_deref(),
            Some(later)
        );
        assert_eq!(
            row("c.test", "internal").await.next_attempt_at.as_deref(),
            Some(later)
        );
    }

    #[tokio::test]
    async fn failure_keeps_a_served_certificate_of_the_same_source() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        store
            .record_failure("a.test", "acme", "boom", 1, "2030-01-01T00:00:00Z")
            .await
            .unwrap();
        let row = store
            .get_certificate("a.test", "acme")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((row.status.as_str(), row.failures), ("failed", 1));
        store
            .save_issued("a.test", "acme", &cert("1"))
            .await
            .unwrap();
        let row = store
            .get_certificate("a.test", "acme")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.status, "issued");
        assert!(row.last_error.is_none());
        store
            .record_failure(
                "a.test",
                "acme",
                "renewal failed",
                1,
                "2030-01-01T00:00:00Z",
            )
            .await
            .unwrap();
        let row = store
            .get_certificate("a.test", "acme")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.status, "issued");
        assert_eq!(row.cert_pem.as_deref(), Some("cert1"));
        assert_eq!(row.last_error.as_deref(), Some("renewal failed"));
        store
            .record_failure("a.test", "internal", "x", 1, "2030-01-01T00:00:00Z")
            .await
            .unwrap();
        let row = store
            .get_certificate("a.test", "internal")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.status, "failed");
        assert!(row.cert_pem.is_none());
        // The other source's certificate and state are untouched.
        let acme = store
            .get_certificate("a.test", "acme")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(acme.cert_pem.as_deref(), Some("cert1"));
        // Waiting is not a failure: the count stays, the served certificate too.
        store
            .record_waiting("a.test", "acme", "waiting", "2030-01-01T00:00:00Z")
            .await
            .unwrap();
        let acme = store
            .get_certificate("a.test", "acme")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((acme.status.as_str(), acme.failures), ("issued", 1));
        assert_eq!(acme.last_error.as_deref(), Some("waiting"));
    }

    #[tokio::test]
    async fn acme_orders_are_logged_and_counted_by_time() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        store
            .log_acme_order("a.example.com", "example.com", Some(3))
            .await
            .unwrap();
        store
            .log_acme_order("b.example.com", "example.com", None)
            .await
            .unwrap();
        let recent = store
            .acme_orders_since(&from_now(-time::Duration::HOUR))
            .await
            .unwrap();
        assert_eq!(recent.len(), 2);
        assert_eq!((recent[0].owner_id, recent[1].owner_id), (Some(3), None));
        assert!(store
            .acme_orders_since(&from_now(time::Duration::HOUR))
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn acme_account_round_trip() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        assert!(store.acme_account("https://x").await.unwrap().is_none());
        store.save_acme_account("https://x", "{}").await.unwrap();
        store
            .save_acme_account("https://x", "{\"a\":1}")
            .await
            .unwrap();
        assert_eq!(
            store.acme_account("https://x").await.unwrap().as_deref(),
            Some("{\"a\":1}")
        );
    }
}
