//! A typed client of Control's REST API (`/api/v1`), shared by everything that talks to Control
//! from outside: the tests (through `kakuremichi-testkit`), the load generator of the benchmark,
//! and later the CLI and `up`. It signs in like a person would (e-mail and password, then a
//! personal API token) and then sends every call with that token.
//!
//! Responses are the JSON documents Control sends (`serde_json::Value`): the API's contract is
//! that JSON, and tests check it field by field. Requests are typed where the API takes a fixed
//! shape ([`NewTunnel`], [`NewGateway`], [`NewUser`]); failures are a typed [`Error`] carrying the
//! API's stable error code.

mod error;

pub use error::Error;
pub use reqwest::{Method, StatusCode};

use serde::Serialize;
use serde_json::{json, Value};

/// The prefix of every API route.
pub const API: &str = "/api/v1";

/// A client of one Control, signed in once it has a token.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// A browser-style login: the session cookie and its CSRF token (both needed to make a token).
#[derive(Clone, Debug)]
pub struct Login {
    /// `name=value` pairs of every cookie set, joined with `; ` as a `Cookie` header wants them.
    pub cookie: String,
    pub csrf_token: String,
}

/// What Control answered, whatever the status: for callers that check failures themselves.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: StatusCode,
    /// The JSON body; `Null` when the body is empty.
    pub body: Value,
    /// The `Retry-After` header, when rate limited.
    pub retry_after: Option<String>,
}

/// `POST /api/v1/tunnels`.
#[derive(Clone, Debug, Serialize)]
pub struct NewTunnel {
    pub hostname: String,
    pub agent_id: i64,
    pub target: String,
}

/// Optional fields of `POST /api/v1/tunnels` beyond [`NewTunnel`]'s; `None` leaves Control's
/// default (its `default_tls`; public access).
#[derive(Clone, Debug, Default, Serialize)]
pub struct TunnelOptions {
    /// `acme`, `internal` or `off`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    /// `{"mode":"public"}`, `{"mode":"login"}` or `{"mode":"users","allow":[...]}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access: Option<Value>,
}

/// An Agent as `GET /api/v1/agents` lists it: the fields a caller picks one by.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct AgentSummary {
    pub id: i64,
    pub name: String,
}

/// A started command-line sign-in (`POST /api/v1/auth/device`): show the user `user_code` and
/// `verification_url`, then [`Client::poll_device_login`] every `interval` seconds.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct DeviceLogin {
    /// The secret to poll with; never shown.
    pub device_code: String,
    pub user_code: String,
    /// `/device?code=...`, relative to the Control URL ([`Client::url`] makes it whole).
    pub verification_path_complete: String,
    pub expires_in: u64,
    pub interval: u64,
}

/// The token of an approved sign-in.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct DeviceToken {
    pub token: String,
    pub token_id: i64,
    pub token_name: String,
    pub user: DeviceUser,
}

#[derive(Clone, Debug, serde::Deserialize)]
pub struct DeviceUser {
    pub id: i64,
    pub email: String,
}

/// What one poll of a sign-in found; refusals (`access_denied`, `expired_token`) are errors.
#[derive(Clone, Debug)]
pub enum DevicePoll {
    Pending,
    /// Polled too soon: wait longer.
    SlowDown,
    Approved(Box<DeviceToken>),
}

/// `POST /api/v1/gateways`.
#[derive(Clone, Debug, Serialize)]
pub struct NewGateway {
    pub name: String,
    pub public_endpoint: String,
}

/// `POST /api/v1/users`.
#[derive(Clone, Debug, Serialize)]
pub struct NewUser {
    pub email: String,
    pub password: String,
}

impl Client {
    /// A client of the Control at `base` (e.g. `http://127.0.0.1:8780`), not signed in yet.
    pub fn new(base: impl Into<String>) -> Client {
        Client::with_http(reqwest::Client::new(), base)
    }

    /// Like [`Client::new`], with a configured HTTP client (timeouts, proxies).
    pub fn with_http(http: reqwest::Client, base: impl Into<String>) -> Client {
        let base = base.into().trim_end_matches('/').to_string();
        Client {
            http,
            base,
            token: None,
        }
    }

