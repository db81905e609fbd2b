//! Tokens introspected (RFC 7662): the `introspection` settings block and its client credentials (secrets from files or the environment, or a private key for `private_key_jwt`, never shown), the call to each provider's endpoint for opaque tokens and, where configured, for verified JWTs, answers remembered by the token's SHA-256 within their bounds, one call per token at a time, a bound on concurrent calls, and whether each provider's last call failed; never decides.
//!
//! Only an `active` answer is remembered, and never past the token's `exp` nor the provider's
//! `cache_max_secs`; a failed call (endpoint down, slow, busy, an error status, an answer that is
//! not one) is remembered by nobody, so the next check asks again.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{OnceCell, Semaphore};

use crate::core::api_key::KeyDigest;
use crate::core::authn::Authentication;
use crate::core::identity::{ClaimPaths, Identity};
use crate::core::introspection::{OpaqueToken, confirms_jwt, identity_from_answer};
use crate::core::jwt::JwtError;
use crate::identity::client_assertion::{ASSERTION_TYPE, AssertionKey};
use crate::outbound::{Outbound, OutboundError, OutboundLimits};
use crate::telemetry::Metrics;

/// The `introspection` settings block: the providers whose endpoints check opaque tokens.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntrospectionSettings {
    /// The providers, in order: a token goes to the first one an applicable
    /// `RequestAuthentication` names by issuer, else to the first one.
    pub providers: Vec<ProviderSettings>,
}

/// How the client authenticates to the introspection endpoint (RFC 6749 section 2.3.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP Basic with the client id and secret.
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form.
    ClientSecretPost,
    /// A JWT client assertion signed with the client's private key (RFC 7523 section 2.2).
    PrivateKeyJwt,
}

/// One provider's introspection endpoint and client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderSettings {
    /// The provider's issuer: the `iss` of every caller its answers name.
    pub issuer: String,
    /// The introspection endpoint; unset, OIDC discovery's `introspection_endpoint`.
    pub endpoint: Option<String>,
    /// The client id portcullis introspects as.
    pub client_id: String,
    /// A file holding the client secret (trailing whitespace ignored).
    pub client_secret_file: Option<PathBuf>,
    /// An environment variable holding the client secret.
    pub client_secret_env: Option<String>,
    /// `client_secret_basic`, `client_secret_post` or `private_key_jwt`.
    pub client_auth: ClientAuth,
    /// The client's private key (PEM, RSA or P-256), for `private_key_jwt`.
    pub private_key_file: Option<PathBuf>,
    /// The `kid` the client assertions name, when the provider needs one.
    pub private_key_id: Option<String>,
    /// Whether a JWT of this issuer, once verified locally, is introspected too, so that a
    /// token whose session the provider ended is refused.
    pub introspect_jwts: bool,
    /// The bound on one call, and on the wait for a free call slot.
    pub timeout_ms: u64,
    /// The longest an active answer is remembered; 0 remembers none.
    pub cache_max_secs: u64,
    /// Calls to the endpoint under way at once, at most.
    pub max_concurrent_calls: usize,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            endpoint: None,
            client_id: String::new(),
            client_secret_file: None,
            client_secret_env: None,
            client_auth: ClientAuth::ClientSecretBasic,
            private_key_file: None,
            private_key_id: None,
            introspect_jwts: false,
            timeout_ms: 2_000,
            cache_max_secs: 60,
            max_concurrent_calls: 32,
        }
    }
}

/// A client secret: shown as `[redacted]` in every `Debug`.
#[derive(Clone, PartialEq, Eq)]
struct ClientSecret(Box<str>);

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// How the client proves itself to the endpoint.
#[derive(Debug, Clone)]
enum ClientCredential {
    /// A shared secret, in HTTP Basic or in the form.
    Secret(ClientSecret, ClientAuth),
    /// A private key signing a client assertion per call.
    PrivateKey(AssertionKey),
}

/// A provider as checked: its secret or private key read.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    issuer: Arc<str>,
    endpoint: Option<String>,
    client_id: String,
    credential: ClientCredential,
    introspect_jwts: bool,
    timeout: Duration,
    cache_max_secs: u64,
    max_concurrent_calls: usize,
}

impl IntrospectionSettings {
    /// Checks every provider and reads its client secret (`variable` looks up the environment);
    /// every problem, each named by its key, never quoting a secret.
    pub fn compile(&self, variable: impl Fn(&str) -> Option<String>) -> Result<Vec<ProviderConfig>, Vec<String>> {
        let mut problems = Vec::new();
        let mut configs = Vec::new();
        if self.providers.is_empty() {
            problems.push("introspection.providers: name at least one provider".to_string());
        }
        for (index, provider) in self.providers.iter().enumerate() {
            let mut problem = |key: &str, message: String| {
                problems.push(format!("introspection.providers[{index}].{key}: {message}"));
            };
            if !provider.issuer.starts_with("https://") && !provider.issuer.starts_with("http://") {
                problem("issuer", "must be an http(s) URL".into());
            }
            if self.providers.iter().take(index).any(|earlier| earlier.issuer == provider.issuer) {
                problem("issuer", "another provider has this issuer".into());
            }
            if let Some(endpoint) = &provider.endpoint
                && !endpoint.starts_with("https://")
                && !endpoint.starts_with("http://")
            {
                problem("endpoint", "must be an http(s) URL".into());
            }
            if provider.client_id.is_empty() {
                problem("client_id", "must be set".into());
            }
            if provider.timeout_ms == 0 {
                problem("timeout_ms", "must be at least 1".into());
            }
            if provider.max_concurrent_calls == 0 {
                problem("max_concurrent_calls", "must be at least 1".into());
            }
            if let Some(credential) = provider.credential(&variable, &mut problem) {
                configs.push(ProviderConfig {
                    issuer: provider.issuer.trim_end_matches('/').into(),
                    endpoint: provider.endpoint.clone(),
                    client_id: provider.client_id.clone(),
                    credential,
                    introspect_jwts: provider.introspect_jwts,
                    timeout: Duration::from_millis(provider.timeout_ms),
                    cache_max_secs: provider.cache_max_secs,
                    max_concurrent_calls: provider.max_concurrent_calls,
                });
            }
        }
        if problems.is_empty() { Ok(configs) } else { Err(problems) }
    }
}

