//! Which nodes are online: sessions on this replica (counted, a node may hold several) and, on
//! PostgreSQL, those other live replicas hold (`replication`). Presence changes what Gateways'
//! snapshots say of replicated tunnels' Agents, and what waits for Gateways looks again.

use super::{lock, Hub};
use crate::store::{Backend, NodeKind, NodeRef};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError};

impl Hub {
    /// The online, enabled Gateways (as of the latest world), with a session here or (on
    /// PostgreSQL) on another live replica.
    pub fn online_gateways(&self) -> Vec<NodeRef> {
        let disabled = lock(&self.disabled_gateways).clone();
        let mut gateways: HashSet<NodeRef> = self.local_online().into_iter().collect();
        gateways.extend(lock(&self.remote_online).keys().copied());
        gateways
            .into_iter()
            .filter(|node| node.kind == NodeKind::Gateway && !disabled.contains(&node.id))
            .collect()
    }

    /// True while at least one session of `node` is open, here or (PostgreSQL) on another
    /// live replica.
    pub fn is_online(&self, node: NodeRef) -> bool {
        self.online
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&node)
            .is_some_and(|n| *n > 0)
            || lock(&self.remote_online).contains_key(&node)
    }

    /// The nodes with a session on this replica.
    pub(crate) fn local_online(&self) -> Vec<NodeRef> {
        lock(&self.online)
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(node, _)| *node)
            .collect()
    }

    /// The nodes with a session on this replica, each with the ACME challenges it confirmed.
    pub(crate) fn local_presence(&self) -> Vec<(NodeRef, Vec<String>)> {
        let acks = self.acks.borrow();
        self.local_online()
            .into_iter()
            .map(|node| {
                let ids = acks
                    .get(&node)
                    .map(|a| a.iter().cloned().collect())
                    .unwrap_or_default();
                (node, ids)
            })
            .collect()
    }

    /// What the other replicas hold sessions with, as last read; snapshots that name a
    /// replicated tunnel's Agents as online or not are recomputed when that changes, and
    /// whoever waits for Gateways (ACME confirmations, "any Gateway online") looks again.
    pub(crate) fn set_remote_online(&self, nodes: HashMap<NodeRef, Arc<HashSet<String>>>) {
        let now = Arc::new(nodes);
        let before = std::mem::replace(&mut *lock(&self.remote_online), now.clone());
        if before == now {
            return;
        }
        let replicated = lock(&self.replicated_agents).clone();
        let agents_moved = before
            .keys()
            .filter(|n| !now.contains_key(n))
            .chain(now.keys().filter(|n| !before.contains_key(n)))
            .any(|n| n.kind == NodeKind::Agent && replicated.contains(&n.id));
        if agents_moved {
            self.changed_elsewhere();
        }
        self.acks.send_modify(|_| {});
    }

    /// Whether Control has a session with Agent `id`.
    pub fn agent_online(&self, id: i64) -> bool {
        self.is_online(NodeRef {
            kind: NodeKind::Agent,
            id,
        })
    }

    /// An Agent serving a replicated tunnel came or went: Gateways' routes name it as online or
    /// not, so their snapshots change.
    fn online_changed(&self, node: NodeRef) {
        if self.store.backend() == Backend::Postgres {
            self.presence_edited.send_modify(|n| *n += 1);
        }
        if node.kind == NodeKind::Agent && lock(&self.replicated_agents).contains(&node.id) {
            self.changed();
        }
    }

    pub(crate) fn mark_online(self: &Arc<Self>, node: NodeRef) -> OnlineGuard {
        let first = {
            let mut online = lock(&self.online);
            let count = online.entry(node).or_insert(0);
            *count += 1;
            *count == 1
        };
        if first {
            self.metrics.session(node.kind.label(), 1);
            self.online_changed(node);
        }
        self.acks.send_modify(|_| {});
        OnlineGuard {
            hub: self.clone(),
            node,
        }
    }
}

/// Keeps a node online while held.
pub struct OnlineGuard {
    hub: Arc<Hub>,
    node: NodeRef,
}

impl Drop for OnlineGuard {
    fn drop(&mut self) {
        let mut online = self
            .hub
            .online
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = online.get_mut(&self.node) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                online.remove(&self.node);
                drop(online);
                lock(&self.hub.port_errors).remove(&self.node);
                lock(&self.hub.stream_counters).remove(&self.node);
                self.hub.metrics.session(self.node.kind.label(), -1);
                self.hub.online_changed(self.node);
                self.hub.acks.send_modify(|acks| {
                    acks.remove(&self.node);
                });
            }
        }
    }
}
