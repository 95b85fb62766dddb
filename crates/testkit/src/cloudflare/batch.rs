//! The fake's `POST /zones/{id}/dns_records/batch`: the body checked field by field against
//! Cloudflare's published shape (`{"deletes": [{"id"}], "posts": [{"name", "type", "content",
//! "ttl", "proxied"}]}`; `patches`/`puts` exist but the provider has no use for them), then
//! applied as Cloudflare documents it: in one transaction, deletes first, then posts, or nothing.

use super::{cf_id, envelope, failure, record_json, txt_value, Answer, Fake, Stored};
use axum::http::StatusCode;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Cloudflare's limit of operations per batch on the Free plan.
const MAX_OPS: usize = 200;
/// Cloudflare's limit on a TXT record's content.
const MAX_TXT: usize = 2048;

struct Post {
    name: String,
    kind: String,
    content: String,
    ttl: u32,
}

pub(super) fn apply(
    f: &mut Fake,
    what: &str,
    zone_id: &str,
    zone: &str,
    batch: &Map<String, Value>,
) -> Answer {
    match parse(batch, zone) {
        Err(bad) => f.violation(format!("{what}: {bad}")),
        Ok((deletes, posts)) => commit(f, zone_id, zone, deletes, posts),
    }
}

fn parse(batch: &Map<String, Value>, zone: &str) -> Result<(Vec<String>, Vec<Post>), String> {
    for key in batch.keys() {
        match key.as_str() {
            "deletes" | "posts" => {}
            "patches" | "puts" => return Err(format!("{key}: not expected from the provider")),
            other => return Err(format!("unknown batch field {other:?}")),
        }
    }
    let list = |k: &str| match batch.get(k) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => Ok(items.clone()),
        Some(other) => Err(format!("{k} is not an array: {other}")),
    };
    let deletes = (list("deletes")?.iter())
        .map(|d| match d.as_object() {
            Some(o) if o.len() == 1 => match o.get("id").and_then(Value::as_str) {
                Some(id) if is_id(id) => Ok(id.to_string()),
                _ => Err(format!("a delete's id is not a 32-hex-digit string: {d}")),
            },
            _ => Err(format!("a delete must be exactly {{\"id\"}}: {d}")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let posts = (list("posts")?.iter())
        .map(|p| post(p, zone))
        .collect::<Result<Vec<_>, _>>()?;
    match deletes.len() + posts.len() {
        0 => Err("an empty batch".into()),
        n if n > MAX_OPS => Err(format!("{n} operations, more than {MAX_OPS}")),
        _ => Ok((deletes, posts)),
    }
}

fn is_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn post(p: &Value, zone: &str) -> Result<Post, String> {
    let Some(o) = p.as_object() else {
        return Err(format!("a post is not an object: {p}"));
    };
    let keys: BTreeSet<&str> = o.keys().map(String::as_str).collect();
    let expected = BTreeSet::from(["content", "name", "proxied", "ttl", "type"]);
    if keys != expected {
        return Err(format!("a post must have exactly {expected:?}, has {keys:?}"));
    }
    let string = |k: &str| o[k].as_str().ok_or(format!("{k} is not a string: {p}"));
    let name = string("name")?;
    if !is_host(name) || !(name == zone || name.ends_with(&format!(".{zone}"))) {
        return Err(format!("name {name:?} is not a lowercase FQDN (no final dot) in {zone}"));
    }
    let kind = string("type")?;
    let content = content(kind, string("content")?)?;
    let ttl = match o["ttl"].as_u64() {
        Some(t) if t == 1 || (60..=86_400).contains(&t) => t as u32,
        _ => return Err(format!("ttl must be 1 or 60..=86400: {p}")),
    };
    if o["proxied"] != Value::Bool(false) {
        return Err(format!("proxied must be the boolean false (Control never proxies): {p}"));
    }
    let (name, kind) = (name.to_string(), kind.to_string());
    Ok(Post {
        name,
        kind,
        content,
        ttl,
    })
}

fn is_host(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && (label.bytes())
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_*".contains(&b))
        })
}

/// `content` checked for a record of `kind`, as Cloudflare stores it.
fn content(kind: &str, content: &str) -> Result<String, String> {
    let ok = match kind {
        "A" => content.parse::<Ipv4Addr>().is_ok_and(|ip| ip.to_string() == content),
        "AAAA" => content.parse::<Ipv6Addr>().is_ok(),
        "CNAME" => is_host(content.trim_end_matches('.')),
        "TXT" => content.len() <= MAX_TXT && txt_value(content).is_some(),
        other => return Err(format!("type {other:?} is not one the provider writes")),
    };
    if !ok {
        return Err(format!("content {content:?} is not a valid {kind} content"));
    }
    Ok(content.trim_end_matches('.').to_string())
}

fn commit(
    f: &mut Fake,
    zone_id: &str,
    zone: &str,
    deletes: Vec<String>,
    posts: Vec<Post>,
) -> Answer {
    let bad = StatusCode::BAD_REQUEST;
    let mut records = f.records.clone();
    let mut deleted = Vec::new();
    for id in deletes {
        let Some(at) = records.iter().position(|r| r.id == id && r.zone_id == zone_id) else {
            return failure(bad, 81044, "Record does not exist.");
        };
        deleted.push(record_json(&records.remove(at), zone));
    }
    let mut posted = Vec::new();
    for p in posts {
        let mut same_name = records
            .iter()
            .filter(|r| r.zone_id == zone_id && r.name == p.name);
        if same_name.clone().any(|r| r.kind == "CNAME" || p.kind == "CNAME") {
            let message = "An A, AAAA, or CNAME record with that host already exists.";
            return failure(bad, 81053, message);
        }
        if same_name.any(|r| r.kind == p.kind && r.content == p.content) {
            return failure(bad, 81058, "An identical record already exists.");
        }
        let record = Stored {
            id: cf_id(),
            zone_id: zone_id.to_string(),
            name: p.name,
            kind: p.kind,
            content: p.content,
            ttl: p.ttl,
            proxied: false,
        };
        posted.push(record_json(&record, zone));
        records.push(record);
    }
    f.records = records;
    envelope(json!({"deletes": deleted, "patches": [], "puts": [], "posts": posted}))
}
