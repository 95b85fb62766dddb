//! `kakuremichi control backup` and `restore` as an operator runs them: the built binary backs up
//! a running Control's data directory while an API client keeps writing (every write acknowledged
//! before the backup started is in it); the copy is restored into an empty one (and refused over a
//! live one, or when altered); Control started on it has the tunnels, the admin, the internal CA
//! and the DNS zone credentials (`secrets.key`) of the original. With `KAKUREMICHI_BACKUP_KEY`
//! the file is encrypted and restores only with that key; a wrong key and an altered file are
//! told apart.

use kakuremichi_testkit::{bin, control};
use serde_json::json;
use std::path::Path;
use std::process::{Command, Output};

fn tool(args: &[&str], data_dir: &Path) -> Output {
    tool_with_key(args, data_dir, None)
}

/// [`tool`] with `KAKUREMICHI_BACKUP_KEY` set to `key`.
fn tool_with_key(args: &[&str], data_dir: &Path, key: Option<&str>) -> Output {
    let mut command = Command::new(bin());
    command
        .arg("control")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("DATABASE_URL")
        .env_remove("KAKUREMICHI_BACKUP_KEY");
    if let Some(key) = key {
        command.env("KAKUREMICHI_BACKUP_KEY", key);
    }
    let out = command.output().expect("the kakuremichi binary runs");
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
    let zone = c.unreachable_zone("example.com").await;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_backup_restores_only_with_its_key() {
    const KEY: &str = "correct horse battery staple";
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    let c = control::start(&first).await;
    c.agent("home").await;
    let file = dir.path().join("sealed.db");
    let file_arg = file.to_str().unwrap();
    let out = tool_with_key(&["backup", "--out", file_arg], &first, Some(KEY));
    assert!(out.status.success());
    c.stop().await;
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.starts_with(b"KMBKENC1"), "encrypted");
    assert!(!bytes.windows(15).any(|w| w == b"SQLite format 3"));

    let refused = |key: Option<&str>, args: &[&str], says: &str| {
        let out = tool_with_key(args, &second, key);
        assert!(!out.status.success(), "{args:?} with {key:?}");
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(stderr.contains(says), "{stderr}");
        assert!(!second.join("control.db").exists(), "nothing restored");
        out
    };
    refused(None, &["restore", file_arg], "set KAKUREMICHI_BACKUP_KEY");
    refused(
        Some("a different passphrase"),
        &["restore", file_arg],
        "not the key this backup was encrypted with",
    );
    let short = refused(Some("short"), &["restore", file_arg], "16 to 1024");
    assert_eq!(short.status.code(), Some(2), "a usage error");
    // Altered, with a checksum made to match: the encryption's own check refuses it.
    let altered = dir.path().join("altered.db");
    let mut changed = bytes.clone();
    let last = changed.len() - 1;
    changed[last] ^= 1;
    std::fs::write(&altered, &changed).unwrap();
    let sum = Command::new("sha256sum").arg(&altered).output().unwrap();
    std::fs::write(dir.path().join("altered.db.sha256"), sum.stdout).unwrap();
    refused(
        Some(KEY),
        &["restore", altered.to_str().unwrap()],
        "altered or damaged",
    );

    assert!(tool_with_key(&["restore", file_arg], &second, Some(KEY))
        .status
        .success());
    let c = control::start(&second).await;
    let (_, agents) = c.get("/api/v1/agents").await;
    assert_eq!(agents[0]["name"], "home", "{agents}");
    c.stop().await;
}
