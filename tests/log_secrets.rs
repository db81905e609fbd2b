//! No token in the log or the traces: the real binary, logging every decision at debug level in both formats, with tokens in every location, on both doors, allowed and denied.

#![expect(clippy::expect_used, reason = "test helpers: a failed step fails the test")]

mod forge;
mod otlp;
mod support;

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use forge::{OTHER_RSA, RSA, jwks, public_jwk, sign, unix_now};
use jsonwebtoken::Algorithm;
use serde_json::json;
use support::{CheckBuilder, Server, http_request, proxy_answer};

const NAMESPACE: &str = "secrets";
/// Its rule reads Istio's default locations: `Authorization: Bearer` and `?access_token=`.
const DEFAULT_ISSUER: &str = "https://default.test";
/// Its rule reads a custom header, query parameter and cookie.
const CUSTOM_ISSUER: &str = "https://custom.test";

/// Two token rules (default and custom locations) and an ALLOW for verified callers on `/allowed`.
fn policies() -> tempfile::TempDir {
    let keys = jwks(&[public_jwk(RSA, Algorithm::RS256, Some("rsa"))]);
    let yaml = format!(
        r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: tokens, namespace: {NAMESPACE}}}
spec:
  jwtRules:
  - issuer: {DEFAULT_ISSUER}
    jwks: '{keys}'
  - issuer: {CUSTOM_ISSUER}
    jwks: '{keys}'
    fromHeaders: [{{name: x-custom-token}}]
    fromParams: [session_token]
    fromCookies: [session]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: verified-only, namespace: {NAMESPACE}}}
spec:
  rules:
  - from: [{{source: {{requestPrincipals: ["*"]}}}}]
    to: [{{operation: {{paths: ["/allowed"]}}}}]
"#
    );
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("policies.yaml"), yaml).expect("write policies");
    dir
}

fn settings(log_format: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let yaml = format!("http_mode: envoy\ndecision_log: all\nlog_level: debug\nlog_format: {log_format}\n");
    std::fs::write(file.path(), yaml).expect("write settings");
    file
}

/// Where a request carries its token.
#[derive(Debug, Clone, Copy)]
enum Location {
    BearerHeader,
    DefaultParam,
    CustomParam,
    CustomHeader,
    Cookie,
    /// In `Authorization`, and echoed by the client as its `x-request-id`.
    RequestIdToo,
}

impl Location {
    const ALL: [Location; 6] = [
        Self::BearerHeader,
        Self::DefaultParam,
        Self::CustomParam,
        Self::CustomHeader,
        Self::Cookie,
        Self::RequestIdToo,
    ];

    fn issuer(self) -> &'static str {
        match self {
            Self::CustomParam | Self::CustomHeader | Self::Cookie => CUSTOM_ISSUER,
            Self::BearerHeader | Self::DefaultParam | Self::RequestIdToo => DEFAULT_ISSUER,
        }
    }

    /// The query parameter that carries the token, if one does.
    fn param(self) -> Option<&'static str> {
        match self {
            Self::DefaultParam => Some("access_token"),
            Self::CustomParam => Some("session_token"),
            _ => None,
        }
    }

    fn headers(self, token: &str) -> Vec<(String, String)> {
        let bearer = ("authorization".to_string(), format!("Bearer {token}"));
        match self {
            Self::BearerHeader => vec![bearer],
            Self::CustomHeader => vec![("x-custom-token".into(), token.into())],
            Self::Cookie => vec![("cookie".into(), format!("theme=dark; session={token}"))],
            Self::RequestIdToo => vec![bearer, ("x-request-id".into(), token.into())],
            Self::DefaultParam | Self::CustomParam => Vec::new(),
        }
    }
}

/// What the policy makes of the request.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Allowed,
    /// A valid token on a path the policy does not allow: 403.
    DeniedByPolicy,
    /// A token signed by another key: 401.
    BadSignature,
}

impl Outcome {
    const ALL: [Outcome; 3] = [Self::Allowed, Self::DeniedByPolicy, Self::BadSignature];

    fn status(self) -> u16 {
        match self {
            Self::Allowed => 200,
            Self::DeniedByPolicy => 403,
            Self::BadSignature => 401,
        }
    }
}

/// One request: its token, the target sent, and the target the log must show.
struct Case {
    name: String,
    location: Location,
    token: String,
    target: String,
    logged_target: String,
}

