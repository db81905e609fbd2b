//! `portcullis test`: policy test files — requests, tokens signed with keys the file declares, the decisions expected — run against a policy set, for CI; never fetches keys.
//!
//! An issuer a test file declares is trusted through its key for the run: every JWT rule of
//! that issuer in the policies verifies with the declared key instead of its own `jwks`,
//! `jwksUri` or discovery. Nothing is fetched: the rules of other issuers keep remote keys they
//! never get, and refuse their tokens. Data sources are not read either: a file gives each
//! source the documents its cases see (`data: {users: [...]}`); a source it leaves out is
//! not loaded, and lookups into it fail closed.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;
use serde_json::{Map, Value};
use serde_saphyr::Spanned;

use crate::cli::RequestFile;
use crate::config::{ConfigError, describe_yaml_error, yaml_options};
use crate::core::authn::{JwtRule, KeySource, NoRemoteKeys};
use crate::core::data::{Change, Data, Record, Table};
use crate::core::jwt::KeySet;
use crate::core::{Decision, Reason, Snapshot};
use crate::data::Definition;
use crate::doors::denial::Denial;
use crate::policy_set::build_snapshot_with;
use crate::settings::Settings;

/// How long the tokens of a test file are valid from the run's start when their claims set no `exp`.
const TOKEN_LIFETIME_SECS: u64 = 300;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(default)]
    issuers: Vec<Spanned<IssuerKey>>,
    /// The documents of each data source, as its feed would give them.
    #[serde(default)]
    data: Option<Spanned<BTreeMap<String, Vec<Value>>>>,
    cases: Vec<Spanned<Case>>,
}

