//! The ext_authz gRPC door: Check bytes → zero-copy view → core request → `Decision` → `CheckResponse` bytes; never decides (the engine does).

mod answer;
mod coalesce;
mod server;
pub mod wire;

#[cfg(any(test, feature = "prost-oracle"))]
pub mod oracle;
#[cfg(test)]
mod wire_tests;

use std::sync::Arc;

use futures_util::StreamExt;
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

use self::coalesce::CoalescingStream;
use crate::core::authn::AuthnContext;
use crate::core::{Decision, HttpRequest, Reason, Snapshot};
use crate::doors::listener;
use crate::engine::{Engine, Received};
use crate::telemetry::Door;

pub use answer::CheckAnswer;
pub use server::AuthorizationServer;
pub use wire::{CheckView, ViewError};

/// `envoy.service.auth.v3.Authorization` backed by the engine.
pub struct CheckService {
    engine: Arc<Engine>,
}

impl CheckService {
    /// Checks decided by `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }

    /// Decides one Check. It cannot fail: a view the core cannot judge is denied as malformed.
    pub async fn check(&self, view: CheckView) -> CheckAnswer {
        let request = view.request();
        let received = match &request {
            Ok(request) => Received::Judgeable(request),
            Err(error) => {
                log_malformed(error);
                Received::Malformed(None)
            }
        };
        let outcome = self.engine.check(Door::Grpc, received).await;
        CheckAnswer { decision: outcome.decision, allow: outcome.allow }
    }
}

/// Serves Check, decided by `engine`, and the gRPC health service reporting `health`'s
/// statuses, on `listener` until `shutdown` turns true; then the connections queued in its
/// backlog are accepted too ([`listener::until_shutdown`]), and every connection is shut down
/// gracefully: HTTP/2's GOAWAY, the checks in flight and those the client sent before it saw
/// the GOAWAY answered. Each accepted connection is counted in `accepted`.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    health: &HealthReporter,
    accepted: Counter,
    shutdown: watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error> {
    let incoming = listener::until_shutdown(listener, Some(accepted), shutdown)
        .map(|(stream, _)| Ok::<_, std::convert::Infallible>(CoalescingStream::new(stream)));
    // The incoming stream ends once shutdown emptied the backlog, which starts tonic's graceful
    // shutdown; a shutdown signal of its own would drop the listener with its backlog unserved.
    tonic::transport::Server::builder()
        .add_service(HealthServer::new(HealthService::from_health_reporter(health.clone())))
        .add_service(AuthorizationServer::new(CheckService::new(engine)))
        .serve_with_incoming_shutdown(incoming, std::future::pending())
        .await
}

fn log_malformed(error: &ViewError) {
    tracing::debug!(%error, "Denied a check request the core cannot judge");
}

fn malformed(error: &ViewError) -> Decision {
    log_malformed(error);
    Decision::new(Reason::MalformedRequest, None)
}

/// Decides a decoded Check with the core alone, for tests, benches and fuzzing: no engine, so no
/// token cache, no key refetch, no metrics or log; a view the core cannot judge is denied. The
/// server decides through [`CheckService::check`].
pub fn decide_view_without_engine(snapshot: &Snapshot, view: &CheckView, context: &AuthnContext<'_>) -> Decision {
    match view.request() {
        Ok(request) => snapshot.check(&request, context),
        Err(error) => malformed(&error),
    }
}

/// Fills an empty method, host, path or scheme from the pseudo-headers (`:authority`, else
/// `host`), as Envoy sends them in the header map.
fn with_pseudo_header_fallbacks(mut request: HttpRequest<'_>) -> HttpRequest<'_> {
    if request.method.is_empty() {
        request.method = request.header(":method").unwrap_or_default();
    }
    if request.host.is_empty() {
        request.host = request.header(":authority").or_else(|| request.header("host")).unwrap_or_default();
    }
    if request.path.is_empty() {
        request.path = request.header(":path").unwrap_or_default();
    }
    if request.scheme.is_empty() {
        request.scheme = request.header(":scheme").unwrap_or_default();
    }
    request
}
