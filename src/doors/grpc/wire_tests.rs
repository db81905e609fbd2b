//! Differential tests of the zero-copy view against the prost oracle: a table of CheckRequests, repeated keys, fields that are not UTF-8, and random requests merged on the wire; and against prost's mirror of the fields the view reads: malformed and unusual protobuf, fields in any order and number, edited requests.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    Address, EnvoyInternalAddress, HeaderMap, HeaderValue, Metadata, Pipe, SocketAddress, address,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request, TlsSession};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use envoy_types::pb::google::protobuf::Timestamp;
use proptest::prelude::*;
use proptest::test_runner::Config;
use prost::Message;
use prost::bytes::Bytes;

use super::oracle::{compare, request_from_check};
use super::{CheckView, ViewError, decide_view_without_engine};
use crate::core::authn::{AuthnContext, NoRemoteKeys};
use crate::core::workload::WorkloadTable;
use crate::core::{EngineOptions, Reason, Snapshot};
use crate::doors::denial::Denial;

/// Reads `bytes` with prost and through the view; `Ok` when both read the same request.
fn agree(bytes: &[u8]) -> Result<(), String> {
    let check = CheckRequest::decode(bytes).map_err(|error| format!("prost cannot decode: {error}"))?;
    let view = CheckView::from_wire(Bytes::copy_from_slice(bytes))
        .map_err(|error| format!("prost decodes, the view cannot: {error}"))?;
    match (view.request(), request_from_check(&check)) {
        (Ok(from_view), Some(from_oracle)) => compare(&from_view, &from_oracle),
        (Err(ViewError::NoAttributes), None) => Ok(()),
        (from_view, from_oracle) => Err(format!("the view gives {from_view:?}, the oracle {from_oracle:?}")),
    }
}

fn strings(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect()
}

fn socket(address: &str, port: Option<PortSpecifier>) -> Option<Address> {
    let socket = SocketAddress { address: address.into(), port_specifier: port, ..SocketAddress::default() };
    Some(Address { address: Some(address::Address::SocketAddress(socket)) })
}

fn peer(address: Option<Address>, principal: &str, labels: &[(&str, &str)]) -> Option<Peer> {
    Some(Peer { address, principal: principal.into(), labels: strings(labels), ..Peer::default() })
}

fn http(method: &str, path: &str, host: &str, scheme: &str, headers: &[(&str, &str)]) -> HttpRequest {
    HttpRequest {
        method: method.into(),
        path: path.into(),
        host: host.into(),
        scheme: scheme.into(),
        headers: strings(headers),
        ..HttpRequest::default()
    }
}

fn raw_header(key: &str, value: &str, raw_value: &[u8]) -> HeaderValue {
    HeaderValue { key: key.into(), value: value.into(), raw_value: raw_value.to_vec() }
}

fn with_http(http: HttpRequest) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request { http: Some(http), ..Request::default() }),
            ..AttributeContext::default()
        }),
    }
}

/// Every field the core reads, and some it skips.
fn full_request() -> CheckRequest {
    let source = Peer {
        service: "ingress".into(),
        certificate: "-----BEGIN CERTIFICATE-----".into(),
        ..peer(
            socket("10.1.2.3", Some(PortSpecifier::PortValue(41_000))),
            "spiffe://cluster.local/ns/istio-ingress/sa/gateway",
            &[("app", "gateway")],
        )
        .unwrap_or_default()
    };
    let http = HttpRequest {
        id: "42".into(),
        query: "page=2".into(),
        fragment: "top".into(),
        size: -1,
        protocol: "HTTP/2".into(),
        body: "{}".into(),
        raw_body: vec![0xff, 0x00],
        ..http(
            "POST",
            "/api/jobs?page=2",
            "jobs.example.com",
            "https",
            &[(":method", "POST"), (":path", "/api/jobs?page=2"), ("authorization", "Bearer a.b.c"), ("x-user", "ann")],
        )
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(source),
            destination: peer(
                socket("fd00::17", Some(PortSpecifier::PortValue(8080))),
                "spiffe://cluster.local/ns/jobs/sa/jobs",
                &[("app", "jobs"), ("version", "v2")],
            ),
            request: Some(Request { time: Some(Timestamp { seconds: 1, nanos: 2 }), http: Some(http) }),
            context_extensions: strings(&[("namespace", "jobs"), ("app", "jobs")]),
            metadata_context: Some(Metadata::default()),
            route_metadata_context: Some(Metadata::default()),
            tls_session: Some(TlsSession { sni: "jobs.example.com".into() }),
        }),
    }
}

