//! What every node needs to start, whatever its role: where Control is, the node's credential and
//! where its state lives, checked with messages that say what to fix.

use crate::Secret;
use kakuremichi_proto::NodeRole;
use std::path::PathBuf;

/// The settings a Gateway and an Agent share (`CONTROL_URL`, `GATEWAY_TOKEN` or `API_KEY`,
/// `KAKUREMICHI_DATA_DIR`).
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub role: NodeRole,
    /// Control's base URL (`https://control.example.com`, `http://127.0.0.1:8780`), or several
    /// separated by commas: the replicas of one Control, tried in turn.
    pub control_url: String,
    /// Gateway token or Agent API key.
    pub credential: Secret,
    /// Where the WireGuard key and the last config are kept; `None` keeps nothing on disk.
    pub data_dir: Option<PathBuf>,
}

/// A setting a node cannot start with. Each message names the setting and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("CONTROL_URL is required: the URL of your kakuremichi Control, e.g. https://control.example.com")]
    MissingControlUrl,
    #[error("CONTROL_URL {url:?} needs a scheme, e.g. https://control.example.com")]
    NoScheme { url: String },
    #[error("CONTROL_URL scheme {scheme:?} is not supported; use http:// or https://")]
    UnsupportedScheme { scheme: String },
    #[error("CONTROL_URL {url:?} must be a base URL like https://control.example.com")]
    NotABaseUrl { url: String },
    /// `reason` is the parser's message, kept as text so the error prints on one line.
    #[error("CONTROL_URL {url:?} is not a valid URL: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error(
        "CONTROL_URL lists {count} URLs; at most {MAX_CONTROL_URLS} (one per Control replica)"
    )]
    TooManyUrls { count: usize },
    #[error("GATEWAY_TOKEN is required: create a gateway in Control (POST /api/v1/gateways) and copy its token")]
    MissingGatewayToken,
    #[error("API_KEY is required: create an agent in Control (web UI or POST /api/v1/agents) and copy its key")]
    MissingApiKey,
}

impl NodeConfig {
    /// Checks the settings, in the order a newcomer fills them in.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.control_url.trim().is_empty() {
            return Err(ConfigError::MissingControlUrl);
        }
        control_ws_urls(&self.control_url)?;
        if self.credential.is_empty() {
            return Err(match self.role {
                NodeRole::Gateway => ConfigError::MissingGatewayToken,
                NodeRole::Agent => ConfigError::MissingApiKey,
            });
        }
        Ok(())
    }
}

/// Most URLs `CONTROL_URL` may list.
pub const MAX_CONTROL_URLS: usize = 16;

/// The WebSocket URLs of `CONTROL_URL`: one base URL, or the comma-separated base URLs of
/// several Control replicas (empty entries, such as a trailing comma, are ignored).
pub fn control_ws_urls(control_url: &str) -> Result<Vec<String>, ConfigError> {
    let bases: Vec<&str> = control_url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    if bases.is_empty() {
        return Err(ConfigError::MissingControlUrl);
    }
    if bases.len() > MAX_CONTROL_URLS {
        return Err(ConfigError::TooManyUrls { count: bases.len() });
    }
    bases.into_iter().map(control_ws_url).collect()
}

/// The first base URL of `CONTROL_URL` (where a browser is sent when Control names none).
pub fn first_control_url(control_url: &str) -> &str {
    control_url
        .split(',')
        .map(str::trim)
        .find(|u| !u.is_empty())
        .unwrap_or("")
}

/// Turns Control's base URL into the WebSocket URL of the node's link to Control.
pub fn control_ws_url(control_url: &str) -> Result<String, ConfigError> {
    let url = || control_url.to_string();
    let trimmed = control_url.trim().trim_end_matches('/');
    let (scheme, rest) = trimmed
        .split_once("://")
        .ok_or_else(|| ConfigError::NoScheme { url: url() })?;
    let ws = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        other => {
            return Err(ConfigError::UnsupportedScheme {
                scheme: other.to_string(),
            })
        }
    };
    if rest.is_empty() || rest.contains(['?', '#']) {
        return Err(ConfigError::NotABaseUrl { url: url() });
    }
    let ws_url = format!("{ws}://{rest}{}", kakuremichi_proto::CONNECT_PATH);
    ws_url
        .parse::<http::Uri>()
        .map_err(|e| ConfigError::InvalidUrl {
            url: url(),
            reason: e.to_string(),
        })?;
    Ok(ws_url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_control_urls_are_the_replicas_of_one_control() {
        assert_eq!(
            control_ws_urls(" http://10.0.0.1:8780, https://c2.example.com/ ,").unwrap(),
            [
                "ws://10.0.0.1:8780/api/v1/connect",
                "wss://c2.example.com/api/v1/connect"
            ]
        );
        assert_eq!(control_ws_urls(" , "), Err(ConfigError::MissingControlUrl));
        assert!(matches!(
            control_ws_urls("http://a, ftp://b"),
            Err(ConfigError::UnsupportedScheme { .. })
        ));
        let many = vec!["http://c"; MAX_CONTROL_URLS + 1].join(",");
        assert_eq!(
            control_ws_urls(&many),
            Err(ConfigError::TooManyUrls {
                count: MAX_CONTROL_URLS + 1
            })
        );
        assert_eq!(first_control_url(" , https://a , http://b"), "https://a");
    }

    #[test]
    fn ws_url_from_base_url() {
        assert_eq!(
            control_ws_url("http://127.0.0.1:8780").unwrap(),
            "ws://127.0.0.1:8780/api/v1/connect"
        );
        assert_eq!(
            control_ws_url("https://c.example.com/").unwrap(),
            "wss://c.example.com/api/v1/connect"
        );
        assert_eq!(
            control_ws_url("wss://c.example.com").unwrap(),
            "wss://c.example.com/api/v1/connect"
        );
        for bad in ["", "c.example.com", "ftp://x", "http://", "http://x?y=1"] {
            assert!(control_ws_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validation_names_the_setting_to_fix() {
        let config = |role, url: &str, credential: &str| NodeConfig {
            role,
            control_url: url.into(),
            credential: Secret::new(credential),
            data_dir: None,
        };
        let check = |c: NodeConfig| c.validate().map_err(|e| e.to_string());
        assert!(check(config(NodeRole::Gateway, " ", "t"))
            .unwrap_err()
            .starts_with("CONTROL_URL is required"));
        assert_eq!(
            check(config(NodeRole::Agent, "ftp://x", "k")).unwrap_err(),
            "CONTROL_URL scheme \"ftp\" is not supported; use http:// or https://"
        );
        assert!(check(config(NodeRole::Gateway, "http://c", ""))
            .unwrap_err()
            .starts_with("GATEWAY_TOKEN is required"));
        assert!(check(config(NodeRole::Agent, "http://c", " "))
            .unwrap_err()
            .starts_with("API_KEY is required"));
        assert!(check(config(NodeRole::Agent, "http://c", "k")).is_ok());
    }
}
