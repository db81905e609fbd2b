//! Runs the golden cases in `tests/golden/*.yaml` — policies, requests, expected decisions or errors — through the engine, as the gRPC door does.
//!
//! A file holds one or more YAML documents, each a policy set with its settings and cases; a
//! case may override some settings for itself. Remote keys come from a real key store, fetched
//! over loopback from the JWKS endpoints a document declares.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::cli::RequestFile;
use crate::config::ConfigError;
use crate::config::load::{load_policies, load_policy_text};
use crate::core::data::Data;
use crate::core::identity::Identity;
use crate::core::test_util::{jwks, sign};
use crate::core::{Decision, Snapshot};
use crate::data::Store;
use crate::doors::denial::Denial;
use crate::engine::{Engine, Outcome, Received};
use crate::identity::jwks::KeyStore;
use crate::identity::token_cache::VerifiedTokenCache;
use crate::settings::Settings;
use crate::telemetry::{Door, Metrics};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GoldenFile {
    /// Inline policy YAML.
    #[serde(default)]
    policies: String,
    /// Policy paths relative to the repository root, loaded as `serve` would.
    #[serde(default)]
    policy_paths: Vec<PathBuf>,
    #[serde(default)]
    settings: Option<Settings>,
    /// JWKS endpoints served over loopback while the document runs; `policies` names one
    /// as `${jwks_uri:NAME}`.
    #[serde(default)]
    jwks_servers: Vec<JwksEndpoint>,
    /// The documents of each data source the policies declare, loaded before any case runs;
    /// a source left out is not loaded.
    #[serde(default)]
    data: BTreeMap<String, Vec<Value>>,
    #[serde(default)]
    cases: Vec<Case>,
    #[serde(default)]
    invalid: Vec<InvalidCase>,
    #[serde(default)]
    skipped: Vec<SkippedCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    /// Settings keys that replace the file's for this case alone.
    #[serde(default)]
    settings: Map<String, Value>,
    request: RequestFile,
    /// Claims of a verified token the request carries; policies are judged alone. Without
    /// it, the whole check runs, authentication included.
    #[serde(default)]
    identity: Option<Map<String, Value>>,
    /// Claims of a token signed with `tests/keys/rsa-2048.pem` (kid `golden`), sent as
    /// `Authorization: Bearer`. `iat` and `exp` are filled in when absent.
    #[serde(default)]
    token: Option<Map<String, Value>>,
    /// The `kid` the token names instead of `golden`.
    #[serde(default)]
    token_kid: Option<String>,
    /// The key of `tests/keys/` the token is signed with (RS256) instead of `rsa-2048.pem`.
    #[serde(default)]
    token_key: Option<String>,
    /// Where `token` is sent instead of `Authorization: Bearer`.
    #[serde(default)]
    token_in: Option<TokenPlace>,
    /// More tokens the request carries, signed as `token` is, each where it says.
    #[serde(default)]
    more_tokens: Vec<MoreToken>,
    expect: Expectation,
}

/// One more token a case sends: its claims, and where.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MoreToken {
    claims: Map<String, Value>,
    token_in: TokenPlace,
}

/// A place a request carries its token: `{header: {name: x-token, prefix: "Token "}}`,
/// `{param: access_token}` or `{cookie: session}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum TokenPlace {
    Header { name: String, prefix: String },
    Param(String),
    Cookie(String),
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Expectation {
    decision: String,
    reason: String,
    /// `ns[..]-policy[..]-rule[..]`; omitted means no policy decided.
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    audit: Option<String>,
    /// `allow` or `deny`: what the dry-run policies would decide; omitted means none apply.
    #[serde(default)]
    dry_run: Option<String>,
    /// The status the client gets; omitted means not checked.
    #[serde(default)]
    status: Option<u16>,
    /// The body of the denial the client gets; omitted means not checked.
    #[serde(default)]
    body: Option<String>,
    /// How many times the case made the key store fetch from the document's JWKS endpoints;
    /// omitted means not checked.
    #[serde(default)]
    jwks_fetches: Option<usize>,
    /// Every header the answer sets, and its value; omitted means not checked.
    #[serde(default)]
    headers_set: Option<BTreeMap<String, String>>,
    /// Every header the answer removes; omitted means not checked.
    #[serde(default)]
    headers_removed: Option<BTreeSet<String>>,
}

