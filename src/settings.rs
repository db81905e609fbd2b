//! Server settings: one YAML file, `PORTCULLIS_*` variables and flags, merged with flags > env > file > defaults; never reads policies.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::{describe_yaml_error, yaml_options};
use crate::core::EngineOptions;
use crate::core::authn::{AuthnContext, KeyLookup};
use crate::core::matcher::IpMatch;
use crate::core::path::PathOptions;
use crate::core::workload::{UnknownWorkload, WorkloadEntry, WorkloadSelector, WorkloadTable};

/// A problem with the settings; reported before any port is bound.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The settings file cannot be read.
    #[error("config file `{file}`: cannot read: {source}")]
    Read {
        /// The settings file.
        file: PathBuf,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    /// The settings file is not valid YAML, or holds a value of the wrong kind.
    #[error("config file `{file}`:{line}: {message}")]
    Parse {
        /// The settings file.
        file: PathBuf,
        /// The line of the problem, from 1.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// A row of the workloads table is invalid.
    #[error("workloads[{index}]: {message}")]
    Workload {
        /// The row, from 0.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// An entry of `trusted_proxies` is no address or CIDR.
    #[error("trusted_proxies: {0}")]
    TrustedProxies(String),
    /// A `PORTCULLIS_*` variable has a value its setting cannot take.
    #[error("environment variable `{name}`: {message}")]
    Environment {
        /// The variable.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// The merged settings contradict each other.
    #[error("{0}")]
    Invalid(String),
    /// The `sso` block is wrong, each problem named by its key.
    #[error("{}", .errors.iter().map(|error| format!("{file}: {error}")).collect::<Vec<_>>().join("\n"))]
    Sso {
        /// The settings file.
        file: String,
        /// Every problem of the block.
        errors: Vec<crate::sso::config::SsoSettingsError>,
    },
    /// The `api_keys` block is wrong, each problem named by its key.
    #[error("{}", .0.join("\n"))]
    ApiKeys(Vec<String>),
    /// The `introspection` block is wrong, each problem named by its key.
    #[error("{}", .0.join("\n"))]
    Introspection(Vec<String>),
    /// The `revocation` block is wrong, each problem named by its key.
    #[error("{}", .0.join("\n"))]
    Revocation(Vec<String>),
}

/// `PORTCULLIS_*` variables read by the command line itself rather than as settings.
pub const COMMAND_LINE_VARIABLES: [&str; 1] = ["PORTCULLIS_CONFIG"];

/// The effective settings of a running server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The ext_authz gRPC door.
    pub grpc_listen: SocketAddr,
    /// The HTTP forward-auth door.
    pub http_listen: SocketAddr,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub admin_listen: SocketAddr,
    /// Policy files or directories, read recursively.
    pub policies: Vec<PathBuf>,
    /// Policies in this namespace apply to every workload, as in Istio.
    pub root_namespace: String,
    /// Proxies in front whose `x-forwarded-for` entries are trusted, counted from the right.
    pub trusted_proxy_hops: usize,
    /// Merge repeated slashes in paths before matching.
    pub merge_slashes: bool,
    /// Peers whose forwarding headers the HTTP door believes (addresses or CIDRs).
    pub trusted_proxies: Vec<String>,
    /// A prefix the HTTP door strips from the path in Envoy's HTTP mode (`path_prefix`).
    pub http_path_prefix: String,
    /// Which proxy calls the HTTP door: `traefik`, `nginx`, `ingress-nginx`, `envoy` or
    /// `auto`. Unset, the HTTP door is not served: no dialect is assumed.
    pub http_mode: Option<HttpMode>,
    /// A connection that has not sent a whole request head this long after opening (or, on
    /// HTTP/1.1, after its last answer) is closed.
    pub http_header_read_timeout_ms: u64,
    /// A connection with no request in flight this long is closed.
    pub http_idle_timeout_secs: u64,
    /// Connections served at once by the HTTP door (and by the admin door); more wait in the
    /// listen backlog.
    pub http_max_connections: u32,
    /// Names workloads for requests that carry neither context extensions nor a destination
    /// principal (Istio's CUSTOM hop).
    pub workloads: Vec<WorkloadSetting>,
    /// What a request gets when no source names its workload's namespace: `deny` (when the
    /// set has namespace-scoped policies) or `mesh_wide` (judged by mesh-wide policies only).
    pub unknown_workload: UnknownWorkload,
    /// Tolerance when checking a token's `exp` and `nbf`.
    pub clock_skew_secs: u64,
    /// Longer tokens are refused unread.
    pub max_token_bytes: usize,
    /// Verified tokens remembered; 0 turns the cache off.
    pub token_cache_entries: usize,
    /// Tokens refused for what they are (unreadable, a bad signature, expired, another
    /// audience) remembered, so that one sent again is not verified again; 0 turns this off.
    pub rejected_token_cache_entries: usize,
    /// How often every issuer's keys are fetched again.
    pub jwks_refresh_interval_secs: u64,
    /// A token with an unknown `kid` triggers a refetch at most this often per issuer.
    pub jwks_min_refetch_interval_secs: u64,
    /// Bound of one discovery or JWKS request.
    pub jwks_fetch_timeout_ms: u64,
    /// Longer JWKS or discovery documents are refused.
    pub jwks_max_bytes: usize,
    /// `/readyz` waits this long at most for every issuer's first keys.
    pub jwks_ready_timeout_secs: u64,
    /// How long a Check may wait for a refetch after an unknown `kid`.
    pub jwks_refetch_wait_ms: u64,
    /// Allow link-local and cloud-metadata addresses as JWKS targets.
    pub jwks_allow_link_local: bool,
    /// Decide and log, but always allow: for rolling out new policies.
    pub dry_run: bool,
    /// Which decisions get a decision-log line: `all`, `deny` or `none`.
    pub decision_log: DecisionLogMode,
    /// The share of those decisions logged, from 0 to 1.
    pub decision_log_sample_rate: f64,
    /// The level of decision-log lines: `error`, `warn`, `info` or `debug`.
    pub decision_log_level: String,
    /// Add the verified token's claims to decision-log lines (never the token itself).
    pub decision_log_claims: bool,
    /// At most this many decision-log lines a second; the others are counted and reported.
    /// 0: no limit.
    pub decision_log_max_lines_per_sec: u32,
    /// How often the policy paths are checked for changes; 0 turns polling off (SIGHUP still
    /// reloads).
    pub reload_poll_interval_ms: u64,
    /// How long in-flight checks may take to finish after SIGTERM.
    pub drain_timeout_secs: u64,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// A `tracing` filter such as `info` or `portcullis=debug`; `RUST_LOG` wins when set.
    pub log_level: String,
    /// Browser single sign-on (docs/sso.md); unset, no site offers a login.
    pub sso: Option<crate::sso::config::SsoSettings>,
    /// API keys of bot accounts (docs/credentials.md); unset, no request is read for a key.
    pub api_keys: Option<crate::identity::api_keys::ApiKeySettings>,
    /// Opaque tokens checked by introspection (docs/credentials.md); unset, a bearer token is
    /// always a JWT.
    pub introspection: Option<crate::identity::introspection::IntrospectionSettings>,
    /// Revocation of tokens and sessions by `jti`, `sid` or subject (docs/credentials.md);
    /// unset, nothing is revoked before it expires.
    pub revocation: Option<crate::revocation::settings::RevocationSettings>,
    /// The data sources the policy files declare (docs/data.md).
    pub data: crate::data::DataSettings,
    /// How the check doors run: `{mode: auto | per_core | multi_thread, threads: N}` (docs/operations.md,
    /// "Runtime and cores"); `threads` unset is the CPUs this process may use.
    pub runtime: crate::runtime::RuntimeSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            grpc_listen: SocketAddr::from(([0, 0, 0, 0], 9001)),
            http_listen: SocketAddr::from(([0, 0, 0, 0], 8000)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            policies: vec![PathBuf::from("policies")],
            root_namespace: "istio-system".into(),
            trusted_proxy_hops: 0,
            merge_slashes: true,
            trusted_proxies: vec!["127.0.0.0/8".into(), "::1/128".into()],
            http_path_prefix: String::new(),
            http_mode: None,
            http_header_read_timeout_ms: 10_000,
            http_idle_timeout_secs: 60,
            http_max_connections: 4096,
            workloads: Vec::new(),
            unknown_workload: UnknownWorkload::Deny,
            clock_skew_secs: 60,
            max_token_bytes: 8 * 1024,
            token_cache_entries: 100_000,
            rejected_token_cache_entries: crate::identity::rejected_tokens::DEFAULT_ENTRIES,
            jwks_refresh_interval_secs: 20 * 60,
            jwks_min_refetch_interval_secs: 5,
            jwks_fetch_timeout_ms: 5_000,
            jwks_max_bytes: 1024 * 1024,
            jwks_ready_timeout_secs: 10,
            jwks_refetch_wait_ms: 1_000,
            jwks_allow_link_local: false,
            dry_run: false,
            decision_log: DecisionLogMode::Deny,
            decision_log_sample_rate: 1.0,
            decision_log_level: "info".into(),
            decision_log_claims: false,
            decision_log_max_lines_per_sec: 1000,
            reload_poll_interval_ms: 2_000,
            drain_timeout_secs: 10,
            log_format: LogFormat::Text,
            log_level: "info".into(),
            sso: None,
            api_keys: None,
            introspection: None,
            revocation: None,
            data: crate::data::DataSettings::default(),
            runtime: crate::runtime::RuntimeSettings::default(),
        }
    }
}

/// The forward-auth dialect of the HTTP door.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HttpMode {
    /// Whichever dialect's headers are present; two at once are refused as ambiguous. Behind
    /// Envoy's HTTP mode a client's `X-Original-URL` or `X-Original-URI` chooses the judged
    /// path: name the proxy instead.
    Auto,
    /// Traefik's ForwardAuth: the `X-Forwarded-Method`, `-Proto`, `-Host` and `-Uri` headers.
    Traefik,
    /// nginx `auth_request`: `X-Original-URI` and `X-Original-Method`.
    Nginx,
    /// ingress-nginx's external auth: `X-Original-URL` and `X-Original-Method`.
    IngressNginx,
    /// The request itself (Envoy's HTTP ext_authz service); forwarding headers are ignored.
    Envoy,
}