impl ProviderSettings {
    /// The client's credential: its secret (from a file or the environment) for the
    /// `client_secret_*` methods, its private key for `private_key_jwt`; each problem given to
    /// `problem` with its key, never quoting a secret or a key.
    fn credential(
        &self,
        variable: &impl Fn(&str) -> Option<String>,
        problem: &mut impl FnMut(&str, String),
    ) -> Option<ClientCredential> {
        if self.client_auth == ClientAuth::PrivateKeyJwt {
            if self.client_secret_file.is_some() || self.client_secret_env.is_some() {
                problem("client_auth", "`private_key_jwt` takes `private_key_file`, not a client secret".into());
            }
            let Some(file) = &self.private_key_file else {
                problem("private_key_file", "must be set for `private_key_jwt`".into());
                return None;
            };
            return AssertionKey::read(file, self.private_key_id.clone())
                .map_err(|message| problem("private_key_file", message))
                .ok()
                .map(ClientCredential::PrivateKey);
        }
        if self.private_key_file.is_some() || self.private_key_id.is_some() {
            problem("private_key_file", "only `client_auth: private_key_jwt` takes a private key".into());
        }
        let secret = match (&self.client_secret_file, &self.client_secret_env) {
            (Some(file), None) => crate::sso::config::read_secret_file(file)
                .map_err(|message| problem("client_secret_file", message))
                .ok(),
            (None, Some(name)) => {
                let value = variable(name).filter(|value| !value.is_empty());
                if value.is_none() {
                    problem("client_secret_env", format!("environment variable `{name}` is unset or empty"));
                }
                value
            }
            _ => {
                problem("client_secret_file", "set exactly one of `client_secret_file` and `client_secret_env`".into());
                None
            }
        };
        secret.map(|secret| ClientCredential::Secret(ClientSecret(secret.into()), self.client_auth))
    }
}

/// What one call brought: an answer, or why there is none (its metric's result).
type CallOutcome = Result<Arc<Value>, &'static str>;

/// Why a call brought no answer.
#[derive(Debug)]
enum Failure {
    /// No free call slot in time: this server's bound, not the endpoint's state.
    Busy,
    /// The endpoint could not be found or reached, or answered with an error; the cause names
    /// its URL without userinfo or query, never a token or a secret.
    Error(String),
}

/// An active answer, remembered until `until` (seconds since the epoch), and the identity last
/// built from it with the claim paths it kept, so that a remembered token costs a lookup, not a
/// new identity, while the policies keep the same claims.
#[derive(Debug)]
struct Remembered {
    answer: Arc<Value>,
    until: u64,
    built: Option<(Arc<ClaimPaths>, Arc<Identity>)>,
}

/// What a provider remembers of a token at a given time.
enum Recalled {
    /// The identity already built from its answer, with the claim paths asked for.
    Built(Arc<Identity>),
    /// The answer, whose identity is still to be built.
    Answer(Arc<Value>),
}

/// One provider: its client, the answers it gave, the calls under way.
#[derive(Debug)]
struct Provider {
    config: ProviderConfig,
    /// The endpoint discovery found, once found.
    discovered: OnceCell<String>,
    permits: Semaphore,
    remembered: Mutex<HashMap<KeyDigest, Remembered>>,
    in_flight: Mutex<HashMap<KeyDigest, Arc<OnceCell<CallOutcome>>>>,
    /// Why the last call failed, until a call gets an answer again.
    failing: Mutex<Option<String>>,
}

/// The configured introspection providers, by issuer.
#[derive(Debug)]
pub struct Introspection {
    providers: HashMap<Arc<str>, Provider>,
    outbound: Outbound,
    metrics: Arc<Metrics>,
    max_token_bytes: usize,
    max_remembered: usize,
}

/// Limits that come from the server's settings rather than a provider's.
#[derive(Debug, Clone, Copy)]
pub struct IntrospectionLimits {
    /// The outbound client's limits (connect timeout, body cap, link-local targets).
    pub outbound: OutboundLimits,
    /// Longer tokens are refused without a call.
    pub max_token_bytes: usize,
    /// Answers remembered per provider, at most.
    pub max_remembered: usize,
}

