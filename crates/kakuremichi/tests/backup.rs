//! `kakuremichi control backup` and `restore` as an operator runs them: the built binary backs up
//! a running Control's data directory while an API client keeps writing (every write acknowledged
//! before the backup started is in it); the copy is restored into an empty one (and refused over a
//! live one, or when altered); Control started on it has the tunnels, the admin, the internal CA
//! and the DNS zone credentials (`secrets.key`) of the original.

use kakuremichi_testkit::{bin, control};
use reqwest::StatusCode;
use serde_json::json;
use std::path::Path;
use std::process::{Command, Output};

fn tool(args: &[&str], data_dir: &Path) -> Output {
    let out = Command::new(bin())
        .arg("control")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("DATABASE_URL")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_a_running_control_restores_into_an_empty_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    let c = control::start(&first).await;
    let agent = c.agent("home").await["id"].as_i64().unwrap();
    c.tunnel("app.example.com", agent, "127.0.0.1:8080").await;
    let (s, zone) = c
        .post(
            "/api/v1/dns/zones",
            json!({"zone": "example.com", "provider": "rfc2136", "config": {
                "server": "127.0.0.1:9", "key_name": "k.", "key_algorithm": "hmac-sha256",
                "key_secret": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{zone}");

    // While Control runs and an API client keeps writing: every write acknowledged before the
    // backup started must be in it.
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
        let client = c.client();
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let name = format!("load-{i}");
                if client.create_agent(&name).await.is_ok() {
                    acknowledged.lock().unwrap().push(name);
                }
                i += 1;
            }
        })
    };
    kakuremichi_testkit::eventually(
        std::time::Duration::from_secs(10),
        "writes under way",
        || async { acknowledged.lock().unwrap().len() >= 5 },
    )
    .await;
    let before: Vec<String> = acknowledged.lock().unwrap().clone();
    let out = tokio::task::spawn_blocking({
        let first = first.clone();
        move || tool(&["backup"], &first)
    })
    .await
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.await.unwrap();
    assert!(out.status.success());
    let file = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let file = Path::new(&file);
    assert!(file.starts_with(first.join("backups")), "{file:?}");
    assert!(Path::new(&format!("{}.sha256", file.display())).exists());
    c.stop().await;

    // An altered copy is refused, and changes nothing.
    let altered = dir.path().join("altered.db");
    let mut bytes = std::fs::read(file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&altered, bytes).unwrap();
    std::fs::copy(
        format!("{}.sha256", file.display()),
        format!("{}.sha256", altered.display()),
    )
    .unwrap();
    let out = tool(&["restore", altered.to_str().unwrap()], &second);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not match its checksum"));
    assert!(!second.join("control.db").exists());

    // Into an empty data directory; then not over it again without --force.
    let file = file.to_str().unwrap();
    assert!(tool(&["restore", file], &second).status.success());
    let out = tool(&["restore", file], &second);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert!(tool(&["restore", file, "--force"], &second)
        .status
        .success());
    for name in [
        "secrets.key",
        "internal-ca/root.crt",
        "internal-ca/root.key",
    ] {
        assert_eq!(
            std::fs::read(first.join(name)).unwrap(),
            std::fs::read(second.join(name)).unwrap(),
            "{name}"
        );
    }

    // Control on the restored directory: same admin, tunnels and zone; the zone's sealed
    // credentials open (its check reaches the network step, not a sealing error).
    let c = control::start(&second).await;
    let (_, tunnels) = c.get("/api/v1/tunnels").await;
    assert_eq!(tunnels[0]["hostname"], "app.example.com", "{tunnels}");
    let (_, agents) = c.get("/api/v1/agents").await;
    let names: Vec<&str> = agents
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    for name in &before {
        assert!(
            names.contains(&name.as_str()),
            "{name} acknowledged before the backup is missing"
        );
    }
    let id = zone["id"].as_i64().unwrap();
    let (s, check) = c
        .post(&format!("/api/v1/dns/zones/{id}/check"), json!({}))
        .await;
    assert_eq!(check["error"]["kind"], "unreachable", "{s} {check}");
    c.stop().await;
}
