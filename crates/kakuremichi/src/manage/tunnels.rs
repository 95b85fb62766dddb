//! `kakuremichi tunnels list|show|create|edit|enable|disable|delete`. A tunnel is named by its
//! id or its hostname.

use super::{cell, details, find_agent, find_id, list_table, parse_access, refused, Call};
use clap::{Args, Subcommand};
use kakuremichi_client::{Client, Method};
use kakuremichi_proto::AccessPolicy;
use serde_json::{json, Map, Value};

#[derive(Subcommand)]
pub enum TunnelsCommand {
    /// Every tunnel you may see, with its public URL.
    List(Call),
    /// One tunnel, every field.
    Show(OneTunnel),
    /// Publish an app: a hostname on the Gateways, served by an Agent's target.
    Create(CreateTunnel),
    /// Change a tunnel's target, TLS, access or limits; what is not given stays.
    Edit(EditTunnel),
    /// Serve a disabled tunnel again.
    Enable(OneTunnel),
    /// Stop serving a tunnel on every Gateway (kept, to enable later).
    Disable(OneTunnel),
    /// Delete a tunnel: its URL stops answering at once.
    Delete(OneTunnel),
}

#[derive(Args)]
pub struct OneTunnel {
    /// The tunnel's id or hostname.
    tunnel: String,
    #[command(flatten)]
    call: Call,
}

/// What `create` and `edit` share.
#[derive(Args, Default)]
pub struct TunnelFields {
    /// Where the Agent sends the traffic: host:port as the Agent sees it (localhost:8080,
    /// app:3000), or a URL such as http://app:3000.
    #[arg(long)]
    target: Option<String>,
    /// HTTPS certificate: acme (a public CA), internal (Control's own CA) or off.
    #[arg(long, value_name = "TLS")]
    tls: Option<kakuremichi_control::TlsMode>,
    /// Who may open it: public, login (any user of Control) or users:a@example.com,b@example.com.
    #[arg(long, value_name = "ACCESS", value_parser = parse_access)]
    access: Option<AccessPolicy>,
    /// For tcp/udp tunnels: the public port on every Gateway (default: one from Control's range).
    #[arg(long, value_name = "PORT")]
    public_port: Option<u16>,
    /// For tcp/tls tunnels: PROXY protocol toward the target (off, v1, v2).
    #[arg(long, value_name = "VERSION")]
    proxy_protocol: Option<String>,
    /// For tcp tunnels: connections open at once before new ones are refused.
    #[arg(long, value_name = "N")]
    max_connections: Option<u32>,
    /// For http tunnels: ask visitors for this user name and password (HTTP Basic
    /// authentication at the Gateways); `off` removes it.
    #[arg(long, value_name = "USER:PASSWORD")]
    basic_auth: Option<String>,
}

impl TunnelFields {
    fn into_body(self, mut body: Map<String, Value>) -> anyhow::Result<Value> {
        if let Some(t) = self.target {
            body.insert("target".into(), t.into());
        }
        if let Some(t) = self.tls {
            body.insert("tls".into(), t.as_str().into());
        }
        if let Some(a) = self.access {
            body.insert("access".into(), serde_json::to_value(a)?);
        }
        if let Some(p) = self.public_port {
            body.insert("public_port".into(), p.into());
        }
        if let Some(p) = self.proxy_protocol {
            body.insert("proxy_protocol".into(), p.into());
        }
        if let Some(m) = self.max_connections {
            body.insert("max_connections".into(), m.into());
        }
        match self.basic_auth.as_deref() {
            Some("off") => {
                body.insert("basic_auth".into(), Value::Null);
            }
            Some(credentials) => {
                body.insert("basic_auth".into(), credentials.into());
            }
            None => {}
        }
        Ok(Value::Object(body))
    }
}

#[derive(Args)]
pub struct CreateTunnel {
    /// The public hostname, e.g. app.example.com.
    #[arg(long)]
    hostname: String,
    /// The Agent that serves it: its name or id.
    #[arg(long)]
    agent: String,
    /// http (default), tcp, udp or tls (passthrough by SNI).
    #[arg(long, value_name = "PROTOCOL")]
    protocol: Option<String>,
    #[command(flatten)]
    fields: TunnelFields,
    #[command(flatten)]
    call: Call,
}

#[derive(Args)]
pub struct EditTunnel {
    /// The tunnel's id or hostname.
    tunnel: String,
    /// A new public hostname.
    #[arg(long)]
    hostname: Option<String>,
    #[command(flatten)]
    fields: TunnelFields,
    #[command(flatten)]
    call: Call,
}

/// The columns of `tunnels list`.
const LIST: (&[&str], &[&str]) = (
    &[
        "ID", "HOSTNAME", "PROTOCOL", "TARGET", "AGENT", "ENABLED", "URL",
    ],
    &[
        "id",
        "hostname",
        "protocol",
        "target",
        "agent_id",
        "enabled",
        "public_urls",
    ],
);
/// The first lines of `tunnels show`.
const SHOW: &[&str] = &[
    "id",
    "hostname",
    "public_urls",
    "public_addresses",
    "protocol",
    "target",
    "agent_id",
    "agent_ids",
    "enabled",
    "tls",
];

