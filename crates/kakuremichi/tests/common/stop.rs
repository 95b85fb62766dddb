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

/// Runs Control in-process on an ephemeral port with its data in `data_dir`, the admin account
/// from [`super::ADMIN_EMAIL`] when `with_admin` (else first run: no account); returns its base
/// URL. Stopped when the returned [`Stop`] drops.
pub async fn spawn_control_in_process(
    data_dir: std::path::PathBuf,
    with_admin: bool,
) -> (String, Stop) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut config = kakuremichi_control::ControlConfig {
        data_dir,
        ..Default::default()
    };
    if with_admin {
        config.admin_email = Some(super::ADMIN_EMAIL.into());
        config.admin_password = Some(super::ADMIN_PASSWORD.into());
    }
    let (stop, wait) = Stop::new();
    tokio::spawn(kakuremichi_control::run(config, listener, wait()));
    (base, stop)
}