/// Which decisions the decision log records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecisionLogMode {
    /// Every decision.
    All,
    /// Denials only.
    Deny,
    /// No decision.
    None,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, in colour on a terminal.
    Text,
    /// One JSON object a line.
    Json,
}

/// How long, and how many, connections a door serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A connection must send a whole request head this long after it opens; on HTTP/1.1 the
    /// same bound applies to the next request head after each answer.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight this long is closed.
    pub idle_timeout: Duration,
    /// Connections served at once; the next one is accepted when one of them closes.
    pub max_connections: u32,
}

/// Limits and timings of key fetching.
#[derive(Debug, Clone)]
pub struct FetchLimits {
    /// How often an issuer's keys are fetched again.
    pub refresh_interval: Duration,
    /// A refetch for an unknown `kid` happens at most this often per issuer.
    pub min_refetch_interval: Duration,
    /// The bound of one fetch.
    pub fetch_timeout: Duration,
    /// The largest document read.
    pub max_bytes: usize,
    /// Allow link-local and cloud-metadata addresses as fetch targets.
    pub allow_link_local: bool,
}

/// One row of the workloads table: exactly one of `principal`, `address`, `host`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSetting {
    /// The destination principal (`spiffe://cluster.local/ns/<ns>/sa/<sa>`), sent with mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The destination address: an IP or a CIDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The request's authority, case-insensitive, with or without its port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The workload's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The workload's labels, for policy selectors.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Values given as flags or `PORTCULLIS_*` variables; each overrides the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--grpc-listen`.
    pub grpc_listen: Option<SocketAddr>,
    /// `--http-listen`.
    pub http_listen: Option<SocketAddr>,
    /// `--admin-listen`.
    pub admin_listen: Option<SocketAddr>,
    /// `--policies`, each repeated flag a path.
    pub policies: Vec<PathBuf>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
    /// `--log-level`.
    pub log_level: Option<String>,
}

