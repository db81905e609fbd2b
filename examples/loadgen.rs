//! Load generator for ext_authz Check: N HTTP/2 connections × M streams in a closed loop, or an open loop on a fixed schedule; prebuilt requests, HdrHistogram latency, decisions counted apart.
//!
//! It runs on one thread (pin it, e.g. `taskset -c 1`). Every answer is classified as allow,
//! 403, 401, another denial, or an error: a deny is never counted as a success. Only requests
//! started inside the measured window, after the warm-up, count.

#[path = "../benches/fixtures/mod.rs"]
mod fixtures;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use prost::Message;
use prost::bytes::{BufMut, Bytes};
use serde_json::{Value, json};
use tonic::Status;
use tonic::client::Grpc;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

use fixtures::Error;
use fixtures::requests::{check_request, job_board_call, light_check_request};

const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";
/// `/proc/PID/stat` counts CPU time in USER_HZ ticks, 100 a second on Linux.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;
/// Latencies are recorded in nanoseconds, up to a minute, to 3 significant digits.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

#[derive(Debug, Parser)]
#[command(about = "Sends Envoy-shaped Check requests to an ext_authz server and measures throughput and latency")]
struct Args {
    /// The Check server.
    #[arg(long)]
    target: SocketAddr,
    /// HTTP/2 connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Concurrent streams per connection, each sending its next request when the last one is
    /// answered (closed loop). Ignored with `--rate`.
    #[arg(long, default_value_t = 16)]
    streams: usize,
    /// Open loop: send this many requests a second on a fixed schedule, whatever the answers,
    /// and count each latency from its scheduled time.
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds of load before the measured window.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds measured. With a distinct token per request the window ends early when tokens
    /// run out.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// What the requests carry: no token, the file's first token on every request, or a
    /// different token on each request; or a flood of bad tokens made from the file's:
    /// `bad-reused`, the first with its signature altered, on every request; `bad-distinct`, each
    /// with its signature altered, one per request; `unknown-key`, each with a header naming a
    /// `kid` no issuer has, one per request.
    #[arg(long, value_enum, default_value_t = TokenMode::None)]
    tokens: TokenMode,
    /// Signed tokens, one a line (written by the `bench_fixtures` example).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Use at most this many of the file's tokens.
    #[arg(long)]
    max_tokens: Option<usize>,
    /// The request's weight: `heavy`, the headers a browser's request carries through Envoy;
    /// `light`, only `:authority`, `:path`, `:method` and `authorization`.
    #[arg(long, value_enum, default_value_t = RequestWeight::Heavy)]
    request: RequestWeight,
    /// Open loop: stop when this many requests are unanswered (the server cannot keep up).
    #[arg(long, default_value_t = 20_000)]
    max_in_flight: usize,
    /// The server's process id: its CPU time (/proc/PID/stat) is read at the start and end of
    /// the measured window.
    #[arg(long)]
    server_pid: Option<u32>,
    /// A name for the run, copied into the summary.
    #[arg(long, default_value = "")]
    label: String,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TokenMode {
    None,
    Reuse,
    Distinct,
    BadReused,
    BadDistinct,
    UnknownKey,
}

impl TokenMode {
    /// Whether every request carries the same token (or none).
    fn reuses(self) -> bool {
        matches!(self, Self::None | Self::Reuse | Self::BadReused)
    }

    /// The token request number `serial` carries, made from the file's `token`.
    fn token(self, token: &str, serial: usize) -> Result<String, Error> {
        match self {
            Self::None | Self::Reuse | Self::Distinct => Ok(token.to_owned()),
            Self::BadReused | Self::BadDistinct => with_altered_signature(token),
            Self::UnknownKey => with_unknown_kid(token, serial),
        }
    }

