//! Fuzzes the reading of an introspection endpoint's answer (RFC 7662): any body, as the outbound client parses it, becomes a caller, a refusal, or a JWT's confirmation; never a panic, never a caller of another issuer.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use portcullis::core::authn::Authentication;
use portcullis::core::identity::ClaimPaths;
use portcullis::core::introspection::{confirms_jwt, identity_from_answer};

const NOW: u64 = 1_800_000_000;
const ISSUER: &str = "https://issuer.fuzz";

fuzz_target!(|data: &[u8]| {
    let Ok(answer) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let issuer: Arc<str> = Arc::from(ISSUER);
    let paths =
        ["scope", "aud", "client_id", "roles"].into_iter().map(|name| -> Box<[Box<str>]> { Box::new([name.into()]) });
    let kept = Arc::new(ClaimPaths::new(paths, false));
    let active = answer.get("active") == Some(&serde_json::Value::Bool(true));
    match identity_from_answer(&answer, &issuer, &kept, NOW) {
        Authentication::Introspected { identity } => {
            assert!(active, "a caller from an answer that is not active: {answer}");
            assert_eq!(identity.issuer(), ISSUER, "{answer}");
            let _ = (identity.subject(), identity.claim_values(&["scope"]).count(), identity.expires_at());
        }
        Authentication::Failed { .. } => {}
        other => panic!("not an introspection's outcome: {other:?}"),
    }
    if confirms_jwt(&answer, &issuer, "alice", NOW).is_ok() {
        assert!(active, "a JWT confirmed by an answer that is not active: {answer}");
    }
});
