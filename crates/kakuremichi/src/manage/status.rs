//! `kakuremichi status` (what the dashboard shows: nodes online, tunnels that can be served, and
//! what needs attention; exit status 1 when something does, for cron and monitoring) and
//! `kakuremichi open <tunnel>` (prints the tunnel's URL and opens it in the browser).

use super::{refused, tunnels, Call};
use crate::exit::Exit;
use clap::Args;
use serde_json::Value;

#[derive(Args)]
pub struct OpenArgs {
    /// The tunnel's id or hostname.
    tunnel: String,
    /// Only print the URL.
    #[arg(long)]
    no_browser: bool,
    #[command(flatten)]
    call: Call,
}

/// What needs attention in a `GET /api/v1/status` answer, one sentence each.
pub fn attention(status: &Value) -> Vec<String> {
    let items = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let name = |n: &Value| n["name"].as_str().unwrap_or("?").to_string();
    let mut out = Vec::new();
    let gateways = items(&status["gateways"]["items"]);
    if gateways.is_empty() {
        out.push("no Gateway exists yet: nothing can reach the tunnels from the internet".into());
    }
    for g in &gateways {
        if g["enabled"] != Value::Bool(false) && g["status"] != "online" {
            out.push(format!("Gateway {} is offline", name(g)));
        }
    }
    let agents = items(&status["agents"]["items"]);
    for a in &agents {
        if a["status"] != "online" {
            out.push(format!("Agent {} is offline", name(a)));
        }
    }
    for n in gateways.iter().chain(&agents) {
        if let Some(why) = n["config_error"].as_str() {
            out.push(format!("{} runs an older config: {why}", name(n)));
        }
    }
    // Admins see Control's backups too (members get null).
    let backups = &status["backups"];
    if backups["needs_attention"] == Value::Bool(true) {
        out.push(match backups["last_error"].as_str() {
            Some(why) => format!("the last backup failed: {why}"),
            None => "no backup was made for two days".to_string(),
        });
    }
    for t in items(&status["tunnels"]) {
        if t["enabled"] == Value::Bool(true) && t["reachable"] != Value::Bool(true) {
            let host = t["hostname"].as_str().unwrap_or("?");
            out.push(format!(
                "tunnel {host} cannot be served (no online Agent or Gateway)"
            ));
        }
    }
    out
}

pub async fn status(call: Call) -> anyhow::Result<()> {
    let status = call
        .client()?
        .status()
        .await
        .map_err(|e| refused(e, "reading the status"))?;
    let problems = attention(&status);
    call.print(&status, |s| {
        let count = |key: &str| {
            format!(
                "{}/{}",
                s[key]["online"].as_u64().unwrap_or(0),
                s[key]["total"].as_u64().unwrap_or(0)
            )
        };
        let tunnels = s["tunnels"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let served = tunnels
            .iter()
            .filter(|t| t["reachable"] == Value::Bool(true))
            .count();
        let mut text = format!(
            "Gateways online: {}\nAgents online:   {}\nTunnels served:  {served}/{}\n",
            count("gateways"),
            count("agents"),
            tunnels.len()
        );
        if problems.is_empty() {
            text.push_str("\nEverything is up.");
        } else {
            text.push_str("\nNeeds attention:\n");
            for p in &problems {
                text.push_str(&format!("  - {p}\n"));
            }
        }
        text
    });
    if problems.is_empty() {
        Ok(())
    } else {
        // Already said above (or in the JSON); only the exit status is left.
        Err(Exit {
            code: 1,
            message: String::new(),
        }
        .into())
    }
}

pub async fn open(args: OpenArgs) -> anyhow::Result<()> {
    let client = args.call.client()?;
    let url = tunnels::url_of(&client, &args.tunnel).await?;
    println!("{url}");
    if !args.no_browser {
        crate::user_config::open_in_browser(&url);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn attention_names_what_is_down() {
        let up = json!({
            "gateways": {"total": 1, "online": 1, "items": [
                {"id": 1, "name": "edge", "status": "online", "enabled": true, "config_error": null}]},
            "agents": {"total": 1, "online": 1, "items": [
                {"id": 1, "name": "home", "status": "online", "config_error": null}]},
            "tunnels": [{"id": 1, "hostname": "a.example.com", "enabled": true, "reachable": true}],
        });
        assert!(attention(&up).is_empty(), "{:?}", attention(&up));
        let mut down = up.clone();
        down["agents"]["items"][0]["status"] = "offline".into();
        down["tunnels"][0]["reachable"] = false.into();
        down["gateways"]["items"][0]["config_error"] = "too new".into();
        assert_eq!(
            attention(&down),
            [
                "Agent home is offline",
                "edge runs an older config: too new",
                "tunnel a.example.com cannot be served (no online Agent or Gateway)"
            ]
        );
        let mut disabled = up;
        disabled["gateways"]["items"][0]["enabled"] = false.into();
        disabled["gateways"]["items"][0]["status"] = "offline".into();
        assert!(attention(&disabled).is_empty());
        assert_eq!(attention(&json!({})).len(), 1, "no Gateway at all");
        let mut backups = disabled.clone();
        backups["backups"] = json!({"needs_attention": true, "last_error": "exit status 3"});
        assert_eq!(
            attention(&backups),
            ["the last backup failed: exit status 3"]
        );
        backups["backups"] = json!({"needs_attention": true, "last_error": null});
        assert_eq!(attention(&backups), ["no backup was made for two days"]);
        backups["backups"] = json!({"needs_attention": false});
        assert!(attention(&backups).is_empty());
    }
}
