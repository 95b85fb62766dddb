//! Control scale: N simulated Agents and M simulated Gateways hold node sessions while one tunnel's
//! hostname is changed K times; for each change, the time from sending the PATCH until the last
//! Gateway session has received a config routing the new hostname.
//!
//! The simulated nodes speak the real protocol (Hello with a fresh random public key, then read
//! every pushed snapshot and answer `applied`), so Control does exactly the work real nodes cause.
//!
//! Several Control replicas (`--url A,B`): node sessions are spread over them round-robin (node
//! `i` on replica `i mod n`, Gateways first, so they are spread evenly too), while every API call
//! (sign-in, settings, creating the nodes, the tunnel and its changes) goes through the first
//! URL: a change made on the first replica reaches the other replicas' Gateways through the
//! database, and the per-replica figures show that path apart.

use crate::{cpu_seconds, quantile, rss_mib};
use anyhow::{bail, Context};
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use kakuremichi_client::Client;
use kakuremichi_proto::{NodeMessage, NodeRole, CONNECT_PATH, PROTOCOL_VERSION};
use rand::RngCore;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args)]
pub struct Args {
    /// Control's base URL, e.g. http://127.0.0.1:8780; several replicas separated by commas
    /// (node sessions round-robin over them, API calls through the first).
    #[arg(long, value_delimiter = ',', required = true)]
    url: Vec<String>,
    #[arg(long)]
    email: String,
    #[arg(long, env = "LOADGEN_PASSWORD", hide_env_values = true)]
    password: String,
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    #[arg(long, default_value_t = 100)]
    gateways: usize,
    /// How many times the tunnel is changed.
    #[arg(long, default_value_t = 100)]
    changes: usize,
    /// API calls and session openings in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Control's process id, to report its memory and CPU; one per replica (commas), in the
    /// order of `--url`. The top-level figures are the sums over them.
    #[arg(long, value_delimiter = ',')]
    control_pid: Vec<u32>,
    /// A PostgreSQL URL of Control's database: its connections
    /// (`pg_stat_activity` of that database) are sampled every 500 ms and reported.
    #[arg(long, env = "LOADGEN_POSTGRES_URL", hide_env_values = true)]
    postgres_url: Option<String>,
    /// Give up on one change (or on setting up) after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
}

/// What a Gateway session reports: which Gateway, when, and the hostnames it now routes.
struct Seen {
    gateway: usize,
    at: Instant,
    hostnames: Vec<String>,
    /// The session ended (why): no later change can reach this Gateway, so the run fails.
    ended: Option<String>,
}

