//! Moving Control from SQLite to PostgreSQL as an operator does it (issue #19), against a real
//! PostgreSQL server: `kakuremichi control migrate-db` copies everything and verifies the
//! counts; Control started on PostgreSQL has the same tunnels, Agents, DNS zone credentials,
//! audit log and API tokens, and hands out new ids after the old ones; a second copy into the
//! same database is refused and changes nothing; `control backup` backs up the PostgreSQL
//! database into the usual SQLite backup file, which restores and runs; and the way back
//! (PostgreSQL to SQLite) works too.

use kakuremichi_testkit::control::{self, config};
use kakuremichi_testkit::origins::{self, psql, Postgres};
use kakuremichi_testkit::{bin, init_logs};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn kakuremichi(args: &[&str]) -> Output {
    let out = Command::new(bin())
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("DATABASE_URL_FILE")
        .env_remove("KAKUREMICHI_BACKUP_KEY")
        .output()
        .expect("the kakuremichi binary runs");
    eprintln!(
        "{args:?}: exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn sqlite(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("control.db").display())
}

fn names(list: &Value, field: &str) -> Vec<String> {
    let mut names: Vec<String> = list
        .as_array()
        .expect("a list")
        .iter()
        .map(|t| t[field].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// The zone's sealed credentials open (its check gets as far as the unreachable server).
async fn assert_zone_opens(c: &control::Control, zone: &Value) {
    let id = zone["id"].as_i64().unwrap();
    let (s, check) = c
        .post(
            &format!("/api/v1/dns/zones/{id}/check"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(check["error"]["kind"], "unreachable", "{s} {check}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_to_postgres_and_back_keeps_everything() {
    let test = "sqlite_to_postgres_and_back_keeps_everything";
    if !origins::available(test, &["postgres", "psql"]) {
        return;
    }
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let (first, back, restored) = (
        tmp.path().join("first"),
        tmp.path().join("back"),
        tmp.path().join("restored"),
    );

    // A Control on SQLite with some of everything.
    let c = control::start(&first).await;
    let agent = c.agent("home").await["id"].as_i64().unwrap();
    let old = c.tunnel("app.example.com", agent, "127.0.0.1:8080").await;
    c.tunnel("wiki.example.com", agent, "127.0.0.1:8081").await;
    let zone = c.unreachable_zone("example.com").await;
    let (_, tunnels) = c.get("/api/v1/tunnels").await;
    let (_, audit) = c.get("/api/v1/audit").await;
    let token = c.token.clone();
    c.stop().await;

    let pg = Postgres::start().await;
    psql(pg.addr, "CREATE DATABASE km").await.unwrap();
    let url = format!("postgres://postgres@{}/km", pg.addr);

    let out = kakuremichi(&[
        "control",
        "migrate-db",
        "--from",
        &sqlite(&first),
        "--to",
        &url,
    ]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("the counts match"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("tunnels") && l.contains(" 2 rows")),
        "{stdout}"
    );

    // Control on PostgreSQL, same data directory (secrets.key): the admin's token still works,
    // everything is there, and new ids come after the copied ones.
    let on_pg = kakuremichi_control::ControlConfig {
        database_url: Some(url.clone()),
        ..config(&first)
    };
    let c = control::start_reusing(on_pg.clone(), token.clone()).await;
    let (_, now) = c.get("/api/v1/tunnels").await;
    assert_eq!(names(&now, "hostname"), names(&tunnels, "hostname"));
    let (_, agents) = c.get("/api/v1/agents").await;
    assert_eq!(names(&agents, "name"), ["home"]);
    let (_, audit_now) = c.get("/api/v1/audit").await;
    assert!(
        audit_now.as_array().unwrap().len() >= audit.as_array().unwrap().len(),
        "{audit_now}"
    );
    assert_zone_opens(&c, &zone).await;
    let new = c.tunnel("new.example.com", agent, "127.0.0.1:8082").await;
    assert!(new["id"].as_i64() > old["id"].as_i64(), "{new} after {old}");
    c.stop().await;

    // A second copy into the same database is refused and changes nothing.
    let out = kakuremichi(&[
        "control",
        "migrate-db",
        "--from",
        &sqlite(&first),
        "--to",
        &url,
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already holds data"),
        "{out:?}"
    );
    let n = Command::new("psql")
        .args([
            "-X",
            "-At",
            "-d",
            &url,
            "-c",
            "SELECT COUNT(*) FROM tunnels",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&n.stdout).trim(), "3");

    // A backup of the PostgreSQL database is the usual file, and restores into a Control
    // (on SQLite) that has all three tunnels.
    let file = tmp.path().join("pg-backup.db");
    let out = kakuremichi(&[
        "control",
        "backup",
        "--database-url",
        &url,
        "--data-dir",
        first.to_str().unwrap(),
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let out = kakuremichi(&[
        "control",
        "restore",
        file.to_str().unwrap(),
        "--data-dir",
        restored.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let c = control::start_reusing(config(&restored), token.clone()).await;
    let (_, from_backup) = c.get("/api/v1/tunnels").await;
    assert_eq!(names(&from_backup, "hostname").len(), 3, "{from_backup}");
    c.stop().await;

    // And back from PostgreSQL to SQLite.
    std::fs::create_dir_all(&back).unwrap();
    let out = kakuremichi(&[
        "control",
        "migrate-db",
        "--from",
        &url,
        "--to",
        &sqlite(&back),
    ]);
    assert!(out.status.success());
    // The data directory goes along (secrets.key opens the sealed DNS credentials).
    std::fs::copy(first.join("secrets.key"), back.join("secrets.key")).unwrap();
    let c = control::start_reusing(config(&back), token).await;
    let (_, again) = c.get("/api/v1/tunnels").await;
    assert_eq!(names(&again, "hostname").len(), 3, "{again}");
    assert_zone_opens(&c, &zone).await;
    c.stop().await;
}
