//! The command line for everything the API does (`kakuremichi tunnels|agents|gateways|users|
//! tokens|status|open`): each command is one or two calls of the typed client, printed as a
//! table (or `key: value` lines) for people and, with `--json`, as Control's own JSON for
//! scripts. Control refusing the input (a 4xx) exits with status 2 and its message, as clap's
//! usage errors do; Control unreachable or failing exits with 1.

pub mod accounts;
pub mod nodes;
pub mod status;
pub mod tunnels;

use crate::exit::Exit;
use crate::session::ApiArgs;
use clap::Args;
use kakuremichi_client::{AgentSummary, Client, Error, StatusCode};
use kakuremichi_proto::AccessPolicy;
use serde_json::Value;

/// Where Control is, who calls it and how answers are printed: every API command takes these.
#[derive(Args, Clone, Debug)]
pub struct Call {
    #[command(flatten)]
    api: ApiArgs,
    /// Print Control's JSON answer instead of a table (for scripts; `jq` reads it).
    #[arg(long)]
    json: bool,
}

impl Call {
    pub fn client(&self) -> anyhow::Result<Client> {
        self.api.client()
    }

    /// Prints `answer`: as JSON with `--json`, else as `human` makes it.
    pub fn print(&self, answer: &Value, human: impl FnOnce(&Value) -> String) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(answer).unwrap_or_default()
            );
        } else {
            let text = human(answer);
            if !text.is_empty() {
                println!("{}", text.trim_end());
            }
        }
    }
}

/// What a failed call becomes: Control refusing the input exits with 2 and says why.
pub fn refused(e: Error, doing: &str) -> anyhow::Error {
    match &e {
        Error::Api { status, .. } if *status == StatusCode::UNAUTHORIZED => Exit::usage(format!(
            "{doing}: Control refused the token (revoked or expired?): run `kakuremichi login` again, or set KAKUREMICHI_TOKEN to a valid personal API token"
        ))
        .into(),
        Error::Api {
            status, message, ..
        } if status.is_client_error() => {
            Exit::usage(format!("{doing}: Control refused: {message} (HTTP {})", status.as_u16())).into()
        }
        _ => anyhow::Error::new(e).context(doing.to_string()),
    }
}

/// `public`, `login` or `users:alice@example.com,bob@example.com`.
pub fn parse_access(value: &str) -> Result<AccessPolicy, String> {
    match value {
        "public" => Ok(AccessPolicy::Public),
        "login" => Ok(AccessPolicy::Login),
        _ => match value.strip_prefix("users:") {
            Some(list) if list.split(',').all(|e| e.contains('@')) => Ok(AccessPolicy::Users {
                allow: list.split(',').map(|e| e.trim().to_lowercase()).collect(),
            }),
            _ => Err("expected public, login or users:alice@example.com,bob@example.com".into()),
        },
    }
}

/// The Agent named `wanted`, or numbered so; a clear error (exit 2) otherwise.
pub async fn find_agent(client: &Client, wanted: &str) -> anyhow::Result<AgentSummary> {
    let agents = client
        .agent_summaries()
        .await
        .map_err(|e| refused(e, "listing the Agents"))?;
    let named: Vec<&AgentSummary> = agents.iter().filter(|a| a.name == wanted).collect();
    match named.as_slice() {
        [one] => return Ok((*one).clone()),
        [] => {}
        many => {
            let ids: Vec<String> = many.iter().map(|a| a.id.to_string()).collect();
            return Err(Exit::usage(format!(
                "{} Agents are named {wanted:?} (ids {}): give the id instead",
                many.len(),
                ids.join(", ")
            ))
            .into());
        }
    }
    if let Some(agent) = wanted
        .parse::<i64>()
        .ok()
        .and_then(|id| agents.iter().find(|a| a.id == id))
    {
        return Ok(agent.clone());
    }
    let known: Vec<String> = agents
        .iter()
        .map(|a| format!("{} (id {})", a.name, a.id))
        .collect();
    Err(Exit::usage(format!(
        "no Agent named or numbered {wanted:?}; the Agents are: {}",
        if known.is_empty() {
            "none yet".to_string()
        } else {
            known.join(", ")
        }
    ))
    .into())
}

