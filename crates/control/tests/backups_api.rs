//! Backups through the API and the dashboard (issue #18): `POST /api/v1/backups` makes one like
//! the daily run (admins only), `GET /api/v1/backups` lists the files with the last success and
//! failure, a failing `KAKUREMICHI_BACKUP_COMMAND` stands on the dashboard until a shipment
//! succeeds (and in `GET /api/v1/status` for admins), and with `KAKUREMICHI_BACKUP_KEY` every
//! file is encrypted.

use kakuremichi_control::BackupKey;
use kakuremichi_testkit::control::*;
use kakuremichi_testkit::{ADMIN_EMAIL, ADMIN_PASSWORD};
use reqwest::StatusCode;
use serde_json::json;

async fn dashboard(c: &Control) -> String {
    let cookie = c.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap();
    let res = browser()
        .get(c.url("/"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.text().await.unwrap()
}

#[tokio::test]
async fn admins_make_and_list_backups_and_a_failing_command_shows_until_one_ships() {
    let (tmp, data) = data_dir();
    let flag = tmp.path().join("ship-fails");
    std::fs::write(&flag, "").unwrap();
    let shipped = tmp.path().join("shipped");
    std::fs::create_dir_all(&shipped).unwrap();
    let mut config = config(&data);
    // Fails while the flag file exists, like an offsite store that is down.
    config.backup.command = Some(format!(
        "test ! -e {} && cp \"$1\" {}/",
        flag.display(),
        shipped.display()
    ));
    // The tests' Control has no daily backup; the API says so.
    config.backup.at = None;
    let c = start_with(config).await;

    let (s, listed) = c.get("/api/v1/backups").await;
    assert_eq!(s, StatusCode::OK, "{listed}");
    assert_eq!(listed["files"], json!([]));
    assert_eq!(listed["last_success"], json!(null));
    assert_eq!(listed["needs_attention"], false);
    assert_eq!(listed["schedule"], json!(null));
    assert_eq!(listed["encrypted"], false);
    assert_eq!(listed["dir"], data.join("backups").display().to_string());

    let (s, made) = c.post("/api/v1/backups", json!({})).await;
    assert_eq!(s, StatusCode::CREATED, "{made}");
    let path = made["path"].as_str().unwrap();
    assert!(std::path::Path::new(path).exists(), "{made}");
    assert!(made["command_error"]
        .as_str()
        .unwrap()
        .contains("exited with"));
    assert_eq!(made["file"]["kind"], "scheduled");
    assert_eq!(made["file"]["encrypted"], false);

    let (_, listed) = c.get("/api/v1/backups").await;
    assert_eq!(listed["files"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["last_file"], path);
    assert_eq!(listed["needs_attention"], true);
    assert!(listed["last_error"]
        .as_str()
        .unwrap()
        .contains("exited with"));
    let page = dashboard(&c).await;
    assert!(page.contains("The last backup failed"), "{page}");
    // GET /status says it too (what `kakuremichi status` exits 1 on).
    let (_, status) = c.get("/api/v1/status").await;
    assert_eq!(status["backups"]["needs_attention"], true, "{status}");

    // The offsite store is back: the next backup ships, the failure is gone.
    std::fs::remove_file(&flag).unwrap();
    let (s, made) = c.post("/api/v1/backups", json!({})).await;
    assert_eq!(s, StatusCode::CREATED, "{made}");
    assert_eq!(made["command_error"], json!(null));
    assert_eq!(std::fs::read_dir(&shipped).unwrap().count(), 1);
    let (_, listed) = c.get("/api/v1/backups").await;
    assert_eq!(listed["needs_attention"], false, "{listed}");
    assert!(listed["last_shipped"].is_string());
    let page = dashboard(&c).await;
    assert!(!page.contains("The last backup failed"), "{page}");
    assert!(page.contains("id=\"backups\""));

    // Members neither see nor make backups.
    let member = member(&c, "member@example.com").await;
    for (method, path) in [("GET", "/api/v1/backups"), ("POST", "/api/v1/backups")] {
        let (s, body) = member.call(&c, method, path, None).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{method} {path}: {body}");
    }
    let (_, status) = member.call(&c, "GET", "/api/v1/status", None).await;
    assert_eq!(status["backups"], json!(null), "admins only: {status}");
    let audit = c.get("/api/v1/audit").await.1.to_string();
    assert!(audit.contains("backup.requested"), "{audit}");
}

#[tokio::test]
async fn with_a_backup_key_every_file_is_encrypted() {
    let (_tmp, data) = data_dir();
    let mut config = config(&data);
    config.backup.key = Some(BackupKey::new("a passphrase long enough").unwrap());
    let c = start_with(config).await;
    let (s, made) = c.post("/api/v1/backups", json!({})).await;
    assert_eq!(s, StatusCode::CREATED, "{made}");
    assert_eq!(made["file"]["encrypted"], true);
    let bytes = std::fs::read(made["path"].as_str().unwrap()).unwrap();
    assert!(bytes.starts_with(b"KMBKENC1"));
    let (_, listed) = c.get("/api/v1/backups").await;
    assert_eq!(listed["encrypted"], true);
}