impl Settings {
    /// Reads the file (when given), then `PORTCULLIS_<KEY>` variables, then the overrides
    /// (flags): flags > environment > file > defaults.
    pub fn load(file: Option<&Path>, overrides: Overrides) -> Result<Self, SettingsError> {
        let settings = match file {
            Some(file) => Self::from_file(file)?,
            None => Self::default(),
        };
        let mut settings = settings.with_environment(std::env::vars())?;
        let Overrides { grpc_listen, http_listen, admin_listen, policies, log_format, log_level } = overrides;
        settings.grpc_listen = grpc_listen.unwrap_or(settings.grpc_listen);
        settings.http_listen = http_listen.unwrap_or(settings.http_listen);
        settings.admin_listen = admin_listen.unwrap_or(settings.admin_listen);
        if !policies.is_empty() {
            settings.policies = policies;
        }
        settings.log_format = log_format.unwrap_or(settings.log_format);
        settings.log_level = log_level.unwrap_or(settings.log_level);
        settings.workload_table()?;
        crate::doors::http::trusted_proxies(&settings.trusted_proxies).map_err(SettingsError::TrustedProxies)?;
        if !(0.0..=1.0).contains(&settings.decision_log_sample_rate) {
            return Err(SettingsError::Invalid("decision_log_sample_rate must be between 0 and 1".into()));
        }
        if !["error", "warn", "info", "debug"].contains(&settings.decision_log_level.as_str()) {
            return Err(SettingsError::Invalid("decision_log_level must be error, warn, info or debug".into()));
        }
        if settings.sso.is_some() && settings.http_mode.is_none() {
            return Err(SettingsError::Invalid(
                "sso: browser logins are served on the HTTP door; set http_mode to the proxy in front".into(),
            ));
        }
        if let Some(sso) = &settings.sso {
            sso.compile(|name| std::env::var(name).ok()).map_err(|errors| SettingsError::Sso {
                file: file.map_or_else(|| "settings".into(), |file| format!("config file `{}`", file.display())),
                errors,
            })?;
        }
        if let Some(problems) = settings.api_keys.as_ref().map(|block| block.problems()).filter(|p| !p.is_empty()) {
            return Err(SettingsError::ApiKeys(problems));
        }
        if let Some(Err(problems)) =
            settings.introspection.as_ref().map(|block| block.compile(|name| std::env::var(name).ok()))
        {
            return Err(SettingsError::Introspection(problems));
        }
        if let Some(Err(problems)) =
            settings.revocation.as_ref().map(|block| block.compile(|name| std::env::var(name).ok()))
        {
            let file = file.map_or_else(|| "settings".into(), |file| format!("config file `{}`", file.display()));
            return Err(SettingsError::Revocation(
                problems.iter().map(|problem| format!("{file}: {problem}")).collect(),
            ));
        }
        for (name, value) in [
            ("http_header_read_timeout_ms", settings.http_header_read_timeout_ms),
            ("http_idle_timeout_secs", settings.http_idle_timeout_secs),
            ("http_max_connections", u64::from(settings.http_max_connections)),
        ] {
            if value == 0 {
                return Err(SettingsError::Invalid(format!("{name} must be at least 1")));
            }
        }
        Ok(settings)
    }