/// A JWKS endpoint on loopback: `{name: idp}` serves the public key of
/// `tests/keys/rsa-2048.pem` under kid `golden`; `{name: partner, key: rsa-2048-other.pem}`
/// another RSA key of `tests/keys/` under that kid; `{name: down, status: 503}` answers that
/// status with an empty body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JwksEndpoint {
    name: String,
    #[serde(default = "JwksEndpoint::ok")]
    status: u16,
    #[serde(default = "JwksEndpoint::golden_key")]
    key: String,
}

impl JwksEndpoint {
    fn ok() -> u16 {
        200
    }

    fn golden_key() -> String {
        GOLDEN_KEY.into()
    }
}

/// The key of `tests/keys/` that signs the cases' tokens and that JWKS endpoints serve, unless
/// they name another.
const GOLDEN_KEY: &str = "rsa-2048.pem";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InvalidCase {
    name: String,
    policies: String,
    /// `LINE: text` — an error at that line of `policies` containing the text.
    errors: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SkippedCase {
    name: String,
    policies: String,
    /// `LINE: apiVersion/kind: reason` — every document of `policies` that is skipped.
    skipped: Vec<String>,
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// The JWKS endpoints of one document, on one loopback port with a path per name; counts the
/// requests it answers.
struct JwksServer {
    address: SocketAddr,
    fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(endpoints: &[JwksEndpoint]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds loopback");
        let address = listener.local_addr().expect("a bound address");
        let answers: Arc<HashMap<String, (u16, String)>> = Arc::new(
            endpoints
                .iter()
                .map(|endpoint| {
                    let body = if endpoint.status == 200 {
                        jwks(&[(endpoint.key.as_str(), Algorithm::RS256, "golden")])
                    } else {
                        String::new()
                    };
                    (format!("/{}", endpoint.name), (endpoint.status, body))
                })
                .collect(),
        );
        let fetches = Arc::new(AtomicUsize::new(0));
        let counter = fetches.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (answers, counter) = (answers.clone(), counter.clone());
                tokio::spawn(async move {
                    let path = read_request_path(&mut stream).await;
                    let (status, body) =
                        answers.get(&path).map_or((404, ""), |(status, body)| (*status, body.as_str()));
                    // Counted before the answer leaves, so a caller that has it sees the count.
                    counter.fetch_add(1, Ordering::SeqCst);
                    let answer = format!(
                        "HTTP/1.1 {status} Golden\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                });
            }
        });
        Self { address, fetches, task }
    }

    fn uri(&self, name: &str) -> String {
        format!("http://{}/{name}", self.address)
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The path of the request line, once the request's head has arrived (empty if it never does).
async fn read_request_path(stream: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(read) => head.extend_from_slice(&chunk[..read]),
        }
    }
    String::from_utf8_lossy(&head).split(' ').nth(1).unwrap_or_default().to_string()
}

/// What a document's cases are judged by: the engine, with its own key store, and a twin of
/// its policy set for the explanation and the `identity:` shortcut.
struct Judge {
    engine: Engine,
    snapshot: Snapshot,
    /// The data the engine's lookups read, for the twin.
    data: Data,
}

async fn judge_for(
    file: &GoldenFile,
    label: &str,
    overrides: &Map<String, Value>,
    server: Option<&JwksServer>,
) -> Result<Judge, Vec<ConfigError>> {
    let as_error = |message: String| vec![ConfigError { file: label.into(), line: 0, message }];
    let mut settings = file.settings.clone().unwrap_or_default();
    if !overrides.is_empty() {
        let mut merged = serde_json::to_value(&settings).map_err(|error| as_error(error.to_string()))?;
        if let Value::Object(fields) = &mut merged {
            fields.extend(overrides.clone());
        }
        settings = serde_json::from_value(merged).map_err(|error| as_error(error.to_string()))?;
    }
    let mut policies = file.policies.clone();
    if let Some(server) = server {
        for endpoint in &file.jwks_servers {
            policies = policies.replace(&format!("${{jwks_uri:{}}}", endpoint.name), &server.uri(&endpoint.name));
        }
    }
    let compile = || -> Result<(Snapshot, Data), Vec<ConfigError>> {
        let mut loaded = load_policy_text(label, &policies)?;
        if !file.policy_paths.is_empty() {
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            let paths: Vec<PathBuf> = file.policy_paths.iter().map(|path| root.join(path)).collect();
            let from_files = load_policies(&paths)?;
            loaded.policies.extend(from_files.policies);
            loaded.authn.extend(from_files.authn);
        }
        let workloads = settings.workload_table().map_err(|error| as_error(error.to_string()))?;
        let data = crate::policy_tests::data_of(&loaded.data_sources, &file.data).map_err(as_error)?;
        let sources = loaded.snapshot_data_sources();
        let options = settings.engine_options();
        let root = &settings.root_namespace;
        Ok((Snapshot::with_data_sources(loaded.policies, loaded.authn, workloads, options, root, sources), data))
    };
    let ((snapshot, data), (twin, _)) = (compile()?, compile()?);
    // As `serve` starts: the key store knows the set's remote issuers and fetches them once.
    let metrics = Arc::new(Metrics::new());
    let cache = Arc::new(VerifiedTokenCache::new(settings.token_cache_entries, metrics.clone()));
    let keys = Arc::new(KeyStore::new(settings.fetch_limits(), metrics.clone(), cache.clone()).expect("a key store"));
    let issuers = keys.add_issuers(snapshot.remote_issuers());
    keys.fetch(&issuers).await;
    let engine = Engine::new(snapshot, settings, metrics, keys, cache).with_data(Arc::new(Store::from(data.clone())));
    Ok(Judge { engine, snapshot: twin, data })
}

fn signed_token(claims: &Map<String, Value>, key: &str, kid: &str) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs());
    let mut claims = claims.clone();
    claims.entry("iat").or_insert(now.into());
    claims.entry("exp").or_insert((now + 300).into());
    sign(key, Algorithm::RS256, kid, &Value::Object(claims))
}

