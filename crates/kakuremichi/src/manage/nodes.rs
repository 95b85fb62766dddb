//! `kakuremichi agents list|show|create|rotate-key|delete` and `kakuremichi gateways
//! list|show|create|enable|disable|delete`. A node is named by its name or id. The secrets
//! Control makes (an Agent's key, a Gateway's token) are printed once, with how to start it.

use super::{cell, details, find_id, list_table, refused, Call};
use clap::{Args, Subcommand};
use kakuremichi_client::{Client, Method, NewGateway};
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum AgentsCommand {
    /// Every Agent you may see, online or not.
    List(Call),
    /// One Agent, every field.
    Show(OneNode),
    /// Make an Agent: prints its API key (shown once) and how to run it.
    Create(CreateAgent),
    /// Give an Agent a new API key (the old one stops working at once).
    RotateKey(OneNode),
    /// Delete an Agent (and the tunnels it alone serves).
    Delete(OneNode),
}

#[derive(Subcommand)]
pub enum GatewaysCommand {
    /// Every Gateway, online or not.
    List(Call),
    /// One Gateway, every field.
    Show(OneNode),
    /// Make a Gateway: prints its token (shown once) and how to run it.
    Create(CreateGateway),
    /// Serve tunnels on a disabled Gateway again.
    Enable(OneNode),
    /// Stop sending tunnels to a Gateway (kept, to enable later).
    Disable(OneNode),
    /// Delete a Gateway.
    Delete(OneNode),
}

#[derive(Args)]
pub struct OneNode {
    /// Its name or id.
    node: String,
    #[command(flatten)]
    call: Call,
}

#[derive(Args)]
pub struct CreateAgent {
    /// A name to tell it by, e.g. home-server.
    name: String,
    #[command(flatten)]
    call: Call,
}

#[derive(Args)]
pub struct CreateGateway {
    /// A name to tell it by, e.g. edge-1.
    name: String,
    /// Where Agents reach its WireGuard port: host:port (e.g. edge-1.example.com:51820).
    #[arg(long)]
    public_endpoint: String,
    #[command(flatten)]
    call: Call,
}

const NODE_LIST: (&[&str], &[&str]) = (
    &["ID", "NAME", "STATUS", "LAST SEEN", "ADDRESS"],
    &["id", "name", "status", "last_seen", "wg_address"],
);
const GATEWAY_LIST: (&[&str], &[&str]) = (
    &["ID", "NAME", "STATUS", "ENABLED", "ENDPOINT", "LAST SEEN"],
    &[
        "id",
        "name",
        "status",
        "enabled",
        "public_endpoint",
        "last_seen",
    ],
);

/// Which kind of node a command is about.
#[derive(Clone, Copy)]
enum Kind {
    Agent,
    Gateway,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Agent => "agents",
            Kind::Gateway => "gateways",
        }
    }

    fn word(self) -> &'static str {
        match self {
            Kind::Agent => "Agent",
            Kind::Gateway => "Gateway",
        }
    }
}

impl OneNode {
    /// The client, and the path of the node named.
    async fn resolve(&self, kind: Kind) -> anyhow::Result<(Client, String)> {
        let client = self.call.client()?;
        let list = client
            .call(Method::GET, kind.path(), None)
            .await
            .map_err(|e| refused(e, "listing"))?;
        let id = find_id(&list, "name", &self.node, kind.word())?;
        Ok((client, format!("{}/{id}", kind.path())))
    }

    async fn show(&self, kind: Kind) -> anyhow::Result<()> {
        let (client, path) = self.resolve(kind).await?;
        let node = client
            .call(Method::GET, &path, None)
            .await
            .map_err(|e| refused(e, "reading"))?;
        self.call
            .print(&node, |n| details(n, &["id", "name", "status"]));
        Ok(())
    }

    async fn delete(&self, kind: Kind) -> anyhow::Result<()> {
        let (client, path) = self.resolve(kind).await?;
        client
            .call(Method::DELETE, &path, None)
            .await
            .map_err(|e| refused(e, "deleting"))?;
        let answer = json!({ "deleted": path });
        self.call.print(&answer, |_| {
            format!("Deleted {} {}.", kind.word(), self.node)
        });
        Ok(())
    }
}

