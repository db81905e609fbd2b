//! Runs the golden cases in `tests/golden/*.yaml` — policies, requests, expected decisions or errors — against the core.
//!
//! A file holds one or more YAML documents, each a policy set with its settings and cases; a
//! case may override some settings for itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::cli::RequestFile;
use crate::config::ConfigError;
use crate::config::load::{load_policies, load_policy_text};
use crate::core::Snapshot;
use crate::core::authn::{AuthnContext, NoRemoteKeys};
use crate::core::identity::Identity;
use crate::core::test_util::sign;
use crate::settings::Settings;

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
    /// Where `token` is sent instead of `Authorization: Bearer`.
    #[serde(default)]
    token_in: Option<TokenPlace>,
    expect: Expectation,
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
}

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

fn snapshot_for(file: &GoldenFile, label: &str, overrides: &Map<String, Value>) -> Result<Snapshot, Vec<ConfigError>> {
    let as_error = |message: String| vec![ConfigError { file: label.into(), line: 0, message }];
    let mut settings = file.settings.clone().unwrap_or_default();
    if !overrides.is_empty() {
        let mut merged = serde_json::to_value(&settings).map_err(|error| as_error(error.to_string()))?;
        if let Value::Object(fields) = &mut merged {
            fields.extend(overrides.clone());
        }
        settings = serde_json::from_value(merged).map_err(|error| as_error(error.to_string()))?;
    }
    let mut loaded = load_policy_text(label, &file.policies)?;
    if !file.policy_paths.is_empty() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let paths: Vec<PathBuf> = file.policy_paths.iter().map(|path| root.join(path)).collect();
        let from_files = load_policies(&paths)?;
        loaded.policies.extend(from_files.policies);
        loaded.authn.extend(from_files.authn);
    }
    let workloads = settings.workload_table().map_err(|error| as_error(error.to_string()))?;
    Ok(Snapshot::new(loaded.policies, loaded.authn, workloads, settings.engine_options(), &settings.root_namespace))
}

/// The time golden tokens are checked at, seconds since the epoch.
const GOLDEN_NOW: u64 = 1_800_000_000;

fn signed_token(claims: &Map<String, Value>) -> String {
    let mut claims = claims.clone();
    claims.entry("iat").or_insert(GOLDEN_NOW.into());
    claims.entry("exp").or_insert((GOLDEN_NOW + 300).into());
    sign("rsa-2048.pem", Algorithm::RS256, "golden", &Value::Object(claims))
}

fn run_case(snapshot: &Snapshot, case: &Case) -> Result<(), String> {
    let mut headers = case.request.header_entries();
    let (decision, explanation) = if let Some(claims) = &case.identity {
        let space_delimited: Arc<[Box<str>]> = Arc::from(vec![Box::from("scope"), Box::from("permission")]);
        let identity = Identity::for_tests(claims, snapshot.kept_claims(), space_delimited);
        let request = case.request.request(&headers);
        (snapshot.decide(&request, Some(&identity)), snapshot.explain_as(&request, Some(&identity)))
    } else {
        let mut path_with_token = None;
        if let Some(claims) = &case.token {
            let token = signed_token(claims);
            match &case.token_in {
                None => headers.push(("authorization".into(), format!("Bearer {token}"))),
                Some(TokenPlace::Header { name, prefix }) => headers.push((name.clone(), format!("{prefix}{token}"))),
                Some(TokenPlace::Cookie(name)) => headers.push(("cookie".into(), format!("{name}={token}"))),
                Some(TokenPlace::Param(name)) => {
                    let separator = if case.request.path.contains('?') { '&' } else { '?' };
                    path_with_token = Some(format!("{}{separator}{name}={token}", case.request.path));
                }
            }
        }
        let context = AuthnContext { keys: &NoRemoteKeys, now: GOLDEN_NOW, clock_skew_secs: 60, max_token_bytes: 8192 };
        let mut request = case.request.request(&headers);
        if let (Some(path), Some(http)) = (&path_with_token, request.http.as_mut()) {
            http.path = path;
        }
        (snapshot.check(&request, &context), snapshot.explain(&request, &context))
    };
    // The explanation walks the same predicates its own way: it must arrive at the same verdict.
    if (explanation.reason, &explanation.policy) != (decision.reason, &decision.policy) {
        return Err(format!(
            "the explanation disagrees with the decision ({:?}, {:?}):\n{explanation}",
            decision.reason, decision.policy
        ));
    }
    let verdict = |allow: bool| if allow { "allow" } else { "deny" }.to_string();
    let got = Expectation {
        decision: verdict(decision.is_allow()),
        reason: decision.reason.as_str().into(),
        policy: decision.policy.as_ref().map(ToString::to_string),
        audit: decision.audit.as_ref().map(ToString::to_string),
        dry_run: decision.dry_run.as_ref().map(|outcome| verdict(outcome.would_allow)),
    };
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

#[test]
fn golden_cases_decide_as_expected_and_their_explanations_agree() {
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
            let shared = if file.cases.is_empty() { None } else { Some(snapshot_for(file, &label, &Map::new())) };
            for case in &file.cases {
                count += 1;
                let own = (!case.settings.is_empty()).then(|| snapshot_for(file, &label, &case.settings));
                match own.as_ref().or(shared.as_ref()) {
                    Some(Ok(snapshot)) => {
                        if let Err(message) = run_case(snapshot, case) {
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