/// The status and body the client gets for `decision`, as the gRPC door writes them.
fn answer_to_client(decision: &Decision) -> (u16, String) {
    Denial::of(decision).map_or((200, String::new()), |denial| (denial.status, denial.body.to_string()))
}

/// What a case observed, in the terms of its expectation: the fields the expectation leaves
/// out are left out.
fn observed(decision: &Decision, allow: bool, fetches: usize, expect: &Expectation) -> Expectation {
    let verdict = |allow: bool| if allow { "allow" } else { "deny" }.to_string();
    let (status, body) = answer_to_client(decision);
    Expectation {
        decision: verdict(allow),
        reason: decision.reason.as_str().into(),
        policy: decision.policy.as_ref().map(ToString::to_string),
        audit: decision.audit.as_ref().map(ToString::to_string),
        dry_run: decision.dry_run.as_ref().map(|outcome| verdict(outcome.would_allow)),
        status: expect.status.and(Some(status)),
        body: expect.body.as_ref().and(Some(body)),
        jwks_fetches: expect.jwks_fetches.and(Some(fetches)),
        headers_set: expect
            .headers_set
            .as_ref()
            .map(|_| decision.headers_to_set.iter().map(|(name, value)| (name.to_string(), value.clone())).collect()),
        headers_removed: expect
            .headers_removed
            .as_ref()
            .map(|_| decision.headers_to_remove.iter().map(ToString::to_string).collect()),
    }
}

/// Sends `token` where `place` says: a header, a cookie, or a query parameter of `path`.
fn place_token(token: &str, place: &TokenPlace, headers: &mut Vec<(String, String)>, path: &mut String) {
    match place {
        TokenPlace::Header { name, prefix } => headers.push((name.clone(), format!("{prefix}{token}"))),
        TokenPlace::Cookie(name) => headers.push(("cookie".into(), format!("{name}={token}"))),
        TokenPlace::Param(name) => {
            let separator = if path.contains('?') { '&' } else { '?' };
            path.push_str(&format!("{separator}{name}={token}"));
        }
    }
}

async fn run_case(judge: &Judge, server: Option<&JwksServer>, case: &Case) -> Result<(), String> {
    let fetches_before = server.map_or(0, JwksServer::fetches);
    let mut headers = case.request.header_entries();
    let (decision, allow, explanation) = if let Some(claims) = &case.identity {
        let space_delimited: Arc<[Box<str>]> = Arc::from(vec![Box::from("scope"), Box::from("permission")]);
        let identity = Identity::for_tests(claims, judge.snapshot.kept_claims(), space_delimited);
        let request = case.request.request(&headers);
        let decision = judge.snapshot.decide(&request, Some(&identity), &judge.data);
        let allow = decision.is_allow();
        (decision, allow, judge.snapshot.explain_as(&request, Some(&identity), &judge.data))
    } else {
        let mut path = case.request.path.clone();
        if let Some(claims) = &case.token {
            let key = case.token_key.as_deref().unwrap_or(GOLDEN_KEY);
            let token = signed_token(claims, key, case.token_kid.as_deref().unwrap_or("golden"));
            let bearer = TokenPlace::Header { name: "authorization".into(), prefix: "Bearer ".into() };
            place_token(&token, case.token_in.as_ref().unwrap_or(&bearer), &mut headers, &mut path);
        }
        for more in &case.more_tokens {
            place_token(&signed_token(&more.claims, GOLDEN_KEY, "golden"), &more.token_in, &mut headers, &mut path);
        }
        let mut request = case.request.request(&headers);
        if let Some(http) = request.http.as_mut() {
            http.path = &path;
        }
        let Outcome { decision, allow } = judge.engine.check(Door::Grpc, Received::Judgeable(&request)).await;
        // After the engine's refetches, the explanation sees the keys its last decision saw.
        let context = judge.engine.settings().authn_context(&**judge.engine.keys());
        (decision, allow, judge.snapshot.explain_with_data(&request, &context, &judge.data))
    };
    // The explanation walks the same predicates its own way: it must arrive at the same verdict.
    if (explanation.reason, &explanation.policy) != (decision.reason, &decision.policy) {
        return Err(format!(
            "the explanation disagrees with the decision ({:?}, {:?}):\n{explanation}",
            decision.reason, decision.policy
        ));
    }
    let fetches = server.map_or(0, JwksServer::fetches) - fetches_before;
    let got = observed(&decision, allow, fetches, &case.expect);
    if got == case.expect { Ok(()) } else { Err(format!("expected {:?}\n      got {:?}", case.expect, got)) }
}

