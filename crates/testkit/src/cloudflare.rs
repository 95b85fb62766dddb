//! A fake of Cloudflare's API v4 for contract tests: the DNS subset Control's `cloudflare`
//! provider uses, served in-process on 127.0.0.1:0 with zones, tokens and records in memory. It
//! is **not** Cloudflare (there is none here): it implements Cloudflare's published shapes
//! (envelope `{"success", "errors", "messages", "result", "result_info"}`, `Authorization:
//! Bearer`, `GET /zones`, `GET /zones/{id}`, `GET /zones/{id}/dns_records?type=&name.exact=`,
//! `POST /zones/{id}/dns_records/batch`, `DELETE /zones/{id}/dns_records/{id}`,
//! `GET /user/tokens/verify`) and checks every request against them: method, path, query
//! parameters and their ranges, the Bearer header, the JSON body's fields and types, the content
//! of each record type, `"proxied": false`, the content type. Anything else is a *violation*: it
//! is answered 400 and recorded, and [`FakeCloudflare::assert_clean`] fails the test with it.

mod batch;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

/// One record as the fake stores it (what "the world" would be served).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub id: String,
    pub zone_id: String,
    pub name: String,
    pub kind: String,
    pub content: String,
    pub ttl: u32,
    pub proxied: bool,
}

#[derive(Default)]
struct Fake {
    /// (id, name)
    zones: Vec<(String, String)>,
    /// (token, status, zone ids it may use; `None`: all)
    tokens: Vec<(String, String, Option<Vec<String>>)>,
    records: Vec<Stored>,
    violations: Vec<String>,
    log: Vec<String>,
}

type Shared = Arc<Mutex<Fake>>;

