//! One bounded pool for every Argon2 computation (hashing a new password and verifying one).
//!
//! Each computation holds ~19 MiB and a core for tens of milliseconds. Anonymous routes (login,
//! setup, registration) can start them, so unbounded they exhaust Control's memory. At most
//! `in_flight` run at once; at most `queue` more wait for a slot; anything beyond is refused at
//! once with 503 and `Retry-After` (nothing is allocated for it). The permits travel into the
//! blocking task, so a client that disconnects mid-check cannot free its slot early.

use crate::error::ApiError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Requests that find the pool and its queue full are told to come back after this long.
const RETRY_AFTER_SECS: u64 = 1;

/// Why a password could not be hashed or checked.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("too many password checks are in progress")]
    Busy,
    #[error("password hashing failed: {0}")]
    Failed(String),
}

impl From<HashError> for ApiError {
    fn from(e: HashError) -> Self {
        match e {
            HashError::Busy => {
                ApiError::busy(RETRY_AFTER_SECS, "Control is busy checking other passwords")
            }
            HashError::Failed(why) => {
                tracing::error!(error = %why, "password hashing failed");
                ApiError::internal()
            }
        }
    }
}

/// The pool; one per Control, shared by every route that touches a password.
pub struct Passwords {
    running: Arc<Semaphore>,
    admitted: Arc<Semaphore>,
    computed: AtomicU64,
}

impl Passwords {
    /// At most `in_flight` computations at once and `queue` more waiting.
    pub fn new(in_flight: usize, queue: usize) -> Self {
        let in_flight = in_flight.max(1);
        Self {
            running: Arc::new(Semaphore::new(in_flight)),
            admitted: Arc::new(Semaphore::new(in_flight + queue)),
            computed: AtomicU64::new(0),
        }
    }

    /// Sized for the machine: one computation per core, at most four (~76 MiB).
    pub fn for_this_host() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        Self::new(cores.clamp(1, 4), 32)
    }

    /// The Argon2id PHC string of `password`.
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        self.run(move || crate::secrets::hash_password(&password))
            .await?
            .map_err(|e| HashError::Failed(e.to_string()))
    }

    /// Whether `password` matches the PHC string `phc`.
    pub async fn verify(&self, password: String, phc: String) -> Result<bool, HashError> {
        self.run(move || crate::secrets::verify_password(&password, &phc))
            .await
    }

    /// How many computations have started.
    #[cfg(test)]
    pub fn computed(&self) -> u64 {
        self.computed.load(Ordering::Relaxed)
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let admitted = Arc::clone(&self.admitted)
            .try_acquire_owned()
            .map_err(|_| HashError::Busy)?;
        let slot = Arc::clone(&self.running)
            .acquire_owned()
            .await
            .map_err(|_| HashError::Busy)?;
        self.computed.fetch_add(1, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || {
            let _held = (admitted, slot);
            work()
        })
        .await
        .map_err(|e| HashError::Failed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_pool_refuses_at_once_and_recovers() {
        let pool = Arc::new(Passwords::new(1, 1));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Arc::new(std::sync::Mutex::new(release_rx));
        // One runs (blocked until released), one waits for its slot: the pool is full.
        let running = {
            let pool = Arc::clone(&pool);
            let rx = Arc::clone(&release_rx);
            tokio::spawn(async move {
                pool.run(move || {
                    let _ = started_tx.send(());
                    let _ = rx.lock().map(|r| r.recv());
                })
                .await
            })
        };
        tokio::task::spawn_blocking(move || started_rx.recv())
            .await
            .unwrap()
            .unwrap();
        let waiting = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.run(|| 7).await })
        };
        while pool.admitted.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(pool.run(|| 1).await, Err(HashError::Busy)));
        let e = ApiError::from(HashError::Busy);
        assert_eq!(e.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.retry_after(), Some(RETRY_AFTER_SECS));
        release_tx.send(()).unwrap();
        running.await.unwrap().unwrap();
        assert_eq!(waiting.await.unwrap().unwrap(), 7);
        assert_eq!(pool.computed(), 2, "the refused one never ran");
        let phc = pool.hash("correct horse".into()).await.unwrap();
        assert!(pool.verify("correct horse".into(), phc).await.unwrap());
    }
}
