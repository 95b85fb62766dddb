//! `kakuremichi up`: Control, one Gateway, one Agent and a demo app in one process, on
//! localhost, with SQLite in `./data`. For a first try and for development.
//!
//! On first start it creates the admin, a personal API token, the gateway, the agent and a demo
//! tunnel `hello.localhost` through Control's own REST API, and keeps their credentials in
//! `<data-dir>/up.json` (mode 0600) so later starts reuse them.

use crate::cli::{bind_tcp, bind_udp};
use crate::signal;
use anyhow::{bail, Context};
use clap::Args;
use kakuremichi::hello;
use kakuremichi_node::Secret;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(Args)]
pub struct UpArgs {
    /// Directory for everything `up` keeps (database, keys, cached configs, credentials).
    #[arg(long, env = "KAKUREMICHI_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Control's API address.
    #[arg(long, default_value = "127.0.0.1:8780")]
    control_listen: SocketAddr,
    /// The Gateway's public HTTP address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_listen: SocketAddr,
    /// The Gateway's public HTTPS address (certificates from Control's internal CA).
    #[arg(long, default_value = "127.0.0.1:8443")]
    https_listen: SocketAddr,
    /// The Gateway's WireGuard (UDP) address.
    #[arg(long, default_value = "127.0.0.1:51820")]
    wg_listen: SocketAddr,
    /// The Gateway's health endpoint.
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin_listen: SocketAddr,
    /// The demo app's address.
    #[arg(long, default_value = "127.0.0.1:8781")]
    hello_listen: SocketAddr,
}

/// Credentials `up` created on first start.
#[derive(Serialize, Deserialize)]
struct UpState {
    admin_email: String,
    admin_password: String,
    api_token: String,
    gateway_token: String,
    agent_id: i64,
    agent_key: String,
}

const DEMO_HOST: &str = "hello.localhost";

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let control_listener = bind_tcp(args.control_listen, "--control-listen").await?;
    let http = bind_tcp(args.http_listen, "--http-listen").await?;
    let https = bind_tcp(args.https_listen, "--https-listen").await?;
    let admin = bind_tcp(args.admin_listen, "--admin-listen").await?;
    let wg = bind_udp(args.wg_listen, "--wg-listen")?;
    let hello_listener = bind_tcp(args.hello_listen, "--hello-listen").await?;
    let control_addr = control_listener.local_addr()?;
    let http_addr = http.local_addr()?;
    let https_addr = https.local_addr()?;
    let wg_addr = wg.local_addr()?;
    let hello_addr = hello_listener.local_addr()?;
    let control_url = format!("http://{control_addr}");

    let state_path = args.data_dir.join("up.json");
    let existing = read_state(&state_path)?;
    let first_run = existing.is_none();
    let bootstrap_password = existing
        .as_ref()
        .map(|s| s.admin_password.clone())
        .unwrap_or_else(random_password);

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let control_dir = args.data_dir.join("control");
    let ca_root = kakuremichi_control::internal_ca_root(&control_dir);
    let control_config = kakuremichi_control::ControlConfig {
        data_dir: control_dir,
        // Local names cannot get public certificates: every tunnel uses the internal CA.
        default_tls: kakuremichi_control::TlsMode::Internal,
        public_url: Some(control_url.clone()),
        admin_email: Some("admin@localhost".into()),
        admin_password: Some(bootstrap_password.clone()),
        ..Default::default()
    };
    let control = tokio::spawn(kakuremichi_control::run(
        control_config,
        control_listener,
        stopped(),
    ));
    let client = reqwest::Client::new();
    wait_ready(&client, &control_url, &control).await?;

    let state = match existing {
        Some(s) => s,
        None => {
            let s = bootstrap(
                &client,
                &control_url,
                bootstrap_password,
                wg_addr,
                hello_addr,
            )
            .await?;
            write_state(&state_path, &s)?;
            s
        }
    };

    let hello_task = tokio::spawn(hello::serve(
        hello_listener,
        "kakuremichi up".into(),
        stopped(),
    ));
    let mut gateway_config = kakuremichi_gateway::GatewayConfig::new(
        control_url.clone(),
        Secret::new(state.gateway_token.clone()),
    );
    gateway_config.data_dir = Some(args.data_dir.join("gateway"));
    let listeners = kakuremichi_gateway::GatewayListeners {
        http,
        https,
        admin,
        wg,
    };
    let gateway = tokio::spawn(kakuremichi_gateway::run(
        gateway_config,
        listeners,
        stopped(),
    ));
    let mut agent_config = kakuremichi_agent::AgentConfig::new(
        control_url.clone(),
        Secret::new(state.agent_key.clone()),
    );
    agent_config.data_dir = Some(args.data_dir.join("agent"));
    // The fallback for blocked UDP goes to this Gateway's HTTPS listener.
    agent_config.wg_fallback_port = https_addr.port();
    let agent = tokio::spawn(kakuremichi_agent::run(agent_config, stopped()));

    print_banner(
        &state,
        &control_url,
        (http_addr, https_addr),
        first_run,
        (&state_path, &ca_root),
    );

    signal::shutdown().await;
    let _ = stop_tx.send(true);
    for (name, task) in [("agent", agent), ("gateway", gateway), ("control", control)] {
        match task.await {
            Ok(Err(e)) => tracing::error!("{name} stopped with an error: {e:#}"),
            Err(e) => tracing::error!("{name} task failed: {e}"),
            Ok(Ok(())) => {}
        }
    }
    let _ = hello_task.await;
    Ok(())
}

