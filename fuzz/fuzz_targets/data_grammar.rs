//! Fuzzes the policy grammar's extension: any policy text with path parameters, value expressions and data sources compiles or gives located errors; a compiled set decides random requests against random small data without a panic, and strips every user-data header.
#![no_main]

use std::sync::Arc;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use portcullis::config::load::load_policy_text;
use portcullis::core::authn::{AuthnContext, NoRemoteKeys};
use portcullis::core::data::{Change, Data, Record, Table};
use portcullis::core::workload::WorkloadTable;
use portcullis::core::{EngineOptions, HttpRequest, Request, Snapshot, StrMap};
use serde_json::{Map, Value};

/// One record of a source: its key and, for each of the source's fields in turn, its values.
#[derive(Debug, Arbitrary)]
struct RecordInput<'a> {
    source: u8,
    key: &'a str,
    fields: Vec<Vec<&'a str>>,
}

#[derive(Debug, Arbitrary)]
struct RequestInput<'a> {
    tcp: bool,
    path: &'a str,
    headers: Vec<(&'a str, &'a str)>,
}

#[derive(Debug, Arbitrary)]
struct Scene<'a> {
    records: Vec<RecordInput<'a>>,
    requests: Vec<RequestInput<'a>>,
}

// The input is the policy text, a NUL, then the bytes the records and requests are drawn from.
fuzz_target!(|input: &[u8]| {
    let (text, rest) = input.split_at(input.iter().position(|&byte| byte == 0).unwrap_or(input.len()));
    let Ok(text) = std::str::from_utf8(text) else { return };
    let loaded = match load_policy_text("fuzz.yaml", text) {
        Ok(loaded) => loaded,
        Err(errors) => {
            assert!(!errors.is_empty(), "an error result without errors");
            return;
        }
    };
    let Ok(scene) = Scene::arbitrary(&mut Unstructured::new(rest.get(1..).unwrap_or_default())) else { return };
    let mut data = Data::default();
    for (index, source) in loaded.data_sources.iter().enumerate() {
        let changes = scene.records.iter().filter(|record| usize::from(record.source) % loaded.data_sources.len() == index);
        let changes: Vec<Change> = changes
            .filter_map(|record| {
                let mut document = Map::new();
                document.insert(source.shape.key.to_string(), record.key.into());
                for (field, values) in source.shape.fields.iter().zip(&record.fields) {
                    let value = match values.as_slice() {
                        [one] => Value::from(*one),
                        many => Value::from(many.to_vec()),
                    };
                    document.insert(field.to_string(), value);
                }
                let (key, record) = Record::from_document(&source.shape, &Value::Object(document)).ok()?;
                Some(Change::Put(key, Arc::new(record)))
            })
            .collect();
        if let Ok(table) = Table::new(source.shape.clone()).apply(changes) {
            data = data.with_table(source.name.clone(), Arc::new(table));
        }
    }
    let sources = loaded.snapshot_data_sources();
    let header_names: Vec<Arc<str>> = sources.user_headers.iter().map(|header| header.name.clone()).collect();
    let snapshot = Snapshot::with_data_sources(
        loaded.policies,
        loaded.authn,
        WorkloadTable::default(),
        EngineOptions::default(),
        "istio-system",
        sources,
    );
    let context = AuthnContext { keys: &NoRemoteKeys, now: 1_800_000_000, clock_skew_secs: 60, max_token_bytes: 8192 };
    let extensions = std::collections::HashMap::from([("namespace".to_string(), "d".to_string())]);
    for input in scene.requests.iter().take(8) {
        let http = HttpRequest {
            method: "GET",
            scheme: "https",
            host: "example.com",
            path: input.path,
            headers: input.headers.clone(),
            joined_headers: false,
        };
        let request = Request {
            http: (!input.tcp).then_some(http),
            context_extensions: StrMap::from(&extensions),
            ..Request::default()
        };
        let decision = snapshot.check_with_data(&request, &context, &data);
        assert_ne!(decision.reason.as_str(), "internal_error", "a check panicked on a compiled set");
        for name in &header_names {
            assert!(decision.headers_to_remove.contains(name), "user-data header `{name}` not stripped");
        }
        for (name, value) in &decision.headers_to_set {
            assert!(!value.contains(['\r', '\n', '\0']), "header `{name}` carries a control character");
        }
        let _ = snapshot.explain_with_data(&request, &context, &data).to_string();
    }
});
