//! What a cloudflared ingress config (`config.yml`: `tunnel`, `credentials-file`, `ingress`,
//! `originRequest`) becomes in kakuremichi, rule by rule, without touching Control: the plan that
//! `kakuremichi control import-cloudflared` then carries out (or prints, with `--dry-run`).
//!
//! Only what has an exact equivalent becomes a tunnel: a `hostname` (or a wildcard `*.domain`) with
//! an `http://host:port` service. Everything else (path rules, HTTPS or TCP origins, options that
//! change how the origin is reached) is reported with the reason, never approximated: a migration
//! that quietly changes what a hostname serves is worse than one that stops and says so.
//!
//! Wildcards differ in depth: cloudflared's `*.example.com` matches every name ending in
//! `.example.com`, kakuremichi's exactly one label below. The wildcard becomes a tunnel with a
//! note saying so; a later rule that cloudflared never reaches because the wildcard matches it
//! first is skipped when it is one label below (the wildcard serves it the same), and reported
//! when it is deeper (kakuremichi's wildcard would not serve it).

use serde::Deserialize;
use serde_norway::Value;
use std::collections::{BTreeMap, HashMap};

/// The largest config read: real ones are a few KiB; this bounds memory and parse time.
pub const MAX_BYTES: u64 = 1 << 20;
/// The most ingress rules imported at once.
pub const MAX_RULES: usize = 1000;

/// What the catch-all rule is worth: kakuremichi's Gateways already answer this.
pub const CATCH_ALL: &str = "not needed: kakuremichi answers 404 for unknown hosts";

#[derive(Deserialize)]
struct Config {
    ingress: Option<Vec<Rule>>,
    /// Defaults for every rule's `originRequest`.
    #[serde(rename = "originRequest")]
    origin_request: Option<BTreeMap<String, Value>>,
    // `tunnel`, `credentials-file`, `warp-routing`, `protocol`, `metrics`, ...: Cloudflare's own
    // settings, with no bearing on what a hostname serves; ignored.
}

#[derive(Deserialize)]
struct Rule {
    hostname: Option<String>,
    service: Option<String>,
    path: Option<String>,
    #[serde(rename = "originRequest")]
    origin_request: Option<BTreeMap<String, Value>>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

/// One ingress rule and what becomes of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// 1-based position in `ingress`, as a user counts rules.
    pub rule: usize,
    /// The rule's hostname, lower-cased; empty for a rule matching every host.
    pub hostname: String,
    pub service: String,
    pub action: Action,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// A tunnel to `target` (`host:port`); `notes` name cloudflared options that have no effect here.
    Create { target: String, notes: Vec<String> },
    /// Nothing to do, and nothing lost (the catch-all, a rule cloudflared never reaches).
    Skip(String),
    /// No equivalent: the reason, for the user to decide.
    Unsupported(String),
}

/// Reads a config's text into one step per ingress rule. `Err` is bad input (not YAML, not a
/// cloudflared config, too many rules): nothing may be changed then.
pub fn plan(text: &str) -> Result<Vec<Step>, String> {
    let config: Config =
        serde_norway::from_str(text).map_err(|e| format!("not a valid cloudflared config: {e}"))?;
    let rules = config.ingress.unwrap_or_default();
    if rules.is_empty() {
        return Err("the config has no `ingress` rules: nothing to import".into());
    }
    if rules.len() > MAX_RULES {
        return Err(format!(
            "the config has {} ingress rules; at most {MAX_RULES} are imported at once: split it",
            rules.len()
        ));
    }
    let defaults = config.origin_request.unwrap_or_default();
    let count = rules.len();
    let mut first_rule_for: HashMap<String, usize> = HashMap::new();
    // Earlier wildcard rules without `path`: (`.example.com`, rule number).
    let mut wildcards: Vec<(String, usize)> = Vec::new();
    let steps = rules
        .into_iter()
        .enumerate()
        .map(|(i, rule)| {
            let hostname = rule
                .hostname
                .as_deref()
                .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
                .unwrap_or_default();
            let service = rule.service.clone().unwrap_or_default();
            let action = map_rule(&rule, &hostname, i + 1 == count, &defaults);
            // cloudflared serves a hostname from its first rule without `path`: a later one is
            // never reached, whatever became of the first.
            let action = match (&action, rule.path.as_deref()) {
                (Action::Unsupported(_), _) | (_, Some(_)) => action,
                _ if hostname.is_empty() => action,
                _ => match first_rule_for.get(&hostname) {
                    Some(first) => Action::Skip(format!(
                        "never reached: rule {first} already serves this hostname (cloudflared uses the first match)"
                    )),
                    None => shadowed(&hostname, &wildcards).unwrap_or(action),
                },
            };
            if !hostname.is_empty() && rule.path.is_none() {
                first_rule_for.entry(hostname.clone()).or_insert(i + 1);
                if let Some(suffix) = hostname.strip_prefix('*') {
                    wildcards.push((suffix.to_string(), i + 1));
                }
            }
            Step {
                rule: i + 1,
                hostname,
                service,
                action,
            }
        })
        .collect();
    Ok(steps)
}

