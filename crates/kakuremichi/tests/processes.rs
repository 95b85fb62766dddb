//! End to end with real processes of the built binary: `kakuremichi control`, `gateway`, `agent`
//! and `hello`, each its own process on a loopback address of its own, configured only through
//! flags, environment and Control's API, exactly as a user runs them on separate machines.

use kakuremichi_testkit::*;
use std::process::Command;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_processes_carry_a_gibibyte_each_way_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut site = LocalSite::start(dir.path(), "big.test").await;
    let (http_addr, admin_addr) = (site.http_addr(), site.admin_addr());
    let (gw, ag) = (&site.gateway, &site.agent);
    let http = reqwest::Client::new();
    let took = started.elapsed();
    eprintln!("all four processes started and the tunnel answering after {took:?}");
    let health = http
        .get(format!("http://{admin_addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "gateway admin /healthz");
    assert_eq!(through(&http, http_addr, "unknown.test", "/").await.0, 404);
    assert_eq!(
        listening_tcp_sockets(ag.pid()),
        0,
        "the agent opens no listening port"
    );
    let (idle_gw, _) = rss_mib(gw.pid());
    let (idle_ag, _) = rss_mib(ag.pid());

    const GIB: u64 = 1 << 30;
    let started = Instant::now();
    let (got, ok) = download(&http, http_addr, "big.test", GIB).await;
    assert_eq!(got, GIB);
    assert!(ok, "every downloaded byte matches the pattern");
    eprintln!(
        "1 GiB download through the tunnel in {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let (answer, digest) = upload(&http, http_addr, "big.test", GIB).await;
    assert_eq!(answer["bytes"].as_u64(), Some(GIB));
    assert_eq!(answer["sha256"].as_str(), Some(digest.as_str()));
    eprintln!("1 GiB upload through the tunnel in {:?}", started.elapsed());

    let (peak_gw, _) = rss_mib(gw.pid());
    let (peak_ag, _) = rss_mib(ag.pid());
    eprintln!("peak RSS: gateway {peak_gw:.1} MiB (idle {idle_gw:.1}), agent {peak_ag:.1} MiB (idle {idle_ag:.1})");
    for (who, peak) in [("gateway", peak_gw), ("agent", peak_ag)] {
        assert!(peak > 0.0, "could not read the {who}'s memory");
        assert!(
            peak < 160.0,
            "{who} peaked at {peak:.1} MiB moving 1 GiB: bodies must stream, not buffer"
        );
    }

    // The origin stops: the gateway answers 502 promptly.
    drop(site.origin.take());
    let started = Instant::now();
    wait_through(
        &http,
        http_addr,
        "big.test",
        "/",
        Duration::from_secs(10),
        "502 for a stopped origin",
        |s, _| s == 502,
    )
    .await;
    eprintln!(
        "502 after the origin stopped, within {:?}",
        started.elapsed()
    );
}

/// `kakuremichi up`: the demo tunnel answers over HTTPS, trusting Control's internal CA, and the
/// Gateway and the Agent each run on a runtime of their own (threads `km-gateway`, `km-agent`), as
/// when they are separate processes: on the runtime they shared with Control they answered 0.71x
/// the requests/s of separate processes (scripts/bench, `x_rps_h1_up_ratio_vs_separate`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_the_demo_with_gateway_and_agent_on_runtimes_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ip = private_loopback();
    let at = |port: u16| format!("{ip}:{port}");
    let flags = [
        ("--control-listen", at(8780)),
        ("--http-listen", at(8080)),
        ("--https-listen", at(8443)),
        ("--wg-listen", at(51820)),
        ("--admin-listen", at(9090)),
        ("--hello-listen", at(8781)),
    ];
    let mut args = vec!["up", "--data-dir", data.to_str().unwrap()];
    for (flag, value) in &flags {
        args.extend([*flag, value.as_str()]);
    }
    let up = Proc::spawn("up", dir.path(), &args, &[("KAKUREMICHI_THREADS", "1")]);
    let root = data.join("control/internal-ca/root.crt");
    let root = eventually(
        Duration::from_secs(60),
        "Control's internal CA root",
        || std::future::ready(std::fs::read_to_string(&root).ok()),
    )
    .await;
    let https: std::net::SocketAddr = at(8443).parse().unwrap();
    let client = https::https_client(&root, &["hello.localhost"], https);
    let body = eventually(
        Duration::from_secs(60),
        "the demo tunnel answering over HTTPS",
        || async {
            let r = client
                .get("https://hello.localhost:8443/")
                .send()
                .await
                .ok()?;
            if r.status() != 200 {
                return None;
            }
            r.text().await.ok()
        },
    )
    .await;
    assert!(body.contains("Hello from kakuremichi up"), "{body}");
    let threads = thread_names(up.pid());
    for role in ["km-gateway", "km-agent"] {
        assert!(
            threads.iter().any(|t| t == role),
            "no thread {role} in `up`: {threads:?}"
        );
    }
}

fn thread_names(pid: u32) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}

