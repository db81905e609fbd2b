//! OpenTelemetry traces: off unless the standard `OTEL_*` variables name an OTLP endpoint; one span per check, joined to the caller's trace through its `traceparent`; a span never carries a path, a header or a token.

use std::time::SystemTime;

use opentelemetry::KeyValue;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Span, SpanKind, Tracer, TracerProvider};
use opentelemetry_otlp::SpanExporter;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use crate::core::Decision;
use crate::telemetry::Door;

/// The span exporter, when one is configured.
#[derive(Debug, Default)]
pub struct Traces {
    exporting: Option<(SdkTracerProvider, SdkTracer)>,
}

/// True when the environment asks for OTLP traces.
fn configured(variable: impl Fn(&str) -> Option<String>) -> bool {
    let endpoint = variable("OTEL_EXPORTER_OTLP_ENDPOINT").or_else(|| variable("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"));
    let disabled = variable("OTEL_SDK_DISABLED").is_some_and(|value| value.eq_ignore_ascii_case("true"))
        || variable("OTEL_TRACES_EXPORTER").is_some_and(|value| value == "none");
    endpoint.is_some() && !disabled
}

impl Traces {
    /// Sets up OTLP/HTTP export from the `OTEL_*` variables, or nothing when they name no
    /// endpoint. A broken exporter set-up is logged and leaves traces off.
    pub fn from_environment() -> Self {
        if !configured(|name| std::env::var(name).ok()) {
            return Self::default();
        }
        let exporter = match SpanExporter::builder().with_http().build() {
            Ok(exporter) => exporter,
            Err(error) => {
                tracing::error!(%error, "Cannot set up the OTLP span exporter; traces are off");
                return Self::default();
            }
        };
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("portcullis");
        }
        let provider =
            SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build();
        let tracer = provider.tracer("portcullis");
        tracing::info!("Exporting traces over OTLP");
        Self { exporting: Some((provider, tracer)) }
    }

    /// Whether spans are exported; when not, callers skip gathering span data.
    pub fn is_on(&self) -> bool {
        self.exporting.is_some()
    }

    /// Records the span of one check, child of the trace named by the request's `traceparent`.
    pub fn record_check(
        &self,
        door: Door,
        started: SystemTime,
        context: TraceContext<'_>,
        method: &str,
        decision: &Decision,
    ) {
        let Some((_, tracer)) = &self.exporting else { return };
        let parent = TraceContextPropagator::new().extract(&context);
        let mut attributes = vec![
            KeyValue::new("portcullis.door", door.as_str()),
            KeyValue::new("portcullis.decision", if decision.is_allow() { "allow" } else { "deny" }),
            KeyValue::new("portcullis.reason", decision.reason.as_str()),
            KeyValue::new("http.request.method", method_attribute(method)),
        ];
        if let Some(policy) = &decision.policy {
            attributes.push(KeyValue::new("portcullis.policy", policy.to_string()));
        }
        let mut span = tracer
            .span_builder("portcullis.check")
            .with_kind(SpanKind::Server)
            .with_start_time(started)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        span.end();
    }

    /// Sends what is still buffered; called on shutdown.
    pub fn shutdown(&self) {
        if let Some((provider, _)) = &self.exporting
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "Flushing traces failed");
        }
    }
}

/// `http.request.method` as OpenTelemetry's conventions write it: a known method, else
/// `_OTHER`, so that no text of the client's choosing becomes an attribute.
fn method_attribute(method: &str) -> &'static str {
    const KNOWN: [&str; 10] = ["CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE"];
    KNOWN.into_iter().find(|known| *known == method).unwrap_or("_OTHER")
}

/// The W3C trace-context headers of the checked request.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContext<'a> {
    /// The `traceparent` header.
    pub traceparent: Option<&'a str>,
    /// The `tracestate` header.
    pub tracestate: Option<&'a str>,
}

impl Extractor for TraceContext<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.traceparent,
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_are_traced_as_other() {
        assert_eq!(method_attribute("PATCH"), "PATCH");
        assert_eq!(method_attribute("get"), "_OTHER", "methods are case-sensitive");
        assert_eq!(method_attribute("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln"), "_OTHER");
    }

    #[test]
    fn traces_are_on_only_when_an_endpoint_is_named() {
        let with = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(key, _)| *key == name).map(|(_, value)| value.to_string())
        };
        assert!(!configured(with(&[])));
        assert!(configured(with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")])));
        assert!(configured(with(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://collector:4318/v1/traces")])));
        assert!(!configured(with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_SDK_DISABLED", "true")])));
        assert!(!configured(with(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_TRACES_EXPORTER", "none")
        ])));
    }
}
