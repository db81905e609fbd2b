//! Fuzzes policy compilation from YAML: any text gives policies or located errors, never a panic; compiled sets decide.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use portcullis::config::load::load_policy_text;
use portcullis::core::authn::{AuthnContext, NoRemoteKeys};
use portcullis::core::workload::WorkloadTable;
use portcullis::core::{EngineOptions, HttpRequest, Request, Snapshot, StrMap};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let loaded = match load_policy_text("fuzz.yaml", text) {
        Ok(loaded) => loaded,
        Err(errors) => {
            assert!(!errors.is_empty(), "an error result without errors");
            return;
        }
    };
    // A set that compiled must decide without a panic (Snapshot::check turns one into
    // `internal_error`, which the assertion below reports).
    let snapshot = Snapshot::new(
        loaded.policies,
        loaded.authn,
        WorkloadTable::default(),
        EngineOptions::default(),
        "istio-system",
    );
    let namespaces: Vec<Option<HashMap<String, String>>> = vec![
        None,
        Some(HashMap::from([("namespace".to_string(), "n".to_string()), ("app".to_string(), "a".to_string())])),
    ];
    for extensions in &namespaces {
        for (method, path) in [("GET", "/"), ("POST", "/admin/x?y=1"), ("DELETE", "/a%2Fb/../c")] {
            let request = Request {
                http: Some(HttpRequest {
                    method,
                    scheme: "https",
                    host: "example.com",
                    path,
                    headers: vec![("authorization", "Bearer a.b.c"), ("x-tenant", "acme")],
                    joined_headers: false,
                }),
                context_extensions: extensions.as_ref().map(StrMap::from).unwrap_or_default(),
                ..Request::default()
            };
            let context = AuthnContext {
                keys: &NoRemoteKeys,
                now: 1_800_000_000,
                clock_skew_secs: 60,
                max_token_bytes: 8192,
            };
            let decision = snapshot.check(&request, &context);
            assert_ne!(decision.reason.as_str(), "internal_error", "a check panicked on a compiled set");
        }
    }
});
