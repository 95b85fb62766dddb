//! `kakuremichi control import-cloudflared config.yml`: the way over from Cloudflare Tunnel. It
//! reads a cloudflared ingress config ([`cloudflared`] decides what each rule becomes) and creates
//! the tunnels for one Agent through Control's REST API (`kakuremichi-client`), then prints one
//! line per rule: created, skipped (with why) or unsupported (with why).
//!
//! Exit status: 0 when every rule was imported or needed nothing; 1 when a rule was unsupported or
//! a create failed or Control could not be reached (the other rules are still created: a hostname
//! that exists is skipped, not fatal);
//! 2 for bad input (unreadable or invalid file, unknown Agent, refused token), with nothing changed.

mod cloudflared;
mod report;

use crate::exit::Exit;
use crate::manage::{find_agent, parse_access};
use anyhow::Context as _;
use clap::Args;
use cloudflared::{Action, Step};
use kakuremichi_client::{Client, Error, NewTunnel, StatusCode, TunnelOptions};
use kakuremichi_proto::AccessPolicy;
use report::{Outcome, Row};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Args)]
pub struct ImportArgs {
    /// The cloudflared config file (its `config.yml`, with the `ingress` rules).
    #[arg(value_name = "CONFIG")]
    config: PathBuf,
    /// The Agent that serves the imported tunnels, by name or id (it must exist; create it first
    /// in the web UI or with `POST /api/v1/agents`).
    #[arg(long, value_name = "NAME_OR_ID")]
    agent: String,
    /// Control's URL, e.g. https://control.example.com.
    #[arg(long, env = "KAKUREMICHI_CONTROL_URL", value_name = "URL")]
    control_url: String,
    /// A personal API token (web UI: Profile → API tokens). Prefer the environment variable:
    /// flags show in `ps`.
    #[arg(long, env = "KAKUREMICHI_TOKEN", hide_env_values = true)]
    token: String,
    /// Print what would be created, skipped or left out, and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Access of the created tunnels: public, login (anyone signed in to Control) or
    /// users:alice@example.com,bob@example.com. Default: public.
    #[arg(long, value_name = "ACCESS", value_parser = parse_access)]
    access: Option<AccessPolicy>,
    /// HTTPS of the created tunnels: acme, internal or off. Default: Control's default TLS.
    #[arg(long, value_name = "TLS")]
    tls: Option<kakuremichi_control::TlsMode>,
}

fn bad_input(message: impl Into<String>) -> anyhow::Error {
    Exit::usage(message).into()
}

pub async fn run(args: ImportArgs) -> anyhow::Result<()> {
    let text = read_bounded(&args.config).map_err(|e| bad_input(format!("{e:#}")))?;
    let steps = cloudflared::plan(&text)
        .map_err(|e| bad_input(format!("{}: {e}", args.config.display())))?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let client = Client::with_http(http, args.control_url.clone()).with_token(args.token.clone());
    let agent = find_agent(&client, &args.agent).await?;
    let options = TunnelOptions {
        tls: args.tls.map(|t| t.as_str().to_string()),
        access: args.access.as_ref().map(serde_json::to_value).transpose()?,
    };
    let existing = if args.dry_run {
        client
            .tunnel_hostnames()
            .await
            .context("listing the tunnels")?
    } else {
        Vec::new()
    };
    let mut rows = Vec::with_capacity(steps.len());
    for step in steps {
        let outcome = match &step.action {
            Action::Skip(why) => Outcome::Skipped(why.clone()),
            Action::Unsupported(why) => Outcome::Unsupported(why.clone()),
            Action::Create { .. } if args.dry_run && existing.contains(&step.hostname) => {
                Outcome::Skipped("a tunnel with this hostname already exists".into())
            }
            Action::Create { target, notes } if args.dry_run => Outcome::WouldCreate {
                target: target.clone(),
                notes: notes.clone(),
            },
            Action::Create { target, notes } => {
                create(&client, &step, agent.id, target, notes, &options).await
            }
        };
        rows.push(Row { step, outcome });
    }
    let mode = if args.dry_run {
        " (dry run: nothing changed)"
    } else {
        ""
    };
    println!(
        "Importing {} ingress rules from {} for Agent {:?} (id {}){mode}\n",
        rows.len(),
        args.config.display(),
        agent.name,
        agent.id
    );
    print!("{}", report::table(&rows));
    let summary = report::Summary::of(&rows, args.dry_run);
    println!("\n{summary}");
    if summary.not_imported() > 0 {
        return Err(Exit {
            code: 1,
            message: format!(
                "{} rule(s) not imported: see the table above",
                summary.not_imported()
            ),
        }
        .into());
    }
    Ok(())
}

async fn create(
    client: &Client,
    step: &Step,
    agent_id: i64,
    target: &str,
    notes: &[String],
    options: &TunnelOptions,
) -> Outcome {
    let tunnel = NewTunnel {
        hostname: step.hostname.clone(),
        agent_id,
        target: target.to_string(),
    };
    match client.create_tunnel_with(&tunnel, options).await {
        Ok(_) => Outcome::Created {
            target: target.to_string(),
            notes: notes.to_vec(),
        },
        Err(Error::Api {
            status: StatusCode::CONFLICT,
            message,
            ..
        }) => Outcome::Skipped(format!("already exists ({message})")),
        Err(Error::Api {
            status, message, ..
        }) => Outcome::Failed(format!("Control answered {status}: {message}")),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// Reads at most [`cloudflared::MAX_BYTES`]; a larger file is refused, not truncated.
fn read_bounded(path: &Path) -> anyhow::Result<String> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(cloudflared::MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    anyhow::ensure!(
        bytes.len() as u64 <= cloudflared::MAX_BYTES,
        "{} is larger than 1 MiB: not a cloudflared config",
        path.display()
    );
    String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8 text", path.display()))
}
