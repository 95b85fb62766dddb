//! Graceful stops (issue "Survive faults"): SIGTERM on a Gateway finishes the requests in flight,
//! refuses new connections and exits; Control never loses a write it acknowledged, whether it is
//! stopped with SIGTERM or killed with `kill -9` in the middle of a burst of writes.

use kakuremichi_testkit::*;
use reqwest::header::HOST;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_a_gateway_finishes_in_flight_requests_and_refuses_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut site = LocalSite::start(dir.path(), "drain.test").await;
    let http = reqwest::Client::new();
    // A response still streaming when SIGTERM arrives: 30 events, 100 ms apart.
    let url = format!("http://{}/sse?n=30&interval_ms=100", site.http_addr());
    let mut res = http
        .get(url)
        .header(HOST, "drain.test")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.chunk().await.unwrap().expect("first event").to_vec();
    assert!(
        body.starts_with(b"id: 0"),
        "{}",
        String::from_utf8_lossy(&body)
    );

    let signalled = Instant::now();
    site.gateway.sigterm();
    let addr = site.http_addr();
    eventually(
        Duration::from_secs(5),
        "the gateway stops accepting",
        || async move {
            tokio::net::TcpStream::connect(addr)
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    let refused_after = signalled.elapsed();
    while let Some(chunk) = res.chunk().await.expect("the in-flight response completes") {
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("data: event 29\n"),
        "incomplete stream: {text}"
    );
    let status = site
        .gateway
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the gateway exits once drained");
    assert!(status.success(), "gateway exit status {status}");
    eprintln!(
        "gateway SIGTERM: refused new connections after {refused_after:?}, finished the in-flight stream and exited {:?} after the signal",
        signalled.elapsed()
    );
}

/// Starts 4 concurrent writers creating agents until Control stops answering; returns (once
/// `enough` were acknowledged) the live map of every acknowledged (201) agent, id → name.
async fn write_until_failure(api: Api, enough: usize) -> Arc<Mutex<BTreeMap<i64, String>>> {
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (api, acked) = (api.clone(), acked.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    let name = format!("writer{w}-{i}");
                    let sent = api
                        .http
                        .post(format!("{}/api/v1/agents", api.base))
                        .bearer_auth(&api.token)
                        .json(&json!({ "name": name }))
                        .send()
                        .await;
                    let Ok(res) = sent else { break };
                    if res.status() != 201 {
                        break;
                    }
                    let Ok(body) = res.json::<serde_json::Value>().await else {
                        break;
                    };
                    acked
                        .lock()
                        .unwrap()
                        .insert(body["id"].as_i64().unwrap(), name);
                }
            })
        })
        .collect();
    eventually(Duration::from_secs(30), "writes acknowledged", || async {
        (acked.lock().unwrap().len() >= enough).then_some(())
    })
    .await;
    // The writers keep going (detached); the caller stops Control under them.
    drop(writers);
    acked
}

/// Every acknowledged agent exists, with its name, in the restarted Control.
async fn assert_all_present(control_url: String, acked: &BTreeMap<i64, String>) {
    let api = Api::login(control_url).await;
    let stored: BTreeMap<i64, String> = api
        .get("agents")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["id"].as_i64().unwrap(),
                a["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (id, name) in acked {
        assert_eq!(stored.get(id), Some(name), "acknowledged agent {id} lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_never_loses_an_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let listen: SocketAddr = (private_loopback(), 8780).into();
    let url = format!("http://{listen}");

    for how in ["kill -9", "SIGTERM"] {
        let mut control = spawn_control(dir.path(), &listen.to_string());
        let api = Api::login(url.clone()).await;
        let acked = write_until_failure(api, 40).await;
        let stopped = Instant::now();
        if how == "kill -9" {
            control.kill();
        } else {
            control.sigterm();
            let status = control
                .wait_exit(Duration::from_secs(15))
                .await
                .expect("Control exits on SIGTERM");
            assert!(status.success(), "Control exit status {status}");
        }
        // Let the writers notice; whatever they got acknowledged until then must survive.
        let acked = acked.lock().unwrap().clone();
        let _control = spawn_control(dir.path(), &listen.to_string());
        assert_all_present(url.clone(), &acked).await;
        eprintln!(
            "Control {how} during writes: all {} acknowledged writes present after restart (stopped {:?} in)",
            acked.len(),
            stopped.elapsed()
        );
    }
}
