//! The one test kit of the workspace (dev-only): every test crate's harness lives here, so no
//! test file repeats another's set-up.
//!
//! - [`eventually`] / [`within`]: the one way to wait, with a deadline (always available);
//! - [`peers`]: finding the real programs some tests talk to, and skipping loudly without them;
//! - [`netns`]: test hosts in network namespaces (server, NAT router, Agent host);
//! - [`pty`]: the built binary in a pseudo-terminal, as a user runs it (the CLI's tests);
//! - with the `roles` feature: Control, Gateways, Agents and origins in-process ([`roles`],
//!   [`Cluster`]) or as processes of the built binary ([`Proc`], [`LocalSite`], [`site`]), the
//!   API harnesses ([`Api`] for end-to-end tests, [`control`] for Control's own tests, both on
//!   `kakuremichi-client`), node sessions ([`node`]), steady load ([`load`]), an ACME CA
//!   ([`pebble`]), authoritative DNS servers (BIND, PowerDNS: [`dns`]), a fake of Cloudflare's
//!   DNS API that checks every request against its published shapes ([`cloudflare`]), HTTPS
//!   clients ([`https`]) and the real servers behind `tcp`/`tls` tunnels ([`origins`]);
//! - with the `browser` feature: chromium driven through chromedriver ([`browser`]).

pub mod metrics_doc;
pub mod netns;
pub mod peers;
pub mod pty;
mod wait;

pub use wait::{eventually, eventually_every, within, Ready, POLL};

/// Items that need the `roles` feature (they build Control, the Gateway and the Agent).
macro_rules! with_roles {
    ($($item:item)*) => { $( #[cfg(feature = "roles")] $item )* };
}

with_roles! {
    mod api;
    pub mod cloudflare;
    mod cluster;
    pub mod control;
    pub mod dns;
    pub mod https;
    pub mod load;
    mod local;
    pub mod node;
    pub mod origins;
    pub mod pebble;
    mod proc;
    pub mod roles;
    pub mod site;
    mod transfer;
    pub mod usage;

    pub use api::{rss_mib, through, wait_all, wait_ready, wait_through, Api};
    pub use cluster::{Cluster, Fleet};
    pub use kakuremichi_client as client;
    pub use local::{private_loopback, spawn_control, spawn_control_with, LocalSite};
    pub use proc::{bin, Proc};
    pub use roles::{
        control_config, spawn_gateway, start_agent, start_agent_on, start_agent_with, start_origin,
        InProcessControl,
        InProcessGateway, Stop,
    };
    pub use transfer::{download, upload};
}

#[cfg(feature = "browser")]
pub mod browser;

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
