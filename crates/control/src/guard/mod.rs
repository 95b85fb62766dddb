//! Abuse resistance, as self-contained services that `AppState` holds: the bounded Argon2 pool
//! ([`hashing`]), the failed-login throttle ([`throttle`]), the per-user API rate limit
//! ([`ratelimit`]) and the proxies trusted to name the client ([`proxies`], which keys the
//! throttle).
//!
//! Why a layer of its own, below `app`: these need nothing of a request but the store and the
//! error type, and `AppState` must hold them; were they in `ops` (which takes `AppState`), the
//! state and the operations would import each other. The extractor that reads the client's
//! address of a request (`ClientIp`) is request handling, so it lives in `auth` above.

pub mod hashing;
pub mod proxies;
pub mod ratelimit;
pub mod throttle;
