//! portcullis: an Envoy ext_authz server that decides every request with Istio's AuthorizationPolicy semantics.
//!
//! The dependency rule: [`core`] is pure and synchronous (no I/O, no async, no clock) and
//! depends on nothing else in the crate. Everything else is an adapter around it:
//! [`config`] reads policy files into compiled policies, [`settings`] reads the server's own
//! configuration, [`grpc`] and [`admin`] are the network doors, [`telemetry`] names and emits
//! metrics and logs, [`app`] wires them together, and [`cli`] and [`policy_tests`] serve the offline commands.

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod core;
pub mod grpc;
pub mod http;
pub mod jwks;
pub mod policy_tests;
pub mod reload;
pub mod settings;
pub mod telemetry;
pub mod token_cache;
pub mod traces;

#[cfg(test)]
mod golden_tests;
