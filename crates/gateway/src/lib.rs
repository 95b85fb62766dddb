//! kakuremichi Gateway: the public entrance. Routes each request by Host to the Agent that serves
//! it, over a userspace WireGuard tunnel.

pub mod proxy;