impl Introspection {
    /// The providers `configs` describe, calling out through one client.
    pub fn new(
        configs: Vec<ProviderConfig>,
        limits: IntrospectionLimits,
        metrics: Arc<Metrics>,
    ) -> Result<Self, OutboundError> {
        let providers = configs.into_iter().map(|config| {
            let provider = Provider {
                discovered: OnceCell::new(),
                permits: Semaphore::new(config.max_concurrent_calls),
                remembered: Mutex::new(HashMap::new()),
                in_flight: Mutex::new(HashMap::new()),
                failing: Mutex::new(None),
                config,
            };
            (provider.config.issuer.clone(), provider)
        });
        Ok(Self {
            providers: providers.collect(),
            outbound: Outbound::new(limits.outbound)?,
            metrics,
            max_token_bytes: limits.max_token_bytes,
            max_remembered: limits.max_remembered,
        })
    }

    /// The caller an opaque token stands for at `now` (seconds since the epoch), keeping the
    /// claims `kept` names: the answer remembered for it, else its provider's answer. Refused
    /// when inactive, and when no answer could be had.
    pub async fn authenticate(
        &self,
        opaque: &OpaqueToken<'_>,
        kept: &Arc<ClaimPaths>,
        now: u64,
    ) -> Authentication<'static> {
        let token = opaque.token;
        if token.is_empty() || token.len() > self.max_token_bytes {
            return Authentication::Failed { error: JwtError::TokenInactive };
        }
        let Some(provider) = self.providers.get(&opaque.issuer) else {
            return Authentication::Failed { error: JwtError::IntrospectionFailed };
        };
        let digest = KeyDigest::of(token);
        let answer = match provider.recall_built(&digest, kept, now) {
            Some(Recalled::Built(identity)) => {
                self.metrics.record_introspection_cache_hit();
                return Authentication::Introspected { identity };
            }
            Some(Recalled::Answer(answer)) => {
                self.metrics.record_introspection_cache_hit();
                Ok(answer)
            }
            None => provider.answer_once(digest, token, now, None, self).await,
        };
        match answer {
            Ok(answer) => {
                let authentication = identity_from_answer(&answer, &provider.config.issuer, kept, now);
                if let Authentication::Introspected { identity } = &authentication {
                    provider.remember_built(&digest, &answer, kept, identity);
                }
                authentication
            }
            Err(_) => Authentication::Failed { error: JwtError::IntrospectionFailed },
        }
    }

    /// Whether a JWT verified locally as `identity` is still active at `now`, when its issuer's
    /// provider introspects JWTs (`Ok` for every other one): the answer remembered for it, else
    /// its provider's, remembered within the token's `exp` too. Refused when the provider says
    /// it is not active, and when no answer could be had.
    pub async fn confirm_jwt(&self, token: &str, identity: &Identity, now: u64) -> Result<(), JwtError> {
        let Some(provider) = self.providers.get(identity.issuer()).filter(|provider| provider.config.introspect_jwts)
        else {
            return Ok(());
        };
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a verified token's non-negative `exp` in seconds, rounded down"
        )]
        let expires_at = identity.expires_at().map(|exp| exp.max(0.0) as u64);
        let digest = KeyDigest::of(token);
        let answer = match provider.recall(&digest, now) {
            Some(answer) => {
                self.metrics.record_introspection_cache_hit();
                Ok(answer)
            }
            None => provider.answer_once(digest, token, now, expires_at, self).await,
        };
        match answer {
            Ok(answer) => confirms_jwt(&answer, &provider.config.issuer, identity.subject(), now),
            Err(_) => Err(JwtError::IntrospectionFailed),
        }
    }

    /// Each provider whose last call failed, and why (its endpoint's URL without userinfo or
    /// query), for `/readyz`.
    pub fn failing(&self) -> Vec<(Arc<str>, String)> {
        let mut failing: Vec<(Arc<str>, String)> = self
            .providers
            .values()
            .filter_map(|provider| {
                let cause = provider.failing.lock().unwrap_or_else(PoisonError::into_inner).clone()?;
                Some((provider.config.issuer.clone(), cause))
            })
            .collect();
        failing.sort();
        failing
    }
}

impl Provider {
    fn recall(&self, digest: &KeyDigest, now: u64) -> Option<Arc<Value>> {
        let remembered = self.remembered.lock().unwrap_or_else(PoisonError::into_inner);
        remembered.get(digest).filter(|entry| now < entry.until).map(|entry| entry.answer.clone())
    }

    /// The token's remembered answer at `now`, as the identity built from it with `kept` when
    /// there is one (an identity accepted once stays so until `until`, which its `exp` bounds).
    fn recall_built(&self, digest: &KeyDigest, kept: &Arc<ClaimPaths>, now: u64) -> Option<Recalled> {
        let remembered = self.remembered.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = remembered.get(digest).filter(|entry| now < entry.until)?;
        Some(match &entry.built {
            Some((paths, identity)) if Arc::ptr_eq(paths, kept) => Recalled::Built(identity.clone()),
            _ => Recalled::Answer(entry.answer.clone()),
        })
    }

    /// Keeps `identity`, built with `kept` from `answer`, beside the token's remembered answer
    /// while that is still `answer` (never beside a newer one).
    fn remember_built(
        &self,
        digest: &KeyDigest,
        answer: &Arc<Value>,
        kept: &Arc<ClaimPaths>,
        identity: &Arc<Identity>,
    ) {
        let mut remembered = self.remembered.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = remembered.get_mut(digest).filter(|entry| Arc::ptr_eq(&entry.answer, answer)) {
            entry.built = Some((kept.clone(), identity.clone()));
        }
    }