fn map_rule(rule: &Rule, hostname: &str, last: bool, defaults: &BTreeMap<String, Value>) -> Action {
    use Action::Unsupported;
    if !rule.other.is_empty() {
        let keys: Vec<String> = rule.other.keys().map(|k| format!("`{k}`")).collect();
        return Unsupported(format!("unknown rule field {}", keys.join(", ")));
    }
    let Some(service) = rule.service.as_deref().map(str::trim) else {
        return Unsupported("the rule has no `service`".into());
    };
    if let Some(code) = service.strip_prefix("http_status:") {
        return match (hostname.is_empty() && rule.path.is_none() && last, code.trim()) {
            (true, "404") => Action::Skip(CATCH_ALL.into()),
            (true, code) => Unsupported(format!(
                "kakuremichi answers 404 for unknown hosts; a catch-all answering {code} has no equivalent"
            )),
            (false, _) => Unsupported(
                "a fixed HTTP status has no equivalent: a tunnel forwards to an app".into(),
            ),
        };
    }
    if hostname.is_empty() {
        return Unsupported(
            "no `hostname`: the rule matches every host, and kakuremichi routes by hostname".into(),
        );
    }
    let wildcard = hostname.starts_with("*.");
    if hostname.trim_start_matches("*.").contains('*') {
        return Unsupported(
            "only a whole leftmost `*` label is a wildcard here (like `*.example.com`)".into(),
        );
    }
    if let Some(path) = rule.path.as_deref().filter(|p| !p.is_empty()) {
        return Unsupported(format!(
            "`path: {path}`: kakuremichi routes whole hostnames, so one path cannot go to another service"
        ));
    }
    let target = match target(service) {
        Ok(target) => target,
        Err(why) => return Unsupported(why),
    };
    let mut options = defaults.clone();
    options.extend(rule.origin_request.clone().unwrap_or_default());
    let mut notes = Vec::new();
    if wildcard {
        notes.push(format!(
            "serves names exactly one label below {} (cloudflared also matched deeper ones); a \
             name with a tunnel of its own wins over it",
            &hostname[2..]
        ));
    }
    for (key, value) in &options {
        match origin_option(key, value) {
            Honour::Ignored(why) => notes.push(format!("originRequest.{key} ignored: {why}")),
            Honour::Unsupported(why) => return Unsupported(format!("originRequest.{key}: {why}")),
            Honour::NoEffect => {}
        }
    }
    Action::Create { target, notes }
}

/// What becomes of a rule for `hostname` that an earlier wildcard rule matches first in
/// cloudflared (so cloudflared never reaches it); `None` when none does.
fn shadowed(hostname: &str, wildcards: &[(String, usize)]) -> Option<Action> {
    let (suffix, first) = wildcards
        .iter()
        .find(|(suffix, _)| hostname.ends_with(suffix.as_str()))?;
    let below = &hostname[..hostname.len() - suffix.len()];
    Some(if below.contains('.') || below == "*" {
        Action::Unsupported(format!(
            "cloudflared serves this through rule {first} (`*{suffix}` matches it first), but a \
             kakuremichi wildcard covers one label only: add a rule for it before rule {first} \
             with the service you want"
        ))
    } else {
        Action::Skip(format!(
            "never reached: rule {first} (`*{suffix}`) matches it first in cloudflared, and serves \
             it the same here"
        ))
    })
}

