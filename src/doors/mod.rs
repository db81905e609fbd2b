//! The network doors: each reads a request off its wire, hands it to the [`crate::engine`] and writes the outcome in its wire form; a door never decides, and nothing here is imported by the engine or the adapters.
//!
//! [`grpc`] is Envoy's ext_authz Check, [`http`] the forward-auth door of Traefik, nginx,
//! ingress-nginx and Envoy's HTTP mode, [`admin`] health and metrics. [`denial`] is the wire
//! form of a refusal both check doors share; [`listener`] serves the HTTP and admin doors'
//! connections with bounds.

pub mod admin;
pub mod denial;
pub mod grpc;
pub mod http;
pub mod listener;