/// Node sessions that ended during the run (reported on stderr, the first few with their reason).
static ENDED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub async fn run(a: Args) -> anyhow::Result<Value> {
    let urls: Vec<String> = a
        .url
        .iter()
        .map(|u| u.trim().trim_end_matches('/').to_string())
        .filter(|u| !u.is_empty())
        .collect();
    if urls.is_empty() {
        bail!("--url names no Control");
    }
    let replicas = urls.len();
    let nofile = raise_nofile_limit();
    eprintln!("loadgen: open files limit {nofile}");
    let needed = (a.agents + a.gateways) as u64 + 256;
    if nofile < needed {
        bail!(
            "{} sessions need about {needed} open files, the limit is {nofile} (ulimit -Hn)",
            a.agents + a.gateways
        );
    }
    let pids = a.control_pid.clone();
    let cpu = |pids: &[u32]| pids.iter().map(|p| cpu_seconds(*p)).collect::<Vec<_>>();
    let postgres = match &a.postgres_url {
        Some(url) => Some(PgSampler::start(url).await?),
        None => None,
    };
    let base = urls[0].clone();
    let http = reqwest::Client::builder().no_proxy().build()?;
    let token_name = format!("loadgen-{}", rand::random::<u32>());
    let api = Api(Client::with_http(http, base.clone())
        .sign_in(&a.email, &a.password, &token_name)
        .await
        .context("signing in")?);
    // The load is the point here: lift the per-user API rate limit (600/min by default) on the
    // benchmark's Control, or the node creations below would be answered 429. (Agents and
    // Gateways an admin creates count against no quota.)
    api.call(
        reqwest::Method::PATCH,
        "settings",
        json!({"api_requests_per_minute": 1_000_000}),
    )
    .await
    .context("raising api_requests_per_minute for the load")?;
    let run_id = rand::random::<u32>();
    let timeout = Duration::from_secs(a.timeout_secs);

    // 1. Create the nodes through the API, several calls in flight.
    let started = Instant::now();
    let gateways: Vec<Value> = api
        .create_many("gateways", a.gateways, a.concurrency, |i| {
            json!({"name": format!("lg{run_id}-gw{i}"), "public_endpoint": format!("127.0.0.1:{}", 20000 + i)})
        })
        .await?;
    let agents: Vec<Value> = api
        .create_many(
            "agents",
            a.agents,
            a.concurrency,
            |i| json!({"name": format!("lg{run_id}-ag{i}")}),
        )
        .await?;
    let create_s = started.elapsed().as_secs_f64();
    eprintln!(
        "loadgen: created {} gateways and {} agents in {create_s:.1}s",
        gateways.len(),
        agents.len()
    );
    let cpu_before_sessions = cpu(&pids);

    // 2. Open every session (node i on replica i mod n); wait until each has its first config.
    let ws_bases: Vec<String> = urls
        .iter()
        .map(|u| format!("{}{}", u.replacen("http", "ws", 1), CONNECT_PATH))
        .collect();
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<Seen>();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<()>();
    let mut nodes: Vec<(NodeRole, String, Option<usize>)> = Vec::new();
    for (i, g) in gateways.iter().enumerate() {
        nodes.push((NodeRole::Gateway, str_field(g, "token")?, Some(i)));
    }
    for ag in &agents {
        nodes.push((NodeRole::Agent, str_field(ag, "api_key")?, None));
    }
    let total = nodes.len();
    let sessions_per_replica: Vec<usize> = (0..replicas)
        .map(|r| (0..total).filter(|i| i % replicas == r).count())
        .collect();
    let gateway_replica: Vec<usize> = (0..a.gateways).map(|i| i % replicas).collect();
    let started = Instant::now();
    let opened =
        futures_util::stream::iter(nodes.into_iter().enumerate().map(|(i, (role, cred, gw))| {
            let url = ws_bases[i % replicas].clone();
            let seen = seen_tx.clone();
            let ready = ready_tx.clone();
            async move { open_session(&url, role, &cred, gw, seen, ready).await }
        }))
        .buffer_unordered(a.concurrency)
        .collect::<Vec<_>>()
        .await;
    for r in opened {
        r?;
    }
    drop(ready_tx);
    let mut ready = 0;
    while ready < total {
        match tokio::time::timeout_at((Instant::now() + timeout).into(), ready_rx.recv()).await {
            Ok(Some(())) => ready += 1,
            Ok(None) => bail!("sessions ended before all had their config ({ready}/{total})"),
            Err(_) => {
                bail!("only {ready} of {total} sessions received a config within {timeout:?}")
            }
        }
    }
    let sessions_s = started.elapsed().as_secs_f64();
    let cpu_after_sessions = cpu(&pids);
    eprintln!("loadgen: {total} sessions up with their config in {sessions_s:.1}s");

    // 3. A tunnel on the first Agent, then K changes of its hostname.
    let agent_id = agents[0]["id"].as_i64().context("agent id")?;
    let first = format!("lg{run_id}-0.bench.test");
    let create_latency_started = Instant::now();
    // `tls: off` keeps Control from ordering certificates for these made-up names; a Control
    // without HTTPS support rejects the unknown field, so retry without it.
    let body = json!({"hostname": first, "agent_id": agent_id, "target": "127.0.0.1:9"});
    let mut with_tls = body.clone();
    with_tls["tls"] = json!("off");
    let tunnel = match api.call(reqwest::Method::POST, "tunnels", with_tls).await {
        Ok(t) => t,
        Err(e)
            if e.downcast_ref::<kakuremichi_client::Error>()
                .and_then(kakuremichi_client::Error::status)
                == Some(reqwest::StatusCode::BAD_REQUEST) =>
        {
            api.call(reqwest::Method::POST, "tunnels", body).await?
        }
        Err(e) => return Err(e),
    };
    let tunnel_id = tunnel["id"].as_i64().context("tunnel id")?;
    wait_all(
        &mut seen_rx,
        &gateway_replica,
        replicas,
        &first,
        create_latency_started,
        timeout,
    )
    .await?;
    // Let the pushes caused by the sessions' arrival die down, so each change is measured alone.
    let quiet_deadline = Instant::now() + timeout;
    while Instant::now() < quiet_deadline {
        match tokio::time::timeout(Duration::from_millis(500), seen_rx.recv()).await {
            Err(_) => break,
            Ok(Some(Seen {
                gateway,
                ended: Some(why),
                ..
            })) => bail!("Gateway {gateway}'s session ended: {why}"),
            Ok(Some(_)) => continue,
            Ok(None) => bail!("Gateway sessions ended"),
        }
    }

    let cpu_before = cpu(&pids);
    let started = Instant::now();
    let mut latencies_ms = Vec::with_capacity(a.changes);
    let mut per_replica_ms: Vec<Vec<f64>> = vec![Vec::with_capacity(a.changes); replicas];
    for k in 1..=a.changes {
        let host = format!("lg{run_id}-{k}.bench.test");
        let t0 = Instant::now();
        api.call(
            reqwest::Method::PATCH,
            &format!("tunnels/{tunnel_id}"),
            json!({"hostname": host}),
        )
        .await?;
        let took = wait_all(&mut seen_rx, &gateway_replica, replicas, &host, t0, timeout).await?;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        latencies_ms.push(took.iter().copied().map(ms).fold(0.0, f64::max));
        for (r, d) in took.into_iter().enumerate() {
            per_replica_ms[r].push(ms(d));
        }
    }
    let changes_s = started.elapsed().as_secs_f64();
    let cpu_changes: Vec<f64> = cpu(&pids)
        .iter()
        .zip(&cpu_before)
        .map(|(after, before)| after - before)
        .collect();
    let rss: Vec<f64> = pids.iter().map(|p| rss_mib(*p)).collect();
    let rss_peak: Vec<f64> = pids.iter().map(|p| peak_rss_mib(*p)).collect();
    let _ = api
        .call(
            reqwest::Method::DELETE,
            &format!("tunnels/{tunnel_id}"),
            Value::Null,
        )
        .await;
    let pg = match postgres {
        Some(sampler) => Some(sampler.finish().await?),
        None => None,
    };

    let mut sorted = latencies_ms.clone();
    sorted.sort_by(|x, y| x.total_cmp(y));
    let cpu_sessions: Vec<f64> = cpu_after_sessions
        .iter()
        .zip(&cpu_before_sessions)
        .map(|(after, before)| after - before)
        .collect();
    let per_replica: Vec<Value> = urls
        .iter()
        .enumerate()
        .map(|(r, url)| {
            let mut ms = per_replica_ms[r].clone();
            ms.sort_by(|x, y| x.total_cmp(y));
            let mut v = json!({
                "url": url,
                "sessions": sessions_per_replica[r],
                "gateways": gateway_replica.iter().filter(|g| **g == r).count(),
                "propagation_p50_ms": quantile(&ms, 0.5),
                "propagation_p99_ms": quantile(&ms, 0.99),
                "propagation_max_ms": ms.last().copied().unwrap_or(0.0),
            });
            if let Some(pid) = pids.get(r) {
                v["pid"] = json!(pid);
                v["rss_mib"] = json!(rss[r]);
                v["rss_peak_mib"] = json!(rss_peak[r]);
                v["cpu_s_sessions"] = json!(cpu_sessions[r]);
                v["cpu_s_changes"] = json!(cpu_changes[r]);
            }
            v
        })
        .collect();
    let mut out = json!({
        "gateways": a.gateways,
        "agents": a.agents,
        "changes": a.changes,
        "create_s": create_s,
        "sessions_s": sessions_s,
        "propagation_p50_ms": quantile(&sorted, 0.5),
        "propagation_p95_ms": quantile(&sorted, 0.95),
        "propagation_p99_ms": quantile(&sorted, 0.99),
        "propagation_max_ms": sorted.last().copied().unwrap_or(0.0),
        "changes_s": changes_s,
        "control_rss_mib": rss.iter().sum::<f64>(),
        "control_cpu_s_sessions": cpu_sessions.iter().sum::<f64>(),
        "control_cpu_s_changes": cpu_changes.iter().sum::<f64>(),
        "replicas": per_replica,
        "open_files_limit": nofile,
    });
    if let Some((end, peak)) = pg {
        out["postgres_connections"] = json!(end);
        out["postgres_connections_peak"] = json!(peak);
    }
    Ok(out)
}

