//! The restore drill of issue #18, as docs/backups.md tells an operator to run it: Control, two
//! Gateways and an Agent serve a tunnel; a backup is taken (`POST /api/v1/backups`) and copied
//! off the data directory; Control is stopped and its data directory deleted; `kakuremichi
//! control restore` puts the backup back and Control starts on it at the same address. Visitors
//! are served throughout (the data path never depends on Control), the nodes reconnect and
//! resynchronise by themselves (a tunnel made after the backup is gone from both Gateways), a
//! certificate still valid is kept rather than issued again, and a change made after the restore
//! reaches both Gateways. The drill's RTO — Control stopped to a change served again — is printed.

use kakuremichi_testkit::*;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

const WITHIN: Duration = Duration::from_secs(30);

fn is_app(status: u16, body: &str) -> bool {
    status == 200 && body.contains("drill-app")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_restored_from_its_backup_while_the_tunnels_keep_serving() {
    kakuremichi_testkit::init_logs();
    let mut fleet = Cluster::new()
        .gateways(2)
        .agent()
        .origin("drill-app")
        .tunnel_with("drill.test", json!({"tls": "off"}))
        .start()
        .await;
    let (api, http, gateways) = (fleet.api.clone(), fleet.http.clone(), fleet.gateway_addrs());
    wait_all(&http, &gateways, "drill.test", WITHIN, "served", is_app).await;
    let with_cert = fleet
        .tunnel_with("cert.test", fleet.origin, json!({"tls": "internal"}))
        .await;
    let cert_path = format!("tunnels/{with_cert}");
    let issued = eventually(WITHIN, "the internal certificate", || async {
        let t = api.get(&cert_path).await;
        (t["certificate"]["status"] == "issued").then(|| t["certificate"].clone())
    })
    .await;

    // Visitors, all along: every answer through either Gateway must be the app's.
    let (stop, probes, failures) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let visitor = tokio::spawn({
        let (stop, probes, failures) = (stop.clone(), probes.clone(), failures.clone());
        let (http, gateways) = (http.clone(), gateways.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                for gw in &gateways {
                    let (status, body) = through(&http, *gw, "drill.test", "/").await;
                    probes.fetch_add(1, Ordering::Relaxed);
                    if !is_app(status, &body) {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });

    // The latest backup, copied off the data directory (the backup command's job in production).
    let made = api.post("backups", json!({})).await;
    let offsite = tempfile::tempdir().unwrap();
    let backup = offsite.path().join("latest.db");
    std::fs::copy(made["path"].as_str().unwrap(), &backup).unwrap();
    std::fs::copy(
        format!("{}.sha256", made["path"].as_str().unwrap()),
        offsite.path().join("latest.db.sha256"),
    )
    .unwrap();
    // Made after the backup: the restore loses it (the RPO), and the Gateways must follow.
    fleet.tunnel("lost.test", fleet.origin).await;
    wait_all(&http, &gateways, "lost.test", WITHIN, "served", is_app).await;

    // The disaster: Control stopped, its data directory gone.
    let drill = Instant::now();
    let control = fleet.control.take().unwrap();
    let address = control.addr;
    control.stop().await;
    let data_dir = fleet.dir.path().join("control");
    std::fs::remove_dir_all(&data_dir).unwrap();

    // The procedure: restore, then start Control on the same address.
    let restored = std::process::Command::new(bin())
        .args(["control", "restore"])
        .arg(&backup)
        .arg("--data-dir")
        .arg(&data_dir)
        .env_remove("KAKUREMICHI_BACKUP_KEY")
        .output()
        .unwrap();
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    let listener = eventually(WITHIN, "Control's port free again", || async {
        TcpListener::bind(address).await.ok()
    })
    .await;
    let _control = InProcessControl::start_on(listener, control_config(&data_dir));
    eventually(WITHIN, "Control answering again", || async {
        let (status, _) = api.call(reqwest::Method::GET, "tunnels", None).await;
        (status == 200).then_some(())
    })
    .await;
    // No manual step: both Gateways drop what the backup does not have...
    wait_all(&http, &gateways, "lost.test", WITHIN, "resynced", |s, _| {
        s == 404
    })
    .await;
    // ...and take a change made now.
    let back = api
        .post(
            "tunnels",
            json!({"hostname": "after.test", "agent_id": fleet.agent_id,
                   "target": fleet.origin.to_string()}),
        )
        .await;
    assert!(back["id"].is_i64(), "{back}");
    wait_all(&http, &gateways, "after.test", WITHIN, "served", is_app).await;
    let rto = drill.elapsed();

    stop.store(true, Ordering::Relaxed);
    visitor.await.unwrap();
    let (probes, failures) = (
        probes.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
    );
    println!(
        "measured: restore drill RTO (Control stopped -> a change served by both Gateways) {:.2} s; \
         {probes} visitor requests during the drill, {failures} failed",
        rto.as_secs_f64()
    );
    assert!(probes > 0);
    assert_eq!(failures, 0, "the tunnel answered throughout");
    // The certificate of the backup is the one served: not issued again.
    let kept = api.get(&cert_path).await["certificate"].clone();
    assert_eq!(kept["status"], "issued");
    assert_eq!(kept["not_after"], issued["not_after"], "{kept}");
}
