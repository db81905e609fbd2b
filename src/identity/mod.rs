//! The identity adapters: what the core's verifiers need fetched or remembered, key sets from the issuers ([`jwks`]), tokens already verified ([`token_cache`]) and the API keys of bot accounts ([`api_keys`]); they never decide a request.

pub mod api_keys;
pub mod jwks;
pub mod token_cache;
