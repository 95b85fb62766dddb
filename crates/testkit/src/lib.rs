//! The one test kit of the workspace (dev-only): every test crate's harness lives here, so no
//! test file repeats another's set-up.
//!
//! - [`eventually`] / [`within`]: the one way to wait, with a deadline (always available);
//! - [`peers`]: finding the real programs some tests talk to, and skipping loudly without them;
//! - [`netns`]: test hosts in network namespaces (server, NAT router, Agent host);
//! - with the `roles` feature: Control, Gateways, Agents and origins in-process ([`roles`],
//!   [`Cluster`]) or as processes of the built binary ([`Proc`], [`LocalSite`], [`site`]), the
//!   API harnesses ([`Api`] for end-to-end tests, [`control`] for Control's own tests, both on
//!   `kakuremichi-client`), node sessions ([`node`]), steady load ([`load`]), an ACME CA
//!   ([`pebble`]) and HTTPS clients ([`https`]);
//! - with the `browser` feature: chromium driven through chromedriver ([`browser`]).

pub mod netns;
pub mod peers;
mod wait;

pub use wait::{eventually, within, Ready, POLL};

#[cfg(feature = "roles")]
mod api;
#[cfg(feature = "browser")]
pub mod browser;
#[cfg(feature = "roles")]
mod cluster;
#[cfg(feature = "roles")]
pub mod control;
#[cfg(feature = "roles")]
pub mod https;
#[cfg(feature = "roles")]
pub mod load;
#[cfg(feature = "roles")]
mod local;
#[cfg(feature = "roles")]
pub mod node;
#[cfg(feature = "roles")]
pub mod pebble;
#[cfg(feature = "roles")]
mod proc;
#[cfg(feature = "roles")]
pub mod roles;
#[cfg(feature = "roles")]
pub mod site;
#[cfg(feature = "roles")]
mod transfer;
#[cfg(feature = "roles")]
pub mod usage;

#[cfg(feature = "roles")]
pub use api::{rss_mib, through, wait_all, wait_ready, wait_through, Api};
#[cfg(feature = "roles")]
pub use cluster::{Cluster, Fleet};
#[cfg(feature = "roles")]
pub use kakuremichi_client as client;
#[cfg(feature = "roles")]
pub use local::{private_loopback, spawn_control, LocalSite};
#[cfg(feature = "roles")]
pub use proc::{bin, Proc};
#[cfg(feature = "roles")]
pub use roles::{
    control_config, spawn_gateway, start_agent, start_origin, InProcessControl, InProcessGateway,
    Stop,
};
#[cfg(feature = "roles")]
pub use transfer::{download, upload};

/// The bootstrap admin every test Control is started with.
pub const ADMIN_EMAIL: &str = "admin@example.com";
pub const ADMIN_PASSWORD: &str = "correct horse battery staple";

/// Logs from the components under test, when `KAKUREMICHI_TEST_LOG` is set (e.g. `debug`).
#[cfg(feature = "roles")]
pub fn init_logs() {
    if let Ok(filter) = std::env::var("KAKUREMICHI_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}
