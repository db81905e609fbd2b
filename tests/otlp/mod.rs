//! An OTLP/HTTP trace receiver on loopback for the tests that read what the server exports.

#![allow(dead_code, reason = "each test crate uses a different part of the receiver")]
#![expect(clippy::expect_used, reason = "test set-up: a failure to receive fails the test")]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// An OTLP/HTTP receiver on loopback that keeps every span it is sent: its endpoint and the spans.
pub async fn receiver() -> (String, Arc<Mutex<Vec<Span>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let kept = spans.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let kept = kept.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("an OTLP trace request");
                let received = request.resource_spans.into_iter().flat_map(|r| r.scope_spans).flat_map(|s| s.spans);
                kept.lock().expect("lock").extend(received);
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}"), spans)
}

/// Waits (10 s at most) until the receiver holds `count` spans, and returns them.
pub async fn wait_for_spans(spans: &Mutex<Vec<Span>>, count: usize) -> Vec<Span> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let received = spans.lock().expect("lock").clone();
        if received.len() >= count {
            return received;
        }
        assert!(Instant::now() < deadline, "{} of {count} spans reached the receiver", received.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A string attribute of a span.
pub fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|attribute| attribute.key == key).and_then(|attribute| {
        match &attribute.value.as_ref()?.value {
            Some(Value::StringValue(text)) => Some(text.clone()),
            _ => None,
        }
    })
}