async fn wait_ready(
    client: &reqwest::Client,
    control_url: &str,
    control: &tokio::task::JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if control.is_finished() {
            bail!("Control stopped during start-up; see the log above");
        }
        if let Ok(r) = client.get(format!("{control_url}/readyz")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("Control did not become ready within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates the token, gateway, agent and demo tunnel through the REST API.
async fn bootstrap(
    client: &reqwest::Client,
    control_url: &str,
    admin_password: String,
    wg_addr: SocketAddr,
    hello_addr: SocketAddr,
) -> anyhow::Result<UpState> {
    let admin_email = "admin@localhost".to_string();
    let login = client
        .post(format!("{control_url}/api/v1/auth/login"))
        .json(&json!({"email": admin_email, "password": admin_password}))
        .send()
        .await?;
    if !login.status().is_success() {
        bail!(
            "cannot sign in as {admin_email} (HTTP {}): the database in the data directory has other \
             credentials; use another --data-dir or remove it to start over",
            login.status()
        );
    }
    let cookie = login
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.split(';').next().filter(|c| c.contains("km_session=")))
        .context("Control did not set a session cookie")?
        .to_string();
    // A cookie-authenticated write must carry the session's CSRF token.
    let login: Value = login.json().await?;
    let csrf = login["csrf_token"]
        .as_str()
        .context("no csrf_token in the login response")?
        .to_string();
    let post = |path: &str, body: Value, auth: Vec<(&'static str, String)>| {
        let mut request = client
            .post(format!("{control_url}/api/v1/{path}"))
            .json(&body);
        for (name, value) in auth {
            request = request.header(name, value);
        }
        async move {
            let resp = request.send().await?;
            let status = resp.status();
            let value: Value = resp.json().await.unwrap_or(Value::Null);
            if !status.is_success() {
                bail!("bootstrap request failed (HTTP {status}): {value}");
            }
            Ok::<Value, anyhow::Error>(value)
        }
    };
    let token = post(
        "tokens",
        json!({"name": "kakuremichi up"}),
        vec![("cookie", cookie), ("x-csrf-token", csrf)],
    )
    .await?;
    let api_token = token["token"]
        .as_str()
        .context("no token in response")?
        .to_string();
    let bearer = || vec![("authorization", format!("Bearer {api_token}"))];
    let gateway = post(
        "gateways",
        json!({"name": "local", "public_endpoint": wg_addr.to_string()}),
        bearer(),
    )
    .await?;
    let agent = post("agents", json!({"name": "local"}), bearer()).await?;
    let agent_id = agent["id"].as_i64().context("no agent id in response")?;
    post(
        "tunnels",
        json!({"hostname": DEMO_HOST, "agent_id": agent_id, "target": hello_addr.to_string(), "tls": "internal"}),
        bearer(),
    )
    .await?;
    Ok(UpState {
        admin_email,
        admin_password,
        gateway_token: gateway["token"]
            .as_str()
            .context("no gateway token")?
            .to_string(),
        agent_key: agent["api_key"]
            .as_str()
            .context("no agent key")?
            .to_string(),
        agent_id,
        api_token,
    })
}

fn print_banner(
    state: &UpState,
    control_url: &str,
    (http_addr, https_addr): (SocketAddr, SocketAddr),
    first_run: bool,
    (state_path, ca_root): (&Path, &Path),
) {
    let port = http_addr.port();
    let tls_port = https_addr.port();
    let start = if first_run {
        "kakuremichi is up (first start: admin, gateway, agent and demo tunnel created)"
    } else {
        "kakuremichi is up"
    };
    println!(
        "\n{start}.\n\n\
         \x20 Web UI        {control_url}/   (sign in there with the line below)\n\
         \x20 Control API   {control_url}/api/v1\n\
         \x20 Sign in       {email} / {password}\n\
         \x20 API token     {token}\n\
         \x20 Demo app      https://{DEMO_HOST}:{tls_port}/   (Gateway -> WireGuard -> Agent -> app)\n\
         \x20               http://{DEMO_HOST}:{port}/ redirects there\n\
         \x20 HTTPS root    {ca}\n\
         \x20               (Control's internal CA: trust it in your browser, or\n\
         \x20                curl --cacert {ca} https://{DEMO_HOST}:{tls_port}/ )\n\n\
         Publish a local port, e.g. an app on localhost:3000:\n\n\
         \x20 curl -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \\\n\
         \x20      -d '{{\"hostname\":\"myapp.localhost\",\"agent_id\":{agent},\"target\":\"localhost:3000\"}}' \\\n\
         \x20      {control_url}/api/v1/tunnels\n\n\
         then open https://myapp.localhost:{tls_port}/  (any *.localhost name reaches this machine).\n\
         Credentials are kept in {path} (readable only by you). Ctrl-C stops everything.\n",
        email = state.admin_email,
        password = state.admin_password,
        token = state.api_token,
        agent = state.agent_id,
        path = state_path.display(),
        ca = ca_root.display(),
    );
}

fn random_password() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 12]>())
}

fn read_state(path: &Path) -> anyhow::Result<Option<UpState>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is damaged; remove it (and the data directory) to start over",
                path.display()
            )
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_state(path: &Path, state: &UpState) -> anyhow::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(serde_json::to_string_pretty(state)?.as_bytes())?;
    file.sync_all()?;
    Ok(())
}