pub async fn run(command: TunnelsCommand) -> anyhow::Result<()> {
    match command {
        TunnelsCommand::List(call) => {
            let list = call
                .client()?
                .tunnels()
                .await
                .map_err(|e| refused(e, "listing the tunnels"))?;
            call.print(&list, |l| list_table(l, LIST.0, LIST.1));
        }
        TunnelsCommand::Show(one) => {
            let (client, id) = one.resolve().await?;
            let tunnel = client
                .tunnel(id)
                .await
                .map_err(|e| refused(e, "reading the tunnel"))?;
            one.call.print(&tunnel, |t| details(t, SHOW));
        }
        TunnelsCommand::Create(c) => {
            let client = c.call.client()?;
            let agent = find_agent(&client, &c.agent).await?;
            let mut body = Map::new();
            body.insert("hostname".into(), c.hostname.clone().into());
            body.insert("agent_id".into(), agent.id.into());
            if let Some(p) = c.protocol {
                body.insert("protocol".into(), p.into());
            }
            if c.fields.target.is_none() {
                return Err(crate::exit::Exit::usage(
                    "give --target (host:port the Agent reaches)",
                )
                .into());
            }
            let body = c.fields.into_body(body)?;
            let created = client
                .call(Method::POST, "tunnels", Some(&body))
                .await
                .map_err(|e| refused(e, "creating the tunnel"))?;
            c.call.print(&created, |t| {
                format!(
                    "Created tunnel {} ({}), served by Agent {}: {}",
                    cell(&t["id"]),
                    cell(&t["hostname"]),
                    agent.name,
                    cell(&t["public_urls"]),
                )
            });
        }
        TunnelsCommand::Edit(e) => {
            let (client, id) = e.resolve().await?;
            let mut body = Map::new();
            if let Some(h) = e.hostname {
                body.insert("hostname".into(), h.into());
            }
            let body = e.fields.into_body(body)?;
            if body.as_object().is_some_and(Map::is_empty) {
                return Err(crate::exit::Exit::usage(
                    "nothing to change: give --target, --tls, --access, --hostname, ...",
                )
                .into());
            }
            let updated = patch(&client, id, &body).await?;
            e.call.print(&updated, |t| details(t, SHOW));
        }
        TunnelsCommand::Enable(one) => switch(one, true).await?,
        TunnelsCommand::Disable(one) => switch(one, false).await?,
        TunnelsCommand::Delete(one) => {
            let (client, id) = one.resolve().await?;
            client
                .delete_tunnel(id)
                .await
                .map_err(|e| refused(e, "deleting the tunnel"))?;
            let answer = json!({"deleted": id, "tunnel": one.tunnel});
            one.call.print(&answer, |_| {
                format!("Deleted tunnel {} ({id}).", one.tunnel)
            });
        }
    }
    Ok(())
}

async fn switch(one: OneTunnel, enabled: bool) -> anyhow::Result<()> {
    let (client, id) = one.resolve().await?;
    let updated = patch(&client, id, &json!({ "enabled": enabled })).await?;
    one.call.print(&updated, |t| {
        let state = if enabled { "enabled" } else { "disabled" };
        format!(
            "Tunnel {} ({}) {state}.",
            cell(&t["hostname"]),
            cell(&t["id"])
        )
    });
    Ok(())
}

async fn patch(client: &Client, id: i64, body: &Value) -> anyhow::Result<Value> {
    client
        .update_tunnel(id, body)
        .await
        .map_err(|e| refused(e, "changing the tunnel"))
}

/// The client and the id of the tunnel named on the command line.
trait Named {
    fn named(&self) -> (&str, &Call);

    async fn resolve(&self) -> anyhow::Result<(Client, i64)> {
        let (wanted, call) = self.named();
        let client = call.client()?;
        let id = match wanted.parse::<i64>() {
            Ok(id) => id,
            Err(_) => {
                let list = client
                    .tunnels()
                    .await
                    .map_err(|e| refused(e, "listing the tunnels"))?;
                find_id(&list, "hostname", wanted, "tunnel")?
            }
        };
        Ok((client, id))
    }
}

impl Named for OneTunnel {
    fn named(&self) -> (&str, &Call) {
        (&self.tunnel, &self.call)
    }
}

impl Named for EditTunnel {
    fn named(&self) -> (&str, &Call) {
        (&self.tunnel, &self.call)
    }
}

/// The first public URL of the tunnel named `wanted` (id or hostname), for `kakuremichi open`.
pub async fn url_of(client: &Client, wanted: &str) -> anyhow::Result<String> {
    let list = client
        .tunnels()
        .await
        .map_err(|e| refused(e, "listing the tunnels"))?;
    let id = find_id(&list, "hostname", wanted, "tunnel")?;
    let tunnel = list
        .as_array()
        .and_then(|l| l.iter().find(|t| t["id"].as_i64() == Some(id)))
        .cloned()
        .unwrap_or(Value::Null);
    let first = |key: &str| {
        tunnel[key]
            .as_array()?
            .first()?
            .as_str()
            .map(str::to_string)
    };
    first("public_urls")
        .or_else(|| first("public_addresses"))
        .ok_or_else(|| {
            crate::exit::Exit::usage(format!(
                "tunnel {wanted:?} has no public URL (no enabled Gateway?)"
            ))
            .into()
        })
}
