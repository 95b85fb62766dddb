//! Messages of the node session: JSON text frames over the WebSocket at [`crate::CONNECT_PATH`].
//!
//! The node speaks first with [`NodeMessage::Hello`]; Control answers [`ControlMessage::Welcome`]
//! followed by a [`ControlMessage::Config`] when the node's hash differs from the current
//! snapshot, and pushes a new `Config` on every change. Liveness uses WebSocket pings.

use crate::{ConfigSnapshot, TunnelProtocol, PROTOCOL_VERSION};
use serde::{Deserialize, Serialize};

/// Which role a node plays; fixed by the credential it presents, echoed for clear errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeRole {
    Gateway,
    Agent,
}

/// Node → Control.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum NodeMessage {
    /// First message of every session.
    Hello {
        protocol_version: u32,
        role: NodeRole,
        /// Base64 of the node's X25519 WireGuard public key (the private key never leaves it).
        public_key: String,
        /// Hash of the snapshot the node already holds (from its disk cache), if any.
        config_hash: Option<String>,
        /// Free text for operators, e.g. "kakuremichi 0.1.0".
        software: String,
    },
    /// The node applied the snapshot with this hash.
    Applied { config_hash: String },
    /// The node could not apply a snapshot Control sent (too large, unreadable, damaged) and keeps
    /// serving its last good one. `config_hash` is the refused snapshot's, when it could be read;
    /// `reason` is for operators (at most [`MAX_REASON_CHARS`] characters).
    Rejected {
        config_hash: Option<String>,
        reason: String,
    },
    /// What the node could not do with the snapshot it applied, sent at the start of each session
    /// and whenever it changes; an empty list clears what was reported before.
    Status {
        /// Public ports a Gateway could not bind (at most [`MAX_PORT_ERRORS`], each reason at
        /// most [`MAX_REASON_CHARS`] characters).
        #[serde(default)]
        port_errors: Vec<PortError>,
        /// The ports a Gateway listens on for itself (HTTP, HTTPS, admin: tcp; WireGuard: udp),
        /// which Control refuses as tunnel ports (at most [`MAX_PORT_ERRORS`]).
        #[serde(default)]
        own_ports: Vec<OwnPort>,
        /// A Gateway's counters of its `tcp`/`udp`/`tls` tunnels, since it started (at most
        /// [`MAX_STREAM_COUNTERS`]); refreshed every few seconds while they change.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        stream_counters: Vec<StreamCounters>,
        /// The ports browsers reach a Gateway's HTTP and HTTPS on, which tunnels' public URLs
        /// name when they are not 80 and 443 (absent from older Gateways).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        web_ports: Option<WebPorts>,
        /// A Gateway's counters of every tunnel, since it started (at most
        /// [`crate::MAX_TRAFFIC`]); refreshed every 10 s while they change (protocol 3).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        traffic: Vec<crate::TunnelTraffic>,
    },
    /// The answer to Control's [`ControlMessage::Query`] of the same id (protocol 3).
    Answer {
        id: u64,
        answer: crate::query::Answer,
    },
}

/// The public ports of a Gateway's HTTP and HTTPS listeners (its listening ports, or the ports
/// a router forwards to them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebPorts {
    pub http: u16,
    pub https: u16,
}

impl Default for WebPorts {
    fn default() -> Self {
        Self {
            http: 80,
            https: 443,
        }
    }
}

/// What a Gateway carried for one stream tunnel (a UDP flow counts as a connection).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamCounters {
    pub tunnel_id: i64,
    /// Connections carried since the Gateway started, and open now.
    pub connections: u64,
    pub active: u64,
    /// Bytes from clients, and to them.
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Most tunnels' counters one [`NodeMessage::Status`] carries; Control drops the rest.
pub const MAX_STREAM_COUNTERS: usize = 10_000;

/// A port a Gateway uses for itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnPort {
    pub protocol: TunnelProtocol,
    pub port: u16,
}

/// A `tcp`/`udp` tunnel port a Gateway could not bind, and why ("address already in use").
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortError {
    pub protocol: TunnelProtocol,
    pub port: u16,
    pub error: String,
}

/// Most port errors one [`NodeMessage::Status`] carries; Control drops the rest.
pub const MAX_PORT_ERRORS: usize = 1000;

/// Longest `reason` a node sends in [`NodeMessage::Rejected`]; Control cuts longer ones.
pub const MAX_REASON_CHARS: usize = 500;

impl NodeMessage {
    /// A [`NodeMessage::Rejected`] with `reason` cut to [`MAX_REASON_CHARS`].
    pub fn rejected(config_hash: Option<String>, reason: &str) -> Self {
        NodeMessage::Rejected {
            config_hash,
            reason: reason.chars().take(MAX_REASON_CHARS).collect(),
        }
    }
}

