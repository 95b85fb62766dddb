//! Control scale: N simulated Agents and M simulated Gateways hold node sessions while one tunnel's
//! hostname is changed K times; for each change, the time from sending the PATCH until the last
//! Gateway session has received a config routing the new hostname.
//!
//! The simulated nodes speak the real protocol (Hello with a fresh random public key, then read
//! every pushed snapshot and answer `applied`), so Control does exactly the work real nodes cause.

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
    /// Control's base URL, e.g. http://127.0.0.1:8780.
    #[arg(long)]
    url: String,
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
    /// Control's process id, to report its memory and CPU.
    #[arg(long)]
    control_pid: Option<u32>,
    /// Give up on one change (or on setting up) after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
}

/// What a Gateway session reports: which Gateway, when, and the hostnames it now routes.
struct Seen {
    gateway: usize,
    at: Instant,
    hostnames: Vec<String>,
}

pub async fn run(a: Args) -> anyhow::Result<Value> {
    let base = a.url.trim_end_matches('/').to_string();
    let http = reqwest::Client::builder().no_proxy().build()?;
    let token_name = format!("loadgen-{}", rand::random::<u32>());
    let api = Api(Client::with_http(http, base.clone())
        .sign_in(&a.email, &a.password, &token_name)
        .await
        .context("signing in")?);
    // The load is the point here: lift the per-user API rate limit (600/min by default) on the
    // benchmark's Control, or the node creations below would be answered 429.
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
    let cpu_before_sessions = a.control_pid.map(cpu_seconds).unwrap_or(0.0);

    // 2. Open every session; wait until each has its first config.
    let ws_base = format!("{}{}", base.replacen("http", "ws", 1), CONNECT_PATH);
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
    let started = Instant::now();
    let opened = futures_util::stream::iter(nodes.into_iter().map(|(role, cred, gw)| {
        let url = ws_base.clone();
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
    let cpu_after_sessions = a.control_pid.map(cpu_seconds).unwrap_or(0.0);
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
        a.gateways,
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
            Ok(Some(_)) => continue,
            Ok(None) => bail!("Gateway sessions ended"),
        }
    }

    let cpu_before = a.control_pid.map(cpu_seconds).unwrap_or(0.0);
    let started = Instant::now();
    let mut latencies_ms = Vec::with_capacity(a.changes);
    for k in 1..=a.changes {
        let host = format!("lg{run_id}-{k}.bench.test");
        let t0 = Instant::now();
        api.call(
            reqwest::Method::PATCH,
            &format!("tunnels/{tunnel_id}"),
            json!({"hostname": host}),
        )
        .await?;
        let took = wait_all(&mut seen_rx, a.gateways, &host, t0, timeout).await?;
        latencies_ms.push(took.as_secs_f64() * 1e3);
    }
    let changes_s = started.elapsed().as_secs_f64();
    let cpu_changes = a.control_pid.map(cpu_seconds).unwrap_or(0.0) - cpu_before;
    let rss = a.control_pid.map(rss_mib).unwrap_or(0.0);
    let _ = api
        .call(
            reqwest::Method::DELETE,
            &format!("tunnels/{tunnel_id}"),
            Value::Null,
        )
        .await;

    let mut sorted = latencies_ms.clone();
    sorted.sort_by(|x, y| x.total_cmp(y));
    Ok(json!({
        "gateways": a.gateways,
        "agents": a.agents,
        "changes": a.changes,
        "create_s": create_s,
        "sessions_s": sessions_s,
        "propagation_p50_ms": quantile(&sorted, 0.5),
        "propagation_p99_ms": quantile(&sorted, 0.99),
        "propagation_max_ms": sorted.last().copied().unwrap_or(0.0),
        "changes_s": changes_s,
        "control_rss_mib": rss,
        "control_cpu_s_sessions": cpu_after_sessions - cpu_before_sessions,
        "control_cpu_s_changes": cpu_changes,
    }))
}

/// Waits until every Gateway has reported a config that routes `host`; returns the time since
/// `t0` at which the last one did.
async fn wait_all(
    seen: &mut mpsc::UnboundedReceiver<Seen>,
    gateways: usize,
    host: &str,
    t0: Instant,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let mut have = vec![false; gateways];
    let mut count = 0;
    let mut last = t0;
    while count < gateways {
        let s = match tokio::time::timeout_at((t0 + timeout).into(), seen.recv()).await {
            Ok(Some(s)) => s,
            Ok(None) => bail!("Gateway sessions ended"),
            Err(_) => bail!(
                "{host}: only {count} of {gateways} Gateways had the change after {timeout:?}"
            ),
        };
        if !have[s.gateway] && s.hostnames.iter().any(|h| h == host) {
            have[s.gateway] = true;
            count += 1;
            last = last.max(s.at);
        }
    }
    Ok(last.saturating_duration_since(t0))
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
        while let Some(Ok(msg)) = ws.next().await {
            let Message::Text(text) = msg else { continue };
            let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                continue;
            };
            match v["type"].as_str() {
                Some("config") => {
                    let at = Instant::now();
                    let snapshot = &v["snapshot"];
                    if let Some(gateway) = gateway {
                        let hostnames = snapshot["routes"]
                            .as_object()
                            .map(|m| m.keys().cloned().collect())
                            .unwrap_or_default();
                        let _ = seen.send(Seen {
                            gateway,
                            at,
                            hostnames,
                        });
                    }
                    if first {
                        first = false;
                        let _ = ready.send(());
                    }
                    if let Some(hash) = snapshot["config_hash"].as_str() {
                        let applied = NodeMessage::Applied {
                            config_hash: hash.to_string(),
                        };
                        if ws.send(Message::text(applied.encode())).await.is_err() {
                            break;
                        }
                    }
                }
                Some("error") => {
                    eprintln!("loadgen: Control ended a session: {text}");
                    break;
                }
                _ => {}
            }
        }
    });
    Ok(())
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