/// The fake API, serving until dropped.
pub struct FakeCloudflare {
    /// The base URL to put in the provider's `api_url` (`http://127.0.0.1:PORT/client/v4`).
    pub api_url: String,
    /// A token that may use every zone.
    pub token: String,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeCloudflare {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// 32 random hex digits, the form of Cloudflare's ids.
pub fn cf_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

impl FakeCloudflare {
    /// Serves `zones` (names), each with a fresh id, and one all-zones token.
    pub async fn start(zones: &[&str]) -> Self {
        let token = format!("tok_{}", cf_id());
        let fake = Fake {
            zones: zones.iter().map(|z| (cf_id(), z.to_string())).collect(),
            tokens: vec![(token.clone(), "active".into(), None)],
            ..Fake::default()
        };
        let state: Shared = Arc::new(Mutex::new(fake));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            api_url: format!("http://127.0.0.1:{port}/client/v4"),
            token,
            state,
            task,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Fake> {
        self.state.lock().unwrap()
    }

    /// The id of zone `name`.
    pub fn zone_id(&self, name: &str) -> String {
        let fake = self.lock();
        let zone = fake.zones.iter().find(|(_, n)| n == name);
        zone.expect("no such zone").0.clone()
    }

    /// A new token with `status` (`active`, `expired`, ...) that may use only `zones`.
    pub fn add_token(&self, status: &str, zones: &[&str]) -> String {
        let ids = zones.iter().map(|z| self.zone_id(z)).collect();
        let token = format!("tok_{}", cf_id());
        let entry = (token.clone(), status.to_string(), Some(ids));
        self.lock().tokens.push(entry);
        token
    }

    /// Puts a record in `zone` as someone else would (through the dashboard, say).
    pub fn insert(&self, zone: &str, name: &str, kind: &str, content: &str, ttl: u32) {
        let zone_id = self.zone_id(zone);
        self.lock().records.push(Stored {
            id: cf_id(),
            zone_id,
            name: name.into(),
            kind: kind.into(),
            content: content.into(),
            ttl,
            proxied: false,
        });
    }

    /// The records of `name` and `kind` as stored (sorted by content).
    pub fn records(&self, name: &str, kind: &str) -> Vec<Stored> {
        let mut found: Vec<Stored> = (self.lock().records.iter())
            .filter(|r| r.name == name && r.kind == kind)
            .cloned()
            .collect();
        found.sort_by(|a, b| a.content.cmp(&b.content));
        found
    }

    /// Every request so far, as `METHOD path?query` (path without `/client/v4`).
    pub fn requests(&self) -> Vec<String> {
        self.lock().log.clone()
    }

    /// The requests so far that broke Cloudflare's published shapes, with what was wrong.
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// Fails the test with every request that broke Cloudflare's published shapes.
    pub fn assert_clean(&self) {
        let violations = self.violations();
        assert!(
            violations.is_empty(),
            "requests that do not follow Cloudflare's API:\n{}",
            violations.join("\n")
        );
    }
}

/// A TXT content in Cloudflare's documented form (quoted RFC 1035 character-strings of at most
/// 255 bytes each) decoded to its value; `None` if it is not in that form. Written here on its
/// own, not shared with the provider, so the contract test does not check the code with itself.
pub fn txt_value(content: &str) -> Option<String> {
    let mut bytes = content.bytes().peekable();
    let mut value = Vec::new();
    let mut strings = 0;
    loop {
        while bytes.peek() == Some(&b' ') {
            bytes.next();
        }
        match bytes.next() {
            None if strings > 0 => return String::from_utf8(value).ok(),
            Some(b'"') => {}
            _ => return None,
        }
        strings += 1;
        let mut len = 0;
        loop {
            let b = match bytes.next()? {
                b'"' => break,
                b'\\' => match bytes.next()? {
                    d @ b'0'..=b'9' => {
                        let (e, f) = (bytes.next()?, bytes.next()?);
                        let n = [d, e, f].iter().try_fold(0u16, |n, c| {
                            c.is_ascii_digit().then(|| n * 10 + u16::from(c - b'0'))
                        })?;
                        u8::try_from(n).ok()?
                    }
                    other => other,
                },
                other => other,
            };
            value.push(b);
            len += 1;
        }
        if len > 255 {
            return None;
        }
    }
}

type Answer = (StatusCode, Value);

fn envelope(result: Value) -> Answer {
    let body = json!({"success": true, "errors": [], "messages": [], "result": result});
    (StatusCode::OK, body)
}

fn failure(status: StatusCode, code: u32, message: &str) -> Answer {
    let errors = json!([{ "code": code, "message": message }]);
    let body = json!({"success": false, "errors": errors, "messages": [], "result": null});
    (status, body)
}

impl Fake {
    fn violation(&mut self, what: String) -> Answer {
        let answer = failure(StatusCode::BAD_REQUEST, 9999, &format!("fake: {what}"));
        self.violations.push(what);
        answer
    }
}

async fn handle(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], String) {
    let (status, value) = serve(&mut state.lock().unwrap(), &method, &uri, &headers, &body);
    let json = [(header::CONTENT_TYPE, "application/json")];
    (status, json, value.to_string())
}

fn serve(f: &mut Fake, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Answer {
    let what = format!("{method} {uri}");
    let Some(path) = uri.path().strip_prefix("/client/v4/") else {
        return f.violation(format!("{what}: not under /client/v4"));
    };
    let query = query_pairs(uri);
    f.log.push(format!(
        "{method} /{path}{}",
        uri.query().map(|q| format!("?{q}")).unwrap_or_default()
    ));
    for legacy in ["x-auth-key", "x-auth-email"] {
        if headers.contains_key(legacy) {
            return f.violation(format!("{what}: {legacy} sent (only API tokens are used)"));
        }
    }
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let Some(token) = auth.and_then(|a| a.strip_prefix("Bearer ")) else {
        return f.violation(format!("{what}: no `Authorization: Bearer <token>` ({auth:?})"));
    };
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    if *method == Method::POST && !json_body {
        return f.violation(format!("{what}: POST without Content-Type: application/json"));
    }
    if *method != Method::POST && !body.is_empty() {
        return f.violation(format!("{what}: a body on {method}"));
    }
    let segments: Vec<&str> = path.split('/').collect();
    let known = f.tokens.iter().find(|t| t.0 == token).cloned();
    let Some((_, status, allowed)) = known else {
        return match segments.as_slice() {
            ["user", "tokens", "verify"] => {
                failure(StatusCode::UNAUTHORIZED, 1000, "Invalid API Token")
            }
            _ => failure(StatusCode::FORBIDDEN, 10000, "Authentication error"),
        };
    };
    let verify = segments == ["user", "tokens", "verify"];
    if status != "active" && !verify {
        return failure(StatusCode::FORBIDDEN, 10000, "Authentication error");
    }
    let may = |id: &str| allowed.as_ref().is_none_or(|ids| ids.iter().any(|i| i == id));
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["user", "tokens", "verify"]) => {
            if let Some(bad) = unexpected(&query, &[]) {
                return f.violation(format!("{what}: {bad}"));
            }
            envelope(json!({"id": cf_id(), "status": status, "not_before": null,
                            "expires_on": null}))
        }
        ("GET", ["zones"]) => {
            let paging = match paging(&query, &[], 50) {
                Ok(p) => p,
                Err(bad) => return f.violation(format!("{what}: {bad}")),
            };
            let zones: Vec<Value> = (f.zones.iter())
                .filter(|(id, _)| may(id))
                .map(|(id, name)| zone_json(id, name))
                .collect();
            page_of(zones, paging)
        }
        (_, ["zones", id, rest @ ..]) => {
            if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return f.violation(format!("{what}: zone id {id:?} is not 32 hex digits"));
            }
            let Some(zone) = f.zones.iter().find(|(i, _)| i == id).cloned() else {
                let message = format!(
                    "Could not route to /zones/{id}, perhaps your object identifier is invalid?"
                );
                return failure(StatusCode::NOT_FOUND, 7003, &message);
            };
            if !may(id) {
                let message = "Unauthorized to access requested resource";
                return failure(StatusCode::FORBIDDEN, 9109, message);
            }
            zone_route(f, &what, method, &zone, rest, &query, body)
        }
        _ => f.violation(format!("{what}: no such route in the API subset")),
    }
}

