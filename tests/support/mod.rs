//! Starts the real `portcullis` binary on loopback ports it picks itself and finds them in its log; builds its files, reads its metrics and sends it Checks.

#![allow(dead_code, reason = "each test crate uses a different part of the support module")]
#![expect(clippy::expect_used, reason = "test set-up: a failure to start the server fails the test")]
#![expect(clippy::panic, reason = "a hang guard fails the test")]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest as AttributeHttpRequest, Peer, Request as AttributeRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use envoy_types::pb::google::protobuf::value::Kind;

pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

pub fn portcullis() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("PORTCULLIS_")) {
        command.env_remove(name);
    }
    command.env_remove("RUST_LOG");
    command
}

/// The address [`Server::http`] holds when the HTTP door is off: nothing answers there.
pub const HTTP_DOOR_OFF: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// A running server and the addresses it bound.
pub struct Server {
    child: Child,
    pub grpc: SocketAddr,
    /// The HTTP door; [`HTTP_DOOR_OFF`] when `http_mode` is unset and the door is not served.
    pub http: SocketAddr,
    pub admin: SocketAddr,
    log: mpsc::Receiver<String>,
    /// Lines read while waiting for the listeners.
    early_log: Vec<String>,
    /// Lines [`Self::log_lines`] has read since, kept so that every call returns them all.
    read_log: Mutex<Vec<String>>,
    /// The settings file the server was started with, when the server made it.
    settings: Option<tempfile::NamedTempFile>,
}

impl Server {
    /// Starts `serve` on `127.0.0.1:0` ports with the given policy paths; waits until ready.
    pub fn start(policies: &[&Path]) -> Self {
        Self::start_with(policies, None)
    }

    /// The same, with a settings file.
    pub fn start_with(policies: &[&Path], config: Option<&Path>) -> Self {
        Self::start_with_env(policies, config, &[])
    }

    /// The same, with the HTTP door in `mode` (`http_mode`) and more settings (YAML lines).
    pub fn with_http_door(policies: &Path, mode: &str, settings: &str) -> Self {
        let file = config_file(&format!("http_mode: {mode}\n{settings}"));
        let mut server = Self::start_with(&[policies], Some(file.path()));
        server.settings = Some(file);
        server
    }

    /// The same, with environment variables.
    pub fn start_with_env(policies: &[&Path], config: Option<&Path>, env: &[(&str, &str)]) -> Self {
        let server = Self::start_listening(policies, config, env);
        server.wait_ready();
        server
    }