impl Case {
    fn new(door: &str, location: Location, outcome: Outcome) -> Self {
        let name = format!("{door}-{location:?}-{outcome:?}");
        let claims = json!({"iss": location.issuer(), "sub": "alice", "exp": unix_now() + 3600, "jti": name});
        let key = if matches!(outcome, Outcome::BadSignature) { OTHER_RSA } else { RSA };
        let token = sign(key, Algorithm::RS256, Some("rsa"), &claims);
        let path = if matches!(outcome, Outcome::DeniedByPolicy) { "/forbidden" } else { "/allowed" };
        let (target, logged_target) = match location.param() {
            Some(param) => {
                (format!("{path}?case={name}&{param}={token}"), format!("{path}?case={name}&{param}=<redacted>"))
            }
            None => (format!("{path}?case={name}"), format!("{path}?case={name}")),
        };
        Self { name, location, token, target, logged_target }
    }

    /// The token, and its payload and signature segments: none may be logged.
    fn secrets(&self) -> Vec<&str> {
        let mut secrets = vec![self.token.as_str()];
        secrets.extend(self.token.split('.').skip(1));
        secrets
    }
}

/// The case as a Check over HTTPS for the workload in `NAMESPACE`.
fn grpc_check(case: &Case) -> CheckRequest {
    let check = CheckBuilder::new("GET", &case.target).scheme("https").namespace(NAMESPACE);
    check.headers(case.location.headers(&case.token).into_iter().collect()).build()
}

/// Sends every case through both doors and checks the answers; returns the cases.
async fn send_every_case(server: &Server) -> Vec<Case> {
    let mut client = server.grpc_client().await;
    let mut cases = Vec::new();
    for location in Location::ALL {
        for outcome in Outcome::ALL {
            let case = Case::new("grpc", location, outcome);
            let response = client.check(grpc_check(&case)).await.expect("Check answers").into_inner();
            assert_eq!(proxy_answer(&response).0, outcome.status(), "{}", case.name);
            cases.push(case);

            let case = Case::new("http", location, outcome);
            let context = format!("namespace={NAMESPACE}");
            let mut headers = case.location.headers(&case.token);
            headers.push(("x-portcullis-context".into(), context));
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
            let (status, _, _) = http_request(server.http, "GET", &case.target, &headers);
            assert_eq!(status, outcome.status(), "{}", case.name);
            cases.push(case);
        }
    }
    cases
}

/// Waits until the log holds a decision line for every case, and returns the whole log.
fn log_with_every_decision(server: &Server, cases: &[Case]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut lines = Vec::new();
    loop {
        lines.extend(server.log_lines().into_iter().skip(lines.len()));
        let missing: Vec<&str> = cases
            .iter()
            .filter(|case| !lines.iter().any(|line| line.contains(&case.logged_target)))
            .map(|case| case.logged_target.as_str())
            .collect();
        if missing.is_empty() {
            return lines;
        }
        assert!(Instant::now() < deadline, "no decision line shows {missing:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn no_token_is_logged_or_traced(log_format: &str) {
    let (endpoint, spans) = otlp::receiver().await;
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "50")];
    let (policies, settings) = (policies(), settings(log_format));
    let server = Server::start_with_env(&[policies.path()], Some(settings.path()), &env);
    let cases = send_every_case(&server).await;

    let log = log_with_every_decision(&server, &cases);
    let spans = otlp::wait_for_spans(&spans, cases.len()).await;
    for case in &cases {
        for secret in case.secrets() {
            let line = log.iter().find(|line| line.contains(secret));
            assert!(line.is_none(), "{}: a secret of the token is in the log: {line:?}", case.name);
            let span = spans.iter().find(|span| format!("{span:?}").contains(secret));
            assert!(span.is_none(), "{}: a secret of the token is in a span: {span:?}", case.name);
        }
    }
    // The log was at debug level: the server's own and its libraries' debug lines were read too.
    assert!(log.iter().any(|line| line.contains("DEBUG")), "the log has debug lines");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_reaches_the_text_log_or_the_traces_from_any_location_door_or_decision() {
    no_token_is_logged_or_traced("text").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_reaches_the_json_log_or_the_traces_from_any_location_door_or_decision() {
    no_token_is_logged_or_traced("json").await;
}