fn zone_route(
    f: &mut Fake,
    what: &str,
    method: &Method,
    (id, name): &(String, String),
    rest: &[&str],
    query: &[(String, String)],
    body: &[u8],
) -> Answer {
    match (method.as_str(), rest) {
        ("GET", []) => match unexpected(query, &[]) {
            Some(bad) => f.violation(format!("{what}: {bad}")),
            None => envelope(zone_json(id, name)),
        },
        ("GET", ["dns_records"]) => {
            let paging = match paging(query, &["type", "name.exact"], 5_000_000) {
                Ok(p) => p,
                Err(bad) => return f.violation(format!("{what}: {bad}")),
            };
            let get = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.as_str());
            if let Some(kind) = get("type") {
                if !["A", "AAAA", "CNAME", "TXT", "MX", "NS", "SRV", "CAA"].contains(&kind) {
                    return f.violation(format!("{what}: unknown type {kind:?}"));
                }
            }
            let records: Vec<Value> = (f.records.iter())
                .filter(|r| r.zone_id == *id)
                .filter(|r| get("type").is_none_or(|t| r.kind == t))
                .filter(|r| get("name.exact").is_none_or(|n| r.name == n))
                .map(|r| record_json(r, name))
                .collect();
            page_of(records, paging)
        }
        ("POST", ["dns_records", "batch"]) => match serde_json::from_slice(body) {
            Ok(Value::Object(batch)) => batch::apply(f, what, id, name, &batch),
            _ => f.violation(format!("{what}: the body is not a JSON object")),
        },
        ("DELETE", ["dns_records", record]) => {
            if !query.is_empty() {
                return f.violation(format!("{what}: unexpected query"));
            }
            let Some(at) = f.records.iter().position(|r| r.id == *record && r.zone_id == *id)
            else {
                return failure(StatusCode::NOT_FOUND, 81044, "Record does not exist.");
            };
            f.records.remove(at);
            envelope(json!({ "id": record }))
        }
        _ => f.violation(format!("{what}: no such route in the API subset")),
    }
}

fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    let url = reqwest::Url::parse(&format!("http://fake{uri}")).expect("a request URI");
    url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

/// The first query parameter that is not one of `allowed`, or given twice.
fn unexpected(query: &[(String, String)], allowed: &[&str]) -> Option<String> {
    for (i, (k, _)) in query.iter().enumerate() {
        if !allowed.contains(&k.as_str()) {
            return Some(format!("unexpected query parameter {k:?}"));
        }
        if query[..i].iter().any(|(seen, _)| seen == k) {
            return Some(format!("query parameter {k:?} given twice"));
        }
    }
    None
}

/// `page` (from 1) and `per_page` (5 to `max`; Cloudflare's default 20 when absent).
fn paging(query: &[(String, String)], also: &[&str], max: u64) -> Result<(u64, u64), String> {
    let allowed: Vec<&str> = ["page", "per_page"].iter().chain(also).copied().collect();
    if let Some(bad) = unexpected(query, &allowed) {
        return Err(bad);
    }
    let number = |k: &str, default: u64| match query.iter().find(|(q, _)| q == k) {
        None => Ok(default),
        Some((_, v)) => v.parse::<u64>().map_err(|_| format!("{k}={v:?} is not a number")),
    };
    let (page, per_page) = (number("page", 1)?, number("per_page", 20)?);
    if page < 1 || !(5..=max).contains(&per_page) {
        return Err(format!("page {page} / per_page {per_page} out of range (5..={max})"));
    }
    Ok((page, per_page))
}

/// One page of `items` with Cloudflare's `result_info`.
fn page_of(items: Vec<Value>, (page, per_page): (u64, u64)) -> Answer {
    let total = items.len() as u64;
    let start = ((page - 1) * per_page).min(total) as usize;
    let end = (start + per_page as usize).min(items.len());
    let slice = items[start..end].to_vec();
    let (status, mut body) = envelope(Value::Array(slice));
    body["result_info"] = json!({"page": page, "per_page": per_page, "count": end - start,
                                 "total_count": total, "total_pages": total.div_ceil(per_page)});
    (status, body)
}

fn zone_json(id: &str, name: &str) -> Value {
    json!({"id": id, "name": name, "status": "active", "paused": false, "type": "full",
           "development_mode": 0,
           "name_servers": ["ada.ns.cloudflare.com", "bob.ns.cloudflare.com"],
           "original_name_servers": null, "original_registrar": null,
           "created_on": "2026-01-01T00:00:00.000000Z",
           "modified_on": "2026-01-01T00:00:00.000000Z",
           "activated_on": "2026-01-01T00:00:00.000000Z",
           "account": {"id": "01a7362d577a6c3019a474fd6f485823", "name": "Test account"},
           "permissions": ["#dns_records:edit", "#dns_records:read", "#zone:read"],
           "plan": {"id": "0feeeeeeeeeeeeeeeeeeeeeeeeeeeeee", "name": "Free Website"}})
}

fn record_json(r: &Stored, zone_name: &str) -> Value {
    json!({"id": r.id, "zone_id": r.zone_id, "zone_name": zone_name, "name": r.name,
           "type": r.kind, "content": r.content, "proxiable": r.kind != "TXT",
           "proxied": r.proxied, "ttl": r.ttl, "settings": {}, "meta": {}, "comment": null,
           "tags": [], "created_on": "2026-01-01T00:00:00.000000Z",
           "modified_on": "2026-01-01T00:00:00.000000Z"})
}
