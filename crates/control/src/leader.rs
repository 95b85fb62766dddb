//! One replica does the work that must happen once (ACME, DNS records, backups, sweeps, key
//! rotation): it takes the lead (`store::leader`), starts that work, checks every
//! [`CHECK_EVERY`] that the lead is still its own, and stops the work at once when it is not.
//! The others try to take the lead every [`CHECK_EVERY`] (with jitter), so a leader that dies
//! is replaced within two or three periods. On SQLite the one Control leads from the start.
//! Every change of leader is in the audit log (`control.lead`).

use crate::store::leader::Lease;
use crate::store::{Actor, Backend, Store};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often the leader checks its lease and the others try to take it.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Runs until `stop` turns true. `start` starts the singleton work, which must end when the
/// receiver it is given turns true (its tasks are also aborted then).
/// `me` names this replica (in the audit log); `first` is the lead taken before Control began
/// to serve (see [`try_first`]), if it was.
pub async fn run(
    store: Store,
    me: String,
    mut stop: watch::Receiver<bool>,
    start: impl Fn(watch::Receiver<bool>) -> Vec<JoinHandle<()>>,
    mut first: Option<Lease>,
) {
    loop {
        let lease = match first.take() {
            Some(lease) => lease,
            None => tokio::select! {
                lease = take(&store) => lease,
                _ = stop.wait_for(|s| *s) => return,
            },
        };
        let (work_stop, work_rx) = watch::channel(false);
        let tasks = start(work_rx);
        if store.backend() == Backend::Postgres {
            tracing::info!(replica = %me, "this Control replica leads: ACME, DNS records, backups and sweeps run here");
            let detail = serde_json::json!({"replica": me});
            let actor = Actor {
                user_id: None,
                email: None,
            };
            if let Err(e) = store
                .audit(&actor, "control.lead", &format!("replica:{me}"), &detail)
                .await
            {
                tracing::warn!(error = %e, "cannot record the new leader in the audit log");
            }
        }
        let mut lease = lease;
        let lost = loop {
            tokio::select! {
                () = tokio::time::sleep(CHECK_EVERY) => {}
                _ = stop.wait_for(|s| *s) => break false,
            }
            if !lease.still_held().await {
                break true;
            }
        };
        let _ = work_stop.send(true);
        for task in &tasks {
            task.abort();
        }
        lease.release().await;
        if !lost {
            return;
        }
        tracing::warn!(replica = %me, "this Control replica lost the lead (database unreachable?); its singleton work stopped");
    }
}

/// One attempt at the lead before Control serves, so that a lone Control (always, on SQLite)
/// has its once-only work running before its first request, as it always had.
pub async fn try_first(store: &Store) -> Option<Lease> {
    store.try_lead().await.ok().flatten()
}

/// Waits until this replica leads.
async fn take(store: &Store) -> Lease {
    loop {
        match store.try_lead().await {
            Ok(Some(lease)) => return lease,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the database to take the lead; retrying")
            }
        }
        let jitter = CHECK_EVERY.mul_f64(rand::random::<f64>() / 2.0);
        tokio::time::sleep(CHECK_EVERY + jitter).await;
    }
}
