//! The identity adapters: what the core's verifiers need fetched or remembered, key sets from the issuers ([`jwks`]), tokens already verified ([`token_cache`]) or refused for what they are ([`rejected_tokens`]), the API keys of bot accounts ([`api_keys`]) and opaque tokens' introspection answers ([`introspection`]) and the client assertions that call it ([`client_assertion`]); they never decide a request.

pub mod api_keys;
pub mod client_assertion;
pub mod introspection;
pub mod jwks;
pub mod rejected_tokens;
pub mod token_cache;
