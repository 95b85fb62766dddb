//! PostgreSQL connection settings against a real server: TLS chosen in the URL (`sslmode`),
//! the pool's size and the statement timeout.

use super::{PoolOptions, Store};
use kakuremichi_testkit::origins::{self, psql, Postgres};
use sqlx::{Connection, PgConnection};
use std::time::{Duration, Instant};

async fn count(pg: &Postgres, sql: &str) -> u32 {
    psql(pg.addr, sql).await.unwrap().trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_chosen_in_the_url_and_the_server_is_verified() {
    let test = "tls_is_chosen_in_the_url_and_the_server_is_verified";
    if !origins::available(test, &["postgres", "psql"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let pg = Postgres::start_tls(&ca).await;
    psql(pg.addr, "CREATE DATABASE km").await.unwrap();
    let url = |root: &std::path::Path| {
        format!(
            "postgres://postgres@localhost:{}/km?sslmode=verify-full&sslrootcert={}",
            pg.addr.port(),
            root.display()
        )
    };
    let store = Store::open(&url(&ca)).await.unwrap();
    store.ping().await.unwrap();
    let of_km = "FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.datname = 'km'";
    assert!(count(&pg, &format!("SELECT count(*) {of_km} AND s.ssl")).await >= 1);
    assert_eq!(
        count(&pg, &format!("SELECT count(*) {of_km} AND NOT s.ssl")).await,
        0,
        "every connection is encrypted"
    );
    store.close().await;

    // A CA that did not sign the server's certificate: refused, and the error says why.
    let other = dir.path().join("other.pem");
    std::fs::write(&other, kakuremichi_testkit::pebble::server_certificate().2).unwrap();
    let error = Store::open(&url(&other)).await.unwrap_err().to_string();
    assert!(error.to_lowercase().contains("certificate"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_tls_is_not_given_up_for_a_server_without_it() {
    let test = "required_tls_is_not_given_up_for_a_server_without_it";
    if !origins::available(test, &["postgres", "psql"]) {
        return;
    }
    let pg = Postgres::start().await;
    let url = format!("postgres://postgres@{}/postgres?sslmode=require", pg.addr);
    let error = Store::open(&url).await.unwrap_err().to_string();
    assert!(
        error.to_lowercase().contains("tls") || error.contains("SSL"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_is_bounded_and_a_statement_times_out() {
    let test = "the_pool_is_bounded_and_a_statement_times_out";
    if !origins::available(test, &["postgres", "psql"]) {
        return;
    }
    let pg = Postgres::start().await;
    psql(pg.addr, "CREATE DATABASE km").await.unwrap();
    let url = format!("postgres://postgres@{}/km", pg.addr);
    let options = PoolOptions {
        max_connections: 3,
        statement_timeout: Duration::from_millis(300),
    };
    let store = Store::open_with(&url, options).await.unwrap();

    // Thirty reads at once share three connections.
    let reads = (0..30).map(|_| store.count_users());
    for read in futures_util::future::join_all(reads).await {
        read.unwrap();
    }
    let connections = count(
        &pg,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'km'",
    )
    .await;
    assert!((1..=3).contains(&connections), "{connections} connections");

    // A statement stuck behind a lock is cancelled by PostgreSQL at the timeout.
    let mut other = PgConnection::connect(&url).await.unwrap();
    let mut tx = other.begin().await.unwrap();
    sqlx::query("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let started = Instant::now();
    let error = store.count_users().await.unwrap_err().to_string();
    let took = started.elapsed();
    assert!(error.contains("statement timeout"), "{error}");
    assert!(took < Duration::from_secs(3), "cancelled after {took:?}");
    tx.rollback().await.unwrap();
    store.count_users().await.unwrap();
}
