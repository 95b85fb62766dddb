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

/// Runs a Gateway in-process on the given listeners; stopped when the returned [`Stop`] drops.
pub fn spawn_gateway(
    control: &str,
    token: &str,
    listeners: kakuremichi_gateway::GatewayListeners,
    dir: std::path::PathBuf,
) -> (Stop, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let token = kakuremichi_node::Secret::new(token.to_string());
    let mut config = kakuremichi_gateway::GatewayConfig::new(control.to_string(), token);
    config.data_dir = Some(dir);
    config.proxy.connect_timeout = std::time::Duration::from_secs(2);
    let (stop, wait) = Stop::new();
    (
        stop,
        tokio::spawn(kakuremichi_gateway::run(config, listeners, wait())),
    )
}
