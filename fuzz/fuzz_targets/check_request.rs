//! Fuzzes `CheckRequest` reading and the decision: raw protobuf bytes, and requests built from structured input, through the zero-copy view and against the prost oracle, with the shipped and adversarial policies.
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use envoy_types::pb::envoy::config::core::v3::{
    Address, HeaderMap, HeaderValue, SocketAddress, address, socket_address,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request, TlsSession};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use libfuzzer_sys::fuzz_target;
use portcullis::config::load::{LoadedPolicies, load_policies, load_policy_text};
use portcullis::core::authn::{AuthnContext, NoRemoteKeys};
use portcullis::core::workload::WorkloadTable;
use portcullis::core::{EngineOptions, Snapshot};
use portcullis::doors::grpc::oracle::{compare, request_from_check};
use portcullis::doors::grpc::{CheckView, ViewError, decide_view_without_engine};
use prost::Message;
use prost::bytes::Bytes;

/// Policies that use every rule field and condition kind, beside the shipped examples.
const ADVERSARIAL_POLICIES: &str = include_str!("../adversarial-policies.yaml");

fn snapshot() -> &'static Snapshot {
    static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        // A policy set that does not load would leave the fuzzer deciding with none: fail loudly.
        let mut loaded = load_policies(&[shipped]).unwrap_or_else(|errors| panic!("policies/: {errors:?}"));
        let extra: LoadedPolicies = load_policy_text("adversarial-policies.yaml", ADVERSARIAL_POLICIES)
            .unwrap_or_else(|errors| panic!("adversarial-policies.yaml: {errors:?}"));
        loaded.policies.extend(extra.policies);
        Snapshot::new(
            loaded.policies,
            loaded.authn,
            WorkloadTable::default(),
            EngineOptions { trusted_proxy_hops: 1, ..EngineOptions::default() },
            "istio-system",
        )
    })
}

/// A request as Envoy might send it, with every field the door reads chosen by the fuzzer.
#[derive(Debug, Arbitrary)]
struct FuzzedCheck {
    method: String,
    path: String,
    host: String,
    scheme: String,
    headers: Vec<(String, String)>,
    /// Sent in `header_map` (Envoy's `encode_raw_headers`) instead of `headers`.
    raw_headers: Option<Vec<(String, Vec<u8>)>>,
    source_address: String,
    source_port: u32,
    source_principal: String,
    destination_principal: String,
    destination_labels: Vec<(String, String)>,
    context_extensions: Vec<(String, String)>,
    sni: Option<String>,
    /// No `request.http`: a TCP check.
    tcp: bool,
    no_attributes: bool,
}

fn peer(address: &str, port: u32, principal: &str, labels: HashMap<String, String>) -> Peer {
    let socket = SocketAddress {
        address: address.to_string(),
        port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
        ..SocketAddress::default()
    };
    Peer {
        address: Some(Address { address: Some(address::Address::SocketAddress(socket)) }),
        principal: principal.to_string(),
        labels,
        ..Peer::default()
    }
}

impl FuzzedCheck {
    fn into_check(self) -> CheckRequest {
        if self.no_attributes {
            return CheckRequest { attributes: None };
        }
        let (headers, header_map) = match self.raw_headers {
            Some(raw) => {
                let values = raw
                    .into_iter()
                    .map(|(key, raw_value)| HeaderValue { key, value: String::new(), raw_value })
                    .collect();
                (HashMap::new(), Some(HeaderMap { headers: values }))
            }
            None => (self.headers.into_iter().collect(), None),
        };
        let http = HttpRequest {
            method: self.method,
            path: self.path,
            host: self.host,
            scheme: self.scheme,
            headers,
            header_map,
            ..HttpRequest::default()
        };
        CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(peer(&self.source_address, self.source_port, &self.source_principal, HashMap::new())),
                destination: Some(peer(
                    "10.0.1.9",
                    8080,
                    &self.destination_principal,
                    self.destination_labels.into_iter().collect(),
                )),
                request: (!self.tcp).then(|| Request { http: Some(http), ..Request::default() }),
                context_extensions: self.context_extensions.into_iter().collect(),
                tls_session: self.sni.map(|sni| TlsSession { sni }),
                ..AttributeContext::default()
            }),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else { return };
    let bytes = if mode % 2 == 0 {
        // Raw bytes as they would come off the wire.
        Bytes::copy_from_slice(rest)
    } else {
        match FuzzedCheck::arbitrary(&mut arbitrary::Unstructured::new(rest)) {
            Ok(fuzzed) => Bytes::from(fuzzed.into_check().encode_to_vec()),
            Err(_) => return,
        }
    };
    // The view never panics, whatever the bytes; what prost reads, it reads the same.
    let view = CheckView::from_wire(bytes.clone());
    if let Ok(check) = CheckRequest::decode(bytes) {
        let Ok(view) = &view else { panic!("prost decodes what the view cannot: {check:?}") };
        match (view.request(), request_from_check(&check)) {
            (Ok(from_view), Some(from_oracle)) => {
                if let Err(difference) = compare(&from_view, &from_oracle) {
                    panic!("the view and prost disagree: {difference}\n{check:?}");
                }
            }
            (Err(ViewError::NoAttributes), None) => {}
            (from_view, from_oracle) => panic!("the view gives {from_view:?}, prost {from_oracle:?}: {check:?}"),
        }
    }
    let Ok(view) = view else { return };
    let context = AuthnContext { keys: &NoRemoteKeys, now: 1_800_000_000, clock_skew_secs: 60, max_token_bytes: 8192 };
    let decision = decide_view_without_engine(snapshot(), &view, &context);
    assert_ne!(decision.reason.as_str(), "internal_error", "a check panicked: {view:?}");
});
