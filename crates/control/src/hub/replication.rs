//! Several Control replicas on one PostgreSQL database: every replica tells the others about
//! its committed changes and hears theirs (`store::changes`), so a change made through any
//! replica reaches the nodes connected to every replica. Each session compares snapshot hashes
//! as always, so a change heard twice, or a resync that changes nothing, pushes nothing.

use super::Hub;
use crate::store::changes::Heard;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Longest pause between attempts to reach the database again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs until `stop` turns true; returns at once on SQLite (one Control).
pub async fn run(hub: Arc<Hub>, mut stop: watch::Receiver<bool>) {
    if hub.store.backend() != crate::store::Backend::Postgres {
        return;
    }
    let me = crate::secrets::generate("replica_");
    tokio::select! {
        () = announce(&hub, &me) => {}
        () = listen(&hub, &me) => {}
        () = share_challenges(&hub) => {}
        _ = stop.wait_for(|s| *s) => {}
    }
}

/// Tells the others after each batch of local changes (changes made while a notice is being
/// sent go out in the next one).
async fn announce(hub: &Hub, me: &str) {
    let mut local = hub.local_changes.subscribe();
    let mut backoff = Backoff::default();
    while local.changed().await.is_ok() {
        local.mark_unchanged();
        while let Err(e) = hub.store.announce_change(me).await {
            tracing::warn!(error = %e, "cannot tell the other Control replicas about a change; retrying");
            backoff.pause().await;
        }
        backoff.reset();
    }
}

/// Writes the leader's ACME challenges whenever they change, then tells every replica, so that
/// Gateways on all of them answer the CA (whichever Gateway its validation reaches).
async fn share_challenges(hub: &Hub) {
    let mut edited = hub.challenges_edited.subscribe();
    let mut backoff = Backoff::default();
    while edited.changed().await.is_ok() {
        edited.mark_unchanged();
        while let Err(e) = hub.share_challenges().await {
            tracing::warn!(error = %e, "cannot share ACME challenges with the other Control replicas; retrying");
            backoff.pause().await;
        }
        backoff.reset();
        hub.changed();
    }
}

/// Recomputes on every change of another replica and after every reconnection.
async fn listen(hub: &Hub, me: &str) {
    let mut backoff = Backoff::default();
    let mut feed = loop {
        match hub.store.change_feed(me).await {
            Ok(Some(feed)) => break feed,
            Ok(None) => return std::future::pending().await,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen to the other Control replicas' changes; retrying");
                backoff.pause().await;
            }
        }
    };
    // Whatever happened before the feed was up.
    hub.changed_elsewhere();
    loop {
        match feed.next().await {
            Ok(Heard::Change) => hub.changed_elsewhere(),
            Ok(Heard::Resync) => {
                tracing::info!("listening to the other Control replicas again; reloading");
                backoff.reset();
                hub.changed_elsewhere();
            }
            Err(e) => {
                tracing::warn!(error = %e, "lost the other Control replicas' changes; reconnecting");
                // The database may be gone for this replica: its sessions recompute now, and
                // a session whose snapshot cannot be loaded ends, so that its node moves to a
                // replica that still has the database rather than stay on a stale config.
                hub.changed_elsewhere();
                backoff.pause().await;
            }
        }
    }
}

/// Doubling pauses from 100 ms up to [`MAX_BACKOFF`], each with up to half again of jitter so
/// replicas that lost the database together do not come back in step.
#[derive(Default)]
struct Backoff {
    attempt: u32,
}

impl Backoff {
    async fn pause(&mut self) {
        let base = Duration::from_millis(100) * 2u32.pow(self.attempt.min(6));
        let base = base.min(MAX_BACKOFF);
        let jitter = base.mul_f64(rand::random::<f64>() / 2.0);
        self.attempt += 1;
        tokio::time::sleep(base + jitter).await;
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use kakuremichi_testkit::origins::{self, psql, Postgres};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_leaders_challenges_reach_the_gateways_of_every_replica() {
        let test = "the_leaders_challenges_reach_the_gateways_of_every_replica";
        if !origins::available(test, &["postgres", "psql"]) {
            return;
        }
        let pg = Postgres::start().await;
        psql(pg.addr, "CREATE DATABASE km").await.unwrap();
        let url = format!("postgres://postgres@{}/km", pg.addr);
        let replica = || async {
            let store = Store::open(&url).await.unwrap();
            Hub::new(store, Duration::from_secs(10), Duration::from_secs(25))
        };
        let (a, b) = (replica().await, replica().await);
        let (stop, running) = watch::channel(false);
        tokio::spawn(run(a.clone(), running.clone()));
        tokio::spawn(run(b.clone(), running));
        a.edit_challenges(|c| {
            c.http01.insert("token".into(), "token.key".into());
        });
        for hub in [&a, &b] {
            kakuremichi_testkit::eventually(Duration::from_secs(5), "the challenge", || async {
                hub.world()
                    .await
                    .unwrap()
                    .acme
                    .http01
                    .get("token")
                    .map(String::as_str)
                    == Some("token.key")
            })
            .await;
        }
        a.edit_challenges(|c| c.http01.clear());
        kakuremichi_testkit::eventually(Duration::from_secs(5), "the challenge gone", || async {
            b.world().await.unwrap().acme.http01.is_empty()
        })
        .await;
        let _ = stop.send(true);
    }
}