/// Control → node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
// `Config` dwarfs the others, and is what the session is for: boxing it would only move the
// snapshot to the heap, where it ends up anyway (a few hundred bytes of stack meanwhile).
#[allow(clippy::large_enum_variant)]
pub enum ControlMessage {
    /// Session accepted.
    Welcome { protocol_version: u32, node_id: i64 },
    /// A snapshot the node does not have yet.
    Config { snapshot: ConfigSnapshot },
    /// Session refused or ended; `code` is stable (`version_mismatch`, `bad_hello`, ...).
    Error { code: String, message: String },
    /// A question for the node, answered by a [`NodeMessage::Answer`] of the same id; sent only
    /// in sessions of protocol 3 or later (see [`crate::query`]).
    Query { id: u64, query: crate::query::Query },
}

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "protocol version mismatch: this program speaks kakuremichi protocol {oldest} to {ours}, \
         the peer speaks {theirs}; Control, Gateways and Agents may be at most one release apart: \
         upgrade the older side"
    )]
    VersionMismatch { oldest: u32, ours: u32, theirs: u32 },
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Upper bound on a message; a larger frame is rejected before parsing.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Decodes a node's message, checking the protocol version of a `Hello`.
pub fn decode_node(text: &str) -> Result<NodeMessage, DecodeError> {
    let msg: NodeMessage = decode(text)?;
    if let NodeMessage::Hello {
        protocol_version, ..
    } = &msg
    {
        check_version(*protocol_version)?;
    }
    Ok(msg)
}

/// Decodes Control's message, checking the protocol version of a `Welcome`.
pub fn decode_control(text: &str) -> Result<ControlMessage, DecodeError> {
    let msg: ControlMessage = decode(text)?;
    if let ControlMessage::Welcome {
        protocol_version, ..
    } = &msg
    {
        check_version(*protocol_version)?;
    }
    Ok(msg)
}

fn decode<T: for<'de> Deserialize<'de>>(text: &str) -> Result<T, DecodeError> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::Malformed(serde::de::Error::custom(format!(
            "message of {} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit",
            text.len()
        ))));
    }
    // A version mismatch must be reported as such even when the rest of the message no longer
    // parses (a newer peer may have added fields), so look at the version first.
    if let Ok(probe) = serde_json::from_str::<VersionProbe>(text) {
        if let Some(v) = probe.protocol_version {
            check_version(v)?;
        }
    }
    Ok(serde_json::from_str(text)?)
}

#[derive(Deserialize)]
struct VersionProbe {
    protocol_version: Option<u32>,
}

/// For a message [`decode_control`] refused: whether it was a `config` and, if the snapshot's
/// hash can still be read, that hash. Lets a node name the snapshot it rejects. Reads at most
/// [`MAX_PROBE_BYTES`] (the connection's own frame limit bounds the text anyway).
pub fn probe_config(text: &str) -> Option<Option<String>> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "type")]
        kind: String,
        snapshot: Option<SnapshotProbe>,
    }
    #[derive(Deserialize)]
    struct SnapshotProbe {
        config_hash: Option<String>,
    }
    if text.len() > MAX_PROBE_BYTES {
        return None;
    }
    let probe: Probe = serde_json::from_str(text).ok()?;
    (probe.kind == "config").then(|| {
        probe
            .snapshot
            .and_then(|s| s.config_hash)
            .filter(|h| h.len() <= 128)
    })
}

/// Largest message [`probe_config`] looks into.
pub const MAX_PROBE_BYTES: usize = 4 * MAX_MESSAGE_BYTES;

fn check_version(theirs: u32) -> Result<(), DecodeError> {
    if crate::speaks(theirs) {
        Ok(())
    } else {
        Err(DecodeError::VersionMismatch {
            oldest: crate::OLDEST_PROTOCOL_VERSION,
            ours: PROTOCOL_VERSION,
            theirs,
        })
    }
}

impl NodeMessage {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("message serialises")
    }
}

impl ControlMessage {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("message serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> NodeMessage {
        NodeMessage::Hello {
            protocol_version: PROTOCOL_VERSION,
            role: NodeRole::Agent,
            public_key: "k".repeat(44),
            config_hash: Some("ab".repeat(32)),
            software: "test".into(),
        }
    }

