//! The decision core: request attributes → identity → decision. Pure and synchronous: no I/O, no async runtime, no clock (the build enforces it: this crate has no such dependency).
//!
//! Adapters (gRPC, HTTP, the CLI) build a [`Request`] that borrows from their own message; a
//! check is [`Snapshot::plan`], the token it found resolved by the caller (keys and `now` are
//! inputs), then [`Snapshot::authorize`] ([`Snapshot::check`] runs all three with the keys at
//! hand). None can fail: every problem becomes a deny with a [`Reason`].

pub mod api_key;
pub mod authn;
#[cfg(test)]
mod authn_tests;
pub mod data;
pub mod decision;
pub mod explain;
pub mod id_token;
pub mod identity;
mod index;
pub mod introspection;
pub mod jwt;
pub mod logout_token;
pub mod matcher;
pub mod path;
pub mod policy;
pub mod redact;
pub mod redirect;
pub mod request;
pub mod revocation;
pub mod snapshot;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;
pub mod value;
pub mod workload;

pub use decision::{Decision, Reason};
pub use identity::Identity;
pub use request::{HttpRequest, Peer, Request, StrMap};
pub use snapshot::{EngineOptions, Snapshot};