fn cases() -> Vec<(&'static str, CheckRequest)> {
    let raw_headers = HeaderMap {
        headers: vec![
            raw_header(":method", "GET", b""),
            raw_header(":authority", "", b"jobs.example.com"),
            raw_header(":path", "ignored", b"/api/jobs"),
            raw_header(":scheme", "https", b""),
            raw_header("x-binary", "", b"\xff\xfe"),
            raw_header("x-twice", "first", b""),
            raw_header("x-twice", "", b"second"),
        ],
    };
    let with_header_map = |headers: &[(&str, &str)]| {
        with_http(HttpRequest { header_map: Some(raw_headers.clone()), ..http("", "", "", "", headers) })
    };
    let tcp = CheckRequest {
        attributes: Some(AttributeContext {
            source: peer(socket("192.0.2.1", Some(PortSpecifier::PortValue(5000))), "spiffe://td/ns/a/sa/b", &[]),
            destination: peer(socket("192.0.2.2", Some(PortSpecifier::PortValue(5432))), "", &[("app", "db")]),
            tls_session: Some(TlsSession { sni: "db.internal".into() }),
            ..AttributeContext::default()
        }),
    };
    let without_http = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request { time: Some(Timestamp::default()), http: None }),
            ..AttributeContext::default()
        }),
    };
    let odd_addresses = CheckRequest {
        attributes: Some(AttributeContext {
            source: peer(
                Some(Address { address: Some(address::Address::Pipe(Pipe { path: "/s".into(), mode: 0 })) }),
                "",
                &[],
            ),
            destination: peer(
                Some(Address {
                    address: Some(address::Address::EnvoyInternalAddress(EnvoyInternalAddress::default())),
                }),
                "",
                &[],
            ),
            ..AttributeContext::default()
        }),
    };
    let odd_ports = |source_port, destination_address: &str| CheckRequest {
        attributes: Some(AttributeContext {
            source: peer(socket("10.0.0.1", source_port), "", &[]),
            destination: peer(socket(destination_address, Some(PortSpecifier::PortValue(70_000))), "", &[]),
            ..AttributeContext::default()
        }),
    };
    vec![
        ("every field the core reads", full_request()),
        ("raw header_map with raw values, a binary value and a repeated name", with_header_map(&[])),
        ("headers win over header_map", with_header_map(&[("x-user", "ann")])),
        (
            "pseudo-headers fill method, path, host and scheme",
            with_http(http("", "", "", "", &[(":method", "GET"), (":path", "/p"), ("host", "h"), (":scheme", "http")])),
        ),
        ("`:authority` wins over `host`", with_http(http("GET", "/", "", "", &[(":authority", "a"), ("host", "h")]))),
        ("fields win over pseudo-headers", with_http(http("PUT", "/x", "x", "https", &[(":method", "GET")]))),
        ("a TCP check has no HTTP attributes", tcp),
        ("a request without its HTTP part", without_http),
        ("pipe and internal addresses have no IP", odd_addresses),
        ("a named port and a port above 65535", odd_ports(Some(PortSpecifier::NamedPort("http".into())), "10.0.0.2")),
        ("no port and an address that is not an IP", odd_ports(None, "jobs.internal")),
        (
            "empty peers",
            CheckRequest {
                attributes: Some(AttributeContext { source: Some(Peer::default()), ..AttributeContext::default() }),
            },
        ),
        ("empty attributes", CheckRequest { attributes: Some(AttributeContext::default()) }),
        ("no attributes", CheckRequest::default()),
    ]
}

