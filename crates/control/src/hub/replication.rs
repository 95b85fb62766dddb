//! Several Control replicas on one PostgreSQL database: every replica tells the others about
//! its committed changes and hears theirs (`store::changes`), so a change made through any
//! replica reaches the nodes connected to every replica. Each session compares snapshot hashes
//! as always, so a change heard twice, or a resync that changes nothing, pushes nothing.

use super::Hub;
use crate::store::changes::Heard;
use crate::store::now_ms;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often a replica says it is alive and reads the others' node sessions.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// A replica not heard of for this long no longer counts (its node sessions are gone with it).
const STALE_AFTER: Duration = Duration::from_secs(10);

/// Longest pause between attempts to reach the database again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs until `stop` turns true, as replica `me`; returns at once on SQLite (one Control).
pub async fn run(hub: Arc<Hub>, me: String, mut stop: watch::Receiver<bool>) {
    if hub.store.backend() != crate::store::Backend::Postgres {
        return;
    }
    tokio::select! {
        () = announce(&hub, &me) => {}
        () = listen(&hub, &me) => {}
        () = share_challenges(&hub) => {}
        () = presence(&hub, &me) => {}
        _ = stop.wait_for(|s| *s) => {}
    }
    // Stopping: this replica's node sessions end with it, at once for the other replicas
    // (after a crash, its rows stop counting when its heartbeat is stale).
    match hub.store.leave_presence(&me).await {
        Ok(()) => {
            let _ = hub.store.announce_presence(&me).await;
        }
        Err(e) => tracing::warn!(error = %e, "cannot clear this Control replica's node sessions"),
    }
}

/// Tells the others after each batch of local changes (changes made while a notice is being
/// sent go out in the next one).
async fn announce(hub: &Hub, me: &str) {
    let mut local = hub.local_changes.subscribe();
    // Once at the start: changes made before this task ran.
    local.mark_changed();
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
    // Edits made before this task ran (only the leader ever edits: a replica that never did
    // must not overwrite the leader's challenges with its empty ones).
    if *edited.borrow() > 0 {
        edited.mark_changed();
    }
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

fn stale_before() -> i64 {
    now_ms() - i64::try_from(STALE_AFTER.as_millis()).unwrap_or(0)
}

/// Reads which nodes the other live replicas have sessions with.
async fn read_presence(hub: &Hub, me: &str) {
    match hub.store.remote_presence(me, stale_before()).await {
        Ok(nodes) => hub.set_remote_online(
            nodes
                .into_iter()
                .map(|(node, ids)| (node, Arc::new(ids.into_iter().collect())))
                .collect(),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the other Control replicas' node sessions")
        }
    }
}

/// Keeps this replica's node sessions in the database (at once when they change, and a
/// heartbeat every [`HEARTBEAT`]), and reads the others'.
async fn presence(hub: &Hub, me: &str) {
    let mut edited = hub.presence_edited.subscribe();
    edited.mark_changed();
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let write = tokio::select! {
            changed = edited.changed() => {
                if changed.is_err() {
                    return;
                }
                edited.mark_unchanged();
                true
            }
            _ = tick.tick() => false,
        };
        let now = now_ms();
        let result = if write {
            let nodes = hub.local_presence();
            match hub.store.set_presence(me, &nodes, now).await {
                Ok(()) => hub.store.announce_presence(me).await,
                Err(e) => Err(e),
            }
        } else {
            hub.store.presence_heartbeat(me, now, stale_before()).await
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot record this Control replica's node sessions; retrying");
            // The heartbeat is how a replica learns it lost the database (the change feed may
            // stay silent): its sessions recompute, and one whose snapshot cannot be loaded
            // ends, so that its node moves to a replica that still has the database.
            hub.changed_elsewhere();
            // Again after a pause (a write that failed is tried again).
            if write {
                edited.mark_changed();
            }
            tokio::time::sleep(HEARTBEAT).await;
        }
        read_presence(hub, me).await;
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
            Ok(Heard::Presence) => read_presence(hub, me).await,
            Ok(Heard::Resync) => {
                tracing::info!("listening to the other Control replicas again; reloading");
                backoff.reset();
                hub.changed_elsewhere();
            }
            Err(e) => {
                tracing::warn!(error = %e, "lost the other Control replicas' changes; reconnecting");
                // As when the heartbeat fails (see `presence`).
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
        tokio::spawn(run(a.clone(), "replica_a".into(), running.clone()));
        tokio::spawn(run(b.clone(), "replica_b".into(), running));
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
