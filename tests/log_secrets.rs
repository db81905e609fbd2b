//! No token in the log or the traces: the real binary, logging every decision at debug level in both formats, with tokens in every location, on both doors, allowed and denied; and no API key, opaque token or introspection client secret in the log, the traces or the metrics, whatever becomes of them.

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

/// Waits until the log holds a decision line showing every one of `targets`, and returns the
/// whole log.
fn log_with_every_decision<'t>(server: &Server, targets: impl IntoIterator<Item = &'t str>) -> Vec<String> {
    let targets: Vec<&str> = targets.into_iter().collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut lines = Vec::new();
    loop {
        lines.extend(server.log_lines().into_iter().skip(lines.len()));
        let missing: Vec<&str> =
            targets.iter().copied().filter(|target| !lines.iter().any(|line| line.contains(target))).collect();
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

    let log = log_with_every_decision(&server, cases.iter().map(|case| case.logged_target.as_str()));
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

/// The issuer of the opaque tokens, and the introspection client's secret: never to be logged.
const OPAQUE_ISSUER: &str = "https://opaque.test";
const CLIENT_SECRET: &str = "introspection-client-secret-never-logged";

/// What a request presents besides a JWT, and what becomes of it.
#[derive(Debug, Clone, Copy)]
enum Credential {
    /// A key of the key file, on an allowed path and on a forbidden one.
    KnownKey,
    KnownKeyForbidden,
    /// A key no entry has, and an expired key: 401.
    UnknownKey,
    ExpiredKey,
    /// Opaque tokens the endpoint answers active (on both paths), inactive, or with a 500.
    ActiveToken,
    ActiveTokenForbidden,
    InactiveToken,
    FailingToken,
}

impl Credential {
    const ALL: [Credential; 8] = [
        Self::KnownKey,
        Self::KnownKeyForbidden,
        Self::UnknownKey,
        Self::ExpiredKey,
        Self::ActiveToken,
        Self::ActiveTokenForbidden,
        Self::InactiveToken,
        Self::FailingToken,
    ];

    fn status(self) -> u16 {
        match self {
            Self::KnownKey | Self::ActiveToken => 200,
            Self::KnownKeyForbidden | Self::ActiveTokenForbidden => 403,
            Self::UnknownKey | Self::ExpiredKey | Self::InactiveToken | Self::FailingToken => 401,
        }
    }

    /// The secret this case presents: how the fake endpoint tells the tokens apart.
    fn secret(self, door: &str) -> String {
        let kind = match self {
            Self::ActiveToken | Self::ActiveTokenForbidden => "active",
            Self::InactiveToken => "inactive",
            Self::FailingToken => "failing",
            _ => "pk",
        };
        format!("{kind}-{door}-{self:?}-{}", unix_now())
    }

    fn header(self, secret: &str) -> (String, String) {
        match self {
            Self::KnownKey | Self::UnknownKey => ("x-api-key".into(), secret.into()),
            Self::KnownKeyForbidden | Self::ExpiredKey => ("authorization".into(), format!("APIKey {secret}")),
            _ => ("authorization".into(), format!("Bearer {secret}")),
        }
    }
}

/// One request of the credentials run.
struct CredentialCase {
    name: String,
    credential: Credential,
    secret: String,
    target: String,
}

impl CredentialCase {
    fn new(door: &str, credential: Credential) -> Self {
        let name = format!("{door}-{credential:?}");
        let forbidden = matches!(credential, Credential::KnownKeyForbidden | Credential::ActiveTokenForbidden);
        let target = format!("{}?case={name}", if forbidden { "/forbidden" } else { "/allowed" });
        Self { secret: credential.secret(door), name, credential, target }
    }
}

/// An introspection endpoint on loopback: a token starting `active-` is active, `inactive-` is
/// not, any other gets 500. Returns its URL.
async fn introspection_endpoint() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let url = format!("http://{}/introspect", listener.local_addr().expect("address"));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut request = Vec::new();
                let mut buffer = [0_u8; 4096];
                // The form is the last thing sent: read until its `token` and hint are in.
                while !String::from_utf8_lossy(&request).contains("token_type_hint") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(read) => request.extend_from_slice(buffer.get(..read).unwrap_or_default()),
                    }
                }
                let text = String::from_utf8_lossy(&request);
                let (status, body) = if text.contains("token=active-") {
                    ("200 OK", r#"{"active":true,"sub":"bot","scope":"a b"}"#)
                } else if text.contains("token=inactive-") {
                    ("200 OK", r#"{"active":false}"#)
                } else {
                    ("500 Internal Server Error", "{}")
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    url
}

/// The key file: the known keys' digests, the expired key's with a past `expires`.
fn key_file(cases: &[CredentialCase]) -> tempfile::NamedTempFile {
    let mut yaml = String::from("keys:\n");
    for case in cases {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, case.secret.as_bytes());
        let digest: String = digest.as_ref().iter().map(|byte| format!("{byte:02x}")).collect();
        match case.credential {
            Credential::KnownKey | Credential::KnownKeyForbidden => {
                yaml.push_str(&format!("- {{sha256: {digest}, principal: bot-{}}}\n", case.name));
            }
            Credential::ExpiredKey => yaml.push_str(&format!(
                "- {{sha256: {digest}, principal: old-{}, expires: '2001-01-01T00:00:00Z'}}\n",
                case.name
            )),
            _ => {}
        }
    }
    support::config_file(&yaml)
}

async fn no_credential_is_logged_traced_or_measured(log_format: &str) {
    let (endpoint, spans) = otlp::receiver().await;
    let introspection = introspection_endpoint().await;
    let cases: Vec<CredentialCase> = ["grpc", "http"]
        .into_iter()
        .flat_map(|door| Credential::ALL.map(|credential| CredentialCase::new(door, credential)))
        .collect();
    let keys = key_file(&cases);
    let secret = support::config_file(CLIENT_SECRET);
    let settings = support::config_file(&format!(
        "http_mode: envoy\ndecision_log: all\nlog_level: debug\nlog_format: {log_format}\n\
         api_keys: {{files: ['{}']}}\n\
         introspection:\n  providers:\n  - {{issuer: '{OPAQUE_ISSUER}', endpoint: '{introspection}', client_id: portcullis, client_secret_file: '{}'}}\n",
        keys.path().display(),
        secret.path().display()
    ));
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "50")];
    let policies = policies();
    let server = Server::start_with_env(&[policies.path()], Some(settings.path()), &env);
    let mut client = server.grpc_client().await;
    for case in &cases {
        let (name, value) = case.credential.header(&case.secret);
        let status = if case.name.starts_with("grpc") {
            let check =
                CheckBuilder::new("GET", &case.target).scheme("https").namespace(NAMESPACE).header(&name, &value);
            proxy_answer(&client.check(check.build()).await.expect("Check answers").into_inner()).0
        } else {
            let context = format!("namespace={NAMESPACE}");
            let headers = [(name.as_str(), value.as_str()), ("x-portcullis-context", context.as_str())];
            http_request(server.http, "GET", &case.target, &headers).0
        };
        assert_eq!(status, case.credential.status(), "{}", case.name);
    }

    let log = log_with_every_decision(&server, cases.iter().map(|case| case.target.as_str()));
    let spans = otlp::wait_for_spans(&spans, cases.len()).await;
    let (_, metrics) = support::http_get(server.admin, "/metrics");
    for case in &cases {
        for secret in [case.secret.as_str(), CLIENT_SECRET] {
            let line = log.iter().find(|line| line.contains(secret));
            assert!(line.is_none(), "{}: a secret is in the log: {line:?}", case.name);
            let span = spans.iter().find(|span| format!("{span:?}").contains(secret));
            assert!(span.is_none(), "{}: a secret is in a span: {span:?}", case.name);
            assert!(!metrics.contains(secret), "{}: a secret is in the metrics", case.name);
        }
    }
    // Every path was taken: the failing calls were logged (without their token), at debug level.
    assert!(log.iter().any(|line| line.contains("Introspection failed")), "the failed call is logged");
    assert!(log.iter().any(|line| line.contains("DEBUG")), "the log has debug lines");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_api_key_opaque_token_or_client_secret_reaches_the_text_log_the_traces_or_the_metrics() {
    no_credential_is_logged_traced_or_measured("text").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_api_key_opaque_token_or_client_secret_reaches_the_json_log_the_traces_or_the_metrics() {
    no_credential_is_logged_traced_or_measured("json").await;
}