#[test]
fn the_view_reads_every_case_as_the_prost_oracle_does() {
    let failures: Vec<String> = cases()
        .into_iter()
        .filter_map(|(name, check)| agree(&check.encode_to_vec()).err().map(|error| format!("{name}: {error}")))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_view_keeps_header_map_order_and_leaves_out_binary_values() {
    let (_, check) = cases().swap_remove(1);
    let view = CheckView::from_check(&check).expect("decodes");
    let request = view.request().expect("readable");
    let http = request.http.expect("http");
    assert_eq!((http.method, http.host, http.path, http.scheme), ("GET", "jobs.example.com", "/api/jobs", "https"));
    assert_eq!(http.header("x-twice"), Some("first"));
    assert_eq!(http.header("x-binary"), None);
    assert_eq!(http.headers.len(), 6);
}

#[test]
fn the_views_strings_are_slices_of_the_received_bytes() {
    let bytes = Bytes::from(full_request().encode_to_vec());
    let received = bytes.as_ptr_range();
    let view = CheckView::from_wire(bytes.clone()).expect("decodes");
    let request = view.request().expect("readable");
    let http = request.http.as_ref().expect("http");
    let mut strings = vec![request.sni, request.source.principal, http.method, http.scheme, http.host, http.path];
    strings.extend(http.headers.iter().flat_map(|&(name, value)| [name, value]));
    let labels = [&request.source.labels, &request.destination.labels];
    strings.extend(labels.iter().flat_map(|labels| labels.get("app")));
    strings.extend(["namespace", "app"].iter().flat_map(|name| request.context_extensions.get(name)));
    assert_eq!(strings.len(), 6 + 8 + 2 + 2);
    for text in strings {
        let range = text.as_bytes().as_ptr_range();
        assert!(received.start <= range.start && range.end <= received.end, "`{text}` was copied");
    }
}

/// Two messages back to back are one message on the wire: the second merges into the first.
#[test]
fn a_repeated_map_key_or_scalar_keeps_its_last_value_and_a_later_oneof_member_wins() {
    let first = CheckRequest {
        attributes: Some(AttributeContext {
            source: peer(socket("10.0.0.1", Some(PortSpecifier::PortValue(1000))), "first", &[("app", "a")]),
            destination: peer(socket("10.0.0.2", Some(PortSpecifier::PortValue(80))), "", &[("app", "first")]),
            context_extensions: strings(&[("namespace", "first"), ("app", "kept")]),
            tls_session: Some(TlsSession { sni: "first.example.com".into() }),
            ..with_http(http("GET", "/first", "h", "", &[("x-user", "first"), ("x-kept", "yes")]))
                .attributes
                .unwrap_or_default()
        }),
    };
    let second = CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address { address: Some(address::Address::Pipe(Pipe::default())) }),
                principal: "second".into(),
                ..Peer::default()
            }),
            destination: peer(socket("", Some(PortSpecifier::NamedPort("http".into()))), "", &[("app", "second")]),
            context_extensions: strings(&[("namespace", "second")]),
            tls_session: Some(TlsSession { sni: "second.example.com".into() }),
            ..with_http(http("", "/second", "", "", &[("x-user", "second")])).attributes.unwrap_or_default()
        }),
    };
    let bytes = [first.encode_to_vec(), second.encode_to_vec()].concat();
    assert_eq!(agree(&bytes), Ok(()));

    let view = CheckView::from_wire(Bytes::from(bytes)).expect("decodes");
    let request = view.request().expect("readable");
    assert_eq!((request.source.address, request.source.port, request.source.principal), (None, None, "second"));
    assert_eq!(request.source.labels.get("app"), Some("a"));
    let destination = &request.destination;
    assert_eq!((destination.address, destination.port), ("10.0.0.2".parse().ok(), None));
    assert_eq!(destination.labels.get("app"), Some("second"));
    assert_eq!(request.context_extensions.get("namespace"), Some("second"));
    assert_eq!(request.context_extensions.get("app"), Some("kept"));
    assert_eq!(request.sni, "second.example.com");
    let http = request.http.expect("http");
    assert_eq!((http.method, http.path, http.host), ("GET", "/second", "h"));
    assert_eq!((http.header("x-user"), http.header("x-kept")), (Some("second"), Some("yes")));
}

/// A request with a distinct marker in every string the core reads: `@<field>@`.
fn marked_request(raw_headers: bool) -> CheckRequest {
    let mut http =
        http("@method@", "/@path@", "@host@", "@scheme@", &[("@header-name@", "v"), ("n", "@header-value@")]);
    http.id = "@id@".into();
    if raw_headers {
        http.headers.clear();
        http.header_map = Some(HeaderMap {
            headers: vec![raw_header("@raw-name@", "@raw-value@", b""), raw_header("x", "@unread@", b"raw")],
        });
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            source: peer(socket("@address@", None), "@principal@", &[]),
            destination: peer(None, "", &[("@label-name@", "v"), ("k", "@label-value@")]),
            request: Some(Request { http: Some(http), ..Request::default() }),
            context_extensions: strings(&[("namespace", "@extension@")]),
            tls_session: Some(TlsSession { sni: "@sni@".into() }),
            ..AttributeContext::default()
        }),
    }
}

/// `encoded` with the first byte of `marker` made 0xFF, which is never UTF-8.
fn corrupted(encoded: &[u8], marker: &str) -> Bytes {
    let at = encoded.windows(marker.len()).position(|window| window == marker.as_bytes()).expect("marker present");
    let mut bytes = encoded.to_vec();
    bytes[at] = 0xff;
    Bytes::from(bytes)
}

#[test]
fn a_string_the_core_reads_that_is_not_utf8_makes_the_request_malformed() {
    let snapshot = Snapshot::new(Vec::new(), Vec::new(), WorkloadTable::default(), EngineOptions::default(), "root");
    let context = AuthnContext { keys: &NoRemoteKeys, now: 1_800_000_000, clock_skew_secs: 60, max_token_bytes: 8192 };
    let cases = [
        (false, "@method@", "HttpRequest.method"),
        (false, "@path@", "HttpRequest.path"),
        (false, "@host@", "HttpRequest.host"),
        (false, "@scheme@", "HttpRequest.scheme"),
        (false, "@header-name@", "HttpRequest.headers"),
        (false, "@header-value@", "HttpRequest.headers"),
        (true, "@raw-name@", "HeaderValue.key"),
        (true, "@raw-value@", "HeaderValue.value"),
        (false, "@address@", "SocketAddress.address"),
        (false, "@principal@", "Peer.principal"),
        (false, "@label-name@", "Peer.labels"),
        (false, "@label-value@", "Peer.labels"),
        (false, "@extension@", "AttributeContext.context_extensions"),
        (false, "@sni@", "TLSSession.sni"),
    ];
    for (raw_headers, marker, field) in cases {
        let bytes = corrupted(&marked_request(raw_headers).encode_to_vec(), marker);
        assert!(CheckRequest::decode(bytes.clone()).is_err(), "{marker}: prost refuses the whole message");
        let view = CheckView::from_wire(bytes).expect("the view decodes it");
        assert_eq!(view.request().err(), Some(ViewError::NotUtf8(field)), "{marker}");
        let decision = decide_view_without_engine(&snapshot, &view, &context);
        assert_eq!((decision.reason, Denial::status_of(&decision)), (Reason::MalformedRequest, 403), "{marker}");
        assert_eq!(super::CheckAnswer { decision: decision.clone(), allow: false }.code(), 7, "{marker}");
    }
    // Strings the core does not read are not looked at: a raw value's shadowed `value`, the id.
    for (raw_headers, marker) in [(true, "@unread@"), (false, "@id@")] {
        let view =
            CheckView::from_wire(corrupted(&marked_request(raw_headers).encode_to_vec(), marker)).expect("decodes");
        assert!(view.request().is_ok(), "{marker}");
    }
    let view = CheckView::from_check(&marked_request(false)).expect("decodes");
    assert_ne!(
        decide_view_without_engine(&snapshot, &view, &context).reason,
        Reason::MalformedRequest,
        "unmarked, it is judged"
    );
}

