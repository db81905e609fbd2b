//! Differential tests of the zero-copy view against the prost oracle: a table of CheckRequests, repeated keys, fields that are not UTF-8, and random requests merged on the wire.

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
use super::{CheckView, ViewError, decide_view};
use crate::core::authn::{AuthnContext, NoRemoteKeys};
use crate::core::workload::WorkloadTable;
use crate::core::{EngineOptions, Reason, Snapshot};

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
    let context = AuthnContext {
        keys: &NoRemoteKeys,
        cache: &NoRemoteKeys,
        now: 1_800_000_000,
        clock_skew_secs: 60,
        max_token_bytes: 8192,
    };
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
        let decision = decide_view(&snapshot, &view, &context);
        assert_eq!((decision.reason, decision.http_status()), (Reason::MalformedRequest, 403), "{marker}");
        assert_eq!(super::CheckAnswer { decision: decision.clone(), allow: false }.code(), 7, "{marker}");
    }
    // Strings the core does not read are not looked at: a raw value's shadowed `value`, the id.
    for (raw_headers, marker) in [(true, "@unread@"), (false, "@id@")] {
        let view =
            CheckView::from_wire(corrupted(&marked_request(raw_headers).encode_to_vec(), marker)).expect("decodes");
        assert!(view.request().is_ok(), "{marker}");
    }
    let view = CheckView::from_check(&marked_request(false)).expect("decodes");
    assert_ne!(decide_view(&snapshot, &view, &context).reason, Reason::MalformedRequest, "unmarked, it is judged");
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
            id,
            method,
            headers,
            header_map,
            path,
            host,
            scheme,
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