/// An issuer whose tokens the cases carry, and the private key that signs them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuerKey {
    issuer: String,
    /// A private key in PEM (RSA, EC P-256 or P-384, Ed25519), relative to the test file.
    #[serde(default)]
    pem: Option<PathBuf>,
    /// A private key as a JWK, `d` and all.
    #[serde(default)]
    jwk: Option<Map<String, Value>>,
    #[serde(default)]
    kid: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    request: RequestFile,
    /// Claims of a token sent as `Authorization: Bearer`, signed with the key of the issuer
    /// its `iss` names (the first issuer's when absent); `iat` and `exp` filled in when absent.
    #[serde(default)]
    token: Option<Map<String, Value>>,
    expect: Expectation,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expectation {
    decision: Verdict,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    reason: Option<String>,
    /// The rule that decided, `ns[NS]-policy[NAME]-rule[N]`.
    #[serde(default)]
    policy: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Verdict {
    Allow,
    Deny,
}

/// A declared issuer, ready: it signs the cases' tokens and its rules trust its public half.
struct SigningKey {
    issuer: String,
    kid: String,
    algorithm: Algorithm,
    private: EncodingKey,
    public: Arc<KeySet>,
    line: u64,
}

/// A case, its token signed.
struct ReadyCase {
    name: String,
    request: RequestFile,
    token: Option<String>,
    expect: Expectation,
}

/// A test file read and checked whole.
struct Suite {
    path: PathBuf,
    keys: Vec<SigningKey>,
    /// The line of `data`, and each source's documents.
    data: Option<(u64, BTreeMap<String, Vec<Value>>)>,
    cases: Vec<ReadyCase>,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestOutcome {
    /// Every case passed.
    Passed,
    /// A case failed.
    Failed,
    /// A test file or the policies could not be read; nothing ran.
    Broken,
}

/// `portcullis test`: every case of every file, one line each, then a summary. Broken files
/// are reported (`file:line: message`, every problem) before any case runs.
pub fn run(settings: &Settings, files: &[PathBuf]) -> TestOutcome {
    // Tokens are signed and checked at the same time: the run's start.
    let context = settings.authn_context(&NoRemoteKeys);
    let mut suites = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        match read_suite(file, context.now) {
            Ok(suite) => suites.push(suite),
            Err(found) => errors.extend(found),
        }
    }
    let mut snapshots = Vec::new();
    for suite in &suites {
        match snapshot_for(settings, suite) {
            Ok(snapshot) => snapshots.push(snapshot),
            Err(found) => errors.extend(found),
        }
    }
    if !errors.is_empty() {
        for error in &errors {
            eprintln!("{error}");
        }
        return TestOutcome::Broken;
    }
    let (mut passed, mut failed) = (0, 0);
    let mut out = std::io::stdout().lock();
    for (suite, (snapshot, data)) in suites.iter().zip(&snapshots) {
        for case in &suite.cases {
            let mut headers = case.request.header_entries();
            if let Some(token) = &case.token {
                headers.push(("authorization".into(), format!("Bearer {token}")));
            }
            let request = case.request.request(&headers);
            let decision = snapshot.check_with_data(&request, &context, data);
            let misses = misses(&case.expect, &decision);
            if misses.is_empty() {
                passed += 1;
                let _ = writeln!(out, "PASS {}", case.name);
            } else {
                failed += 1;
                let _ = writeln!(out, "FAIL {}", case.name);
                for miss in misses {
                    let _ = writeln!(out, "  {miss}");
                }
                for line in snapshot.explain_with_data(&request, &context, data).to_string().lines() {
                    let _ = writeln!(out, "  {line}");
                }
            }
        }
    }
    let _ = writeln!(out, "{passed} passed, {failed} failed");
    if failed == 0 { TestOutcome::Passed } else { TestOutcome::Failed }
}

/// What of the expectation the decision does not meet, one line each.
fn misses(expect: &Expectation, decision: &Decision) -> Vec<String> {
    let verdict = if decision.is_allow() { Verdict::Allow } else { Verdict::Deny };
    let shown = |verdict: Verdict| if verdict == Verdict::Allow { "allow" } else { "deny" };
    let policy = decision.policy.as_ref().map(ToString::to_string);
    let mut misses = Vec::new();
    if expect.decision != verdict {
        misses.push(format!("decision: expected {}, got {}", shown(expect.decision), shown(verdict)));
    }
    let got_status = Denial::status_of(decision);
    if let Some(status) = expect.status.filter(|&status| status != got_status) {
        misses.push(format!("status: expected {status}, got {got_status}"));
    }
    if let Some(reason) = expect.reason.as_deref().filter(|&reason| reason != decision.reason.as_str()) {
        misses.push(format!("reason: expected {reason}, got {}", decision.reason.as_str()));
    }
    if let Some(expected) = expect.policy.as_ref().filter(|&expected| Some(expected) != policy.as_ref()) {
        misses.push(format!("policy: expected {expected}, got {}", policy.as_deref().unwrap_or("none")));
    }
    misses
}

/// Each source's table holding `documents`, as their feeds would load them; a source the
/// policies do not declare, a document that is not a record, or one over the limits is an error.
pub(crate) fn data_of(sources: &[Definition], documents: &BTreeMap<String, Vec<Value>>) -> Result<Data, String> {
    let mut data = Data::default();
    for (name, documents) in documents {
        let source = sources
            .iter()
            .find(|source| *source.name == **name)
            .ok_or(format!("data: the policies declare no data source `{name}`"))?;
        let mut changes = Vec::with_capacity(documents.len());
        for (index, document) in documents.iter().enumerate() {
            let (key, record) = Record::from_document(&source.shape, document)
                .map_err(|error| format!("data.{name}[{index}]: {error}"))?;
            changes.push(Change::Put(key, Arc::new(record)));
        }
        let table = Table::new(source.shape.clone()).apply(changes).map_err(|error| format!("data.{name}: {error}"))?;
        data = data.with_table(source.name.clone(), Arc::new(table));
    }
    Ok(data)
}

/// The policy set with every declared issuer's rules trusting its key, and the data its
/// cases see; an issuer no rule names is an error, as a misspelled issuer would leave every
/// case's token unverified.
fn snapshot_for(settings: &Settings, suite: &Suite) -> Result<(Snapshot, Data), Vec<ConfigError>> {
    let mut trusted: HashSet<&str> = HashSet::new();
    let built = build_snapshot_with(settings, |loaded| {
        for policy in &mut loaded.authn {
            policy.rules = policy
                .rules
                .iter()
                .map(|rule| match suite.keys.iter().find(|key| rule.issuer.as_deref() == Some(key.issuer.as_str())) {
                    Some(key) => {
                        trusted.insert(&key.issuer);
                        Arc::new(JwtRule { keys: KeySource::Inline(key.public.clone()), ..(**rule).clone() })
                    }
                    None => rule.clone(),
                })
                .collect();
        }
    });
    let (snapshot, loaded) = built.map_err(|error| vec![located(&suite.path, 0, error.to_string())])?;
    let data = match &suite.data {
        Some((line, documents)) => {
            data_of(&loaded.data_sources, documents).map_err(|message| vec![located(&suite.path, *line, message)])?
        }
        None => Data::default(),
    };
    let untrusted: Vec<ConfigError> = suite
        .keys
        .iter()
        .filter(|key| !trusted.contains(key.issuer.as_str()))
        .map(|key| {
            let message = format!("issuer `{}`: no RequestAuthentication rule of the policies has it", key.issuer);
            located(&suite.path, key.line, message)
        })
        .collect();
    if untrusted.is_empty() { Ok((snapshot, data)) } else { Err(untrusted) }
}

fn located(path: &Path, line: u64, message: String) -> ConfigError {
    ConfigError { file: path.display().to_string().into(), line, message }
}

/// Reads a test file: its keys loaded, its tokens signed at `now`; every problem found.
fn read_suite(path: &Path, now: u64) -> Result<Suite, Vec<ConfigError>> {
    let text =
        std::fs::read_to_string(path).map_err(|error| vec![located(path, 0, format!("cannot read: {error}"))])?;
    let file: TestFile = serde_saphyr::from_str_with_options(&text, yaml_options()).map_err(|error| {
        let (line, message) = describe_yaml_error(&error);
        vec![located(path, line, message)]
    })?;
    let directory = path.parent().unwrap_or(Path::new("."));
    let mut errors = Vec::new();
    let mut keys = Vec::new();
    for (index, spanned) in file.issuers.into_iter().enumerate() {
        let line = spanned.referenced.line();
        let issuer = spanned.value;
        match signing_key(&issuer, index, directory) {
            Ok((algorithm, private, public)) => keys.push(SigningKey {
                kid: issuer.kid.unwrap_or_else(|| format!("portcullis-test-{index}")),
                issuer: issuer.issuer,
                algorithm,
                private,
                public,
                line,
            }),
            Err(message) => errors.push(located(path, line, format!("issuers[{index}]: {message}"))),
        }
    }
    if file.cases.is_empty() {
        errors.push(located(path, 0, "no cases".into()));
    }
    let mut cases = Vec::new();
    for spanned in file.cases {
        let line = spanned.referenced.line();
        let case = spanned.value;
        let mut problems = Vec::new();
        if let Some(reason) = case.expect.reason.as_deref()
            && !Reason::ALL.iter().any(|known| known.as_str() == reason)
        {
            let known: Vec<&str> = Reason::ALL.iter().map(|known| known.as_str()).collect();
            problems.push(format!("unknown reason `{reason}`; known reasons: {}", known.join(", ")));
        }
        let token = match case.token.as_ref().map(|claims| signed_token(claims, &keys, now)) {
            Some(Err(message)) => {
                problems.push(message);
                None
            }
            Some(Ok(token)) => Some(token),
            None => None,
        };
        if problems.is_empty() {
            cases.push(ReadyCase { name: case.name, request: case.request, token, expect: case.expect });
        } else {
            let name = &case.name;
            errors.extend(problems.into_iter().map(|problem| located(path, line, format!("case `{name}`: {problem}"))));
        }
    }
    let data = file.data.map(|data| (data.referenced.line(), data.value));
    if errors.is_empty() { Ok(Suite { path: path.to_path_buf(), keys, data, cases }) } else { Err(errors) }
}

/// A token carrying `claims`, signed by the key of the issuer its `iss` names (the first
/// issuer's when absent).
fn signed_token(claims: &Map<String, Value>, keys: &[SigningKey], now: u64) -> Result<String, String> {
    let mut claims = claims.clone();
    let issuer = match claims.get("iss") {
        None => keys.first().map(|key| key.issuer.clone()).ok_or("a token needs an issuer declared in `issuers`")?,
        Some(Value::String(issuer)) => issuer.clone(),
        Some(_) => return Err("the token's `iss` must be a string".into()),
    };
    let key = keys
        .iter()
        .find(|key| key.issuer == issuer)
        .ok_or(format!("the token's issuer `{issuer}` is not declared in `issuers`"))?;
    claims.insert("iss".into(), issuer.into());
    claims.entry("iat").or_insert(now.into());
    claims.entry("exp").or_insert((now + TOKEN_LIFETIME_SECS).into());
    let mut header = Header::new(key.algorithm);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, &Value::Object(claims), &key.private)
        .map_err(|error| format!("cannot sign the token: {error}"))
}