    /// The same, but returns as soon as every listener is bound, ready or not.
    pub fn start_listening(policies: &[&Path], config: Option<&Path>, env: &[(&str, &str)]) -> Self {
        let mut command = portcullis();
        command.envs(env.iter().copied());
        command.arg("serve");
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        for path in policies {
            command.arg("--policies").arg(path);
        }
        command
            .args(["--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("portcullis starts");
        let (sender, log) = mpsc::channel();
        // Both streams are the log: the server writes to stderr, and nothing may hide on stdout.
        forward_lines(child.stderr.take().expect("stderr is piped"), sender.clone());
        forward_lines(child.stdout.take().expect("stdout is piped"), sender);
        let (mut grpc, mut http, mut admin) = (None, None, None);
        let mut early_log = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while grpc.is_none() || http.is_none() || admin.is_none() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let line = log.recv_timeout(remaining).expect("the server logs its listeners in time");
            if let Some(address) = listening_address(&line, "grpc") {
                grpc = Some(address);
            } else if let Some(address) = listening_address(&line, "http") {
                http = Some(address);
            } else if line.contains("HTTP door off") {
                http = Some(HTTP_DOOR_OFF);
            } else if let Some(address) = listening_address(&line, "admin") {
                admin = Some(address);
            }
            early_log.push(line);
        }
        let (grpc, http, admin) = (grpc.expect("grpc"), http.expect("http"), admin.expect("admin"));
        Self { child, grpc, http, admin, log, early_log, read_log: Mutex::default(), settings: None }
    }

    /// Waits until `/readyz` answers 200 (hang guard: 10 s).
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while http_get(self.admin, "/readyz").0 != 200 {
            assert!(Instant::now() < deadline, "server never became ready");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal (`-HUP`, `-TERM`) without waiting.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill").args([signal, &self.child.id().to_string()]).status().expect("kill runs");
        assert!(sent.success());
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
        assert!(sent.success());
        self.child.wait().expect("server exits")
    }

    /// Waits for the process to exit on its own and returns its status. Fails the test after a
    /// generous deadline (a hang guard, not a timing assertion).
    pub fn wait_for_exit(mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("waits on the server") {
                return status;
            }
            assert!(Instant::now() < deadline, "the server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the first new log line that contains every one of `parts`, and returns every
    /// new line up to and including it. Fails the test after a generous deadline (a hang guard).
    pub fn log_until(&self, parts: &[&str]) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut lines = Vec::new();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let line = self.log.recv_timeout(remaining).expect("the awaited log line arrives in time");
            let found = parts.iter().all(|part| line.contains(part));
            lines.push(line);
            if found {
                return lines;
            }
        }
    }

    /// Every log line received so far, in order (but those [`Self::wait_for_log_line`] read):
    /// each call returns the lines of the call before and the ones that came since.
    pub fn log_lines(&self) -> Vec<String> {
        let mut read = self.read_log.lock().expect("the log buffer's lock");
        read.extend(self.log.try_iter());
        self.early_log.iter().chain(read.iter()).cloned().collect()
    }

    /// Waits until a line logged so far, start-up included, contains every one of `parts`
    /// ([`Self::log_lines`], polled). Fails the test after a generous deadline (a hang guard).
    pub fn wait_until_logged(&self, parts: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.log_lines().iter().any(|line| parts.iter().all(|part| line.contains(part))) {
            assert!(Instant::now() < deadline, "no line with {parts:?} in {:?}", self.log_lines());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the first new log line that contains every one of `parts` and returns it;
    /// the lines read on the way are no longer in [`Self::log_lines`]. Fails the test after a
    /// generous deadline (a hang guard, not a timing assertion).
    pub fn wait_for_log_line(&self, parts: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let line = self.log.recv_timeout(remaining).expect("the awaited log line arrives in time");
            if parts.iter().all(|part| line.contains(part)) {
                return line;
            }
        }
    }
}

/// Polls `holds` until it is true; fails the test with `why` after 60 s, a hang guard (generous:
/// a shared machine may be slow), so that a change never picked up fails the test instead of
/// hanging it.
pub async fn eventually(why: &str, mut holds: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !holds().await {
        assert!(Instant::now() < deadline, "not within 60 s: {why}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Creates a FIFO (named pipe) at `path`.
/// Replaces a file whole, as a ConfigMap update or a deploy tool does: written beside it under a
/// name no loader reads (`.NAME.staged`), then renamed over it, so that a poller never reads it
/// half-written.
pub fn replace_file(path: &Path, contents: &str) {
    let name = path.file_name().and_then(|name| name.to_str()).expect("a file name");
    let staged = path.with_file_name(format!(".{name}.staged"));
    std::fs::write(&staged, contents).unwrap_or_else(|error| panic!("write {}: {error}", staged.display()));
    std::fs::rename(&staged, path).unwrap_or_else(|error| panic!("rename over {}: {error}", path.display()));
}

pub fn make_fifo(path: &Path) {
    let made = Command::new("mkfifo").arg(path).status().expect("mkfifo runs");
    assert!(made.success(), "mkfifo {}", path.display());
}

/// Runs `command` to its end, as `Command::output` does, but kills it and fails the test when it
/// has not exited within `bound`: a hang guard, not a timing assertion.
pub fn output_within(command: &mut Command, bound: Duration) -> std::process::Output {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("command starts");
    let deadline = Instant::now() + bound;
    while child.try_wait().expect("waits on the child").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("killed child exits");
            panic!("did not exit within {bound:?}; stderr:\n{}", String::from_utf8_lossy(&output.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("child output")
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends each line of `stream` to `sender`, from a thread of its own.
fn forward_lines(stream: impl Read + Send + 'static, sender: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
}

/// Reads `Listening door=NAME address=ADDR` from a log line, text or JSON.
fn listening_address(line: &str, door: &str) -> Option<SocketAddr> {
    if !line.contains("Listening") {
        return None;
    }
    if line.contains(&format!("door={door}")) {
        return line
            .split_whitespace()
            .find_map(|field| field.strip_prefix("address="))
            .and_then(|address| address.parse().ok());
    }
    if line.contains(&format!("\"door\":\"{door}\"")) {
        let address = line.split("\"address\":\"").nth(1)?;
        return address.split('"').next().and_then(|address| address.parse().ok());
    }
    None
}

/// A minimal HTTP/1.1 GET: status and body.
pub fn http_get(address: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = http_request(address, "GET", path, &[]);
    (status, body)
}

/// A minimal HTTP/1.1 request: status, response head (lower-cased) and body.
pub fn http_request(address: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let extra: String = headers.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\n{extra}Connection: close\r\n\r\n");
    raw_http(address, request.as_bytes())
}

/// Sends raw bytes to `address` and reads the answer: status (0: none), head (lower case), body.
pub fn raw_http(address: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(2)) else {
        return (0, String::new(), String::new());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    // The server may answer (431) before it has read everything: a failed write is not the end.
    let _ = stream.write_all(request);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).to_string();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (status_in(head), head.to_ascii_lowercase(), body.to_string())
}

/// The status of an HTTP/1.1 answer's head; 0 when there is none.
pub fn status_in(head: &str) -> u16 {
    head.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0)
}

/// A raw GET of `target` for the HTTP door in Envoy's HTTP mode, naming the workload by
/// namespace; `extra_headers` are whole `name: value\r\n` lines.
pub fn envoy_mode_request(target: &[u8], namespace: &str, extra_headers: &str) -> Vec<u8> {
    let mut request = b"GET ".to_vec();
    request.extend_from_slice(target);
    request.extend_from_slice(
        format!(" HTTP/1.1\r\nHost: app.test\r\nx-portcullis-context: namespace={namespace}\r\n{extra_headers}Connection: close\r\n\r\n")
            .as_bytes(),
    );
    request
}

/// The value of the header `name` (lower case) in a lower-cased head.
pub fn header_in<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(':').map(str::trim))
}

// ---------------------------------------------------------------------------------------------
// Files the server reads, metrics it exports, and Checks over gRPC.
// ---------------------------------------------------------------------------------------------

/// An AuthorizationPolicy document `namespace/name` with `action` (`ALLOW`, `DENY`) and `rules`,
/// the YAML lines of its rule list.
pub fn authorization_policy(namespace: &str, name: &str, action: &str, rules: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  action: {action}\n  rules:\n{rules}"
    )
}

/// An AuthorizationPolicy document `namespace/name` with `action` (`ALLOW`, `DENY`) and one rule
/// matching `paths`.
pub fn paths_policy(namespace: &str, name: &str, action: &str, paths: &[&str]) -> String {
    let paths: Vec<String> = paths.iter().map(|path| format!("{path:?}")).collect();
    authorization_policy(
        namespace,
        name,
        action,
        &format!("  - to: [{{operation: {{paths: [{}]}}}}]\n", paths.join(", ")),
    )
}

/// A temporary policy directory holding `yaml` as `policies.yaml`; removed when dropped.
pub fn policy_dir(yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("policies.yaml"), yaml).expect("write policies");
    dir
}

/// A temporary settings file (`--config`) holding `yaml`; removed when dropped.
pub fn config_file(yaml: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), yaml).expect("write settings");
    file
}