    fn name(self) -> String {
        self.to_possible_value().map(|value| value.get_name().to_owned()).unwrap_or_default()
    }
}

/// `token` with one byte of its signature changed: still base64url of the same length, so it is
/// read as before and refused by the signature check alone.
fn with_altered_signature(token: &str) -> Result<String, Error> {
    let (signed, signature) = token.rsplit_once('.').ok_or("a token without a signature")?;
    let mut signature = URL_SAFE_NO_PAD.decode(signature)?;
    let last = signature.last_mut().ok_or("a token with an empty signature")?;
    *last ^= 0x01;
    Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

/// `token` with a header whose `kid` (`unknown-SERIAL`) no issuer has: refused for want of a key,
/// before any signature check.
fn with_unknown_kid(token: &str, serial: usize) -> Result<String, Error> {
    let (header, rest) = token.split_once('.').ok_or("a token without a header")?;
    let mut header: serde_json::Map<String, Value> = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header)?)?;
    header.insert("kid".into(), json!(format!("unknown-{serial}")));
    Ok(format!("{}.{rest}", URL_SAFE_NO_PAD.encode(serde_json::to_string(&header)?)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RequestWeight {
    Light,
    Heavy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

/// Sends requests encoded before the run, and decodes of each answer what classifies it.
#[derive(Debug, Clone, Copy, Default)]
struct PreEncodedCodec;

impl Codec for PreEncodedCodec {
    type Encode = Bytes;
    type Decode = Verdict;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self {
        *self
    }

    fn decoder(&mut self) -> Self {
        *self
    }
}

impl Encoder for PreEncodedCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for PreEncodedCodec {
    type Item = Verdict;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Verdict>, Status> {
        Verdict::decode(src).map(Some).map_err(|error| Status::internal(error.to_string()))
    }
}

/// The fields of `envoy.service.auth.v3.CheckResponse` that classify it: `status` and the
/// denied response's HTTP status. prost skips the rest (headers, metadata) without building
/// it, so that a larger answer costs the generator little: the server is what is measured.
#[derive(Clone, PartialEq, prost::Message)]
struct Verdict {
    #[prost(message, optional, tag = "1")]
    status: Option<Code>,
    #[prost(message, optional, tag = "2")]
    denied_response: Option<DeniedStatus>,
}

/// `google.rpc.Status.code`, `envoy.type.v3.HttpStatus.code`.
#[derive(Clone, PartialEq, prost::Message)]
struct Code {
    #[prost(int32, tag = "1")]
    code: i32,
}

/// `DeniedHttpResponse.status`.
#[derive(Clone, PartialEq, prost::Message)]
struct DeniedStatus {
    #[prost(message, optional, tag = "1")]
    status: Option<Code>,
}

/// What the proxy would do with an answer.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Allow,
    Forbidden,
    Unauthenticated,
    OtherDenial,
}

fn classify(response: &Verdict) -> Outcome {
    if response.status.as_ref().is_none_or(|status| status.code == 0) {
        return Outcome::Allow;
    }
    let denied_status =
        response.denied_response.as_ref().and_then(|denied| denied.status.as_ref()).map(|status| status.code);
    match denied_status {
        // Without a status of its own, Envoy answers a denial with 403.
        Some(403) | None => Outcome::Forbidden,
        Some(401) => Outcome::Unauthenticated,
        Some(_) => Outcome::OtherDenial,
    }
}

#[derive(Debug, Default)]
struct Counts {
    allow: u64,
    forbidden_403: u64,
    unauthenticated_401: u64,
    other_denials: u64,
    errors: u64,
}

impl Counts {
    fn total(&self) -> u64 {
        self.allow + self.forbidden_403 + self.unauthenticated_401 + self.other_denials + self.errors
    }
}

/// The state every stream shares: the prebuilt requests, the window, what was recorded.
struct Run {
    requests: Vec<Bytes>,
    /// Every request is `requests[0]`; otherwise each is sent once.
    reuse: bool,
    next: Cell<usize>,
    window_start: Instant,
    /// Moves earlier when the requests run out.
    window_end: Cell<Instant>,
    ran_out: Cell<bool>,
    latency_ns: RefCell<Histogram<u64>>,
    counts: RefCell<Counts>,
    first_error: RefCell<Option<String>>,
}

impl Run {
    fn is_over(&self, now: Instant) -> bool {
        now >= self.window_end.get()
    }

    /// The next request to send, or `None` when every prebuilt one was sent (which closes the
    /// window at `now`).
    fn next_request(&self, now: Instant) -> Option<Bytes> {
        if self.reuse {
            return self.requests.first().cloned();
        }
        let index = self.next.get();
        if let Some(request) = self.requests.get(index) {
            self.next.set(index + 1);
            return Some(request.clone());
        }
        if !self.ran_out.replace(true) && now < self.window_end.get() {
            self.window_end.set(now.max(self.window_start));
        }
        None
    }

    /// Records one answer to a request started (or, in the open loop, scheduled) at `started`.
    fn record(&self, started: Instant, finished: Instant, outcome: Result<Outcome, String>) {
        if started < self.window_start || started >= self.window_end.get() {
            return;
        }
        let mut counts = self.counts.borrow_mut();
        match outcome {
            Ok(Outcome::Allow) => counts.allow += 1,
            Ok(Outcome::Forbidden) => counts.forbidden_403 += 1,
            Ok(Outcome::Unauthenticated) => counts.unauthenticated_401 += 1,
            Ok(Outcome::OtherDenial) => counts.other_denials += 1,
            Err(error) => {
                counts.errors += 1;
                self.first_error.borrow_mut().get_or_insert(error);
                return;
            }
        }
        let nanos = u64::try_from(finished.duration_since(started).as_nanos()).unwrap_or(u64::MAX);
        self.latency_ns.borrow_mut().saturating_record(nanos.clamp(1, MAX_LATENCY_NS));
    }
}

async fn check(client: &mut Grpc<Channel>, body: Bytes) -> Result<Outcome, String> {
    client.ready().await.map_err(|error| format!("connection: {error}"))?;
    let response = client
        .unary(tonic::Request::new(body), PathAndQuery::from_static(CHECK_PATH), PreEncodedCodec)
        .await
        .map_err(|status| format!("gRPC {:?}: {}", status.code(), status.message()))?;
    Ok(classify(response.get_ref()))
}

/// One stream of the closed loop: send, wait for the answer, send again.
async fn closed_loop_stream(mut client: Grpc<Channel>, run: Rc<Run>) {
    loop {
        let started = Instant::now();
        if run.is_over(started) {
            return;
        }
        let Some(body) = run.next_request(started) else { return };
        let outcome = check(&mut client, body).await;
        run.record(started, Instant::now(), outcome);
    }
}

/// Waits until `deadline`: the timer (1 ms granular) for the long part, then by yielding, so
/// that requests leave on time and not in bursts.
async fn wait_until(deadline: Instant) {
    const TIMER_SLACK: Duration = Duration::from_millis(2);
    loop {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        if deadline - now > TIMER_SLACK {
            tokio::time::sleep_until((deadline - TIMER_SLACK / 2).into()).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
}

/// The open loop: request `n` is due at `first + n / rate`, sent then whatever is still
/// unanswered, and its latency counts from that time (no coordinated omission).
async fn open_loop(clients: &[Grpc<Channel>], run: &Rc<Run>, rate: f64, first: Instant, max_in_flight: usize) {
    let in_flight = Rc::new(Cell::new(0usize));
    let mut clients_in_turn = clients.iter().cycle();
    for n in 0u64.. {
        let due = first + Duration::from_secs_f64(n as f64 / rate);
        if run.is_over(due) {
            break;
        }
        wait_until(due).await;
        if in_flight.get() >= max_in_flight {
            run.first_error.borrow_mut().get_or_insert(format!("over {max_in_flight} requests unanswered; stopped"));
            run.window_end.set(due.max(run.window_start));
            break;
        }
        let Some(body) = run.next_request(due) else { break };
        let Some(client) = clients_in_turn.next() else { break };
        let mut client = client.clone();
        let (run, in_flight) = (run.clone(), in_flight.clone());
        in_flight.set(in_flight.get() + 1);
        tokio::task::spawn_local(async move {
            let outcome = check(&mut client, body).await;
            run.record(due, Instant::now(), outcome);
            in_flight.set(in_flight.get() - 1);
        });
    }
    while in_flight.get() > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// User plus system CPU seconds of a process, all its threads.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses: state is the first, utime the
    // 12th, stime the 13th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / CLOCK_TICKS_PER_SEC)
}

/// CPU seconds of the server and of this generator at one moment.
#[derive(Debug, Clone, Copy)]
struct CpuSample {
    at: Instant,
    server: Option<f64>,
    generator: Option<f64>,
}

impl CpuSample {
    fn now(server_pid: Option<u32>) -> Self {
        Self {
            at: Instant::now(),
            server: server_pid.and_then(|pid| cpu_seconds(&pid.to_string())),
            generator: cpu_seconds("self"),
        }
    }
}

/// The requests to send, encoded once before any is timed.
fn prebuilt_requests(args: &Args) -> Result<Vec<Bytes>, Error> {
    let build = match args.request {
        RequestWeight::Light => light_check_request,
        RequestWeight::Heavy => check_request,
    };
    let encode = |token: Option<&str>| Bytes::from(build(&job_board_call(token)).encode_to_vec());
    if args.tokens == TokenMode::None {
        return Ok(vec![encode(None)]);
    }
    let file = args.token_file.as_ref().ok_or_else(|| format!("--tokens {} needs --token-file", args.tokens.name()))?;
    let text = std::fs::read_to_string(file).map_err(|error| format!("{}: {error}", file.display()))?;
    let wanted = if args.tokens.reuses() { 1 } else { args.max_tokens.unwrap_or(usize::MAX) };
    let requests = text
        .lines()
        .filter(|line| !line.is_empty())
        .take(wanted)
        .enumerate()
        .map(|(serial, token)| Ok(encode(Some(&args.tokens.token(token, serial)?))))
        .collect::<Result<Vec<Bytes>, Error>>()?;
    if requests.is_empty() {
        return Err(format!("{}: no tokens", file.display()).into());
    }
    Ok(requests)
}

async fn connect(target: SocketAddr, connections: usize) -> Result<Vec<Grpc<Channel>>, Error> {
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        // One Endpoint::connect is one HTTP/2 connection.
        let channel = Endpoint::from_shared(format!("http://{target}"))?.tcp_nodelay(true).connect().await?;
        clients.push(Grpc::new(channel));
    }
    Ok(clients)
}

async fn generate(args: &Args, requests: Vec<Bytes>) -> Result<Value, Error> {
    let clients = connect(args.target, args.connections.max(1)).await?;
    let prebuilt = requests.len();
    let request_bytes = requests.first().map_or(0, Bytes::len);
    let started = Instant::now();
    let window_start = started + Duration::from_secs_f64(args.warmup);
    let run = Rc::new(Run {
        requests,
        reuse: args.tokens.reuses(),
        next: Cell::new(0),
        window_start,
        window_end: Cell::new(window_start + Duration::from_secs_f64(args.duration)),
        ran_out: Cell::new(false),
        latency_ns: RefCell::new(Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)?),
        counts: RefCell::new(Counts::default()),
        first_error: RefCell::new(None),
    });
    let server_pid = args.server_pid;
    let at_window_start = tokio::task::spawn_local(async move {
        tokio::time::sleep_until(window_start.into()).await;
        CpuSample::now(server_pid)
    });
    match args.rate {
        Some(rate) => open_loop(&clients, &run, rate, started, args.max_in_flight).await,
        None => {
            let streams: Vec<_> = clients
                .iter()
                .flat_map(|client| std::iter::repeat_n(client, args.streams.max(1)))
                .map(|client| tokio::task::spawn_local(closed_loop_stream(client.clone(), run.clone())))
                .collect();
            for stream in streams {
                stream.await?;
            }
        }
    }
    let end = CpuSample::now(server_pid);
    let start = if at_window_start.is_finished() { Some(at_window_start.await?) } else { None };
    Ok(summary(args, &run, prebuilt, request_bytes, start, end))
}

fn summary(
    args: &Args,
    run: &Run,
    prebuilt: usize,
    request_bytes: usize,
    start: Option<CpuSample>,
    end: CpuSample,
) -> Value {
    let window = run.window_end.get().saturating_duration_since(run.window_start).as_secs_f64();
    let counts = run.counts.borrow();
    let answered = counts.total() - counts.errors;
    let histogram = run.latency_ns.borrow();
    let micros = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1e3;
    let cpu_span = start.map(|start| end.at.duration_since(start.at).as_secs_f64());
    let used = |pick: fn(&CpuSample) -> Option<f64>| Some(pick(&end)? - pick(&start?)?);
    let server_cpu = used(|sample| sample.server);
    let share = |seconds: Option<f64>| Some(seconds? / cpu_span?);
    json!({
        "label": args.label,
        "mode": if args.rate.is_some() { "open" } else { "closed" },
        "connections": args.connections,
        "streams_per_connection": if args.rate.is_some() { Value::Null } else { json!(args.streams) },
        "rate_target": args.rate,
        "tokens": args.tokens.name(),
        "request": format!("{:?}", args.request).to_lowercase(),
        "request_bytes": request_bytes,
        "requests_prebuilt": prebuilt,
        "ran_out_of_requests": run.ran_out.get(),
        "warmup_secs": args.warmup,
        "window_secs": window,
        "checks": counts.total(),
        "throughput_per_sec": if window > 0.0 { answered as f64 / window } else { 0.0 },
        "outcomes": {
            "allow": counts.allow,
            "forbidden_403": counts.forbidden_403,
            "unauthenticated_401": counts.unauthenticated_401,
            "other_denials": counts.other_denials,
            "errors": counts.errors,
        },
        "first_error": *run.first_error.borrow(),
        "latency_us": {
            "p50": micros(0.5),
            "p90": micros(0.9),
            "p99": micros(0.99),
            "p99_9": micros(0.999),
            "max": histogram.max() as f64 / 1e3,
            "mean": histogram.mean() / 1e3,
        },
        "server_cpu_secs": server_cpu,
        "server_cpu_us_per_check": server_cpu.filter(|_| answered > 0).map(|cpu| cpu * 1e6 / answered as f64),
        "server_cpu_share": share(server_cpu),
        "generator_cpu_share": share(used(|sample| sample.generator)),
    })
}

fn print_text(report: &Value) {
    let number = |pointer: &str| report.pointer(pointer).and_then(Value::as_f64).unwrap_or(f64::NAN);
    println!(
        "{} {} loop: {:.0} checks/s over {:.1} s ({} checks)",
        report["label"].as_str().unwrap_or_default(),
        report["mode"].as_str().unwrap_or_default(),
        number("/throughput_per_sec"),
        number("/window_secs"),
        report["checks"]
    );
    println!("  outcomes: {}", report["outcomes"]);
    println!(
        "  latency µs: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
        number("/latency_us/p50"),
        number("/latency_us/p90"),
        number("/latency_us/p99"),
        number("/latency_us/p99_9"),
        number("/latency_us/max")
    );
    println!(
        "  server CPU: {:.2} µs a check, {:.0}% of a core; generator {:.0}% of a core",
        number("/server_cpu_us_per_check"),
        number("/server_cpu_share") * 100.0,
        number("/generator_cpu_share") * 100.0
    );
    if let Some(error) = report["first_error"].as_str() {
        println!("  first error: {error}");
    }
}

fn main() -> Result<(), Error> {
    let args = Args::parse();
    let requests = prebuilt_requests(&args)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let report = tokio::task::LocalSet::new().block_on(&runtime, generate(&args, requests))?;
    match args.format {
        Format::Json => println!("{report}"),
        Format::Text => print_text(&report),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
    use envoy_types::pb::envoy::service::auth::v3::{CheckResponse, DeniedHttpResponse, OkHttpResponse};
    use envoy_types::pb::envoy::r#type::v3::HttpStatus;
    use envoy_types::pb::google::rpc;
    use jsonwebtoken::errors::ErrorKind;
    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{DecodingKey, Validation};

    use super::*;
    use fixtures::requests::JOB_BOARD_ROLES;
    use fixtures::tokens::{Alg, TokenSigner, jwks_json, keycloak_claims, unix_now};

    fn answer(code: i32, http_response: Option<HttpResponse>) -> Vec<u8> {
        let status = Some(rpc::Status { code, message: String::new(), details: Vec::new() });
        CheckResponse { status, http_response, dynamic_metadata: None }.encode_to_vec()
    }

    fn denied(status: Option<i32>) -> Option<HttpResponse> {
        let status = status.map(|code| HttpStatus { code });
        Some(HttpResponse::DeniedResponse(DeniedHttpResponse { status, ..DeniedHttpResponse::default() }))
    }

    #[test]
    fn answers_are_classified_as_envoy_would_act_on_them() {
        let ok = Some(HttpResponse::OkResponse(OkHttpResponse::default()));
        let cases = [
            (answer(0, ok), "allow"),
            (CheckResponse::default().encode_to_vec(), "allow"),
            (answer(7, denied(Some(403))), "403"),
            (answer(7, denied(None)), "403"),
            (answer(7, None), "403"),
            (answer(16, denied(Some(401))), "401"),
            (answer(3, denied(Some(400))), "other"),
        ];
        for (bytes, expected) in cases {
            let outcome = classify(&Verdict::decode(&bytes[..]).expect("decodes"));
            let name = match outcome {
                Outcome::Allow => "allow",
                Outcome::Forbidden => "403",
                Outcome::Unauthenticated => "401",
                Outcome::OtherDenial => "other",
            };
            assert_eq!(name, expected, "{bytes:?}");
        }
    }

    fn signed_token() -> String {
        let claims = keycloak_claims(7, JOB_BOARD_ROLES, unix_now());
        TokenSigner::new(Alg::Rs256).expect("the bench key").sign(&claims).expect("signs")
    }

    /// What jsonwebtoken makes of `token` with the bench JWKS: its error, if any.
    fn verification_error(token: &str) -> Option<ErrorKind> {
        let jwks: JwkSet = serde_json::from_str(&jwks_json().expect("the bench JWKS")).expect("a JWKS");
        let kid = jsonwebtoken::decode_header(token).expect("a header").kid.expect("a kid");
        let key = DecodingKey::from_jwk(jwks.find(&kid).expect("the key named")).expect("a key");
        let mut validation = Validation::new(Alg::Rs256.algorithm());
        validation.set_audience(&["jobs-api"]);
        jsonwebtoken::decode::<Value>(token, &key, &validation).err().map(|error| error.into_kind())
    }

    #[test]
    fn a_bad_signature_flood_token_is_refused_by_its_signature_alone() {
        let token = signed_token();
        let bad = TokenMode::BadDistinct.token(&token, 0).expect("altered");
        assert_eq!(verification_error(&token), None);
        assert_eq!(verification_error(&bad), Some(ErrorKind::InvalidSignature));
        assert_eq!(bad.len(), token.len());
        let (signed, _) = token.rsplit_once('.').expect("three parts");
        assert!(bad.starts_with(signed) && bad != token, "only the signature differs");
        assert_eq!(TokenMode::BadReused.token(&token, 0).expect("altered"), bad);
    }

    #[test]
    fn an_unknown_key_flood_token_names_a_distinct_kid_no_issuer_has() {
        let token = signed_token();
        let unknown = [0, 1].map(|serial| TokenMode::UnknownKey.token(&token, serial).expect("forged"));
        let jwks: JwkSet = serde_json::from_str(&jwks_json().expect("the bench JWKS")).expect("a JWKS");
        for (serial, forged) in unknown.iter().enumerate() {
            let header = jsonwebtoken::decode_header(forged).expect("a header");
            assert_eq!(header.kid.as_deref(), Some(format!("unknown-{serial}").as_str()));
            assert!(jwks.find(&format!("unknown-{serial}")).is_none());
            assert_eq!(forged.split_once('.').map(|(_, rest)| rest), token.split_once('.').map(|(_, rest)| rest));
        }
        assert_ne!(unknown[0], unknown[1]);
    }

    #[test]
    fn the_good_token_modes_send_the_file_s_tokens_as_they_are() {
        let token = signed_token();
        for mode in [TokenMode::Reuse, TokenMode::Distinct] {
            assert_eq!(mode.token(&token, 3).expect("as is"), token);
        }
    }
}