    /// The same client, sending `token` (a personal API token) with every call.
    pub fn with_token(mut self, token: impl Into<String>) -> Client {
        self.token = Some(token.into());
        self
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `base` + `path` (a path from the root, e.g. `/readyz`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Whether Control answers `/readyz` with success now.
    pub async fn ready(&self) -> bool {
        match self.http.get(self.url("/readyz")).send().await {
            Ok(r) => r.status().is_success(),
            Err(_) => false,
        }
    }

    /// Signs in with e-mail and password: the session cookie and CSRF token.
    pub async fn login(&self, email: &str, password: &str) -> Result<Login, Error> {
        let res = self
            .http
            .post(self.url(&format!("{API}/auth/login")))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await?;
        let cookie = res
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_string))
            .collect::<Vec<_>>()
            .join("; ");
        let reply = into_reply(res).await?;
        let body = ok(Method::POST, "auth/login", reply)?;
        Ok(Login {
            cookie,
            csrf_token: field(&body, "csrf_token")?,
        })
    }

    /// Creates a personal API token named `name` for the signed-in session.
    pub async fn create_token(&self, login: &Login, name: &str) -> Result<String, Error> {
        let res = self
            .http
            .post(self.url(&format!("{API}/tokens")))
            .header(reqwest::header::COOKIE, &login.cookie)
            .header("x-csrf-token", &login.csrf_token)
            .json(&json!({ "name": name }))
            .send()
            .await?;
        let body = ok(Method::POST, "tokens", into_reply(res).await?)?;
        field(&body, "token")
    }

    /// Signs in and makes a personal API token named `token_name`; the client then uses it.
    pub async fn sign_in(
        self,
        email: &str,
        password: &str,
        token_name: &str,
    ) -> Result<Client, Error> {
        let login = self.login(email, password).await?;
        let token = self.create_token(&login, token_name).await?;
        Ok(self.with_token(token))
    }

