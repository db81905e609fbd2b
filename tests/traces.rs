//! Traces: a span per check reaches an OTLP/HTTP receiver run by the test, child of the caller's `traceparent`, with the decision's attributes.

mod otlp;
mod support;

use otlp::{attribute, receiver, wait_for_spans};
use support::{CheckBuilder, Server, repo_path};

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_SPAN_ID: &str = "b7ad6b7169203331";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_check_is_a_span_in_the_callers_trace() {
    let (endpoint, spans) = receiver().await;
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "50")];
    let server = Server::start_with_env(&[&repo_path("policies")], None, &env);
    let check = CheckBuilder::new("POST", "/api/jobs")
        .host("jobs.example.com")
        .header("traceparent", &format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01"))
        .namespace("job-service")
        .context("app", "job-service")
        .build();
    server.check(check).await;

    let span = wait_for_spans(&spans, 1).await.remove(0);
    assert_eq!(span.name, "portcullis.check");
    assert_eq!(hex(&span.trace_id), TRACE_ID, "the span joins the caller's trace");
    assert_eq!(hex(&span.parent_span_id), PARENT_SPAN_ID, "as a child of the caller's span");
    assert_eq!(attribute(&span, "portcullis.decision").as_deref(), Some("deny"));
    assert_eq!(attribute(&span, "portcullis.reason").as_deref(), Some("no_allow_match"));
    assert_eq!(attribute(&span, "portcullis.door").as_deref(), Some("grpc"));
    assert_eq!(attribute(&span, "http.request.method").as_deref(), Some("POST"));
    assert_eq!(server.terminate_within(std::time::Duration::from_secs(30)).code(), Some(0));
}