const WORDS: &[&str] = &[
    "",
    "a",
    "b",
    "app",
    "namespace",
    ":method",
    ":authority",
    "host",
    ":path",
    ":scheme",
    "GET",
    "/",
    "10.1.2.3",
    "::1",
    "spiffe://cluster.local/ns/a/sa/b",
];

/// Mostly words that collide, as names and as values; sometimes any text.
fn text() -> BoxedStrategy<String> {
    prop_oneof![3 => prop::sample::select(WORDS).prop_map(str::to_string), 1 => any::<String>()].boxed()
}

fn pairs() -> BoxedStrategy<HashMap<String, String>> {
    prop::collection::hash_map(text(), text(), 0..4).boxed()
}

fn any_address() -> BoxedStrategy<Option<Address>> {
    let port = prop_oneof![
        Just(None),
        (0u32..70_000).prop_map(|port| Some(PortSpecifier::PortValue(port))),
        any::<u32>().prop_map(|port| Some(PortSpecifier::PortValue(port))),
        text().prop_map(|name| Some(PortSpecifier::NamedPort(name))),
    ];
    let socket = (text(), port).prop_map(|(address, port_specifier)| {
        address::Address::SocketAddress(SocketAddress { address, port_specifier, ..SocketAddress::default() })
    });
    let kind = prop_oneof![
        4 => socket,
        1 => text().prop_map(|path| address::Address::Pipe(Pipe { path, mode: 0 })),
        1 => text().prop_map(|endpoint_id| {
            address::Address::EnvoyInternalAddress(EnvoyInternalAddress { endpoint_id, ..EnvoyInternalAddress::default() })
        }),
    ];
    prop::option::weighted(0.8, prop::option::weighted(0.8, kind).prop_map(|address| Address { address })).boxed()
}

fn any_peer() -> BoxedStrategy<Option<Peer>> {
    prop::option::weighted(
        0.8,
        (any_address(), text(), pairs(), text()).prop_map(|(address, principal, labels, service)| Peer {
            address,
            service,
            labels,
            principal,
            ..Peer::default()
        }),
    )
    .boxed()
}

fn any_http() -> BoxedStrategy<HttpRequest> {
    let raw_value =
        prop_oneof![Just(Vec::new()), text().prop_map(String::into_bytes), prop::collection::vec(any::<u8>(), 0..4)];
    let header = (text(), text(), raw_value).prop_map(|(key, value, raw_value)| HeaderValue { key, value, raw_value });
    let header_map = prop::option::of(prop::collection::vec(header, 0..5).prop_map(|headers| HeaderMap { headers }));
    ((text(), text(), text(), text()), pairs(), header_map, (text(), any::<i64>()))
        .prop_map(|((method, path, host, scheme), headers, header_map, (id, size))| HttpRequest {
            method,
            path,
            host,
            scheme,
            headers,
            header_map,
            id,
            size,
            ..HttpRequest::default()
        })
        .boxed()
}

fn any_check_request() -> BoxedStrategy<CheckRequest> {
    let request = prop::option::weighted(
        0.8,
        prop::option::weighted(0.8, any_http()).prop_map(|http| Request { http, ..Request::default() }),
    );
    let tls_session = prop::option::of(text().prop_map(|sni| TlsSession { sni }));
    let attributes = (any_peer(), any_peer(), request, pairs(), tls_session).prop_map(
        |(source, destination, request, context_extensions, tls_session)| AttributeContext {
            source,
            destination,
            request,
            context_extensions,
            tls_session,
            ..AttributeContext::default()
        },
    );
    prop::option::weighted(0.9, attributes).prop_map(|attributes| CheckRequest { attributes }).boxed()
}

proptest! {
    #![proptest_config(Config { cases: 512, failure_persistence: None, ..Config::default() })]

    /// One random request, or two back to back (the second merges into the first on the wire:
    /// repeated keys, replaced scalars, switched oneofs): the view reads what prost reads.
    #[test]
    fn random_check_requests_read_the_same_through_the_view_and_prost(
        first in any_check_request(),
        second in prop::option::weighted(0.7, any_check_request()),
    ) {
        let mut bytes = first.encode_to_vec();
        if let Some(second) = second {
            bytes.extend(second.encode_to_vec());
        }
        prop_assert_eq!(agree(&bytes), Ok(()));
    }
}

