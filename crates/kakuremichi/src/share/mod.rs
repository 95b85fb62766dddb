//! `kakuremichi share 3000`: a temporary tunnel in one command, like `ngrok http 3000`. Control
//! makes an Agent and a tunnel at a random name under its temporary domain; this process runs
//! that Agent in the foreground, prints the URL once the tunnel is served, and on Ctrl-C,
//! SIGTERM or a lost terminal (SIGHUP) deletes both. If it is killed outright, Control deletes
//! them once the Agent has been offline for its `KAKUREMICHI_TEMPORARY_TTL`.
//!
//! Between the Agent and the app sits [`console`], which prints a line per request.

mod console;

use crate::exit::Exit;
use crate::manage::{parse_access, refused};
use crate::session::ApiArgs;
use anyhow::Context as _;
use clap::Args;
use kakuremichi_client::{Client, Method};
use kakuremichi_node::Secret;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// How long the tunnel may take to be served once made (a certificate ordered from a public
/// CA included).
const SERVED_WITHIN: Duration = Duration::from_secs(180);
/// How often Control is asked whether it is served yet.
const POLL: Duration = Duration::from_millis(100);

#[derive(Args)]
pub struct ShareArgs {
    /// The local app: a port (3000), host:port (localhost:3000) or a URL (http://localhost:3000).
    #[arg(value_name = "PORT|ADDRESS|URL")]
    target: String,
    #[command(flatten)]
    options: ShareOptions,
}

/// `kakuremichi agent tunnel --port 3000 --temporary`: the requirement documents' spelling of
/// `kakuremichi share 3000`.
#[derive(Args)]
pub struct AgentTunnelArgs {
    /// The local port of the app.
    #[arg(long)]
    port: u16,
    /// Required: this command makes temporary tunnels only (deleted when it stops); a lasting
    /// one is `kakuremichi tunnels create`.
    #[arg(long, required = true)]
    temporary: bool,
    #[command(flatten)]
    options: ShareOptions,
}

impl From<AgentTunnelArgs> for ShareArgs {
    fn from(a: AgentTunnelArgs) -> ShareArgs {
        ShareArgs {
            target: a.port.to_string(),
            options: a.options,
        }
    }
}

/// What `share` and `agent tunnel --temporary` share.
#[derive(Args)]
pub struct ShareOptions {
    /// A name of your own instead of a random one: <NAME>.<Control's temporary domain>.
    #[arg(long)]
    name: Option<String>,
    /// Who may open it: public (the default: anyone who has the URL), me (only you, after
    /// signing in), login (any user of this Control) or users:a@example.com,b@example.com.
    #[arg(long, value_name = "ACCESS", default_value = "public")]
    access: String,
    /// Delete it after this long even if this command still runs: 90s, 30m, 2h, 1d (1 minute to
    /// 7 days).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    expires: Option<Duration>,
    /// Ask visitors for this user name and password (HTTP Basic authentication at the
    /// Gateways; the app never sees them). The password: 8 to 128 characters.
    #[arg(long, value_name = "USER:PASSWORD")]
    basic_auth: Option<String>,
    #[command(flatten)]
    api: ApiArgs,
}

/// `90s`, `30m`, `2h`, `1d` (a bare number is seconds).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit, e.g. 30m or 2h"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// The app's address for plain HTTP (`3000` → `localhost:3000`, `http://app:8080/` →
/// `app:8080`), or `None` for what the console cannot carry (an `https://` target, which the
/// Agent then dials itself).
fn http_app(given: &str) -> Option<String> {
    if let Ok(port) = given.parse::<u16>() {
        return Some(format!("localhost:{port}"));
    }
    if given.starts_with("https://") {
        return None;
    }
    let rest = given.strip_prefix("http://").unwrap_or(given);
    let host_port = rest.split('/').next().unwrap_or(rest);
    Some(
        if host_port
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            host_port.to_string()
        } else {
            format!("{host_port}:80")
        },
    )
}

