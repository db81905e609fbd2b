//! The identity adapters: what the core's verifiers need fetched or remembered, key sets from the issuers ([`jwks`]) and tokens already verified ([`token_cache`]); they never decide a request.

pub mod jwks;
pub mod token_cache;
