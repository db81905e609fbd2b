//! The offline commands: `validate` reports every policy problem, `check` decides (and explains) one request described in a file; never binds a port.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::load::SkippedDocument;
use crate::config::{describe_yaml_error, yaml_options};
use crate::core::{Decision, HttpRequest, Peer, Request, StrMap};
use crate::doors::denial::Denial;
use crate::identity::jwks::KeyStore;
use crate::identity::token_cache::VerifiedTokenCache;
use crate::policy_set::{PolicySetError, SetSummary, build_snapshot};
use crate::settings::Settings;
use crate::telemetry::Metrics;

/// A request described in YAML or JSON for `portcullis check`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestFile {
    /// A TCP connection check: no method, path, host or headers.
    #[serde(default)]
    pub tcp: bool,
    /// The HTTP method; `GET` when absent.
    #[serde(default = "default_method")]
    pub method: String,
    /// The path as sent, query included; `/` when absent.
    #[serde(default = "default_path")]
    pub path: String,
    /// The authority (`Host`).
    #[serde(default)]
    pub host: String,
    /// A header's value, or a list of them for a header sent several times.
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderValues>,
    /// The headers as Envoy's `headers` map carries them without `encode_raw_headers`: a
    /// repeated header's values joined with `,` into one.
    #[serde(default)]
    pub joined_headers: bool,
    /// The peer that sent the request.
    #[serde(default)]
    pub source: PeerFile,
    /// The workload the request is for.
    #[serde(default)]
    pub destination: PeerFile,
    /// Envoy's context extensions (`namespace`, `app`, …), which can name the workload.
    #[serde(default)]
    pub context_extensions: HashMap<String, String>,
    /// The TLS server name the connection asked for.
    #[serde(default)]
    pub sni: String,
    /// A token, sent as `Authorization: Bearer <token>`.
    #[serde(default)]
    pub token: Option<String>,
}

/// One header value, or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum HeaderValues {
    /// A header sent once.
    One(String),
    /// A header sent several times, its values in order.
    Many(Vec<String>),
}

fn default_method() -> String {
    "GET".into()
}

fn default_path() -> String {
    "/".into()
}

/// One end of the connection in a request file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerFile {
    /// Its IP address.
    pub address: Option<IpAddr>,
    /// Its port.
    pub port: Option<u16>,
    /// Its mTLS principal (`spiffe://…`).
    #[serde(default)]
    pub principal: String,
    /// Its labels, as Envoy's metadata would carry them.
    #[serde(default)]
    pub labels: HashMap<String, String>,
}

impl PeerFile {
    fn peer(&self) -> Peer<'_> {
        Peer { address: self.address, port: self.port, principal: &self.principal, labels: StrMap::from(&self.labels) }
    }
}

impl RequestFile {
    /// Reads a request file; YAML, or JSON (which YAML reads too).
    pub fn read(path: &Path) -> Result<(Self, Vec<(String, String)>), String> {
        let text =
            std::fs::read_to_string(path).map_err(|error| format!("{}: cannot read: {error}", path.display()))?;
        let file: Self = serde_saphyr::from_str_with_options(&text, yaml_options()).map_err(|error| {
            let (line, message) = describe_yaml_error(&error);
            format!("{}:{line}: {message}", path.display())
        })?;
        let headers = file.header_entries();
        Ok((file, headers))
    }

    /// The file's headers with lower-case names, one entry per value (joined with `,` when
    /// `joined_headers`), and the token's `authorization` header.
    pub fn header_entries(&self) -> Vec<(String, String)> {
        let mut headers: Vec<(String, String)> = Vec::new();
        for (name, values) in &self.headers {
            let name = name.to_ascii_lowercase();
            match values {
                HeaderValues::One(value) => headers.push((name, value.clone())),
                HeaderValues::Many(values) if self.joined_headers => headers.push((name, values.join(","))),
                HeaderValues::Many(values) => headers.extend(values.iter().map(|value| (name.clone(), value.clone()))),
            }
        }
        if let Some(token) = &self.token {
            headers.push(("authorization".into(), format!("Bearer {token}")));
        }
        headers
    }

    /// The core request; `headers` are the file's headers with lower-case names.
    pub fn request<'a>(&'a self, headers: &'a [(String, String)]) -> Request<'a> {
        let http = (!self.tcp).then(|| HttpRequest {
            method: &self.method,
            scheme: "",
            host: &self.host,
            path: &self.path,
            headers: headers.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect(),
            joined_headers: self.joined_headers,
        });
        Request {
            source: self.source.peer(),
            destination: self.destination.peer(),
            http,
            sni: &self.sni,
            context_extensions: StrMap::from(&self.context_extensions),
        }
    }
}