/// The Agent listens on no port unless asked; asked (`KAKUREMICHI_METRICS_LISTEN`, the twin of
/// `--metrics-listen`), on that one only, where it serves its Prometheus metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_listens_only_for_metrics_and_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let site = LocalSite::start(dir.path(), "ports.test").await;
    assert_eq!(
        listening_tcp_sockets(site.agent.pid()),
        0,
        "the agent opens no listening port"
    );
    let created = site
        .api
        .post("agents", serde_json::json!({"name": "watched"}))
        .await;
    let metrics = site.at(9100).to_string();
    let watched = Proc::spawn(
        "agent-metrics",
        dir.path(),
        &["agent"],
        &[
            ("CONTROL_URL", &site.control_url),
            ("API_KEY", created["api_key"].as_str().unwrap()),
            ("KAKUREMICHI_METRICS_LISTEN", &metrics),
        ],
    );
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://{metrics}/metrics");
    eventually(Duration::from_secs(30), "the agent's /metrics", || async {
        match http.get(&url).send().await {
            Ok(r) => r.text().await.is_ok_and(|t| t.contains("role=\"agent\"")),
            Err(_) => false,
        }
    })
    .await;
    assert_eq!(
        listening_tcp_sockets(watched.pid()),
        1,
        "only --metrics-listen"
    );
}