    /// Applies `PORTCULLIS_<KEY>` variables, one per settings key. A value is read as YAML
    /// (`true`, `60`, `[a, b]`, `{...}`); for a list, `a,b` also works; for a text, it is taken
    /// as written.
    pub fn with_environment(self, variables: impl Iterator<Item = (String, String)>) -> Result<Self, SettingsError> {
        let variables: HashMap<String, String> =
            variables.filter(|(name, _)| name.starts_with("PORTCULLIS_")).collect();
        if variables.is_empty() {
            return Ok(self);
        }
        let invalid = |name: &str, message: String| SettingsError::Environment { name: name.to_string(), message };
        let before = serde_json::to_value(&self).map_err(|error| invalid("PORTCULLIS_*", error.to_string()))?;
        let mut value = before.clone();
        let Some(fields) = value.as_object_mut() else { return Ok(self) };
        let mut applied = Vec::new();
        for (key, field) in fields.iter_mut() {
            let name = format!("PORTCULLIS_{}", key.to_ascii_uppercase());
            let Some(text) = variables.get(&name) else { continue };
            *field = match field {
                serde_json::Value::String(_) => serde_json::Value::String(text.clone()),
                serde_json::Value::Array(_) if !text.trim_start().starts_with('[') => serde_json::Value::Array(
                    text.split(',').map(|item| serde_json::Value::String(item.trim().into())).collect(),
                ),
                _ => serde_saphyr::from_str(text).map_err(|error| invalid(&name, describe_yaml_error(&error).1))?,
            };
            applied.push((name, key.clone(), field.clone()));
        }
        serde_json::from_value(value).map_err(|error| {
            // Name the variable whose value does not fit: the one that fails on its own.
            let culprit = applied.iter().find(|(_, key, field)| {
                let mut alone = before.clone();
                if let Some(fields) = alone.as_object_mut() {
                    fields.insert(key.clone(), field.clone());
                }
                serde_json::from_value::<Self>(alone).is_err()
            });
            invalid(culprit.map_or("PORTCULLIS_*", |(name, _, _)| name.as_str()), error.to_string())
        })
    }

