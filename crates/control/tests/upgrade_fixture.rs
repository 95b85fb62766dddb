//! Upgrades from a kept database (issue #18). `fixtures/schema-17.sql` is the database of a real
//! Control (kakuremichi 0.1.0) at schema version 17 (users, a token, Agents, a Gateway, an http
//! tunnel with its internal certificate, a tcp tunnel, a DNS zone with sealed credentials,
//! settings, the audit log), dumped with `sqlite3 .dump`; `fixtures/schema-17.secrets.key` is the
//! key its zone credentials are sealed with. It is never regenerated: each later release must
//! open it, migrate it (with the automatic pre-migration copy once the schema has moved on) and
//! serve what it holds. To add the fixture of a newer schema, run
//! `KAKUREMICHI_WRITE_FIXTURE=1 cargo test -p kakuremichi-control --test upgrade_fixture` and keep
//! the old files.

use kakuremichi_testkit::control::*;
use reqwest::StatusCode;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;

const SCHEMA: i64 = 17;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Puts the fixture's database and key into `data`.
async fn load_fixture(data: &Path) {
    std::fs::create_dir_all(data).unwrap();
    let sql = std::fs::read_to_string(fixtures().join(format!("schema-{SCHEMA}.sql"))).unwrap();
    let url = format!("sqlite://{}?mode=rwc", data.join("control.db").display());
    let db = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::raw_sql(&sql).execute(&db).await.unwrap();
    db.close().await;
    std::fs::copy(
        fixtures().join(format!("schema-{SCHEMA}.secrets.key")),
        data.join("secrets.key"),
    )
    .unwrap();
}

#[tokio::test]
async fn a_database_of_an_earlier_release_opens_migrates_and_serves() {
    if std::env::var_os("KAKUREMICHI_WRITE_FIXTURE").is_some() {
        return write_fixture().await;
    }
    let (_tmp, data) = data_dir();
    load_fixture(&data).await;
    let c = start_with(config(&data)).await;

    // What the fixture holds, as the API shows it.
    let (_, tunnels) = c.get("/api/v1/tunnels").await;
    let hosts: Vec<&str> = tunnels
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["hostname"].as_str())
        .collect();
    assert_eq!(hosts, ["app.example.com", "db.example.com"], "{tunnels}");
    let app = &tunnels[0];
    assert_eq!(
        app["certificate"]["status"], "issued",
        "kept, not ordered again: {app}"
    );
    assert_eq!(tunnels[1]["protocol"], "tcp");
    assert_eq!(tunnels[1]["public_port"], 25432);
    let (_, users) = c.get("/api/v1/users").await;
    assert_eq!(users.as_array().unwrap().len(), 2, "{users}");
    let (_, agents) = c.get("/api/v1/agents").await;
    assert_eq!(agents.as_array().unwrap().len(), 2, "{agents}");
    let (_, gateways) = c.get("/api/v1/gateways").await;
    assert_eq!(gateways[0]["name"], "edge", "{gateways}");
    // The zone's credentials still open with the kept key (its check reaches the network).
    let (_, zones) = c.get("/api/v1/dns/zones").await;
    let id = zones[0]["id"].as_i64().unwrap();
    let (_, check) = c
        .post(&format!("/api/v1/dns/zones/{id}/check"), json!({}))
        .await;
    assert_eq!(check["error"]["kind"], "unreachable", "{check}");
    // The member's token of the old release still works.
    let token = std::fs::read_to_string(fixtures().join(format!("schema-{SCHEMA}.token"))).unwrap();
    let reply = c
        .call_with(token.trim(), "GET", "/api/v1/tunnels", None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);

    // Once this release's schema is newer, the upgrade made its copy first.
    let latest = sqlx::migrate!("./migrations/sqlite")
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap();
    let copies: Vec<String> = std::fs::read_dir(data.join("backups"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with("pre-migration-"))
                .collect()
        })
        .unwrap_or_default();
    eprintln!("fixture schema {SCHEMA}, this release {latest}: copies {copies:?}");
    if latest > SCHEMA {
        assert_eq!(copies.len(), 1, "{copies:?}");
        let from = format!("pre-migration-v{SCHEMA}-to-v{latest}-");
        assert!(copies[0].starts_with(&from), "{copies:?}");
    } else {
        assert!(copies.is_empty(), "{copies:?}");
    }
    // And changes work on it.
    let (s, t) = c
        .post(
            "/api/v1/tunnels",
            json!({"hostname": "new.example.com", "agent_id": agents[0]["id"],
                   "target": "127.0.0.1:8081"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
}

/// Makes the fixture of this release's schema with a real Control (see the module docs).
async fn write_fixture() {
    let (_tmp, data) = data_dir();
    let c = start_with(config(&data)).await;
    let home = c.agent("home").await;
    c.agent("office").await;
    c.gateway("edge").await;
    let agent = home["id"].as_i64().unwrap();
    let (s, app) = c
        .post(
            "/api/v1/tunnels",
            json!({"hostname": "app.example.com", "agent_id": agent,
                   "target": "127.0.0.1:8080", "tls": "internal"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{app}");
    let (s, db) = c
        .post(
            "/api/v1/tunnels",
            json!({"hostname": "db.example.com", "agent_id": agent, "protocol": "tcp",
                   "public_port": 25432, "target": "127.0.0.1:5432"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{db}");
    c.unreachable_zone("example.com").await;
    let member = member(&c, "member@example.com").await;
    kakuremichi_testkit::eventually(
        Duration::from_secs(10),
        "the internal certificate",
        || async {
            let (_, t) = c.get(&format!("/api/v1/tunnels/{}", app["id"])).await;
            (t["certificate"]["status"] == "issued").then_some(())
        },
    )
    .await;
    c.stop().await;
    let dump = std::process::Command::new("sqlite3")
        .arg(data.join("control.db"))
        .arg(".dump")
        .output()
        .expect("sqlite3 to dump the database");
    assert!(dump.status.success());
    let header = format!(
        "-- kakuremichi {} Control database at schema {SCHEMA}, made by \
         KAKUREMICHI_WRITE_FIXTURE=1 (crates/control/tests/upgrade_fixture.rs). Never edit.\n",
        env!("CARGO_PKG_VERSION")
    );
    let out = fixtures();
    std::fs::create_dir_all(&out).unwrap();
    let mut sql = header.into_bytes();
    sql.extend_from_slice(&dump.stdout);
    std::fs::write(out.join(format!("schema-{SCHEMA}.sql")), sql).unwrap();
    std::fs::copy(
        data.join("secrets.key"),
        out.join(format!("schema-{SCHEMA}.secrets.key")),
    )
    .unwrap();
    std::fs::write(out.join(format!("schema-{SCHEMA}.token")), member.token).unwrap();
}
