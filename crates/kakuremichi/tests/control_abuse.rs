//! Control's own process under an anonymous flood (issue 14, point 2): every `POST /setup` and
//! `POST /register` used to start an Argon2 hash (~19 MiB each) before checking anything, so 600
//! of them took Control to 1.2 GiB and a login to 12 s. Measured on the built binary: its peak
//! resident memory (VmHWM) and how long a login takes in the middle of the flood.

use kakuremichi_testkit::*;
use std::time::{Duration, Instant};

const FLOOD: usize = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_setup_and_register_floods_stay_small_and_login_works() {
    let dir = tempfile::tempdir().unwrap();
    let listen = std::net::SocketAddr::from((private_loopback(), 8780));
    let control = spawn_control(dir.path(), &listen.to_string());
    let base = format!("http://{listen}");
    // Signs in once (so Control is set up and ready), then measures from there.
    Api::login(base.clone()).await;
    let (before, _) = rss_mib(control.pid());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let form = |i: usize| {
        let password = format!("a+long+enough+password+{i}");
        if i.is_multiple_of(2) {
            (
                "/setup",
                format!("email=flood{i}%40example.com&password={password}"),
            )
        } else {
            let invite = format!("kmi_bogus{i}");
            (
                "/register",
                format!("email=&password={password}&invite={invite}"),
            )
        }
    };
    let send = |i: usize| {
        let (path, body) = form(i);
        let req = http
            .post(format!("{base}{path}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()).unwrap_or(0) })
    };
    let mut flood: Vec<_> = (0..FLOOD / 2).map(send).collect();
    let login = {
        let http = http.clone();
        let base = base.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let status = http
                .post(format!("{base}/api/v1/auth/login"))
                .json(&serde_json::json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            (status, started.elapsed())
        })
    };
    flood.extend((FLOOD / 2..FLOOD).map(send));
    let mut answered = std::collections::BTreeMap::<u16, usize>::new();
    for task in flood {
        *answered.entry(task.await.unwrap()).or_default() += 1;
    }
    let (login_status, login_took) = login.await.unwrap();
    let (peak, now) = rss_mib(control.pid());
    eprintln!(
        "{FLOOD} anonymous POSTs (setup + register) answered {answered:?}; login in the middle: \
         {login_status} after {login_took:?}; Control RSS before {before:.1} MiB, peak \
         {peak:.1} MiB, after {now:.1} MiB"
    );
    assert!(peak > 0.0, "could not read Control's memory");
    assert_eq!(login_status, 200, "the admin can log in during the flood");
    assert!(peak < 200.0, "Control peaked at {peak:.1} MiB");
    assert!(
        !answered.contains_key(&0) && !answered.contains_key(&500),
        "every request got an answer: {answered:?}"
    );
}