/// The value of one series in a Prometheus text exposition: `series` is the name with its
/// labels exactly as exported (`portcullis_reloads_total{result="ok"}`). `None` when the series
/// is absent: a missing series is never read as 0.
pub fn metric_in(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

impl Server {
    /// The current value of one series of `/metrics` (see [`metric_in`]); `None` when absent.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (status, exposition) = http_get(self.admin, "/metrics");
        assert_eq!(status, 200, "/metrics answers");
        metric_in(&exposition, series)
    }

    /// A tonic client of the gRPC door on a fresh connection.
    pub async fn grpc_client(&self) -> AuthorizationClient<tonic::transport::Channel> {
        grpc_client_at(self.grpc).await
    }

    /// Sends one Check on a fresh connection and returns the answer.
    pub async fn check(&self, request: CheckRequest) -> CheckResponse {
        check_at(self.grpc, request).await
    }
}

/// A tonic client of the gRPC door at `grpc` on a fresh connection.
pub async fn grpc_client_at(grpc: SocketAddr) -> AuthorizationClient<tonic::transport::Channel> {
    AuthorizationClient::connect(format!("http://{grpc}")).await.expect("connects to the gRPC door")
}

/// Sends one Check to the gRPC door at `grpc` on a fresh connection and returns the answer.
pub async fn check_at(grpc: SocketAddr, request: CheckRequest) -> CheckResponse {
    grpc_client_at(grpc).await.check(request).await.expect("Check answers").into_inner()
}

