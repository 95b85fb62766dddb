//! One snapshot for many nodes that differ only in identity, as every enabled Gateway's does.
//!
//! A Gateway's snapshot names every Agent as a peer: about 1.3 MB of JSON with 10,000 Agents.
//! Serialising it once per Gateway (and again to hash it) made a change cost Control seconds of
//! CPU with 100 Gateways. [`SharedSnapshot`] writes the JSON once; each node's copy is then its
//! identity (`node_id`, `wg_address`) written in front of that text, hashed and sent as is. The
//! bytes are exactly those of [`ConfigSnapshot::seal`] and [`ControlMessage::encode`], which the
//! tests check, so nodes see no difference.

use super::ConfigSnapshot;
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// A sealed snapshot without its identity, serialised once.
#[derive(Debug)]
pub struct SharedSnapshot {
    /// The snapshot as sealed with `node_id` 0 and `wg_address` 0.0.0.0.
    template: ConfigSnapshot,
    /// The template's JSON after its identity: `,"peers":[…],…}`.
    tail: String,
}

/// How `ControlMessage::Config` opens (the `type` tag first, then the snapshot).
const CONFIG_MESSAGE_HEAD: &str = r#"{"type":"config","snapshot":"#;

/// The JSON of a snapshot's first three fields, without the comma that follows them.
fn identity(config_hash: &str, node_id: i64, wg_address: Ipv4Addr) -> String {
    let mut head = String::with_capacity(128);
    // `config_hash` is hex: nothing to escape.
    let _ = write!(
        head,
        r#"{{"config_hash":"{config_hash}","node_id":{node_id},"wg_address":"{wg_address}""#
    );
    head
}

impl SharedSnapshot {
    /// Seals `template` (its identity is ignored) and serialises it once.
    pub fn new(template: ConfigSnapshot) -> Self {
        let mut template = ConfigSnapshot {
            node_id: 0,
            wg_address: Ipv4Addr::UNSPECIFIED,
            ..template
        }
        .seal();
        template.config_hash = String::new();
        let json = serde_json::to_string(&template).expect("snapshot serialises");
        let head = identity("", 0, Ipv4Addr::UNSPECIFIED);
        let tail = json
            .strip_prefix(&head)
            .expect("ConfigSnapshot serialises config_hash, node_id and wg_address first")
            .to_string();
        Self { template, tail }
    }

    /// The content every node gets (its identity zeroed, `config_hash` empty).
    pub fn template(&self) -> &ConfigSnapshot {
        &self.template
    }

    /// The `config_hash` of this snapshot sealed for one node.
    pub fn config_hash(&self, node_id: i64, wg_address: Ipv4Addr) -> String {
        let mut hash = Sha256::new();
        hash.update(identity("", node_id, wg_address).as_bytes());
        hash.update(self.tail.as_bytes());
        hex::encode(hash.finalize())
    }

    /// The `Config` message that carries this snapshot sealed for one node, `config_hash` being
    /// what [`Self::config_hash`] returned for it.
    pub fn encode(&self, config_hash: &str, node_id: i64, wg_address: Ipv4Addr) -> String {
        let head = identity(config_hash, node_id, wg_address);
        let mut text =
            String::with_capacity(CONFIG_MESSAGE_HEAD.len() + head.len() + self.tail.len() + 1);
        text.push_str(CONFIG_MESSAGE_HEAD);
        text.push_str(&head);
        text.push_str(&self.tail);
        text.push('}');
        text
    }
}