/// The declared key: the algorithm it signs with, its private half, and its public half as
/// the key set the issuer's rules trust.
fn signing_key(
    issuer: &IssuerKey,
    index: usize,
    directory: &Path,
) -> Result<(Algorithm, EncodingKey, Arc<KeySet>), String> {
    let (algorithm, private) = match (&issuer.pem, &issuer.jwk) {
        (Some(pem), None) => {
            let path = directory.join(pem);
            let bytes = std::fs::read(&path).map_err(|error| format!("`{}`: cannot read: {error}", path.display()))?;
            pem_key(&bytes).map_err(|message| format!("`{}`: {message}", path.display()))?
        }
        (None, Some(jwk)) => jwk_key(jwk)?,
        _ => return Err("give the issuer's private key as one of `pem` (a file) or `jwk`".into()),
    };
    let mut public = Jwk::from_encoding_key(&private, algorithm).map_err(|error| format!("unusable key: {error}"))?;
    public.common.key_id = Some(issuer.kid.clone().unwrap_or_else(|| format!("portcullis-test-{index}")));
    let json = serde_json::to_string(&JwkSet { keys: vec![public] }).map_err(|error| error.to_string())?;
    let keys = KeySet::from_jwks_json(&json)?;
    if keys.is_empty() {
        return Err(format!("unusable key: {}", keys.skipped.join("; ")));
    }
    Ok((algorithm, private, Arc::new(keys)))
}