pub async fn agents(command: AgentsCommand) -> anyhow::Result<()> {
    match command {
        AgentsCommand::List(call) => list(&call, Kind::Agent, NODE_LIST).await,
        AgentsCommand::Show(one) => one.show(Kind::Agent).await,
        AgentsCommand::Create(c) => {
            let client = c.call.client()?;
            let created = client
                .create_agent(&c.name)
                .await
                .map_err(|e| refused(e, "creating the Agent"))?;
            c.call.print(&created, |a| agent_started(client.base(), a));
            Ok(())
        }
        AgentsCommand::RotateKey(one) => {
            let (client, path) = one.resolve(Kind::Agent).await?;
            let rotated = client
                .call(Method::POST, &format!("{path}/rotate-key"), None)
                .await
                .map_err(|e| refused(e, "rotating the key"))?;
            one.call
                .print(&rotated, |a| agent_started(client.base(), a));
            Ok(())
        }
        AgentsCommand::Delete(one) => one.delete(Kind::Agent).await,
    }
}

pub async fn gateways(command: GatewaysCommand) -> anyhow::Result<()> {
    match command {
        GatewaysCommand::List(call) => list(&call, Kind::Gateway, GATEWAY_LIST).await,
        GatewaysCommand::Show(one) => one.show(Kind::Gateway).await,
        GatewaysCommand::Create(c) => {
            let client = c.call.client()?;
            let gateway = NewGateway {
                name: c.name.clone(),
                public_endpoint: c.public_endpoint.clone(),
            };
            let created = client
                .create_gateway(&gateway)
                .await
                .map_err(|e| refused(e, "creating the Gateway"))?;
            c.call.print(&created, |g| {
                format!(
                    "Created Gateway {} (id {}). Its token, shown only now:\n\n  {}\n\n\
                     Run it where the public traffic arrives:\n\n  \
                     CONTROL_URL={} GATEWAY_TOKEN={} kakuremichi gateway",
                    cell(&g["name"]),
                    cell(&g["id"]),
                    cell(&g["token"]),
                    client.base(),
                    cell(&g["token"]),
                )
            });
            Ok(())
        }
        GatewaysCommand::Enable(one) => switch(one, true).await,
        GatewaysCommand::Disable(one) => switch(one, false).await,
        GatewaysCommand::Delete(one) => one.delete(Kind::Gateway).await,
    }
}

async fn list(
    call: &Call,
    kind: Kind,
    (headers, columns): (&[&str], &[&str]),
) -> anyhow::Result<()> {
    let list = call
        .client()?
        .call(Method::GET, kind.path(), None)
        .await
        .map_err(|e| refused(e, "listing"))?;
    call.print(&list, |l| list_table(l, headers, columns));
    Ok(())
}

async fn switch(one: OneNode, enabled: bool) -> anyhow::Result<()> {
    let (client, path) = one.resolve(Kind::Gateway).await?;
    let body = json!({ "enabled": enabled });
    let updated = client
        .call(Method::PATCH, &path, Some(&body))
        .await
        .map_err(|e| refused(e, "changing the Gateway"))?;
    one.call.print(&updated, |g| {
        let state = if enabled { "enabled" } else { "disabled" };
        format!("Gateway {} {state}.", cell(&g["name"]))
    });
    Ok(())
}

/// An Agent's new key and the ways to start it (as the UI's page after creating one).
fn agent_started(control: &str, agent: &Value) -> String {
    let key = cell(&agent["api_key"]);
    format!(
        "Agent {name} (id {id}). Its API key, shown only now:\n\n  {key}\n\n\
         Start it next to your apps, with Docker Compose:\n\n\
         services:\n  kakuremichi-agent:\n    image: kakuremichi:latest\n    command: [\"agent\"]\n    \
         restart: unless-stopped\n    environment:\n      CONTROL_URL: {control}\n      API_KEY: {key}\n    \
         volumes: [\"kakuremichi-agent:/data\"]\nvolumes:\n  kakuremichi-agent: {{}}\n\n\
         or the binary:\n\n  CONTROL_URL={control} API_KEY={key} kakuremichi agent",
        name = cell(&agent["name"]),
        id = cell(&agent["id"]),
    )
}