/// The `host:port` an `http://` service names; why not, for every other kind of service.
fn target(service: &str) -> Result<String, String> {
    let Some((scheme, rest)) = service.split_once("://") else {
        return Err(match service.split(':').next().unwrap_or_default() {
            "unix" | "unix+tls" => "a Unix socket: the Agent connects to host:port only".into(),
            "hello_world" => {
                "cloudflared's test page: run `kakuremichi hello` and point a tunnel at it".into()
            }
            "bastion" => "bastion mode (a Cloudflare Access jump host) has no equivalent".into(),
            _ => format!("unknown kind of service `{service}`"),
        });
    };
    match scheme.to_ascii_lowercase().as_str() {
        "http" => {}
        "https" => {
            return Err(
                "an HTTPS origin: the Agent reaches targets over plain TCP, and tunnels \
                        have no TLS-to-origin option; point the rule at the app's plain-HTTP port"
                    .into(),
            )
        }
        s @ ("tcp" | "ssh" | "rdp" | "smb") => {
            return Err(format!(
            "{s}:// is raw TCP for Cloudflare Access clients; kakuremichi publishes HTTP(S) only"
        ))
        }
        "socks5" => return Err("a SOCKS proxy has no equivalent".into()),
        s => return Err(format!("unknown kind of service `{s}://`")),
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', '@']) || authority.is_empty() {
        return Err(format!(
            "the service `{service}` has a path, query or user: a tunnel forwards to host:port only"
        ));
    }
    let has_port = match authority.strip_prefix('[') {
        Some(v6) => v6
            .split_once(']')
            .is_some_and(|(_, after)| !after.is_empty()),
        None => authority.contains(':'),
    };
    Ok(if has_port {
        authority.to_string()
    } else {
        format!("{authority}:80")
    })
}

enum Honour {
    /// Not set, or set to what kakuremichi does anyway.
    NoEffect,
    /// Has no effect on what is served; worth a note.
    Ignored(&'static str),
    /// Changes what the origin sees or who may reach it: the rule is not imported.
    Unsupported(&'static str),
}

/// What one `originRequest` option means for an `http://` origin reached through kakuremichi.
fn origin_option(key: &str, value: &Value) -> Honour {
    let on = !matches!(value, Value::Bool(false) | Value::Null);
    match key {
        "connectTimeout"
        | "tlsTimeout"
        | "tcpKeepAlive"
        | "noHappyEyeballs"
        | "keepAliveConnections"
        | "keepAliveTimeout" => {
            Honour::Ignored("Agents and Gateways use their own connection settings")
        }
        "noTLSVerify" | "originServerName" | "caPool" | "matchSNItoHost" => {
            Honour::Ignored("only for HTTPS origins")
        }
        "proxyAddress" | "proxyPort" | "proxyType" | "ipRules" => {
            Honour::Ignored("only for cloudflared's TCP and SOCKS services")
        }
        "httpHostHeader" if on => {
            Honour::Unsupported("the Agent passes the visitor's Host header unchanged")
        }
        "http2Origin" if on => Honour::Unsupported("the Agent speaks HTTP/1.1 to the origin"),
        "disableChunkedEncoding" if on => {
            Honour::Unsupported("tunnels have no setting to turn chunked encoding off")
        }
        "bastionMode" if on => Honour::Unsupported("bastion mode has no equivalent"),
        "access" if on => Honour::Unsupported(
            "Cloudflare Access is not carried over: protect the tunnel with kakuremichi's own \
             `access` (login or a list of users) yourself",
        ),
        "httpHostHeader" | "http2Origin" | "disableChunkedEncoding" | "bastionMode" | "access" => {
            Honour::NoEffect
        }
        _ => Honour::Unsupported("an option this import does not know"),
    }
}

#[cfg(test)]
#[path = "cloudflared_tests.rs"]
mod tests;