/// Raises the soft limit of open files to the hard one (each session is a socket) and returns
/// the limit now in force.
fn raise_nofile_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    #[allow(clippy::unnecessary_cast)] // `rlim_t` is narrower than u64 on some targets
    let current = limit.rlim_cur as u64;
    current
}

/// Peak resident memory (VmHWM) of a process in MiB, from /proc (0 if unreadable).
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

/// Counts the connections to Control's PostgreSQL database (`pg_stat_activity`, this sampler's
/// own excluded) every 500 ms until finished.
struct PgSampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<(i64, i64)>>,
}

impl PgSampler {
    const COUNT: &'static str = "SELECT count(*) FROM pg_stat_activity \
        WHERE datname = current_database() AND pid <> pg_backend_pid()";

    async fn start(url: &str) -> anyhow::Result<Self> {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(url)
            .await
            .context("connecting to --postgres-url")?;
        let first: i64 = sqlx::query_scalar(Self::COUNT)
            .fetch_one(&mut conn)
            .await
            .context("reading pg_stat_activity")?;
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut peak = first;
            loop {
                let now: i64 = sqlx::query_scalar(Self::COUNT).fetch_one(&mut conn).await?;
                peak = peak.max(now);
                tokio::select! {
                    _ = &mut stopped => return Ok((now, peak)),
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        });
        Ok(Self { stop, task })
    }