    /// The answer for the token: one call for all the checks that ask at once (the first one
    /// remembered by then is taken), remembered when active.
    async fn answer_once(
        &self,
        digest: KeyDigest,
        token: &str,
        now: u64,
        expires_at: Option<u64>,
        owner: &Introspection,
    ) -> CallOutcome {
        let cell = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
            in_flight.entry(digest).or_default().clone()
        };
        let outcome = cell
            .get_or_init(|| async {
                if let Some(answer) = self.recall(&digest, now) {
                    return Ok(answer);
                }
                let outcome = self.call(token, owner).await;
                if let Ok(answer) = &outcome {
                    self.remember(digest, answer, now, expires_at, owner.max_remembered);
                }
                outcome
            })
            .await
            .clone();
        let mut in_flight = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        if in_flight.get(&digest).is_some_and(|current| Arc::ptr_eq(current, &cell)) {
            in_flight.remove(&digest);
        }
        outcome
    }

    /// Remembers an active answer until its `exp`, the token's own `expires_at` or
    /// `cache_max_secs` from `now`, whichever comes first; an inactive one, or one when the
    /// table is full of live answers, is not.
    fn remember(
        &self,
        digest: KeyDigest,
        answer: &Arc<Value>,
        now: u64,
        expires_at: Option<u64>,
        max_remembered: usize,
    ) {
        if answer.get("active") != Some(&Value::Bool(true)) || self.config.cache_max_secs == 0 {
            return;
        }
        let bound = now.saturating_add(self.config.cache_max_secs).min(expires_at.unwrap_or(u64::MAX));
        let until = match answer.get("exp") {
            Some(exp) => match exp.as_f64() {
                #[expect(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    reason = "a non-negative time in seconds, rounded down"
                )]
                Some(exp) if exp >= 0.0 => bound.min(exp as u64),
                _ => return,
            },
            None => bound,
        };
        let mut remembered = self.remembered.lock().unwrap_or_else(PoisonError::into_inner);
        if remembered.len() >= max_remembered {
            remembered.retain(|_, entry| now < entry.until);
        }
        if remembered.len() < max_remembered {
            remembered.insert(digest, Remembered { answer: answer.clone(), until, built: None });
        }
    }

    /// One call to the endpoint, within the bound on calls at once: its answer, or why none.
    async fn call(&self, token: &str, owner: &Introspection) -> CallOutcome {
        let outcome = self.call_unmeasured(token, owner).await;
        let result = match &outcome {
            Ok(answer) if answer.get("active") == Some(&Value::Bool(true)) => "active",
            Ok(answer) if answer.get("active") == Some(&Value::Bool(false)) => "inactive",
            Ok(_) => "error",
            Err(Failure::Busy) => "busy",
            Err(Failure::Error(_)) => "error",
        };
        owner.metrics.record_introspection_call(result);
        // Busy is this server's own bound, not the endpoint's state.
        let failing = match &outcome {
            Ok(answer) if answer.get("active").is_some_and(Value::is_boolean) => Some(None),
            Ok(_) => Some(Some("the answer has no boolean `active`".to_string())),
            Err(Failure::Error(cause)) => Some(Some(cause.clone())),
            Err(Failure::Busy) => None,
        };
        if let Some(failing) = failing {
            let mut state = self.failing.lock().unwrap_or_else(PoisonError::into_inner);
            if state.is_some() != failing.is_some() {
                owner.metrics.record_introspection_provider_failing(failing.is_some());
            }
            *state = failing;
        }
        outcome.map_err(|failure| match failure {
            Failure::Busy => "busy",
            Failure::Error(_) => "error",
        })
    }

    async fn call_unmeasured(&self, token: &str, owner: &Introspection) -> Result<Arc<Value>, Failure> {
        let timeout = self.config.timeout;
        let Ok(Ok(_permit)) = tokio::time::timeout(timeout, self.permits.acquire()).await else {
            tracing::warn!(issuer = %self.config.issuer, "Introspection calls all busy; the token is refused");
            return Err(Failure::Busy);
        };
        let endpoint = self.endpoint(&owner.outbound).await.map_err(|error| {
            tracing::warn!(issuer = %self.config.issuer, %error, "Introspection endpoint not found; the token is refused");
            Failure::Error(format!("endpoint not found: {error}"))
        })?;
        let config = &self.config;
        let mut form = vec![("token", token), ("token_type_hint", "access_token")];
        let assertion;
        let basic = match &config.credential {
            ClientCredential::Secret(secret, ClientAuth::ClientSecretPost) => {
                form.extend([("client_id", config.client_id.as_str()), ("client_secret", &*secret.0)]);
                None
            }
            ClientCredential::Secret(secret, _) => Some((config.client_id.as_str(), &*secret.0)),
            ClientCredential::PrivateKey(key) => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs());
                assertion = key.sign(&config.client_id, &config.issuer, now).map_err(|error| {
                    tracing::error!(issuer = %config.issuer, %error, "Introspection client assertion not signed; the token is refused");
                    Failure::Error(error)
                })?;
                form.extend([
                    ("client_id", config.client_id.as_str()),
                    ("client_assertion_type", ASSERTION_TYPE),
                    ("client_assertion", assertion.as_str()),
                ]);
                None
            }
        };
        match owner.outbound.post_form_json(endpoint, &form, basic, timeout).await {
            Ok(answer) => Ok(Arc::new(answer)),
            Err(error) => {
                tracing::warn!(issuer = %config.issuer, %error, "Introspection failed; the token is refused");
                Err(Failure::Error(error.to_string()))
            }
        }
    }

    /// The endpoint: configured, or read from the issuer's discovery document (once found,
    /// kept; a failed discovery is tried again by the next call).
    async fn endpoint(&self, outbound: &Outbound) -> Result<&str, String> {
        if let Some(endpoint) = &self.config.endpoint {
            return Ok(endpoint);
        }
        let discovered = self
            .discovered
            .get_or_try_init(|| async {
                let url = format!("{}/.well-known/openid-configuration", self.config.issuer);
                let document = outbound.get_json(&url, self.config.timeout).await.map_err(|error| error.to_string())?;
                match document.get("introspection_endpoint").and_then(Value::as_str) {
                    Some(endpoint) => Ok(endpoint.to_string()),
                    None => Err(format!("`{url}` names no `introspection_endpoint`")),
                }
            })
            .await?;
        Ok(discovered)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    const ISSUER: &str = "https://idp.example";
    const NOW: u64 = 1_800_000_000;

    /// What the fake endpoint saw: calls, calls under way now and at most, the last request.
    #[derive(Debug, Default)]
    struct Seen {
        calls: AtomicUsize,
        now: AtomicUsize,
        most: AtomicUsize,
        last_request: Mutex<String>,
    }

    /// An introspection endpoint on loopback answering `answer(token)` (status, body) after `delay`.
    async fn endpoint(
        delay: Duration,
        answer: impl Fn(&str) -> (u16, String) + Send + Sync + 'static,
    ) -> (String, Arc<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/introspect", listener.local_addr().unwrap());
        let seen = Arc::new(Seen::default());
        let (answer, counts) = (Arc::new(answer), seen.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (answer, seen) = (answer.clone(), counts.clone());
                tokio::spawn(async move {
                    let request = read_request(&mut stream).await;
                    seen.calls.fetch_add(1, Ordering::SeqCst);
                    let under_way = seen.now.fetch_add(1, Ordering::SeqCst) + 1;
                    seen.most.fetch_max(under_way, Ordering::SeqCst);
                    let body = request.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
                    let token = form_urlencoded::parse(body.as_bytes())
                        .find(|(name, _)| name == "token")
                        .map(|(_, value)| value.into_owned())
                        .unwrap_or_default();
                    *seen.last_request.lock().unwrap() = request;
                    tokio::time::sleep(delay).await;
                    let (status, body) = answer(&token);
                    seen.now.fetch_sub(1, Ordering::SeqCst);
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        (url, seen)
    }

    /// The request's head and its whole body (by `content-length`).
    async fn read_request(stream: &mut tokio::net::TcpStream) -> String {
        let mut bytes = Vec::new();
        let mut buffer = [0; 4096];
        loop {
            let read = stream.read(&mut buffer).await.unwrap_or(0);
            bytes.extend_from_slice(&buffer[..read]);
            let text = String::from_utf8_lossy(&bytes).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|line| {
                        line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                    })
                    .and_then(|value| value.parse::<usize>().ok())
                    .unwrap_or(0);
                if body.len() >= length || read == 0 {
                    return text;
                }
            } else if read == 0 {
                return text;
            }
        }
    }

    fn active(token: &str) -> (u16, String) {
        match token {
            "inactive" => (200, json!({"active": false}).to_string()),
            "garbage" => (200, "{\"no\": \"answer\"}".into()),
            "failing" => (503, String::new()),
            "short-lived" => (200, json!({"active": true, "sub": token, "exp": NOW + 2}).to_string()),
            _ => (200, json!({"active": true, "sub": token, "scope": "a b"}).to_string()),
        }
    }

    fn introspection(url: &str, configure: impl FnOnce(&mut ProviderConfig)) -> Introspection {
        let mut config = ProviderConfig {
            issuer: ISSUER.into(),
            endpoint: Some(url.into()),
            client_id: "portcullis".into(),
            credential: ClientCredential::Secret(ClientSecret("s3cret".into()), ClientAuth::ClientSecretBasic),
            introspect_jwts: false,
            timeout: Duration::from_secs(5),
            cache_max_secs: 60,
            max_concurrent_calls: 8,
        };
        configure(&mut config);
        let limits = IntrospectionLimits {
            outbound: OutboundLimits { timeout: Duration::from_secs(5), max_bytes: 64 * 1024, allow_link_local: false },
            max_token_bytes: 1024,
            max_remembered: 100,
        };
        Introspection::new(vec![config], limits, Arc::new(Metrics::new())).unwrap()
    }

    async fn principal_or_error(introspection: &Introspection, token: &str, now: u64) -> Result<String, JwtError> {
        let opaque = OpaqueToken { token, issuer: ISSUER.into() };
        match introspection.authenticate(&opaque, &Arc::new(ClaimPaths::default()), now).await {
            Authentication::Introspected { identity } => Ok(format!("{}/{}", identity.issuer(), identity.subject())),
            Authentication::Failed { error } => Err(error),
            other => panic!("not an introspection's outcome: {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_active_answer_is_remembered_and_nothing_else_is() {
        let (url, seen) = endpoint(Duration::ZERO, active).await;
        let introspection = introspection(&url, |_| {});
        let rows: [(&str, Result<&str, JwtError>, usize); 4] = [
            ("t1", Ok("https://idp.example/t1"), 1),
            ("inactive", Err(JwtError::TokenInactive), 3),
            ("garbage", Err(JwtError::IntrospectionFailed), 3),
            ("failing", Err(JwtError::IntrospectionFailed), 3),
        ];
        for (token, expected, calls_for_three_checks) in rows {
            let before = seen.calls.load(Ordering::SeqCst);
            for _ in 0..3 {
                let got = principal_or_error(&introspection, token, NOW).await;
                assert_eq!(got.as_deref().map_err(|error| *error), expected, "{token}");
            }
            assert_eq!(seen.calls.load(Ordering::SeqCst) - before, calls_for_three_checks, "{token}");
        }
    }

    #[tokio::test]
    async fn a_remembered_token_gets_the_identity_built_once_for_the_claims_the_policies_keep() {
        let (url, seen) = endpoint(Duration::ZERO, active).await;
        let introspection = introspection(&url, |_| {});
        let opaque = OpaqueToken { token: "t1", issuer: ISSUER.into() };
        let identity = |kept: &Arc<ClaimPaths>, now: u64| {
            let introspection = &introspection;
            let opaque = &opaque;
            let kept = kept.clone();
            async move {
                match introspection.authenticate(opaque, &kept, now).await {
                    Authentication::Introspected { identity } => identity,
                    other => panic!("not an identity: {other:?}"),
                }
            }
        };
        let kept = Arc::new(ClaimPaths::default());
        let (first, again) = (identity(&kept, NOW).await, identity(&kept, NOW + 1).await);
        assert!(Arc::ptr_eq(&first, &again), "the identity built for the first check serves the next");
        let reloaded = Arc::new(ClaimPaths::default());
        let rebuilt = identity(&reloaded, NOW + 2).await;
        assert!(!Arc::ptr_eq(&first, &rebuilt), "other claim paths (a reload) build the identity again");
        assert!(Arc::ptr_eq(&rebuilt, &identity(&reloaded, NOW + 3).await));
        assert_eq!(seen.calls.load(Ordering::SeqCst), 1, "one call for all of them");
        assert_eq!(rebuilt.subject(), first.subject());
    }

    #[tokio::test]
    async fn an_answer_is_remembered_neither_past_the_tokens_exp_nor_past_the_configured_maximum() {
        let (url, seen) = endpoint(Duration::ZERO, active).await;
        let introspection = introspection(&url, |config| config.cache_max_secs = 5);
        let calls = |expected: usize, case: &str| assert_eq!(seen.calls.load(Ordering::SeqCst), expected, "{case}");
        assert!(principal_or_error(&introspection, "short-lived", NOW).await.is_ok());
        assert!(principal_or_error(&introspection, "short-lived", NOW + 1).await.is_ok());
        calls(1, "remembered within its exp");
        assert_eq!(principal_or_error(&introspection, "short-lived", NOW + 2).await, Err(JwtError::TokenInactive));
        calls(2, "asked again at its exp, and the provider's `active` does not outlive `exp`");
        assert!(principal_or_error(&introspection, "long-lived", NOW).await.is_ok());
        assert!(principal_or_error(&introspection, "long-lived", NOW + 4).await.is_ok());
        calls(3, "remembered within the maximum");
        assert!(principal_or_error(&introspection, "long-lived", NOW + 5).await.is_ok());
        calls(4, "asked again once the maximum passed");
    }

    #[tokio::test]
    async fn concurrent_checks_of_one_token_make_one_call() {
        let (url, seen) = endpoint(Duration::from_millis(100), active).await;
        let introspection = introspection(&url, |_| {});
        let checks = (0..20).map(|_| principal_or_error(&introspection, "shared", NOW));
        let outcomes = futures_util::future::join_all(checks).await;
        assert!(outcomes.iter().all(|outcome| outcome.as_deref() == Ok("https://idp.example/shared")), "{outcomes:?}");
        assert_eq!(seen.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn concurrent_checks_of_a_failing_token_share_one_failed_call_and_remember_nothing() {
        let (url, seen) = endpoint(Duration::from_millis(100), active).await;
        let introspection = introspection(&url, |_| {});
        let checks = (0..10).map(|_| principal_or_error(&introspection, "failing", NOW));
        let outcomes = futures_util::future::join_all(checks).await;
        assert!(outcomes.iter().all(|outcome| *outcome == Err(JwtError::IntrospectionFailed)), "{outcomes:?}");
        assert_eq!(seen.calls.load(Ordering::SeqCst), 1);
        assert_eq!(principal_or_error(&introspection, "failing", NOW).await, Err(JwtError::IntrospectionFailed));
        assert_eq!(seen.calls.load(Ordering::SeqCst), 2, "the failure was not remembered");
    }

    #[tokio::test]
    async fn calls_under_way_at_once_never_pass_the_bound() {
        let (url, seen) = endpoint(Duration::from_millis(50), active).await;
        let introspection = introspection(&url, |config| config.max_concurrent_calls = 2);
        let tokens: Vec<String> = (0..8).map(|index| format!("made-up-{index}")).collect();
        let outcomes =
            futures_util::future::join_all(tokens.iter().map(|token| principal_or_error(&introspection, token, NOW)))
                .await;
        assert!(outcomes.iter().all(Result::is_ok), "each waited for a free call: {outcomes:?}");
        assert_eq!(seen.calls.load(Ordering::SeqCst), 8);
        assert!(seen.most.load(Ordering::SeqCst) <= 2, "{} calls at once", seen.most.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_check_that_finds_no_free_call_in_time_is_refused() {
        let (url, _) = endpoint(Duration::from_secs(30), active).await;
        let introspection = introspection(&url, |config| {
            config.max_concurrent_calls = 1;
            config.timeout = Duration::from_millis(200);
        });
        let (first, second) = tokio::join!(
            principal_or_error(&introspection, "slow-1", NOW),
            principal_or_error(&introspection, "slow-2", NOW)
        );
        assert_eq!((first, second), (Err(JwtError::IntrospectionFailed), Err(JwtError::IntrospectionFailed)));
    }

    #[tokio::test]
    async fn the_call_carries_the_token_its_hint_and_the_client_as_configured() {
        let (url, seen) = endpoint(Duration::ZERO, active).await;
        let basic = introspection(&url, |_| {});
        assert!(principal_or_error(&basic, "t+1", NOW).await.is_ok());
        let request = seen.last_request.lock().unwrap().to_ascii_lowercase();
        assert!(request.contains("authorization: basic cg9ydgn1bgxpczpzm2nyzxq="), "{request}");
        assert!(request.ends_with("token=t%2b1&token_type_hint=access_token"), "{request}");
        let post = introspection(&url, |config| {
            config.credential = ClientCredential::Secret(ClientSecret("s3cret".into()), ClientAuth::ClientSecretPost);
        });
        assert!(principal_or_error(&post, "t2", NOW).await.is_ok());
        let request = seen.last_request.lock().unwrap().clone();
        assert!(!request.to_ascii_lowercase().contains("authorization:"), "{request}");
        assert!(
            request.ends_with("token=t2&token_type_hint=access_token&client_id=portcullis&client_secret=s3cret"),
            "{request}"
        );
    }

    /// A JWT verified locally as `subject` of `issuer`, expiring at `exp`.
    fn verified_jwt(issuer: &str, subject: &str, exp: u64) -> Identity {
        let claims = json!({"iss": issuer, "sub": subject, "exp": exp});
        Identity::for_tests(claims.as_object().unwrap(), &Arc::default(), Arc::from([]))
    }

    #[tokio::test]
    async fn a_jwt_is_asked_about_only_when_its_issuers_provider_introspects_jwts() {
        let (url, seen) = endpoint(Duration::ZERO, |token| match token {
            "jwt-of-a-logged-out-user" => (200, json!({"active": false}).to_string()),
            "jwt-of-mallory" => (200, json!({"active": true, "sub": "mallory"}).to_string()),
            _ => (200, json!({"active": true, "sub": "alice"}).to_string()),
        })
        .await;
        let off = introspection(&url, |_| {});
        let alice = verified_jwt(ISSUER, "alice", NOW + 2);
        assert_eq!(off.confirm_jwt("jwt", &alice, NOW).await, Ok(()));
        assert_eq!(seen.calls.load(Ordering::SeqCst), 0, "`introspect_jwts` off: never asked");
        let on = introspection(&url, |config| config.introspect_jwts = true);
        let other_issuer = verified_jwt("https://other.example", "alice", NOW + 2);
        assert_eq!(on.confirm_jwt("jwt", &other_issuer, NOW).await, Ok(()));
        assert_eq!(seen.calls.load(Ordering::SeqCst), 0, "another issuer's JWT: never shown to this provider");
        let rows = [
            ("jwt-of-alice", Ok(())),
            ("jwt-of-a-logged-out-user", Err(JwtError::TokenInactive)),
            ("jwt-of-mallory", Err(JwtError::IntrospectionFailed)),
        ];
        for (token, expected) in rows {
            assert_eq!(on.confirm_jwt(token, &alice, NOW).await, expected, "{token}");
        }
        let calls = seen.calls.load(Ordering::SeqCst);
        assert_eq!(on.confirm_jwt("jwt-of-alice", &alice, NOW + 1).await, Ok(()));
        assert_eq!(seen.calls.load(Ordering::SeqCst), calls, "remembered within the token's exp");
        assert_eq!(on.confirm_jwt("jwt-of-alice", &alice, NOW + 2).await, Ok(()));
        assert_eq!(seen.calls.load(Ordering::SeqCst), calls + 1, "asked again at the token's exp");
    }

    #[tokio::test]
    async fn a_failed_call_is_named_until_a_call_gets_an_answer() {
        let (url, _) = endpoint(Duration::ZERO, active).await;
        let introspection = introspection(&url, |_| {});
        assert_eq!(introspection.failing(), []);
        assert_eq!(principal_or_error(&introspection, "failing", NOW).await, Err(JwtError::IntrospectionFailed));
        let failing = introspection.failing();
        assert_eq!(failing.len(), 1, "{failing:?}");
        assert_eq!(&*failing[0].0, ISSUER);
        assert!(failing[0].1.contains("status 503") && !failing[0].1.contains("failing"), "{failing:?}");
        let metrics = introspection.metrics.encode();
        assert!(metrics.contains("portcullis_introspection_providers_failing 1"), "{metrics}");
        assert_eq!(principal_or_error(&introspection, "failing", NOW).await, Err(JwtError::IntrospectionFailed));
        let metrics = introspection.metrics.encode();
        assert!(metrics.contains("portcullis_introspection_providers_failing 1"), "counted once: {metrics}");
        assert_eq!(principal_or_error(&introspection, "inactive", NOW).await, Err(JwtError::TokenInactive));
        assert_eq!(introspection.failing(), [], "an answer, even inactive, ends the failure");
        let metrics = introspection.metrics.encode();
        assert!(metrics.contains("portcullis_introspection_providers_failing 0"), "{metrics}");
    }

    #[tokio::test]
    async fn a_client_assertion_is_sent_in_place_of_a_secret_with_private_key_jwt() {
        let (url, seen) = endpoint(Duration::ZERO, active).await;
        let key_file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys/rsa-2048.pem");
        let key = AssertionKey::read(&key_file, None).unwrap();
        let introspection = introspection(&url, |config| config.credential = ClientCredential::PrivateKey(key));
        assert!(principal_or_error(&introspection, "t", NOW).await.is_ok());
        let request = seen.last_request.lock().unwrap().clone();
        assert!(!request.to_ascii_lowercase().contains("authorization:"), "{request}");
        let body = request.split("\r\n\r\n").nth(1).unwrap_or_default();
        let form: HashMap<String, String> = form_urlencoded::parse(body.as_bytes()).into_owned().collect();
        assert_eq!(form.get("client_id").map(String::as_str), Some("portcullis"));
        assert_eq!(form.get("client_assertion_type").map(String::as_str), Some(ASSERTION_TYPE));
        assert!(!form.contains_key("client_secret"), "{form:?}");
        let assertion = form.get("client_assertion").expect("an assertion");
        let header = jsonwebtoken::decode_header(assertion).unwrap();
        assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
    }

    #[test]
    fn private_key_jwt_takes_a_readable_key_and_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "hunter2").unwrap();
        let key = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys/ec-p256.pem");
        let provider = |configure: &dyn Fn(&mut ProviderSettings)| {
            let mut provider = ProviderSettings {
                issuer: ISSUER.into(),
                client_id: "portcullis".into(),
                client_auth: ClientAuth::PrivateKeyJwt,
                private_key_file: Some(key.clone()),
                ..ProviderSettings::default()
            };
            configure(&mut provider);
            IntrospectionSettings { providers: vec![provider] }.compile(|_| None)
        };
        assert!(provider(&|_| {}).is_ok());
        /// A case: its name, how it changes the good provider, and the problem it must give.
        type Row<'r> = (&'r str, &'r dyn Fn(&mut ProviderSettings), &'r str);
        let rows: [Row<'_>; 4] = [
            ("no key", &|p| p.private_key_file = None, "private_key_file: must be set"),
            (
                "a secret beside it",
                &|p| p.client_secret_file = Some(secret.clone()),
                "client_auth: `private_key_jwt` takes",
            ),
            ("not a key", &|p| p.private_key_file = Some(secret.clone()), "holds no RSA or P-256 private key"),
            (
                "a key without private_key_jwt",
                &|p| {
                    p.client_auth = ClientAuth::ClientSecretBasic;
                    p.client_secret_file = Some(secret.clone());
                },
                "private_key_file: only `client_auth: private_key_jwt`",
            ),
        ];
        for (case, configure, expected) in rows {
            let problems = provider(configure).unwrap_err();
            assert!(problems.iter().any(|problem| problem.contains(expected)), "{case}: {problems:?}");
            assert!(problems.iter().all(|problem| !problem.contains("hunter2")), "{case}: {problems:?}");
        }
    }

    #[tokio::test]
    async fn a_token_too_long_or_empty_is_refused_without_a_call() {
        let (url, seen) = endpoint(Duration::ZERO, active).await;
        let introspection = introspection(&url, |_| {});
        assert_eq!(principal_or_error(&introspection, &"x".repeat(1025), NOW).await, Err(JwtError::TokenInactive));
        assert_eq!(principal_or_error(&introspection, "", NOW).await, Err(JwtError::TokenInactive));
        assert_eq!(seen.calls.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn the_settings_block_names_each_of_its_problems_and_never_shows_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "hunter2-very-secret\n").unwrap();
        let good = ProviderSettings {
            issuer: ISSUER.into(),
            client_id: "portcullis".into(),
            client_secret_file: Some(secret),
            ..ProviderSettings::default()
        };
        let configs = IntrospectionSettings { providers: vec![good.clone()] }.compile(|_| None).unwrap();
        assert!(
            matches!(&configs[0].credential, ClientCredential::Secret(secret, _) if &*secret.0 == "hunter2-very-secret")
        );
        assert!(!format!("{configs:?}").contains("hunter2"), "{configs:?}");
        let bad = ProviderSettings {
            issuer: "idp".into(),
            endpoint: Some("ftp://idp/introspect".into()),
            client_id: String::new(),
            client_secret_file: None,
            client_secret_env: Some("UNSET_VARIABLE".into()),
            timeout_ms: 0,
            max_concurrent_calls: 0,
            ..ProviderSettings::default()
        };
        let problems =
            IntrospectionSettings { providers: vec![good.clone(), good, bad] }.compile(|_| None).unwrap_err();
        let keys: Vec<&str> = problems.iter().filter_map(|problem| problem.split(':').next()).collect();
        assert_eq!(
            keys,
            [
                "introspection.providers[1].issuer",
                "introspection.providers[2].issuer",
                "introspection.providers[2].endpoint",
                "introspection.providers[2].client_id",
                "introspection.providers[2].timeout_ms",
                "introspection.providers[2].max_concurrent_calls",
                "introspection.providers[2].client_secret_env",
            ],
            "{problems:?}"
        );
        assert!(problems.iter().all(|problem| !problem.contains("hunter2")));
    }
}
