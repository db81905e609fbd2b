//! portcullis: an Envoy ext_authz server that decides every request with Istio's AuthorizationPolicy semantics.
//!
//! A check flows one way:
//!
//! ```text
//! door reads its wire ─► engine ─► core: plan ─► engine: resolve the token ─► core: authorize
//!                                                (token cache, key store)            │
//! door writes its wire form ◄─ denial (status, body, challenge) ◄─ outcome ◄─────────┘
//! ```
//!
//! The dependency rule: doors → engine → {core, adapters}; adapters → core; [`core`] (the
//! `portcullis-core` crate in core/, re-exported here) is pure (no I/O, no async, no clock) and
//! depends on nothing in the workspace. The map:
//!
//! - [`doors`]: [`doors::grpc`] (Envoy's Check), [`doors::http`] (forward auth),
//!   [`doors::admin`] (health, metrics), [`doors::denial`] (a refusal's wire form, shared),
//!   [`doors::listener`] (bounded connections); a door never decides.
//! - [`engine`]: the one place a check is decided, counted, logged and traced; no wire format.
//! - [`identity`]: what the core's verifier needs fetched or remembered, [`identity::jwks`]
//!   and [`identity::token_cache`]; never decides. [`outbound`] is the one HTTP client.
//! - [`config`] reads and compiles policy files, [`policy_set`] builds a whole set from the
//!   [`settings`], [`reload`] swaps new sets in; [`tasks`] owns the background work;
//!   [`telemetry`] and [`traces`] name and emit metrics, logs and spans; [`runtime`] runs the
//!   check doors on one multi-thread runtime or one runtime per core.
//! - [`app`], the composition root, wires them for `serve`; only main.rs imports it.
//!   [`cli`] (`validate`, `check`) and [`policy_tests`] (`test`) are the offline commands.

pub mod app;
pub mod cli;
pub mod config;
pub mod data;
pub use portcullis_core as core;
pub mod doors;
pub mod engine;
pub mod identity;
pub mod outbound;
pub mod policy_set;
pub mod policy_tests;
pub mod redis_link;
pub mod reload;
pub mod revocation;
pub mod runtime;
pub mod settings;
pub mod sso;
pub mod stripes;
pub mod tasks;
pub mod telemetry;
pub mod traces;

#[cfg(test)]
mod golden_tests;
