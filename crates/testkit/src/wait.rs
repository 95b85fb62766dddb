//! The one way tests wait: poll a condition against a deadline and fail with what was awaited.
//! Nothing in the tests sleeps for a fixed time or writes its own polling loop.

use std::future::Future;
use std::time::Duration;
// Tokio's clock: a test with a paused clock reaches the deadline in virtual time.
use tokio::time::Instant;

/// How often [`eventually`] polls.
pub const POLL: Duration = Duration::from_millis(20);

/// What a condition returns: `bool` (ready or not) or `Option<T>` (ready with a value).
pub trait Ready {
    type Value;
    fn ready(self) -> Option<Self::Value>;
}

impl Ready for bool {
    type Value = ();
    fn ready(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Ready for Option<T> {
    type Value = T;
    fn ready(self) -> Option<T> {
        self
    }
}

/// Polls `check` every [`POLL`] until it is ready (true or `Some`), returning its value; panics
/// with `what` once `limit` has passed.
pub async fn eventually<R, F, Fut>(limit: Duration, what: &str, check: F) -> R::Value
where
    R: Ready,
    F: FnMut() -> Fut,
    Fut: Future<Output = R>,
{
    eventually_every(POLL, limit, what, check).await
}

/// [`eventually`] polling every `every`: for checks that cost something (an API call counted
/// against a rate limit, say).
pub async fn eventually_every<R, F, Fut>(
    every: Duration,
    limit: Duration,
    what: &str,
    mut check: F,
) -> R::Value
where
    R: Ready,
    F: FnMut() -> Fut,
    Fut: Future<Output = R>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await.ready() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(every).await;
    }
}

/// `fut`'s output, or a panic naming `what` when it takes longer than `limit`.
pub async fn within<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?}: {what}"))
}