/// A burst of concurrent connections costs memory while it lasts; afterwards the Gateway and the
/// Agent give it back instead of staying at their peak (glibc's arenas kept an Agent's freed
/// buffers resident: 10 MiB idle, 35 MiB for good after one burst of 1,000 streams).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_returns_to_idle_after_a_burst_of_streams() {
    const STREAMS: usize = 600;
    let dir = tempfile::tempdir().unwrap();
    let site = LocalSite::start(dir.path(), "burst.test").await;
    let (gw, ag) = (site.gateway.pid(), site.agent.pid());
    let idle = [rss_mib(gw).1, rss_mib(ag).1];
    let url = format!(
        "http://burst.test:{}/sse?n=1000000&interval_ms=1000",
        site.http_addr().port()
    );
    let http = reqwest::Client::builder()
        .resolve("burst.test", site.http_addr())
        .build()
        .unwrap();
    let mut open = Vec::with_capacity(STREAMS);
    for _ in 0..STREAMS {
        let http = http.clone();
        let url = url.clone();
        open.push(tokio::spawn(async move {
            let mut response = http.get(url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.chunk().await.unwrap().expect("the first event");
            response
        }));
    }
    let mut responses = Vec::with_capacity(STREAMS);
    for task in open {
        let response = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("every stream opens within 60 s")
            .unwrap();
        responses.push(response);
    }
    let peak = [rss_mib(gw).1, rss_mib(ag).1];
    drop(responses);
    drop(http);
    eprintln!(
        "RSS MiB with {STREAMS} streams open: gateway {:.1}, agent {:.1} (idle {:.1}, {:.1})",
        peak[0], peak[1], idle[0], idle[1]
    );
    // The allocator gives memory back a few seconds after it is freed: poll, with a deadline.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let now = [rss_mib(gw).1, rss_mib(ag).1];
        let near = now
            .iter()
            .zip(idle)
            .all(|(now, idle)| *now <= idle * 1.25 + 4.0);
        if near {
            eprintln!(
                "RSS MiB after the streams closed: gateway {:.1}, agent {:.1}",
                now[0], now[1]
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "40 s after {STREAMS} streams closed the Gateway has {:.1} MiB (idle {:.1}) and the Agent {:.1} MiB (idle {:.1}); open files: {} and {}",
            now[0], idle[0], now[1], idle[1], open_files(gw), open_files(ag)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// TCP sockets in LISTEN state owned by `pid` (from /proc: its socket inodes against net/tcp*).
fn listening_tcp_sockets(pid: u32) -> usize {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            Some(
                l.to_str()?
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    assert!(
        !inodes.is_empty(),
        "the agent has sockets (to Control and WireGuard)"
    );
    let mut listening = 0;
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        listening += text
            .lines()
            .skip(1)
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 9 && f[3] == "0A" && inodes.contains(f[9])
            })
            .count();
    }
    listening
}

#[test]
fn every_command_explains_itself() {
    for (cmd, must_mention) in [
        (
            vec!["--help"],
            vec!["control", "gateway", "agent", "up", "hello"],
        ),
        (
            vec!["control", "--help"],
            vec![
                "--listen",
                "KAKUREMICHI_DATA_DIR",
                "DATABASE_URL",
                "KAKUREMICHI_PUBLIC_URL",
            ],
        ),
        (
            vec!["gateway", "--help"],
            vec![
                "CONTROL_URL",
                "GATEWAY_TOKEN",
                "--http-listen",
                "--wg-listen",
                "--admin-listen",
            ],
        ),
        (
            vec!["agent", "--help"],
            vec!["CONTROL_URL", "API_KEY", "--data-dir"],
        ),
        (vec!["up", "--help"], vec!["--data-dir"]),
        (vec!["hello", "--help"], vec!["--listen"]),
    ] {
        let out = Command::new(bin()).args(&cmd).output().unwrap();
        assert!(out.status.success(), "{cmd:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        for word in must_mention {
            assert!(
                text.contains(word),
                "`kakuremichi {}` does not mention {word}:\n{text}",
                cmd.join(" ")
            );
        }
    }
}

#[test]
fn missing_or_bad_settings_fail_with_a_clear_message() {
    /// Arguments, environment, and a word the error message must contain.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 4] = [
        (
            &["agent"],
            &[("CONTROL_URL", "http://127.0.0.1:1"), ("API_KEY", "")],
            "API_KEY",
        ),
        (
            &["agent"],
            &[("CONTROL_URL", "ftp://x"), ("API_KEY", "kma_x")],
            "CONTROL_URL",
        ),
        (
            &["gateway", "--http-listen", "127.0.0.1:0"],
            &[
                ("CONTROL_URL", "control.example.com"),
                ("GATEWAY_TOKEN", "kmg_x"),
            ],
            "CONTROL_URL",
        ),
        (
            &[
                "control",
                "--listen",
                "127.0.0.1:0",
                "--wg-network",
                "banana",
            ],
            &[("KAKUREMICHI_DATA_DIR", "/tmp/km-never-created")],
            "banana",
        ),
    ];
    for (args, env, mention) in cases {
        let out = Command::new(bin())
            .args(args)
            .envs(env.iter().copied())
            .env_remove("KAKUREMICHI_DATA_DIR")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(mention),
            "{args:?}: error does not mention {mention}: {err}"
        );
    }
}
