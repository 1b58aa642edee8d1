//! The only rsvault crate that knows HTTP.
//!
//! A request goes through one pipeline ([`pipeline`]): tell identity endpoints ([`identity`]) from ARM
//! ones, and for ARM authenticate the bearer token, find the route ([`routes`]), check `api-version`, the
//! subscription and the caller's role for the route's action — all from the headers — and only then read
//! and parse the body (size, time and memory bounded by [`limits`]), then dispatch the typed
//! [`routes::Op`] to the control plane ([`arm`]). Every answer — success or [`rsvault_core::Error`] — is
//! rendered in one place ([`reply`]) with ARM's headers and error envelope. [`server`] owns the TLS
//! listener, the per-connection limits and graceful shutdown; [`traffic`] optionally records each
//! authenticated ARM exchange for spec validation.

pub mod arm;
pub mod identity;
pub mod limits;
pub mod pipeline;
pub mod reply;
pub mod routes;
pub mod server;
pub mod traffic;

pub use limits::{Limits, Rate};
pub use server::{open, start, Config, Opened, Running, StartError};