    /// `PORTCULLIS_*` variables that name no setting, each with the known name closest to it
    /// (when one is close): a misspelled variable is otherwise silently ignored.
    pub fn unknown_environment_variables(
        variables: impl Iterator<Item = (String, String)>,
    ) -> Vec<(String, Option<String>)> {
        let mut known: Vec<String> = match serde_json::to_value(Self::default()) {
            Ok(serde_json::Value::Object(fields)) => {
                fields.keys().map(|key| format!("PORTCULLIS_{}", key.to_ascii_uppercase())).collect()
            }
            _ => Vec::new(),
        };
        known.extend(COMMAND_LINE_VARIABLES.iter().map(|name| (*name).to_string()));
        let mut unknown: Vec<(String, Option<String>)> = variables
            .map(|(name, _)| name)
            .filter(|name| name.starts_with("PORTCULLIS_") && !known.contains(name))
            .map(|name| {
                let closest = known
                    .iter()
                    .map(|candidate| (crate::config::load::edit_distance(&name, candidate), candidate))
                    .filter(|(distance, _)| *distance <= 3)
                    .min()
                    .map(|(_, candidate)| candidate.clone());
                (name, closest)
            })
            .collect();
        unknown.sort();
        unknown
    }

    fn from_file(file: &Path) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(file).map_err(|source| SettingsError::Read { file: file.into(), source })?;
        serde_saphyr::from_str_with_options(&text, yaml_options()).map_err(|error| {
            let (line, message) = describe_yaml_error(&error);
            SettingsError::Parse { file: file.into(), line, message }
        })
    }

    /// The engine options these settings give.
    pub fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            path: PathOptions { merge_slashes: self.merge_slashes },
            trusted_proxy_hops: self.trusted_proxy_hops,
            keep_claims_json: self.decision_log_claims,
            unknown_workload: self.unknown_workload,
            api_key_locations: self.api_keys.as_ref().map(|block| block.locations()).unwrap_or_default(),
            introspection_issuers: self
                .introspection
                .iter()
                .flat_map(|block| &block.providers)
                .map(|provider| std::sync::Arc::from(provider.issuer.trim_end_matches('/')))
                .collect(),
        }
    }

    /// What authentication needs for one check, at the current time.
    pub fn authn_context<'c>(&self, keys: &'c dyn KeyLookup) -> AuthnContext<'c> {
        AuthnContext {
            keys,
            now: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs()),
            clock_skew_secs: self.clock_skew_secs,
            max_token_bytes: self.max_token_bytes,
        }
    }

    /// Bounds of the HTTP and admin doors' connections.
    pub fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout: Duration::from_millis(self.http_header_read_timeout_ms),
            idle_timeout: Duration::from_secs(self.http_idle_timeout_secs),
            max_connections: self.http_max_connections,
        }
    }

    /// Limits of JWKS fetching.
    pub fn fetch_limits(&self) -> FetchLimits {
        FetchLimits {
            refresh_interval: Duration::from_secs(self.jwks_refresh_interval_secs.max(1)),
            min_refetch_interval: Duration::from_secs(self.jwks_min_refetch_interval_secs),
            fetch_timeout: Duration::from_millis(self.jwks_fetch_timeout_ms.max(1)),
            max_bytes: self.jwks_max_bytes,
            allow_link_local: self.jwks_allow_link_local,
        }
    }

    /// The compiled workloads table.
    pub fn workload_table(&self) -> Result<WorkloadTable, SettingsError> {
        let entries = self.workloads.iter().enumerate().map(|(index, row)| {
            let error = |message: String| SettingsError::Workload { index, message };
            let selector = match (&row.principal, &row.address, &row.host) {
                (Some(principal), None, None) => {
                    WorkloadSelector::Principal(principal.strip_prefix("spiffe://").unwrap_or(principal).into())
                }
                (None, Some(address), None) => WorkloadSelector::Address(IpMatch::parse(address).map_err(error)?),
                (None, None, Some(host)) => WorkloadSelector::Host(host.as_str().into()),
                _ => {
                    return Err(error("set exactly one of `principal`, `address` and `host`".into()));
                }
            };
            let labels: HashMap<String, String> = row.labels.clone().into_iter().collect();
            Ok(WorkloadEntry { selector, namespace: row.namespace.as_deref().map(Into::into), labels })
        });
        Ok(WorkloadTable::new(entries.collect::<Result<_, _>>()?))
    }
}
