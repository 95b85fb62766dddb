use super::*;

use std::sync::atomic::AtomicUsize;

const FIRST_REQUEST: Duration = Duration::from_secs(5);
const IDLE: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_secs(1);

/// Lets paused time run `by`, and the watchdog with it.
async fn pass(by: Duration) {
    tokio::time::sleep(by).await;
}

#[tokio::test(start_paused = true)]
async fn a_quiet_connection_lets_go_once_per_quiet_stretch_then_closes() {
    let activity = Activity::new();
    let quieted = Arc::new(AtomicUsize::new(0));
    let watchdog = tokio::spawn({
        let (activity, quieted) = (activity.clone(), quieted.clone());
        async move {
            activity
                .expired(FIRST_REQUEST, IDLE, QUIET, move || {
                    quieted.fetch_add(1, Ordering::SeqCst);
                })
                .await;
        }
    });
    let count = || quieted.load(Ordering::SeqCst);

    // Before its first request a connection has nothing to let go.
    pass(Duration::from_secs(2)).await;
    assert_eq!(count(), 0);

    // Nor while a request is in flight, however long it takes.
    let request = activity.start();
    pass(Duration::from_secs(3)).await;
    assert_eq!(count(), 0);
    drop(request);

    pass(QUIET - Duration::from_millis(10)).await;
    assert_eq!(count(), 0, "not before it has been quiet for QUIET");
    pass(Duration::from_millis(20)).await;
    assert_eq!(count(), 1);
    pass(Duration::from_secs(5)).await;
    assert_eq!(count(), 1, "once per quiet stretch");

    // A new request starts a new stretch.
    drop(activity.start());
    pass(QUIET + Duration::from_millis(10)).await;
    assert_eq!(count(), 2);
    assert!(!watchdog.is_finished());

    pass(IDLE).await;
    assert!(
        watchdog.is_finished(),
        "idle for IDLE: the connection closes"
    );
    assert_eq!(count(), 2);
}

#[tokio::test(start_paused = true)]
async fn nothing_is_let_go_when_the_connection_closes_first() {
    let activity = Activity::new();
    let quieted = Arc::new(AtomicUsize::new(0));
    drop(activity.start());
    let counter = quieted.clone();
    // An idle timeout shorter than the quiet period: the close comes first, alone.
    activity
        .expired(FIRST_REQUEST, QUIET / 2, QUIET, move || {
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .await;
    assert_eq!(quieted.load(Ordering::SeqCst), 0);
}