/// A private key in PEM, and the algorithm it signs with: RS256, ES256 or ES384 by its
/// curve, EdDSA.
fn pem_key(bytes: &[u8]) -> Result<(Algorithm, EncodingKey), String> {
    if let Ok(key) = EncodingKey::from_rsa_pem(bytes) {
        return Ok((Algorithm::RS256, key));
    }
    if let Ok(key) = EncodingKey::from_ec_pem(bytes) {
        let curve = [Algorithm::ES256, Algorithm::ES384]
            .into_iter()
            .find(|&algorithm| Jwk::from_encoding_key(&key, algorithm).is_ok());
        return curve.map(|algorithm| (algorithm, key)).ok_or("an EC key on a curve other than P-256 or P-384".into());
    }
    if let Ok(key) = EncodingKey::from_ed_pem(bytes) {
        return Ok((Algorithm::EdDSA, key));
    }
    Err("not a private key in PEM (RSA, EC P-256 or P-384, Ed25519)".into())
}

const EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

/// A private JWK, written as the DER its key type's signer reads (PKCS#1 for RSA, PKCS#8 for
/// EC and Ed25519); the key is checked when its public half is derived.
fn jwk_key(jwk: &Map<String, Value>) -> Result<(Algorithm, EncodingKey), String> {
    let text = |name: &str| jwk.get(name).and_then(Value::as_str).ok_or(format!("the JWK has no `{name}`"));
    let bytes =
        |name: &str| URL_SAFE_NO_PAD.decode(text(name)?).map_err(|_| format!("the JWK's `{name}` is not base64url"));
    match (text("kty")?, jwk.get("crv").and_then(Value::as_str)) {
        ("RSA", _) => {
            let mut fields = vec![der_integer(&[0])];
            for name in ["n", "e", "d", "p", "q", "dp", "dq", "qi"] {
                fields.push(der_integer(&bytes(name)?));
            }
            Ok((Algorithm::RS256, EncodingKey::from_rsa_der(&der(0x30, &fields.concat()))))
        }
        ("EC", Some(curve @ ("P-256" | "P-384"))) => {
            let (algorithm, curve) = if curve == "P-256" { (Algorithm::ES256, P256) } else { (Algorithm::ES384, P384) };
            let point = [&[0x00, 0x04][..], &bytes("x")?, &bytes("y")?].concat();
            let private =
                der(0x30, &[der_integer(&[1]), der(0x04, &bytes("d")?), der(0xa1, &der(0x03, &point))].concat());
            let algorithm_id = der(0x30, &[EC_PUBLIC_KEY, curve].concat());
            let pkcs8 = der(0x30, &[der_integer(&[0]), algorithm_id, der(0x04, &private)].concat());
            Ok((algorithm, EncodingKey::from_ec_der(&pkcs8)))
        }
        ("OKP", Some("Ed25519")) => {
            let algorithm_id = der(0x30, ED25519);
            let pkcs8 = der(0x30, &[der_integer(&[0]), algorithm_id, der(0x04, &der(0x04, &bytes("d")?))].concat());
            Ok((Algorithm::EdDSA, EncodingKey::from_ed_der(&pkcs8)))
        }
        (kty, curve) => Err(format!(
            "unsupported JWK `kty: {kty}`{}; use RSA, EC (P-256, P-384) or OKP (Ed25519)",
            curve.map(|curve| format!(", `crv: {curve}`")).unwrap_or_default()
        )),
    }
}