    /// Sends `method` to `/api/v1/{path}` with the token; any status is an answer.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, Error> {
        self.send_raw(method, &format!("{API}/{path}"), body).await
    }

    /// Like [`Client::send`], to a path from the root (`/api/v1/...` or another route).
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, Error> {
        let mut req = self.http.request(method, self.url(path));
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        into_reply(req.send().await?).await
    }

    /// Sends `method` to `/api/v1/{path}`; a status other than 2xx is an [`Error::Api`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Error> {
        let reply = self.send(method.clone(), path, body).await?;
        ok(method, path, reply)
    }

    async fn create(&self, path: &str, body: &impl Serialize) -> Result<Value, Error> {
        let body = serde_json::to_value(body).map_err(Error::Encode)?;
        self.call(Method::POST, path, Some(&body)).await
    }

    /// Starts a command-line sign-in for a token to be called `name` (anonymous).
    pub async fn start_device_login(&self, name: &str) -> Result<DeviceLogin, Error> {
        let body = self.create("auth/device", &json!({ "name": name })).await?;
        decode(body, "{device_code, user_code, ...}")
    }

    /// Polls a sign-in started by [`Client::start_device_login`].
    pub async fn poll_device_login(&self, device_code: &str) -> Result<DevicePoll, Error> {
        let body = json!({ "device_code": device_code });
        match self
            .call(Method::POST, "auth/device/token", Some(&body))
            .await
        {
            Ok(answer) => Ok(DevicePoll::Approved(decode(answer, "{token, ...}")?)),
            Err(Error::Api { code, .. }) if code == "authorization_pending" => {
                Ok(DevicePoll::Pending)
            }
            Err(Error::Api { code, .. }) if code == "slow_down" => Ok(DevicePoll::SlowDown),
            Err(e) => Err(e),
        }
    }

    /// `GET /api/v1/auth/me`: who the token belongs to.
    pub async fn me(&self) -> Result<Value, Error> {
        self.call(Method::GET, "auth/me", None).await
    }

    /// Revokes one of the caller's personal API tokens.
    pub async fn delete_token(&self, id: i64) -> Result<(), Error> {
        let path = format!("tokens/{id}");
        self.call(Method::DELETE, &path, None).await.map(drop)
    }

    pub async fn status(&self) -> Result<Value, Error> {
        self.call(Method::GET, "status", None).await
    }

    pub async fn tunnels(&self) -> Result<Value, Error> {
        self.call(Method::GET, "tunnels", None).await
    }

    pub async fn tunnel(&self, id: i64) -> Result<Value, Error> {
        self.call(Method::GET, &format!("tunnels/{id}"), None).await
    }

    pub async fn create_tunnel(&self, tunnel: &NewTunnel) -> Result<Value, Error> {
        self.create("tunnels", tunnel).await
    }

    /// Creates a tunnel with optional fields ([`TunnelOptions`]) set.
    pub async fn create_tunnel_with(
        &self,
        tunnel: &NewTunnel,
        options: &TunnelOptions,
    ) -> Result<Value, Error> {
        let mut body = serde_json::to_value(tunnel).map_err(Error::Encode)?;
        let extra = serde_json::to_value(options).map_err(Error::Encode)?;
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        self.call(Method::POST, "tunnels", Some(&body)).await
    }

    /// The hostnames of every tunnel the token may see.
    pub async fn tunnel_hostnames(&self) -> Result<Vec<String>, Error> {
        let list = self.tunnels().await?;
        let items = list.as_array().ok_or_else(|| Error::MissingField {
            field: "[]".to_string(),
            body: Box::new(list.clone()),
        })?;
        Ok(items
            .iter()
            .filter_map(|t| t["hostname"].as_str().map(str::to_string))
            .collect())
    }

    /// `PATCH /api/v1/tunnels/{id}` with the fields to change.
    pub async fn update_tunnel(&self, id: i64, changes: &Value) -> Result<Value, Error> {
        let path = format!("tunnels/{id}");
        self.call(Method::PATCH, &path, Some(changes)).await
    }

    pub async fn delete_tunnel(&self, id: i64) -> Result<(), Error> {
        let path = format!("tunnels/{id}");
        self.call(Method::DELETE, &path, None).await.map(drop)
    }

    pub async fn agents(&self) -> Result<Value, Error> {
        self.call(Method::GET, "agents", None).await
    }

    /// Every Agent the token may see, as id and name.
    pub async fn agent_summaries(&self) -> Result<Vec<AgentSummary>, Error> {
        decode(self.agents().await?, "[{id, name}]")
    }

    pub async fn agent(&self, id: i64) -> Result<Value, Error> {
        self.call(Method::GET, &format!("agents/{id}"), None).await
    }

    /// Creates an Agent; the answer carries its `api_key`, shown only this once.
    pub async fn create_agent(&self, name: &str) -> Result<Value, Error> {
        self.create("agents", &json!({ "name": name })).await
    }

    pub async fn gateways(&self) -> Result<Value, Error> {
        self.call(Method::GET, "gateways", None).await
    }

    /// Creates a Gateway; the answer carries its `token`, shown only this once.
    pub async fn create_gateway(&self, gateway: &NewGateway) -> Result<Value, Error> {
        self.create("gateways", gateway).await
    }

    /// `PATCH /api/v1/gateways/{id}` with the fields to change.
    pub async fn update_gateway(&self, id: i64, changes: &Value) -> Result<Value, Error> {
        let path = format!("gateways/{id}");
        self.call(Method::PATCH, &path, Some(changes)).await
    }

    pub async fn users(&self) -> Result<Value, Error> {
        self.call(Method::GET, "users", None).await
    }

    pub async fn create_user(&self, user: &NewUser) -> Result<Value, Error> {
        self.create("users", user).await
    }
}

async fn into_reply(res: reqwest::Response) -> Result<Reply, Error> {
    let status = res.status();
    let retry_after = res
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = res.bytes().await?;
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).map_err(|e| Error::Decode {
            status,
            source: e,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        })?
    };
    Ok(Reply {
        status,
        body,
        retry_after,
    })
}

/// The body of a 2xx reply; any other status becomes [`Error::Api`].
fn ok(method: Method, path: &str, reply: Reply) -> Result<Value, Error> {
    if reply.status.is_success() {
        return Ok(reply.body);
    }
    let text = |key: &str| reply.body["error"][key].as_str().unwrap_or("").to_string();
    Err(Error::Api {
        method,
        path: path.to_string(),
        status: reply.status,
        code: text("code"),
        message: text("message"),
        body: Box::new(reply.body.clone()),
    })
}

/// `body` as `T`, or [`Error::MissingField`] naming `shape`.
fn decode<T: serde::de::DeserializeOwned>(body: Value, shape: &str) -> Result<T, Error> {
    serde_json::from_value(body.clone()).map_err(|_| Error::MissingField {
        field: shape.to_string(),
        body: Box::new(body),
    })
}

fn field(body: &Value, key: &str) -> Result<String, Error> {
    body[key]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| Error::MissingField {
            field: key.to_string(),
            body: Box::new(body.clone()),
        })
}