    /// The count now and the highest one seen.
    async fn finish(self) -> anyhow::Result<(i64, i64)> {
        let _ = self.stop.send(());
        self.task.await?
    }
}

/// Waits until every Gateway has reported a config that routes `host`; returns, per replica,
/// the time since `t0` at which the last of its Gateways did (`gateway_replica[g]` is Gateway
/// `g`'s replica).
async fn wait_all(
    seen: &mut mpsc::UnboundedReceiver<Seen>,
    gateway_replica: &[usize],
    replicas: usize,
    host: &str,
    t0: Instant,
    timeout: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let gateways = gateway_replica.len();
    let mut have = vec![false; gateways];
    let mut count = 0;
    let mut last = vec![t0; replicas];
    while count < gateways {
        let s = match tokio::time::timeout_at((t0 + timeout).into(), seen.recv()).await {
            Ok(Some(s)) => s,
            Ok(None) => bail!("Gateway sessions ended"),
            Err(_) => bail!(
                "{host}: only {count} of {gateways} Gateways had the change after {timeout:?}"
            ),
        };
        if let Some(why) = s.ended {
            bail!("Gateway {}'s session ended: {why}", s.gateway);
        }
        if !have[s.gateway] && s.hostnames.iter().any(|h| h == host) {
            have[s.gateway] = true;
            count += 1;
            let r = gateway_replica[s.gateway];
            last[r] = last[r].max(s.at);
        }
    }
    Ok(last
        .into_iter()
        .map(|at| at.saturating_duration_since(t0))
        .collect())
}