/// Builds an Envoy `CheckRequest`: `CheckBuilder::new("GET", "/x").namespace("ns").build()`.
/// The host is `app.test` unless set, the scheme unset; nothing names the workload unless
/// [`Self::namespace`] or [`Self::context`] does.
#[derive(Debug, Clone)]
pub struct CheckBuilder {
    method: String,
    path: String,
    host: String,
    scheme: String,
    headers: HashMap<String, String>,
    context_extensions: HashMap<String, String>,
    source_address: Option<String>,
    source_principal: String,
}

impl CheckBuilder {
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.into(),
            path: path.into(),
            host: "app.test".into(),
            scheme: String::new(),
            headers: HashMap::new(),
            context_extensions: HashMap::new(),
            source_address: None,
            source_principal: String::new(),
        }
    }

    pub fn host(mut self, host: &str) -> Self {
        self.host = host.into();
        self
    }

    pub fn scheme(mut self, scheme: &str) -> Self {
        self.scheme = scheme.into();
        self
    }

    /// Adds a header (`:authority`, `:method` and `:path` included, as Envoy sends them).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Adds every header of `headers`.
    pub fn headers(mut self, headers: HashMap<String, String>) -> Self {
        self.headers.extend(headers);
        self
    }

    /// `authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    /// Adds a context extension, as an Envoy route's `context_extensions` would.
    pub fn context(mut self, key: &str, value: &str) -> Self {
        self.context_extensions.insert(key.into(), value.into());
        self
    }

    /// Names the workload's namespace (context extension `namespace`).
    pub fn namespace(self, namespace: &str) -> Self {
        self.context("namespace", namespace)
    }

    /// The peer's socket address (`10.1.2.3`, port 41000).
    pub fn source_address(mut self, ip: &str) -> Self {
        self.source_address = Some(ip.into());
        self
    }

    /// The peer's mTLS principal (`spiffe://...`).
    pub fn source_principal(mut self, principal: &str) -> Self {
        self.source_principal = principal.into();
        self
    }

    pub fn build(self) -> CheckRequest {
        let address = self.source_address.map(|ip| {
            let socket = SocketAddress {
                address: ip,
                port_specifier: Some(socket_address::PortSpecifier::PortValue(41000)),
                ..SocketAddress::default()
            };
            Address { address: Some(address::Address::SocketAddress(socket)) }
        });
        CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(Peer { address, principal: self.source_principal, ..Peer::default() }),
                request: Some(AttributeRequest {
                    http: Some(AttributeHttpRequest {
                        method: self.method,
                        path: self.path,
                        host: self.host,
                        scheme: self.scheme,
                        headers: self.headers,
                        ..AttributeHttpRequest::default()
                    }),
                    ..AttributeRequest::default()
                }),
                context_extensions: self.context_extensions,
                ..AttributeContext::default()
            }),
        }
    }
}

/// The HTTP status a proxy would answer for a `CheckResponse` (200 on allow) and the body of a
/// denial.
pub fn proxy_answer(response: &CheckResponse) -> (u16, String) {
    match &response.http_response {
        Some(HttpResponse::OkResponse(_)) => (200, String::new()),
        Some(HttpResponse::DeniedResponse(denied)) => {
            (denied.status.as_ref().map_or(0, |status| u16::try_from(status.code).unwrap_or(0)), denied.body.clone())
        }
        _ => (0, String::new()),
    }
}

/// A string field of the answer's dynamic metadata (`decision`, `reason`, `policy`).
pub fn metadata_field(response: &CheckResponse, name: &str) -> Option<String> {
    match &response.dynamic_metadata.as_ref()?.fields.get(name)?.kind {
        Some(Kind::StringValue(text)) => Some(text.clone()),
        _ => None,
    }
}
impl Server {
    /// Sends SIGTERM and waits for the exit status; fails the test when the server has not
    /// exited within `bound` (a hang guard, not a timing assertion).
    pub fn terminate_within(mut self, bound: Duration) -> ExitStatus {
        self.signal("-TERM");
        let deadline = Instant::now() + bound;
        loop {
            if let Some(status) = self.child.try_wait().expect("waits on the server") {
                return status;
            }
            assert!(Instant::now() < deadline, "the server did not exit within {bound:?} of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
