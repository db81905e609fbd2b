//! portcullis: an Envoy ext_authz server that decides every request with Istio's AuthorizationPolicy semantics.
//!
//! The dependency rule: [`core`] (the `portcullis-core` crate in core/, re-exported here) is
//! pure and synchronous (no I/O, no async, no clock) and depends on nothing in the workspace;
//! its own dependency list enforces that. Everything else is an adapter around it:
//! [`config`] reads policy files into compiled policies, [`settings`] reads the server's own
//! configuration, [`grpc`] and [`admin`] are the network doors, [`telemetry`] names and emits
//! metrics and logs, [`app`] wires them together, and [`cli`] serves the offline commands.

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub use portcullis_core as core;
pub mod grpc;
pub mod http;
pub mod jwks;
pub mod reload;
pub mod settings;
pub mod telemetry;
pub mod token_cache;
pub mod traces;

#[cfg(test)]
mod golden_tests;
