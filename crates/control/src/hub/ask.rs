//! Questions for nodes (see `kakuremichi_proto::query`): the API asks a node through the
//! [`Hub`](super::Hub), the node's session on this replica sends the question and hands back
//! the answer. A node with no session here, or one too old to understand questions, is told
//! apart so that the caller can say which.

use crate::store::NodeRef;
use kakuremichi_proto::{Answer, Query};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Questions waiting to be sent on one session; more are refused as busy.
const QUEUE: usize = 16;

/// One question on its way to a node, with where its answer goes.
pub(crate) struct Asked {
    pub query: Query,
    pub reply: oneshot::Sender<Answer>,
}

/// Why a node gave no answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AskError {
    #[error("it has no session with this Control (offline, or connected to another replica)")]
    NotConnected,
    #[error("it runs a release too old to answer (protocol 2); upgrade it")]
    TooOld,
    #[error("it did not answer within {0:?}")]
    Timeout(Duration),
    #[error("its session closed before it answered")]
    Gone,
    #[error("it has too many questions waiting; try again")]
    Busy,
}

struct Entry {
    session: u64,
    /// `None`: the session speaks protocol 2 and cannot be asked.
    sender: Option<mpsc::Sender<Asked>>,
}

/// The node sessions of this replica that can be asked, by node.
#[derive(Default)]
pub(crate) struct Askers {
    by_node: Mutex<HashMap<NodeRef, Entry>>,
    next_session: AtomicU64,
}

/// A session's place in [`Askers`]; dropping it removes the session (unless a newer session of
/// the node took its place).
pub(crate) struct Registration {
    hub: Arc<super::Hub>,
    node: NodeRef,
    session: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = self.hub.asks.lock();
        if map
            .get(&self.node)
            .is_some_and(|e| e.session == self.session)
        {
            map.remove(&self.node);
        }
    }
}

impl Askers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeRef, Entry>> {
        self.by_node.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl super::Hub {
    /// Registers a session of `node` that has just opened; `answers` is false for a session
    /// that cannot be asked (protocol 2). The newest session of a node is the one asked.
    pub(crate) fn register_asker(
        self: &Arc<Self>,
        node: NodeRef,
        answers: bool,
    ) -> (Registration, Option<mpsc::Receiver<Asked>>) {
        let session = self.asks.next_session.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = if answers {
            let (tx, rx) = mpsc::channel(QUEUE);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        self.asks.lock().insert(node, Entry { session, sender });
        let registration = Registration {
            hub: self.clone(),
            node,
            session,
        };
        (registration, receiver)
    }

    /// Asks `node` a question and waits at most `limit` for its answer.
    pub async fn ask(
        &self,
        node: NodeRef,
        query: Query,
        limit: Duration,
    ) -> Result<Answer, AskError> {
        let sender = match self.asks.lock().get(&node) {
            None => return Err(AskError::NotConnected),
            Some(Entry { sender: None, .. }) => return Err(AskError::TooOld),
            Some(Entry {
                sender: Some(s), ..
            }) => s.clone(),
        };
        let (reply, answer) = oneshot::channel();
        sender
            .try_send(Asked { query, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => AskError::Busy,
                mpsc::error::TrySendError::Closed(_) => AskError::Gone,
            })?;
        match tokio::time::timeout(limit, answer).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(AskError::Gone),
            Err(_) => Err(AskError::Timeout(limit)),
        }
    }
}
