//! `up`'s first start: signs in as the admin Control created, then creates a personal API
//! token, the gateway, the agent and the demo tunnel through Control's own REST API (the same
//! calls a user would make, so `up` exercises them).

use super::credentials::UpState;
use super::{ADMIN_EMAIL, DEMO_HOST};
use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::net::SocketAddr;

/// Headers that authenticate one request.
type Auth = Vec<(&'static str, String)>;

/// Creates the token, gateway, agent and demo tunnel through the REST API.
pub(super) async fn bootstrap(
    client: &reqwest::Client,
    control_url: &str,
    admin_password: String,
    wg_addr: SocketAddr,
    hello_addr: SocketAddr,
) -> anyhow::Result<UpState> {
    let api = Api {
        client,
        control_url,
    };
    let admin_email = ADMIN_EMAIL.to_string();
    let signed_in = api.sign_in(&admin_email, &admin_password).await?;
    let token = api
        .post("tokens", json!({"name": "kakuremichi up"}), signed_in)
        .await?;
    let api_token = text(&token, "token", "no token in response")?;
    let bearer = || vec![("authorization", format!("Bearer {api_token}"))];
    let gateway = api
        .post(
            "gateways",
            json!({"name": "local", "public_endpoint": wg_addr.to_string()}),
            bearer(),
        )
        .await?;
    let agent = api
        .post("agents", json!({"name": "local"}), bearer())
        .await?;
    let agent_id = agent["id"].as_i64().context("no agent id in response")?;
    let tunnel = json!({"hostname": DEMO_HOST, "agent_id": agent_id, "target": hello_addr.to_string(), "tls": "internal"});
    api.post("tunnels", tunnel, bearer()).await?;
    Ok(UpState {
        admin_email,
        admin_password,
        gateway_token: text(&gateway, "token", "no gateway token")?,
        agent_key: text(&agent, "api_key", "no agent key")?,
        agent_id,
        api_token,
    })
}

/// A string field of a response, or `missing` as the error.
fn text(value: &Value, field: &str, missing: &'static str) -> anyhow::Result<String> {
    Ok(value[field].as_str().context(missing)?.to_string())
}

/// Control's REST API, as far as `up` needs it.
struct Api<'a> {
    client: &'a reqwest::Client,
    control_url: &'a str,
}

impl Api<'_> {
    /// Signs in with the password; returns the session cookie and the CSRF token that a
    /// cookie-authenticated write must carry.
    async fn sign_in(&self, email: &str, password: &str) -> anyhow::Result<Auth> {
        let login = self
            .client
            .post(format!("{}/api/v1/auth/login", self.control_url))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await?;
        if !login.status().is_success() {
            bail!(
                "cannot sign in as {email} (HTTP {}): the database in the data directory has other \
                 credentials; use another --data-dir or remove it to start over",
                login.status()
            );
        }
        let cookie = login
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.split(';').next().filter(|c| c.contains("km_session=")))
            .context("Control did not set a session cookie")?
            .to_string();
        let login: Value = login.json().await?;
        let csrf = text(&login, "csrf_token", "no csrf_token in the login response")?;
        Ok(vec![("cookie", cookie), ("x-csrf-token", csrf)])
    }

    /// Creates something; a refusal is an error that quotes Control's answer.
    async fn post(&self, path: &str, body: Value, auth: Auth) -> anyhow::Result<Value> {
        let mut request = self
            .client
            .post(format!("{}/api/v1/{path}", self.control_url))
            .json(&body);
        for (name, value) in auth {
            request = request.header(name, value);
        }
        let resp = request.send().await?;
        let status = resp.status();
        let value: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("bootstrap request failed (HTTP {status}): {value}");
        }
        Ok(value)
    }
}