fn run_invalid(case: &InvalidCase) -> Result<(), String> {
    let errors = match load_policy_text("case.yaml", &case.policies) {
        Ok(_) => return Err("loaded without errors".into()),
        Err(errors) => errors,
    };
    let rendered: Vec<String> = errors.iter().map(|error| format!("{}: {}", error.line, error.message)).collect();
    let missing: Vec<&String> = case
        .errors
        .iter()
        .filter(|expected| {
            let (line, text) = expected.split_once(": ").unwrap_or(("", expected));
            !rendered.iter().any(|got| got.starts_with(&format!("{line}: ")) && got.contains(text))
        })
        .collect();
    if missing.is_empty() && rendered.len() == case.errors.len() {
        Ok(())
    } else {
        Err(format!("expected errors {:?}\n      got {rendered:?}", case.errors))
    }
}

fn run_skipped(case: &SkippedCase) -> Result<(), String> {
    let loaded = load_policy_text("case.yaml", &case.policies).map_err(|errors| format!("errors: {errors:?}"))?;
    let rendered: Vec<String> = loaded
        .skipped
        .iter()
        .map(|skipped| {
            let line = skipped.location.rsplit_once(':').map_or("", |(_, line)| line);
            format!("{line}: {}: {}", skipped.kind, skipped.reason)
        })
        .collect();
    if rendered == case.skipped {
        Ok(())
    } else {
        Err(format!("expected skipped {:?}\n      got {rendered:?}", case.skipped))
    }
}

#[tokio::test]
async fn golden_cases_decide_as_expected_and_their_explanations_agree() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .expect("tests/golden exists")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no golden files found");
    let mut failures = Vec::new();
    let mut count = 0;
    for path in &files {
        let label = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
        let text = std::fs::read_to_string(path).expect("readable golden file");
        let documents: Vec<GoldenFile> =
            serde_saphyr::from_multiple(&text).unwrap_or_else(|error| panic!("{label}: {error}"));
        for file in &documents {
            let server =
                if file.jwks_servers.is_empty() { None } else { Some(JwksServer::start(&file.jwks_servers).await) };
            let server = server.as_ref();
            let shared =
                if file.cases.is_empty() { None } else { Some(judge_for(file, &label, &Map::new(), server).await) };
            for case in &file.cases {
                count += 1;
                let own = if case.settings.is_empty() {
                    None
                } else {
                    Some(judge_for(file, &label, &case.settings, server).await)
                };
                match own.as_ref().or(shared.as_ref()) {
                    Some(Ok(judge)) => {
                        if let Err(message) = run_case(judge, server, case).await {
                            failures.push(format!("{label}: {}\n      {message}", case.name));
                        }
                    }
                    Some(Err(errors)) => {
                        failures.push(format!("{label}: {}: policies do not load: {errors:?}", case.name))
                    }
                    None => {}
                }
            }
            for case in &file.invalid {
                count += 1;
                if let Err(message) = run_invalid(case) {
                    failures.push(format!("{label}: {}\n      {message}", case.name));
                }
            }
            for case in &file.skipped {
                count += 1;
                if let Err(message) = run_skipped(case) {
                    failures.push(format!("{label}: {}\n      {message}", case.name));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} of {count} golden cases failed:\n{}", failures.len(), failures.join("\n"));
    assert!(count > 100, "only {count} golden cases ran");
}