/// The JSON printed by `check`.
#[derive(Debug, Serialize)]
struct DecisionReport {
    decision: &'static str,
    status: u16,
    reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'static str>,
    headers: BTreeMap<String, String>,
    headers_to_remove: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    query_parameters_to_remove: Vec<String>,
    /// Headers of a denial (`www-authenticate`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    response_headers: BTreeMap<String, String>,
    /// The verified caller, `iss/sub`.
    #[serde(skip_serializing_if = "Option::is_none")]
    principal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    audit_policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dry_run: Option<DryRunReport>,
    /// With `--explain`: why, line by line.
    #[serde(skip_serializing_if = "Option::is_none")]
    explanation: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
struct DryRunReport {
    decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<String>,
}

fn verdict(allow: bool) -> &'static str {
    if allow { "allow" } else { "deny" }
}

impl From<&Decision> for DecisionReport {
    fn from(decision: &Decision) -> Self {
        let denial = Denial::of(decision);
        Self {
            decision: verdict(decision.is_allow()),
            status: Denial::status_of(decision),
            reason: decision.reason.as_str(),
            policy: decision.policy.as_ref().map(ToString::to_string),
            body: denial.as_ref().map(|denial| denial.body),
            headers: decision.headers_to_set.iter().map(|(name, value)| (name.to_string(), value.clone())).collect(),
            headers_to_remove: decision.headers_to_remove.iter().map(ToString::to_string).collect(),
            query_parameters_to_remove: decision.query_parameters_to_remove.iter().map(ToString::to_string).collect(),
            response_headers: denial
                .and_then(|denial| denial.challenge)
                .map(|(name, value)| (name.to_string(), value))
                .into_iter()
                .collect(),
            principal: decision.identity.as_ref().map(|id| format!("{}/{}", id.issuer(), id.subject())),
            audit_policy: decision.audit.as_ref().map(ToString::to_string),
            dry_run: decision.dry_run.as_ref().map(|outcome| DryRunReport {
                decision: verdict(outcome.would_allow),
                policy: outcome.policy.as_ref().map(ToString::to_string),
            }),
            explanation: None,
        }
    }
}

/// `portcullis validate`: every problem on stderr as `file:line: message`; `Ok(false)` when any.
pub fn validate(settings: &Settings) -> Result<bool, PolicySetError> {
    match build_snapshot(settings) {
        Ok((snapshot, loaded)) => {
            for SkippedDocument { location, kind, reason } in &loaded.skipped {
                eprintln!("{location}: warning: skipped `{kind}`: {reason}");
            }
            let _ = writeln!(std::io::stdout(), "valid: {}", SetSummary::of(&snapshot, &loaded));
            Ok(true)
        }
        Err(PolicySetError::Policies(errors)) => {
            for error in &errors {
                eprintln!("{error}");
            }
            Ok(false)
        }
        Err(other) => Err(other),
    }
}

/// `portcullis check`: the decision as JSON on stdout, with `explain` why; `Ok(allowed)`.
pub fn check(settings: &Settings, request_file: &Path, explain: bool) -> Result<bool, String> {
    let (snapshot, loaded) = build_snapshot(settings).map_err(|error| error.to_string())?;
    if !loaded.data_sources.is_empty() {
        // Offline, nothing is fetched: `portcullis test` files can give the data instead.
        eprintln!(
            "portcullis: warning: data sources are not loaded by `check`; lookups cannot be evaluated and fail closed"
        );
    }
    let (file, headers) = RequestFile::read(request_file)?;
    let metrics = Arc::new(Metrics::new());
    let cache = Arc::new(VerifiedTokenCache::new(0, metrics.clone()));
    let issuers = snapshot.remote_issuers();
    let fetch_keys = !issuers.is_empty();
    let keys = KeyStore::new(settings.fetch_limits(), metrics, cache.clone())
        .map(Arc::new)
        .map_err(|error| format!("cannot build the HTTP client: {error}"))?;
    let issuers = keys.add_issuers(issuers);
    if fetch_keys {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| format!("cannot start the runtime: {error}"))?;
        let bound = std::time::Duration::from_secs(settings.jwks_ready_timeout_secs);
        // Issuers left without keys refuse their tokens with `Jwks remote fetch is failed`.
        let _ = runtime.block_on(async { tokio::time::timeout(bound, keys.fetch(&issuers)).await });
        for (issuer, cause) in keys.missing_with_causes() {
            let cause =
                cause.unwrap_or_else(|| format!("no answer within jwks_ready_timeout_secs ({} s)", bound.as_secs()));
            eprintln!("portcullis: warning: no keys for issuer `{issuer}`: {cause}");
        }
    }
    let (request, context) = (file.request(&headers), settings.authn_context(&*keys));
    let decision = snapshot.check(&request, &context);
    let mut report = DecisionReport::from(&decision);
    if explain {
        let explanation = snapshot.explain(&request, &context).to_string();
        report.explanation = Some(explanation.lines().map(Into::into).collect());
    }
    let json = serde_json::to_string_pretty(&report).map_err(|error| format!("cannot print the decision: {error}"))?;
    let _ = writeln!(std::io::stdout(), "{json}");
    Ok(decision.is_allow())
}
