//! A runtime of its own for a role `up` runs next to Control, as the role has when it runs as a
//! separate process.
//!
//! Measured on 2 CPUs: with Control, Gateway and Agent on one runtime of two workers, one HTTPS
//! download through `up` moved 0.78–0.92 Gbit/s where separate Gateway and Agent processes (one
//! worker each) moved 1.5: the Gateway's and the Agent's tasks were stolen back and forth between
//! the two workers and woke each other across them. Each role now has its workers to itself.

use anyhow::Context;
use kakuremichi_gateway::GatewayListeners;
use std::future::Future;
use tokio::task::JoinHandle;

/// A multi-threaded runtime for one role; shut down (without blocking) when dropped.
pub struct RoleRuntime {
    handle: tokio::runtime::Handle,
    /// Taken on drop.
    runtime: Option<tokio::runtime::Runtime>,
}

impl RoleRuntime {
    /// `workers` threads named `km-<role>` (at most 15 characters are kept).
    pub fn new(role: &str, workers: usize) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name(format!("km-{role}"))
            .enable_all()
            .build()
            .with_context(|| format!("cannot start the {role}'s runtime"))?;
        Ok(Self {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    /// Runs `future` on this runtime; the handle can be awaited from any runtime.
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(future)
    }
}

impl Drop for RoleRuntime {
    fn drop(&mut self) {
        // Dropped from async code: a blocking shutdown would panic there. Every task of the
        // role has finished by now (`Roles::finished` awaited them).
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The Gateway's listeners, bound on the runtime `up` starts on, detached from it so the
/// Gateway's own runtime can take them: a socket's readiness comes from the runtime that
/// registered it.
pub struct MovableListeners {
    http: std::net::TcpListener,
    https: std::net::TcpListener,
    admin: std::net::TcpListener,
    wg: std::net::UdpSocket,
}

impl MovableListeners {
    pub fn new(listeners: GatewayListeners) -> std::io::Result<Self> {
        Ok(Self {
            http: listeners.http.into_std()?,
            https: listeners.https.into_std()?,
            admin: listeners.admin.into_std()?,
            wg: listeners.wg,
        })
    }

    /// Registers them with the runtime this runs on.
    pub fn register(self) -> std::io::Result<GatewayListeners> {
        use tokio::net::TcpListener;
        Ok(GatewayListeners {
            http: TcpListener::from_std(self.http)?,
            https: TcpListener::from_std(self.https)?,
            admin: TcpListener::from_std(self.admin)?,
            wg: self.wg,
        })
    }
}