/// The view's former reader: prost-derived mirrors of the fields the core reads, strings
/// declared `bytes`. The hand-written reader must accept what prost accepts with them, and
/// merge as prost merges.
mod prost_mirror {
    use prost::bytes::Bytes;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CheckRequest {
        #[prost(message, optional, tag = "1")]
        attributes: Option<AttributeContext>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct AttributeContext {
        #[prost(message, optional, tag = "1")]
        source: Option<Peer>,
        #[prost(message, optional, tag = "2")]
        destination: Option<Peer>,
        #[prost(message, optional, tag = "4")]
        request: Option<AttributeRequest>,
        #[prost(message, repeated, tag = "10")]
        context_extensions: Vec<MapEntry>,
        #[prost(message, optional, tag = "12")]
        tls_session: Option<TlsSession>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Peer {
        #[prost(message, optional, tag = "1")]
        address: Option<Address>,
        #[prost(message, repeated, tag = "3")]
        labels: Vec<MapEntry>,
        #[prost(bytes = "bytes", tag = "4")]
        principal: Bytes,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Address {
        #[prost(oneof = "AddressKind", tags = "1, 2, 3")]
        address: Option<AddressKind>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    enum AddressKind {
        #[prost(message, tag = "1")]
        SocketAddress(SocketAddress),
        #[prost(message, tag = "2")]
        Pipe(Skipped),
        #[prost(message, tag = "3")]
        EnvoyInternalAddress(Skipped),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct SocketAddress {
        #[prost(bytes = "bytes", tag = "2")]
        address: Bytes,
        #[prost(oneof = "PortSpecifier", tags = "3, 4")]
        port_specifier: Option<PortSpecifier>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    enum PortSpecifier {
        #[prost(uint32, tag = "3")]
        PortValue(u32),
        #[prost(bytes = "bytes", tag = "4")]
        NamedPort(Bytes),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Skipped {}

    #[derive(Clone, PartialEq, prost::Message)]
    struct AttributeRequest {
        #[prost(message, optional, tag = "2")]
        http: Option<HttpRequest>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct HttpRequest {
        #[prost(bytes = "bytes", tag = "2")]
        method: Bytes,
        #[prost(message, repeated, tag = "3")]
        headers: Vec<MapEntry>,
        #[prost(bytes = "bytes", tag = "4")]
        path: Bytes,
        #[prost(bytes = "bytes", tag = "5")]
        host: Bytes,
        #[prost(bytes = "bytes", tag = "6")]
        scheme: Bytes,
        #[prost(message, optional, tag = "13")]
        header_map: Option<HeaderMap>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct HeaderMap {
        #[prost(message, repeated, tag = "1")]
        headers: Vec<HeaderValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct HeaderValue {
        #[prost(bytes = "bytes", tag = "1")]
        key: Bytes,
        #[prost(bytes = "bytes", tag = "2")]
        value: Bytes,
        #[prost(bytes = "bytes", tag = "3")]
        raw_value: Bytes,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct TlsSession {
        #[prost(bytes = "bytes", tag = "1")]
        sni: Bytes,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct MapEntry {
        #[prost(bytes = "bytes", tag = "1")]
        key: Bytes,
        #[prost(bytes = "bytes", tag = "2")]
        value: Bytes,
    }
}

/// `Ok` when the view and prost's mirror both refuse `bytes`, or both accept them and read the
/// same request: the view of `bytes` as the view of the mirror's re-encoding, where prost has
/// done every merge.
fn reads_as_the_mirror(bytes: &[u8]) -> Result<(), String> {
    let view = CheckView::from_wire(Bytes::copy_from_slice(bytes));
    let mirror = match (prost_mirror::CheckRequest::decode(bytes), &view) {
        (Err(_), Err(_)) => return Ok(()),
        (Ok(mirror), Ok(_)) => mirror,
        (mirror, view) => return Err(format!("prost's mirror gives {mirror:?}, the view {view:?}")),
    };
    let merged = CheckView::from_wire(Bytes::from(mirror.encode_to_vec())).map_err(|error| error.to_string())?;
    match (view.map_err(|error| error.to_string())?.request(), merged.request()) {
        (Ok(from_bytes), Ok(from_merged)) => compare(&from_bytes, &from_merged),
        (Err(from_bytes), Err(from_merged)) if from_bytes == from_merged => Ok(()),
        (from_bytes, from_merged) => Err(format!("the view reads {from_bytes:?}, and {from_merged:?} once merged")),
    }
}

fn varint(value: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    prost::encoding::encode_varint(value, &mut buf);
    buf
}

fn key(tag: u32, wire_type: u32) -> Vec<u8> {
    varint(u64::from(tag << 3 | wire_type))
}

fn delimited(tag: u32, payload: &[u8]) -> Vec<u8> {
    [key(tag, 2), varint(payload.len() as u64), payload.to_vec()].concat()
}

/// `fields` as those of `attributes.source.address.socket_address`.
fn in_socket(fields: &[u8]) -> Vec<u8> {
    delimited(1, &delimited(1, &delimited(1, &delimited(1, fields))))
}

/// `fields` as those of `attributes.request.http`.
fn in_http(fields: &[u8]) -> Vec<u8> {
    delimited(1, &delimited(4, &delimited(2, fields)))
}

/// `depth` groups of field 99, one inside the other, around `inner`.
fn nested_groups(depth: usize, inner: &[u8]) -> Vec<u8> {
    [key(99, 3).repeat(depth), inner.to_vec(), key(99, 4).repeat(depth)].concat()
}

#[test]
fn malformed_protobuf_is_refused_as_prost_refuses_it() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a key cut off", vec![0x8a]),
        ("a varint of eleven bytes", [key(5, 0), vec![0x80; 10], vec![0]].concat()),
        ("a varint above 64 bits", [key(5, 0), vec![0xff; 9], vec![0x02]].concat()),
        ("a key above 32 bits", varint(1 << 32 | 2)),
        ("wire type 6", vec![0x0e, 0]),
        ("wire type 7", vec![0x0f, 0]),
        ("field number 0", vec![0x00, 0]),
        ("a length past the end", vec![0x0a, 0x05, 0x01]),
        (
            "a length past the end of the enclosing message",
            [vec![0x0a, 0x02, 0x22, 0x05], delimited(3, b"abc")].concat(),
        ),
        ("a fixed64 cut off", [key(5, 1), vec![0; 7]].concat()),
        ("a fixed32 cut off", [key(5, 5), vec![0; 3]].concat()),
        ("a message the core reads, sent as a varint", [key(1, 0), vec![1]].concat()),
        ("a string the core reads, sent as a fixed32", in_http(&[key(2, 5), vec![0; 4]].concat())),
        ("a port number sent length-delimited", in_socket(&delimited(3, b""))),
        ("a named port sent as a varint", in_socket(&[key(4, 0), vec![80]].concat())),
        ("a message the core reads, sent as a group", [key(1, 3), key(1, 4)].concat()),
        ("a malformed field inside a pipe", delimited(1, &delimited(1, &delimited(1, &delimited(2, &[0x0f]))))),
        ("an end-group tag that opens nothing", key(99, 4)),
        ("a group closed by another field's end", [key(99, 3), key(98, 4)].concat()),
        ("a group never closed", [key(99, 3), key(5, 0), vec![1]].concat()),
        ("groups nested 101 deep", nested_groups(101, &[])),
        ("a field 100 groups deep", nested_groups(100, &[key(5, 0), vec![1]].concat())),
        ("groups nested 98 deep in the HTTP request", in_http(&nested_groups(98, &[]))),
    ];
    for (name, bytes) in cases {
        assert!(CheckRequest::decode(&bytes[..]).is_err(), "{name}: prost refuses it");
        assert!(prost_mirror::CheckRequest::decode(&bytes[..]).is_err(), "{name}: prost's mirror refuses it");
        let view = CheckView::from_wire(Bytes::from(bytes));
        assert!(view.is_err(), "{name}: the view accepts it: {view:?}");
    }
}

#[test]
fn unusual_but_valid_protobuf_reads_as_prost_reads_it() {
    let unknown_fields = [
        [key(99, 0), varint(u64::MAX)].concat(),
        [key(99, 1), vec![0xff; 8]].concat(),
        delimited(99, &[0xff, 0xfe]),
        [key(99, 3), key(1, 0), vec![7], delimited(2, b"x"), key(99, 4)].concat(),
        [key(99, 5), vec![0xff; 4]].concat(),
    ]
    .concat();
    let attributes = |fields: &[u8]| delimited(1, fields);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unknown fields of every wire type, everywhere", {
            let http = [delimited(2, b"GET"), unknown_fields.clone(), delimited(4, b"/")].concat();
            let request = [unknown_fields.clone(), delimited(2, &http)].concat();
            [unknown_fields.clone(), attributes(&[unknown_fields.clone(), delimited(4, &request)].concat())].concat()
        }),
        ("a varint at 64 bits, and lengths in more bytes than needed", {
            let method = [key(2, 2), vec![0x83, 0x80, 0x00], b"PUT".to_vec()].concat();
            [key(99, 0), vec![0xff; 9], vec![0x01], in_http(&method)].concat()
        }),
        ("a port number above 32 bits keeps its low 32", in_socket(&[key(3, 0), varint(1 << 32 | 8080)].concat())),
        ("groups nested 100 deep", [nested_groups(100, &[]), attributes(&[])].concat()),
        ("a field 99 groups deep", [nested_groups(99, &[key(5, 0), vec![1]].concat()), attributes(&[])].concat()),
        ("groups nested 97 deep in the HTTP request", in_http(&nested_groups(97, &[]))),
        ("a socket address merged across oneof switches", {
            let address = |members: &[Vec<u8>]| delimited(1, &members.concat());
            let socket = |fields: &[u8]| delimited(1, fields);
            let port = |port: u64| [key(3, 0), varint(port)].concat();
            let source = [
                address(&[socket(&[delimited(2, b"10.0.0.1"), port(1)].concat()), delimited(2, b"")]),
                address(&[socket(&port(2)), socket(&delimited(4, b"http"))]),
                address(&[socket(&port(3)), socket(&delimited(2, b"10.0.0.3"))]),
            ]
            .concat();
            attributes(&delimited(1, &source))
        }),
    ];
    for (name, bytes) in cases {
        assert_eq!(agree(&bytes), Ok(()), "{name}");
        assert_eq!(reads_as_the_mirror(&bytes), Ok(()), "{name}");
    }
}

/// What a field of a message the view reads holds, after Envoy's protos.
#[derive(Clone, Copy)]
enum Shape {
    Message(&'static [(u32, Shape)]),
    Text,
    Uint32,
}

const MAP_ENTRY: &[(u32, Shape)] = &[(1, Shape::Text), (2, Shape::Text)];
const SOCKET_ADDRESS: &[(u32, Shape)] = &[(2, Shape::Text), (3, Shape::Uint32), (4, Shape::Text)];
const ADDRESS: &[(u32, Shape)] =
    &[(1, Shape::Message(SOCKET_ADDRESS)), (2, Shape::Message(&[])), (3, Shape::Message(&[]))];
const PEER: &[(u32, Shape)] = &[(1, Shape::Message(ADDRESS)), (3, Shape::Message(MAP_ENTRY)), (4, Shape::Text)];
const HEADER_VALUE: &[(u32, Shape)] = &[(1, Shape::Text), (2, Shape::Text), (3, Shape::Text)];
const HTTP_REQUEST: &[(u32, Shape)] = &[
    (2, Shape::Text),
    (3, Shape::Message(MAP_ENTRY)),
    (4, Shape::Text),
    (5, Shape::Text),
    (6, Shape::Text),
    (13, Shape::Message(&[(1, Shape::Message(HEADER_VALUE))])),
];
const ATTRIBUTE_CONTEXT: &[(u32, Shape)] = &[
    (1, Shape::Message(PEER)),
    (2, Shape::Message(PEER)),
    (4, Shape::Message(&[(2, Shape::Message(HTTP_REQUEST))])),
    (10, Shape::Message(MAP_ENTRY)),
    (12, Shape::Message(&[(1, Shape::Text)])),
];
const CHECK_REQUEST: &[(u32, Shape)] = &[(1, Shape::Message(ATTRIBUTE_CONTEXT))];

/// A field no message the view reads has, in Envoy's protos or the view's: any wire type, a
/// group with fields inside.
fn unknown_field() -> BoxedStrategy<Vec<u8>> {
    let tag = prop::sample::select(&[99u32, 1000][..]);
    (tag, any::<u64>(), prop::collection::vec(any::<u8>(), 0..9))
        .prop_flat_map(|(tag, number, bytes)| {
            prop::sample::select(vec![
                [key(tag, 0), varint(number)].concat(),
                [key(tag, 1), number.to_le_bytes().to_vec()].concat(),
                delimited(tag, &bytes),
                [key(tag, 3), key(1, 0), varint(number), delimited(2, &bytes), key(tag, 4)].concat(),
                [key(tag, 5), bytes.iter().copied().chain([0; 4]).take(4).collect()].concat(),
            ])
        })
        .boxed()
}

/// Encoded fields of a message with `shape`, in any order and number: repeated, overwritten,
/// oneof members switching back and forth, unknown fields between them, rarely a string that
/// is not UTF-8, and with `wrong_wire_types` now and then a field with a wire type not its own.
fn protobuf_soup(shape: &'static [(u32, Shape)], wrong_wire_types: bool) -> BoxedStrategy<Vec<u8>> {
    let mut fields: Vec<(u32, BoxedStrategy<Vec<u8>>)> = vec![(2, unknown_field())];
    let mut wrongly_typed = Vec::new();
    for &(tag, field) in shape {
        let value = match field {
            Shape::Message(inner) => {
                protobuf_soup(inner, wrong_wire_types).prop_map(move |payload| delimited(tag, &payload)).boxed()
            }
            Shape::Text => prop_oneof![
                20 => prop::sample::select(WORDS).prop_map(move |word| delimited(tag, word.as_bytes())),
                1 => prop::collection::vec(any::<u8>(), 0..3).prop_map(move |bytes| delimited(tag, &bytes)),
            ]
            .boxed(),
            Shape::Uint32 => prop_oneof![(0u64..70_000), any::<u64>()]
                .prop_map(move |port| [key(tag, 0), varint(port)].concat())
                .boxed(),
        };
        let wrong_wire_type = match field {
            Shape::Uint32 => delimited(tag, b""),
            Shape::Message(_) | Shape::Text => [key(tag, 0), vec![0]].concat(),
        };
        fields.push((10, value));
        wrongly_typed.push(wrong_wire_type);
    }
    if wrong_wire_types && !wrongly_typed.is_empty() {
        fields.push((1, prop::sample::select(wrongly_typed).boxed()));
    }
    let field = prop::strategy::Union::new_weighted(fields);
    prop::collection::vec(field, 1..6).prop_map(|fields| fields.concat()).boxed()
}

/// An edit of encoded bytes: one byte overwritten, inserted or deleted, or the rest cut off.
#[derive(Debug, Clone)]
enum Edit {
    Overwrite(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Delete(prop::sample::Index),
    Truncate(prop::sample::Index),
}

fn any_edit() -> BoxedStrategy<Edit> {
    prop_oneof![
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(at, byte)| Edit::Overwrite(at, byte)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(at, byte)| Edit::Insert(at, byte)),
        any::<prop::sample::Index>().prop_map(Edit::Delete),
        any::<prop::sample::Index>().prop_map(Edit::Truncate),
    ]
    .boxed()
}

fn edited(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        if bytes.is_empty() {
            break;
        }
        match edit {
            Edit::Overwrite(at, byte) => {
                let at = at.index(bytes.len());
                bytes[at] = *byte;
            }
            Edit::Insert(at, byte) => bytes.insert(at.index(bytes.len() + 1), *byte),
            Edit::Delete(at) => {
                bytes.remove(at.index(bytes.len()));
            }
            Edit::Truncate(at) => bytes.truncate(at.index(bytes.len())),
        }
    }
    bytes
}

proptest! {
    #![proptest_config(Config { cases: 512, failure_persistence: None, ..Config::default() })]

    /// Fields in any order and number, with unknown ones between them: the view accepts what
    /// prost's mirror accepts, and reads what it merges; what prost decodes with Envoy's own
    /// types, the view reads the same.
    #[test]
    fn protobuf_soup_reads_as_prost_reads_it(
        bytes in prop_oneof![4 => protobuf_soup(CHECK_REQUEST, false), 1 => protobuf_soup(CHECK_REQUEST, true)],
    ) {
        prop_assert_eq!(reads_as_the_mirror(&bytes), Ok(()));
        if CheckRequest::decode(&bytes[..]).is_ok() {
            prop_assert_eq!(agree(&bytes), Ok(()));
        }
    }

    /// Random requests with a few bytes changed, mostly malformed: the view refuses what prost's
    /// mirror refuses, and reads the rest as it does.
    #[test]
    fn edited_check_requests_are_refused_or_read_as_prost_does(
        check in any_check_request(),
        edits in prop::collection::vec(any_edit(), 1..4),
    ) {
        prop_assert_eq!(reads_as_the_mirror(&edited(check.encode_to_vec(), &edits)), Ok(()));
    }
}

/// Bytes that are UTF-8 or not: text, text cut inside a character at either end, long text,
/// any bytes.
fn utf8_or_not() -> BoxedStrategy<Vec<u8>> {
    let cut = |text: String, at: prop::sample::Index, keep_start: bool| {
        let bytes = text.into_bytes();
        let at = at.index(bytes.len() + 1);
        if keep_start { bytes[..at].to_vec() } else { bytes[at..].to_vec() }
    };
    prop_oneof![
        any::<String>().prop_map(String::into_bytes),
        (any::<String>(), any::<prop::sample::Index>()).prop_map(move |(text, at)| cut(text, at, true)),
        (any::<String>(), any::<prop::sample::Index>()).prop_map(move |(text, at)| cut(text, at, false)),
        "[a-zé]{120,140}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..8),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(Config { cases: 512, failure_persistence: None, ..Config::default() })]

    /// However the view checks names and values (a run of packed entries in one pass), it
    /// reads the entries when all are UTF-8, and refuses the request otherwise.
    #[test]
    fn map_entries_are_read_exactly_when_their_names_and_values_are_utf8(
        entries in prop::collection::vec(
            (prop::option::weighted(0.9, utf8_or_not()), prop::option::weighted(0.9, utf8_or_not()), any::<bool>()),
            1..6,
        ),
    ) {
        let encoded = entries.iter().map(|(name, value, value_first)| {
            let name = name.as_ref().map(|name| delimited(1, name)).unwrap_or_default();
            let value = value.as_ref().map(|value| delimited(2, value)).unwrap_or_default();
            delimited(3, &if *value_first { [value, name] } else { [name, value] }.concat())
        });
        let view = CheckView::from_wire(Bytes::from(in_http(&encoded.collect::<Vec<_>>().concat()))).expect("well-formed");
        let owned = |(name, value): (&str, &str)| (name.to_string(), value.to_string());
        let read = view
            .request()
            .map(|request| request.http.map(|http| http.headers.into_iter().map(owned).collect::<Vec<_>>()));
        fn text(bytes: &Option<Vec<u8>>) -> Option<&str> {
            std::str::from_utf8(bytes.as_deref().unwrap_or_default()).ok()
        }
        let texts: Option<Vec<(&str, &str)>> =
            entries.iter().rev().map(|(name, value, _)| Some((text(name)?, text(value)?))).collect();
        let expected = match texts {
            Some(texts) => Ok(Some(texts.into_iter().map(owned).collect())),
            None => Err(ViewError::NotUtf8("HttpRequest.headers")),
        };
        prop_assert_eq!(read, expected);
    }
}