    #[test]
    fn round_trip_every_message() {
        for m in [
            hello(),
            NodeMessage::Applied {
                config_hash: "h".into(),
            },
            NodeMessage::Rejected {
                config_hash: Some("ab".repeat(32)),
                reason: "config of 20000000 bytes exceeds the limit".into(),
            },
            NodeMessage::Rejected {
                config_hash: None,
                reason: "unreadable".into(),
            },
            NodeMessage::Answer {
                id: 9,
                answer: crate::Answer::CheckTarget {
                    check: crate::TargetCheck {
                        target: "app:3000".into(),
                        ok: false,
                        connect_us: None,
                        detail: "connection refused".into(),
                    },
                },
            },
            NodeMessage::Answer {
                id: 10,
                answer: crate::Answer::error("no such tunnel"),
            },
        ] {
            assert_eq!(decode_node(&m.encode()).unwrap(), m);
        }
        for m in [
            ControlMessage::Welcome {
                protocol_version: PROTOCOL_VERSION,
                node_id: 4,
            },
            ControlMessage::Config {
                snapshot: crate::ConfigSnapshot::default().seal(),
            },
            ControlMessage::Error {
                code: "bad_hello".into(),
                message: "no".into(),
            },
            ControlMessage::Query {
                id: 9,
                query: crate::Query::RequestLog {
                    tunnel_id: 3,
                    filter: crate::RequestFilter {
                        status: Some(5),
                        path_prefix: Some("/api".into()),
                        limit: 10,
                    },
                },
            },
            ControlMessage::Query {
                id: 10,
                query: crate::Query::CheckTarget { tunnel_id: 3 },
            },
        ] {
            assert_eq!(decode_control(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn version_mismatch_is_actionable_even_with_new_fields() {
        let text = r#"{"type":"hello","protocol_version":99,"role":"agent","public_key":"k",
            "config_hash":null,"software":"future","new_field":true}"#;
        let err = decode_node(text).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::VersionMismatch {
                oldest: crate::OLDEST_PROTOCOL_VERSION,
                ours: PROTOCOL_VERSION,
                theirs: 99
            }
        ));
        assert!(err.to_string().contains("upgrade the older side"), "{err}");
        let welcome = r#"{"type":"welcome","protocol_version":99,"node_id":1}"#;
        assert!(matches!(
            decode_control(welcome),
            Err(DecodeError::VersionMismatch { .. })
        ));
        // The version before this release's is still spoken, the one before that no longer.
        for (version, spoken) in [(PROTOCOL_VERSION - 1, true), (PROTOCOL_VERSION - 2, false)] {
            let welcome =
                format!(r#"{{"type":"welcome","protocol_version":{version},"node_id":1}}"#);
            assert_eq!(decode_control(&welcome).is_ok(), spoken, "{version}");
        }
    }

    #[test]
    fn the_session_uses_the_newest_version_both_speak() {
        use crate::{negotiate, OLDEST_PROTOCOL_VERSION as OLDEST};
        let ours = PROTOCOL_VERSION;
        // A node of the release before (no header: its newest is its hello's version).
        assert_eq!(negotiate(ours - 1, ours - 1), Some(ours - 1));
        // This release's nodes: hello in the oldest version, newest in the header.
        assert_eq!(negotiate(OLDEST, ours), Some(ours));
        // A node of the release after: it still speaks ours.
        assert_eq!(negotiate(ours, ours + 1), Some(ours));
        // Two releases apart either way: no version in common.
        assert_eq!(negotiate(ours + 1, ours + 2), None);
        assert_eq!(negotiate(OLDEST - 1, OLDEST - 1), None);
    }

    #[test]
    fn garbage_and_unknown_types_are_errors_not_panics() {
        for text in [
            "",
            "{",
            "null",
            "[]",
            r#"{"type":"launch_missiles"}"#,
            r#"{"type":"hello"}"#,
        ] {
            assert!(
                matches!(decode_node(text), Err(DecodeError::Malformed(_))),
                "{text}"
            );
            assert!(decode_control(text).is_err(), "{text}");
        }
    }

    #[test]
    fn rejected_reason_is_bounded_and_configs_are_recognised() {
        let NodeMessage::Rejected { reason, .. } = NodeMessage::rejected(None, &"é".repeat(2000))
        else {
            unreachable!()
        };
        assert_eq!(reason.chars().count(), MAX_REASON_CHARS);
        let config = ControlMessage::Config {
            snapshot: crate::ConfigSnapshot::default().seal(),
        };
        let hash = crate::ConfigSnapshot::default().seal().config_hash;
        let mut text = config.encode();
        assert_eq!(probe_config(&text), Some(Some(hash.clone())));
        // A config this program cannot parse (a newer field) is still recognised as one.
        text.insert_str(text.len() - 2, r#","surprise":1"#);
        assert!(decode_control(&text).is_err());
        assert_eq!(probe_config(&text), Some(Some(hash)));
        assert_eq!(probe_config(r#"{"type":"welcome"}"#), None);
        assert_eq!(probe_config("garbage"), None);
    }

    #[test]
    fn oversized_message_rejected() {
        let big = "x".repeat(MAX_MESSAGE_BYTES + 1);
        assert!(decode_node(&big).is_err());
    }
}