pub async fn run(
    ShareArgs {
        target,
        options: args,
    }: ShareArgs,
) -> anyhow::Result<()> {
    let client = args.api.client()?;
    let access = match args.access.as_str() {
        "me" => {
            let me = client
                .me()
                .await
                .map_err(|e| refused(e, "reading who you are"))?;
            let email = me["user"]["email"].as_str().unwrap_or_default();
            parse_access(&format!("users:{email}"))
        }
        other => parse_access(other),
    }
    .map_err(|e| Exit::usage(format!("--access {}: {e}", args.access)))?;
    let public = matches!(access, kakuremichi_proto::AccessPolicy::Public);
    // The Agent sends the traffic through the console, which prints each request.
    let (target, shown_target) = match http_app(&target) {
        Some(app) => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let local = listener.local_addr()?.to_string();
            tokio::spawn(console::serve(listener, app.clone(), |line| {
                println!("{line}")
            }));
            (local, app)
        }
        None => (target.clone(), target.clone()),
    };
    let mut body = json!({
        "target": target,
        "access": serde_json::to_value(&access)?,
    });
    if let Some(name) = &args.name {
        body["name"] = name.as_str().into();
    }
    if let Some(d) = args.expires {
        body["expires_in"] = d.as_secs().into();
    }
    if let Some(credentials) = &args.basic_auth {
        body["basic_auth"] = credentials.as_str().into();
    }
    let started = Instant::now();
    let made = client
        .call(Method::POST, "shares", Some(&body))
        .await
        .map_err(|e| refused(e, "making the temporary tunnel"))?;
    let share = Share::of(&client, &made)?;
    let key = made["agent"]["api_key"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let config = kakuremichi_agent::AgentConfig::new(client.base(), Secret::new(key));
    let (stop_agent, agent_stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(kakuremichi_agent::run(config, async {
        let _ = agent_stopped.await;
    }));
    // One stop signal for the whole run: a Ctrl-C while waiting ends it as well as one after.
    let stop = stopped();
    tokio::pin!(stop);
    let outcome = tokio::select! {
        served = share.wait_served() => served.map(|urls| {
            println!("Forwarding  {}  ->  {shown_target}", urls.join("  "));
            if let Some(qr) = urls.first().and_then(|u| qr_code(u)) {
                println!("{qr}");
            }
            eprintln!("(served {} ms after this command started; Ctrl-C stops it and deletes it)",
                started.elapsed().as_millis());
            if public && args.basic_auth.is_none() {
                eprintln!("Anyone who has the URL can open it; --access me lets only you in.");
            }
            true
        }),
        () = &mut stop => Ok(false),
    };
    let mut agent = Some(agent);
    if matches!(outcome, Ok(true)) {
        // Until Ctrl-C, SIGTERM or a lost terminal; or the Agent ending on its own.
        if let Some(running) = agent.as_mut() {
            tokio::select! {
                () = &mut stop => {}
                ended = running => {
                    agent = None;
                    eprintln!("The Agent stopped ({}); deleting the tunnel.", match ended {
                        Ok(Ok(())) => "done".to_string(),
                        Ok(Err(e)) => format!("{e:#}"),
                        Err(e) => e.to_string(),
                    });
                }
            }
        }
    }
    // Deleted first, so the URL stops answering at once; then the Agent stops.
    let deleted = share.delete().await;
    let _ = stop_agent.send(());
    if let Some(running) = agent {
        let _ = tokio::time::timeout(Duration::from_secs(5), running).await;
    }
    outcome?;
    deleted?;
    eprintln!("Stopped: {} is deleted.", share.hostname);
    Ok(())
}

/// `url` as a QR code of Unicode half blocks, for a phone's camera; only on a terminal.
fn qr_code(url: &str) -> Option<String> {
    use std::io::IsTerminal as _;
    if !std::io::stdout().is_terminal() {
        return None;
    }
    let code = qrcode::QrCode::new(url.as_bytes()).ok()?;
    Some(
        code.render::<qrcode::render::unicode::Dense1x2>()
            .quiet_zone(true)
            .build(),
    )
}

/// The temporary tunnel made, as this command follows it.
struct Share {
    client: Client,
    id: i64,
    tunnel_id: i64,
    hostname: String,
}

impl Share {
    fn of(client: &Client, made: &Value) -> anyhow::Result<Share> {
        let id = made["id"].as_i64();
        let tunnel_id = made["tunnel"]["id"].as_i64();
        let hostname = made["tunnel"]["hostname"].as_str();
        match (id, tunnel_id, hostname) {
            (Some(id), Some(tunnel_id), Some(h)) => Ok(Share {
                client: client.clone(),
                id,
                tunnel_id,
                hostname: h.to_string(),
            }),
            _ => anyhow::bail!("Control's answer lacks the tunnel: {made}"),
        }
    }

    /// Waits until Control reports the tunnel served (its Agent online, a Gateway enabled); its
    /// public URLs.
    async fn wait_served(&self) -> anyhow::Result<Vec<String>> {
        let deadline = Instant::now() + SERVED_WITHIN;
        loop {
            let status = self.client.status().await.context("asking Control")?;
            let served = status["tunnels"].as_array().is_some_and(|ts| {
                ts.iter()
                    .any(|t| t["id"].as_i64() == Some(self.tunnel_id) && t["reachable"] == true)
            });
            let mut waiting_for = "its Agent and a Gateway online".to_string();
            if served {
                let tunnel = self
                    .client
                    .tunnel(self.tunnel_id)
                    .await
                    .context("asking Control")?;
                // Printed when it works: over HTTPS, once the certificate is on the Gateways.
                let cert = &tunnel["certificate"];
                if tunnel["tls"] == "off" || cert["status"] == "issued" {
                    let urls: Vec<String> = tunnel["public_urls"]
                        .as_array()
                        .map(|u| {
                            u.iter()
                                .filter_map(|v| v.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default();
                    return Ok(urls);
                }
                waiting_for = format!(
                    "its certificate (status {}; {})",
                    cert["status"].as_str().unwrap_or("none yet"),
                    cert["last_error"].as_str().unwrap_or("no error")
                );
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "the tunnel was not served within {}s: waited for {waiting_for} (see \
                     `kakuremichi status`)",
                    SERVED_WITHIN.as_secs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn delete(&self) -> anyhow::Result<()> {
        let path = format!("shares/{}", self.id);
        match self.client.call(Method::DELETE, &path, None).await {
            Ok(_) => Ok(()),
            // Swept or deleted by hand already.
            Err(e) if e.status() == Some(kakuremichi_client::StatusCode::NOT_FOUND) => Ok(()),
            Err(e) => Err(anyhow::Error::new(e).context(format!(
                "could not delete {}; Control deletes it once its Agent has been offline for its TTL",
                self.hostname
            ))),
        }
    }
}

/// Resolves on Ctrl-C, SIGTERM or SIGHUP (the terminal closed); on Windows, on Ctrl-C.
#[cfg(not(unix))]
async fn stopped() {
    crate::signal::shutdown().await
}

/// Resolves on Ctrl-C, SIGTERM or SIGHUP (the terminal closed); on Windows, on Ctrl-C.
#[cfg(unix)]
async fn stopped() {
    use tokio::signal::unix::{signal, SignalKind};
    let hangup = signal(SignalKind::hangup());
    match hangup {
        Ok(mut hup) => {
            tokio::select! {
                () = crate::signal::shutdown() => {}
                _ = hup.recv() => {}
            }
        }
        Err(_) => crate::signal::shutdown().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_targets_read_as_documented() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        for bad in ["", "h", "2w", "-1m", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(http_app("3000").as_deref(), Some("localhost:3000"));
        assert_eq!(
            http_app("http://localhost:3000/").as_deref(),
            Some("localhost:3000")
        );
        assert_eq!(http_app("app:8080").as_deref(), Some("app:8080"));
        assert_eq!(http_app("http://app").as_deref(), Some("app:80"));
        assert_eq!(http_app("https://app:8443"), None);
    }
}