/// Opens one node session and spawns the task that keeps reading it.
async fn open_session(
    url: &str,
    role: NodeRole,
    credential: &str,
    gateway: Option<usize>,
    seen: mpsc::UnboundedSender<Seen>,
    ready: mpsc::UnboundedSender<()>,
) -> anyhow::Result<()> {
    let mut request = url.into_client_request()?;
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {credential}"))?,
    );
    let mut last_err = None;
    let mut ws = None;
    for attempt in 0..5u64 {
        match tokio::time::timeout(
            Duration::from_secs(30),
            tokio_tungstenite::connect_async(request.clone()),
        )
        .await
        {
            Ok(Ok((s, _))) => {
                ws = Some(s);
                break;
            }
            Ok(Err(e)) => last_err = Some(e.to_string()),
            Err(_) => last_err = Some("timed out".into()),
        }
        tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
    }
    let Some(mut ws) = ws else {
        bail!(
            "cannot open a node session: {}",
            last_err.unwrap_or_default()
        );
    };
    let mut key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut key);
    let hello = NodeMessage::Hello {
        protocol_version: PROTOCOL_VERSION,
        role,
        public_key: base64::engine::general_purpose::STANDARD.encode(key),
        config_hash: None,
        software: "kakuremichi-loadgen".into(),
    };
    ws.send(Message::text(hello.encode())).await?;
    tokio::spawn(async move {
        let mut first = true;
        let ended = loop {
            let msg = match ws.next().await {
                Some(Ok(Message::Close(frame))) => {
                    break format!("closed by Control: {frame:?}");
                }
                Some(Ok(msg)) => msg,
                Some(Err(e)) => break e.to_string(),
                None => break "connection closed".to_string(),
            };
            let Message::Text(text) = msg else { continue };
            let at = Instant::now();
            // Only what is measured is read: a Gateway's snapshot names every Agent as a peer
            // (about 1.3 MB with 10,000 of them), and a full parse of each push would make the
            // load generator, not Control, the bottleneck on a small machine.
            let Ok(m) = serde_json::from_str::<Pushed>(text.as_str()) else {
                continue;
            };
            match m.kind.as_str() {
                "config" => {
                    let snapshot = m.snapshot.unwrap_or_default();
                    if let Some(gateway) = gateway {
                        let _ = seen.send(Seen {
                            gateway,
                            at,
                            hostnames: snapshot.hostnames,
                            ended: None,
                        });
                    }
                    if first {
                        first = false;
                        let _ = ready.send(());
                    }
                    if let Some(hash) = snapshot.config_hash {
                        let applied = NodeMessage::Applied { config_hash: hash };
                        if let Err(e) = ws.send(Message::text(applied.encode())).await {
                            break format!("sending applied: {e}");
                        }
                    }
                }
                "error" => break format!("Control ended the session: {text}"),
                _ => {}
            }
        };
        let n = ENDED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if n <= 5 || n.is_power_of_two() {
            eprintln!("loadgen: {n} node sessions ended so far; {role:?} session: {ended}");
        }
        if let Some(gateway) = gateway {
            let _ = seen.send(Seen {
                gateway,
                at: Instant::now(),
                hostnames: Vec::new(),
                ended: Some(ended),
            });
        }
    });
    Ok(())
}

/// The parts of a message from Control the load generator reads (the rest is skipped unparsed).
#[derive(serde::Deserialize)]
struct Pushed {
    #[serde(rename = "type")]
    kind: String,
    snapshot: Option<PushedSnapshot>,
}

#[derive(serde::Deserialize, Default)]
struct PushedSnapshot {
    config_hash: Option<String>,
    /// A Gateway's hostnames (the keys of its routes).
    #[serde(default)]
    hostnames: Vec<String>,
}

fn str_field(v: &Value, key: &str) -> anyhow::Result<String> {
    v[key]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no `{key}` in {v}"))
}

/// Control's API through the shared client, with `anyhow` errors and several calls in flight.
struct Api(Client);

impl Api {
    /// `method` on `/api/v1/{path}`; a `Null` body sends none.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> anyhow::Result<Value> {
        let body = (!body.is_null()).then_some(body);
        Ok(self.0.call(method, path, body.as_ref()).await?)
    }

    async fn create_many(
        &self,
        what: &str,
        n: usize,
        concurrency: usize,
        body: impl Fn(usize) -> Value,
    ) -> anyhow::Result<Vec<Value>> {
        let results = futures_util::stream::iter(
            (0..n).map(|i| self.call(reqwest::Method::POST, what, body(i))),
        )
        .buffered(concurrency)
        .collect::<Vec<_>>()
        .await;
        results.into_iter().collect()
    }
}
