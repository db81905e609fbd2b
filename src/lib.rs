//! portcullis: an Envoy ext_authz server that decides every request with Istio's AuthorizationPolicy semantics.
//!
//! The dependency rule: [`core`] (the `portcullis-core` crate in core/, re-exported here) is
//! pure and synchronous (no I/O, no async, no clock) and depends on nothing in the workspace;
//! its own dependency list enforces that. Around it: doors → engine → {core, adapters}.
//! [`grpc`] and [`http`] are the check doors: they read a request, hand it to the [`engine`]
//! (the one place a check is decided, counted, logged and traced) and write its outcome in
//! their wire form; [`admin`] serves health and metrics. The adapters: [`config`] reads policy
//! files into compiled policies and [`policy_set`] builds a whole set from the settings,
//! [`jwks`] and [`token_cache`] supply keys and verified tokens, [`outbound`] is the one HTTP
//! client they fetch through, [`tasks`] owns the background work, [`settings`] reads the
//! server's own configuration, [`telemetry`] and [`traces`] name and emit metrics, logs and
//! spans, [`reload`] swaps new policy sets in. [`app`] wires them together (reload and the doors
//! never import it), and [`cli`] and [`policy_tests`] serve the offline commands.

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub use portcullis_core as core;
pub mod denial;
pub mod engine;
pub mod grpc;
pub mod http;
pub mod jwks;
pub mod outbound;
pub mod policy_set;
pub mod policy_tests;
pub mod reload;
pub mod settings;
pub mod sso;
pub mod tasks;
pub mod telemetry;
pub mod token_cache;
pub mod traces;

#[cfg(test)]
mod golden_tests;