/// One DER element: tag, length, content.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match u8::try_from(content.len()) {
        Ok(short) if short < 0x80 => out.push(short),
        _ => {
            let length = content.len().to_be_bytes();
            let significant = without_leading_zeros(&length);
            out.push(0x80 | u8::try_from(significant.len()).unwrap_or(0));
            out.extend_from_slice(significant);
        }
    }
    out.extend_from_slice(content);
    out
}

/// Big-endian bytes without their leading zero bytes.
fn without_leading_zeros(mut bytes: &[u8]) -> &[u8] {
    while let [0, rest @ ..] = bytes {
        bytes = rest;
    }
    bytes
}

/// A DER INTEGER from unsigned big-endian bytes.
fn der_integer(unsigned: &[u8]) -> Vec<u8> {
    // Zero itself keeps one digit.
    let digits = match without_leading_zeros(unsigned) {
        [] => unsigned.last().map(std::slice::from_ref).unwrap_or_default(),
        digits => digits,
    };
    let sign_pad: &[u8] = if digits.first().is_some_and(|&byte| byte & 0x80 != 0) { &[0] } else { &[] };
    der(0x02, &[sign_pad, digits].concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths_and_integers_are_encoded_minimally() {
        assert_eq!(der(0x04, &[1, 2]), [0x04, 2, 1, 2]);
        assert_eq!(der(0x04, &[0; 200])[..3], [0x04, 0x81, 200]);
        assert_eq!(der(0x04, &[0; 300])[..4], [0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(der_integer(&[0, 0, 5]), [0x02, 1, 5]);
        assert_eq!(der_integer(&[0x80]), [0x02, 2, 0, 0x80]);
        assert_eq!(der_integer(&[0]), [0x02, 1, 0]);
    }
}
