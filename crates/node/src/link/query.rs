//! Control's questions ([`Query`]) on the link: each is answered by the role's
//! [`QueryHandler`] in a task of its own, so a slow answer (an Agent waiting on a target that
//! does not answer) never holds up the session; answers go back in the order they are ready.

use futures_util::future::BoxFuture;
use kakuremichi_proto::{Answer, NodeMessage, Query};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};

/// Answers Control's questions for the role; set once with
/// [`crate::NodeRuntime::answer_queries`].
pub type QueryHandler = Arc<dyn Fn(Query) -> BoxFuture<'static, Answer> + Send + Sync>;

/// Where the link finds the role's handler (it may be set after the link started).
pub(crate) type HandlerSlot = Arc<OnceLock<QueryHandler>>;

/// Questions being answered at once per session; more are answered "busy" at once.
const MAX_IN_FLIGHT: usize = 8;
/// Longest a handler may take; Control stops waiting sooner anyway.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// One session's questions in flight and the answers ready to send.
pub(super) struct Questions {
    handler: HandlerSlot,
    permits: Arc<Semaphore>,
    ready_tx: mpsc::Sender<NodeMessage>,
    pub(super) ready: mpsc::Receiver<NodeMessage>,
}

impl Questions {
    pub(super) fn new(handler: HandlerSlot) -> Self {
        let (ready_tx, ready) = mpsc::channel(MAX_IN_FLIGHT);
        Self {
            handler,
            permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            ready_tx,
            ready,
        }
    }

    /// Starts answering question `id`; the answer arrives on `ready`.
    pub(super) fn ask(&self, id: u64, query: Query) {
        let Some(handler) = self.handler.get().cloned() else {
            self.answer_now(id, Answer::error("this node is still starting; try again"));
            return;
        };
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.answer_now(
                id,
                Answer::error("this node is answering too many questions; try again"),
            );
            return;
        };
        let ready = self.ready_tx.clone();
        tokio::spawn(async move {
            let answer = tokio::time::timeout(ANSWER_TIMEOUT, handler(query))
                .await
                .unwrap_or_else(|_| Answer::error("the node took too long to answer"));
            let _ = ready
                .send(NodeMessage::Answer {
                    id,
                    answer: answer.bounded(),
                })
                .await;
            drop(permit);
        });
    }

    /// Queues an answer known without asking the role (the channel always has room for it:
    /// its capacity is the number of permits, and this path holds none).
    fn answer_now(&self, id: u64, answer: Answer) {
        let _ = self.ready_tx.try_send(NodeMessage::Answer { id, answer });
    }
}