/// The id of the item of `list` whose `key` is `wanted`, or whose id it is.
pub fn find_id(list: &Value, key: &str, wanted: &str, what: &str) -> anyhow::Result<i64> {
    let items = list.as_array().map(Vec::as_slice).unwrap_or_default();
    let by_key = items.iter().find(|i| i[key].as_str() == Some(wanted));
    let by_id = || {
        let id = wanted.parse::<i64>().ok()?;
        items.iter().find(|i| i["id"].as_i64() == Some(id))
    };
    match by_key.or_else(by_id).and_then(|i| i["id"].as_i64()) {
        Some(id) => Ok(id),
        None => Err(Exit::usage(format!("no {what} has the {key} or id {wanted:?}")).into()),
    }
}

/// A cell of a table: strings as they are, numbers and booleans as text, null as `-`.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "-".into(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// `rows` under `headers`, columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut out = vec![line(headers.to_vec())];
    out.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    out.join("\n")
}

/// The items of a list answer as rows of `columns` (JSON keys).
pub fn list_table(list: &Value, headers: &[&str], columns: &[&str]) -> String {
    let items = list.as_array().map(Vec::as_slice).unwrap_or_default();
    if items.is_empty() {
        return "(none)".into();
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| columns.iter().map(|c| cell(&i[*c])).collect())
        .collect();
    table(headers, &rows)
}

/// One object as `key: value` lines, in `keys` order (the others after, unless nested).
pub fn details(item: &Value, keys: &[&str]) -> String {
    let Some(fields) = item.as_object() else {
        return cell(item);
    };
    let mut lines: Vec<String> = keys
        .iter()
        .filter(|k| fields.contains_key(**k))
        .map(|k| format!("{k}: {}", cell(&item[*k])))
        .collect();
    for (k, v) in fields {
        if !keys.contains(&k.as_str()) && !v.is_object() {
            lines.push(format!("{k}: {}", cell(v)));
        }
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_pad_columns_and_show_nulls_and_lists() {
        let list = json!([
            {"id": 1, "hostname": "a.example.com", "public_urls": ["https://a.example.com/"]},
            {"id": 12, "hostname": "bb.example.com", "public_urls": []},
        ]);
        let text = list_table(
            &list,
            &["ID", "HOSTNAME", "URL"],
            &["id", "hostname", "public_urls"],
        );
        assert_eq!(
            text,
            "ID  HOSTNAME        URL\n1   a.example.com   https://a.example.com/\n12  bb.example.com  -"
        );
        assert_eq!(list_table(&json!([]), &["ID"], &["id"]), "(none)");
        assert_eq!(
            find_id(&list, "hostname", "bb.example.com", "tunnel").unwrap(),
            12
        );
        assert_eq!(find_id(&list, "hostname", "1", "tunnel").unwrap(), 1);
        assert!(find_id(&list, "hostname", "c", "tunnel").is_err());
        let shown = details(
            &json!({"id": 1, "b": null, "nested": {"x": 1}, "a": true}),
            &["a"],
        );
        assert_eq!(shown, "a: true\nb: -\nid: 1");
    }

    #[test]
    fn access_is_read_as_documented() {
        assert_eq!(parse_access("public"), Ok(AccessPolicy::Public));
        assert_eq!(
            parse_access("users:A@x.example,b@y.example"),
            Ok(AccessPolicy::Users {
                allow: ["a@x.example".into(), "b@y.example".into()].into()
            })
        );
        assert!(parse_access("users:nobody").is_err());
        assert!(parse_access("everyone").is_err());
    }
}
