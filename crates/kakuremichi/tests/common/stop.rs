//! Stops a component started in-process (`run(config, listeners, shutdown)`).

use tokio::sync::watch;

/// Stops a component started in-process when dropped or told to.
pub struct Stop(watch::Sender<bool>);

impl Stop {
    pub fn new() -> (
        Stop,
        impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    ) {
        let (tx, rx) = watch::channel(false);
        let wait = move || {
            let mut rx = rx.clone();
            Box::pin(async move {
                let _ = rx.wait_for(|s| *s).await;
            }) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        };
        (Stop(tx), wait)
    }
    pub fn stop(&self) {
        let _ = self.0.send(true);
    }
}

impl Drop for Stop {
    fn drop(&mut self) {
        self.stop();
    }
}
