//! Browser single sign-on: its settings, the sessions a login opens (in memory or shared through Redis) and the refresh of their tokens, the providers (OpenID Connect, Google, GitHub), the login endpoints and the provider's logouts (RP-initiated, back-channel); never decides a request (the core does) and never writes a wire format (the HTTP door does).

pub mod config;
pub mod envelope;
pub mod github;
pub mod login;
pub mod oidc;
pub mod pages;
pub mod providers;
pub mod redis_store;
pub mod refresh;
pub mod replay;
pub mod session;
pub mod sessions;
pub mod site;
pub mod store;

pub use login::{EndpointRequest, LoginAnswer, Sso};
