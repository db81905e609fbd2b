//! The `sso` block of the server settings (browser single sign-on) and its checked form; reads the client secret, the Redis password and the session keys from files or environment variables, never from the settings themselves, and never shows them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::envelope::{KeyRing, SessionKey};
use super::providers::{ProviderProblem, ProviderSettings, Providers, compile_providers};
use super::site::{AnonymousAnswer, SiteEntry};
use crate::core::redirect::{AllowedDomain, RedirectPolicy, RedirectTarget};

/// The `sso` block as written in the settings file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SsoSettings {
    /// The identity providers a person may log in with (each with its `name`, `kind`, client
    /// and options); instead of the single provider's `issuer`, `client_id`, ... below.
    pub providers: Vec<ProviderSettings>,
    /// The OIDC provider's issuer URL; its discovery document is at
    /// `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    /// The client portcullis is registered as at the provider.
    pub client_id: String,
    /// A file holding the client secret (trailing whitespace ignored).
    pub client_secret_file: Option<PathBuf>,
    /// An environment variable holding the client secret.
    pub client_secret_env: Option<String>,
    /// The scopes asked for; `openid` is always among them.
    pub scopes: Vec<String>,
    /// The callback URL registered at the provider: `https://auth.example.com/oauth2/callback`.
    pub redirect_url: String,
    /// Where the login endpoints are served on the HTTP door.
    pub endpoint_prefix: String,
    /// The session cookie's name; `__Secure-` is put before it when `cookie_secure` is on.
    pub cookie_name: String,
    /// The parent domain the session cookie is sent to (`example.com`: every subdomain);
    /// unset, only the host that set it.
    pub cookie_domain: Option<String>,
    /// Mark cookies `Secure` (sent over TLS only).
    pub cookie_secure: bool,
    /// Where a login may send the browser back to, beside paths on the site itself and the
    /// `sites` (on any port):
    /// `app.example.com`, `.example.com` (with subdomains), optionally `:8443` or `:*`.
    pub allowed_redirect_domains: Vec<String>,
    /// Allow `http://` redirect targets (tests, plain-text development setups).
    pub allow_http_redirects: bool,
    /// A session not used this long ends.
    pub session_idle_timeout_secs: u64,
    /// A session ends this long after its login, used or not.
    pub session_max_lifetime_secs: u64,
    /// Sessions kept in memory; when full, the least recently used one ends.
    pub max_sessions: usize,
    /// How long a login may take from its start to its callback.
    pub login_timeout_secs: u64,
    /// The hosts whose anonymous visitors are offered a browser login instead of a 403:
    /// `grafana.example.com`, or `.example.com` for the domain and every subdomain; or
    /// `{host: ..., anonymous: ...}` to choose how such a site asks for the login.
    pub sites: Vec<SiteEntry>,
    /// Sessions shared by every replica through Redis; unset, each replica keeps its own in memory.
    pub redis: Option<RedisSettings>,
    /// At sign-out, also end the person's session at the provider (RP-initiated logout), when
    /// its discovery document names an `end_session_endpoint`.
    pub sign_out_at_provider: bool,
    /// Where the provider sends the browser after its sign-out, when the sign-out's `rd` is no
    /// absolute URL (registered at the provider as a post-logout redirect URI; checked like
    /// every redirect target); unset, the provider shows its own page.
    pub post_logout_redirect_url: Option<String>,
    /// A back-channel logout token issued longer ago than this is refused (clock skew added);
    /// its `jti` is remembered as long, so that a replay is refused.
    pub logout_token_max_age_secs: u64,
    /// A check refreshes the session's access token at the provider once it is this close to
    /// its expiry (at most half the token's lifetime).
    pub refresh_before_secs: u64,
    /// The names of the headers that carry a session's identity to the app.
    pub headers: HeaderNameSettings,
    /// Send the session's access token to the app, in `headers.access_token`.
    pub pass_access_token: bool,
}

/// The `sso.headers` block: the name of each header that carries a session's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderNameSettings {
    /// The ID token's `sub`.
    pub user: String,
    /// Its `email`.
    pub email: String,
    /// Its `groups`, comma-separated.
    pub groups: String,
    /// Its `preferred_username`.
    pub preferred_username: String,
    /// `email`, or `sub` when there is none.
    pub plain_user: String,
    /// The provider's access token (with `pass_access_token`).
    pub access_token: String,
}

impl Default for HeaderNameSettings {
    fn default() -> Self {
        Self {
            user: "X-Auth-Request-User".into(),
            email: "X-Auth-Request-Email".into(),
            groups: "X-Auth-Request-Groups".into(),
            preferred_username: "X-Auth-Request-Preferred-Username".into(),
            plain_user: "X-Auth-User".into(),
            access_token: "X-Auth-Request-Access-Token".into(),
        }
    }
}

/// The headers that carry a session's identity, checked and lowercase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityHeaders {
    /// The ID token's `sub`.
    pub user: Box<str>,
    /// Its `email`.
    pub email: Box<str>,
    /// Its `groups`, comma-separated.
    pub groups: Box<str>,
    /// Its `preferred_username`.
    pub preferred_username: Box<str>,
    /// `email`, or `sub` when there is none.
    pub plain_user: Box<str>,
    /// The provider's access token.
    pub access_token: Box<str>,
}

impl IdentityHeaders {
    /// Every name, the access token's last: a client's own copy of each is always removed.
    pub fn all(&self) -> [&str; 6] {
        [&self.user, &self.email, &self.groups, &self.preferred_username, &self.plain_user, &self.access_token]
    }
}

/// Headers an identity header may not replace: what the proxy, portcullis or the app rely on
/// for something else.
const RESERVED_HEADERS: [&str; 13] = [
    "authorization",
    "connection",
    "content-length",
    "content-type",
    "cookie",
    "host",
    "location",
    "proxy-authorization",
    "set-cookie",
    "te",
    "transfer-encoding",
    "upgrade",
    "x-envoy-auth-headers-to-remove",
];

impl HeaderNameSettings {
    /// Checks each name (an HTTP token, not a reserved header, not used twice), reporting each
    /// problem to `problem`.
    fn compile(&self, problem: &mut impl FnMut(&'static str, String)) -> IdentityHeaders {
        let named = [
            ("headers.user", &self.user),
            ("headers.email", &self.email),
            ("headers.groups", &self.groups),
            ("headers.preferred_username", &self.preferred_username),
            ("headers.plain_user", &self.plain_user),
            ("headers.access_token", &self.access_token),
        ];
        let mut seen: Vec<String> = Vec::new();
        for (key, name) in named {
            let lower = name.to_ascii_lowercase();
            if name.is_empty() || !name.bytes().all(is_cookie_name_byte) {
                problem(key, format!("`{name}` is not a header name"));
            } else if RESERVED_HEADERS.contains(&lower.as_str()) {
                problem(key, format!("`{name}` is reserved; name another header"));
            } else if seen.contains(&lower) {
                problem(key, format!("`{name}` is already the name of another identity header"));
            }
            seen.push(lower);
        }
        let lower = |name: &String| Box::from(name.to_ascii_lowercase());
        IdentityHeaders {
            user: lower(&self.user),
            email: lower(&self.email),
            groups: lower(&self.groups),
            preferred_username: lower(&self.preferred_username),
            plain_user: lower(&self.plain_user),
            access_token: lower(&self.access_token),
        }
    }
}

/// The `sso.redis` block: the shared session store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// `redis://host:6379/0`, or `rediss://` for TLS; a password goes in `password_file` or
    /// `password_env`, never in the URL.
    pub url: String,
    /// A file holding the password (trailing whitespace ignored).
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the password.
    pub password_env: Option<String>,
    /// The keys sessions are encrypted with, each from a file or an environment variable: the
    /// first encrypts, every one decrypts.
    pub encryption_keys: Vec<KeySource>,
    /// What every session's Redis key starts with.
    pub key_prefix: String,
    /// The channel ended sessions are announced on.
    pub channel: String,
    /// How long a replica lets a session in from its local copy before asking Redis again.
    pub local_copy_secs: u64,
    /// While Redis cannot be reached, how long after its last read a local copy still lets its
    /// session in.
    pub outage_grace_secs: u64,
    /// The bound on one Redis command, connecting included.
    pub timeout_ms: u64,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: String::new(),
            password_file: None,
            password_env: None,
            encryption_keys: Vec::new(),
            key_prefix: "portcullis:session:".into(),
            channel: "portcullis:sessions-ended".into(),
            local_copy_secs: 5,
            outage_grace_secs: 300,
            timeout_ms: 500,
        }
    }
}

/// Where one secret is read from: exactly one of a file and an environment variable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySource {
    /// A file holding the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// An environment variable holding the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

impl Default for SsoSettings {
    fn default() -> Self {
        Self {
            providers: Vec::new(),
            issuer: String::new(),
            client_id: String::new(),
            client_secret_file: None,
            client_secret_env: None,
            scopes: vec!["openid".into(), "email".into(), "profile".into()],
            redirect_url: String::new(),
            endpoint_prefix: "/oauth2/".into(),
            cookie_name: "_portcullis_session".into(),
            cookie_domain: None,
            cookie_secure: true,
            allowed_redirect_domains: Vec::new(),
            allow_http_redirects: false,
            session_idle_timeout_secs: 8 * 60 * 60,
            session_max_lifetime_secs: 24 * 60 * 60,
            max_sessions: 100_000,
            login_timeout_secs: 10 * 60,
            sites: Vec::new(),
            redis: None,
            sign_out_at_provider: false,
            post_logout_redirect_url: None,
            logout_token_max_age_secs: 300,
            refresh_before_secs: 60,
            headers: HeaderNameSettings::default(),
            pass_access_token: false,
        }
    }
}

/// A problem with the `sso` block: the key (under `sso.`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sso.{within}{key}: {message}")]
pub struct SsoSettingsError {
    /// The entry of `sso.providers` the key belongs to (`providers[1].`); empty for a key of
    /// `sso` itself.
    pub within: String,
    /// The key under `sso.` (or under the provider entry).
    pub key: &'static str,
    /// What is wrong with its value; never the secret itself.
    pub message: String,
}

/// The client secret: shown as `[redacted]` in every `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientSecret(Box<str>);

impl ClientSecret {
    /// A secret read from its file or variable.
    pub(crate) fn new(secret: String) -> Self {
        Self(secret.into())
    }

    /// The secret, for the token request only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The Redis password: shown as `[redacted]` in every `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisPassword(Box<str>);

impl RedisPassword {
    /// The password, for the connection only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RedisPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The `sso.redis` block, checked.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// The server's URL, without a password.
    pub url: Box<str>,
    /// The password, from its file or variable.
    pub password: Option<RedisPassword>,
    /// The session keys.
    pub keys: Arc<KeyRing>,
    /// What every session's key starts with.
    pub key_prefix: Box<str>,
    /// The channel ended sessions are announced on.
    pub channel: Box<str>,
    /// How long a local copy lets its session in before Redis is asked again.
    pub local_copy: Duration,
    /// How long a local copy still counts while Redis cannot be reached.
    pub outage_grace: Duration,
    /// The bound on one Redis command.
    pub timeout: Duration,
}

/// One host of `sites`: exact, or a parent domain with its subdomains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    host: Box<str>,
    with_subdomains: bool,
    /// How its anonymous visitors are asked to log in.
    pub anonymous: AnonymousAnswer,
}

impl Site {
    /// `grafana.example.com`, or `.example.com` for the domain and its subdomains, answering
    /// anonymous visitors with the login; `None` for anything else (a port, a path, a character
    /// no host name has).
    pub fn parse(entry: &str) -> Option<Self> {
        let (host, with_subdomains) = entry.strip_prefix('.').map_or((entry, false), |host| (host, true));
        let is_host = AllowedDomain::parse(host).is_ok() && !host.contains(':');
        is_host.then(|| Self {
            host: host.to_ascii_lowercase().into(),
            with_subdomains,
            anonymous: AnonymousAnswer::default(),
        })
    }

    /// Whether `host` (a `Host` header, with or without its port) is this site.
    pub fn admits(&self, host: &str) -> bool {
        let name = host.rsplit_once(':').filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()));
        let name = name.map_or(host, |(name, _)| name).to_ascii_lowercase();
        name == *self.host
            || (self.with_subdomains
                && name.strip_suffix(&*self.host).is_some_and(|label| label.len() > 1 && label.ends_with('.')))
    }
}

/// The `sso` block, checked: what the login endpoints and the check need.
#[derive(Debug, Clone)]
pub struct SsoConfig {
    /// The identity providers, in the order written.
    pub providers: Providers,
    /// The callback URL registered at the provider.
    pub redirect_url: Box<str>,
    /// Where the login endpoints are served: starts and ends with `/`.
    pub endpoint_prefix: Box<str>,
    /// The session cookie's name, `__Secure-` included when secure.
    pub cookie_name: Box<str>,
    /// The login-transaction cookies' name prefix, `__Secure-` included when secure.
    pub state_cookie_prefix: Box<str>,
    /// The cookies' `Domain`, when set.
    pub cookie_domain: Option<Box<str>>,
    /// Whether cookies are `Secure`.
    pub cookie_secure: bool,
    /// Where a login may end.
    pub redirects: RedirectPolicy,
    /// A session not used this long ends.
    pub idle_timeout: Duration,
    /// A session ends this long after its login.
    pub max_lifetime: Duration,
    /// Sessions kept in memory.
    pub max_sessions: usize,
    /// How long a login may take.
    pub login_timeout: Duration,
    /// The hosts that offer a browser login, in the order of the settings.
    pub sites: Box<[Site]>,
    /// The shared session store, when configured.
    pub redis: Option<RedisConfig>,
    /// Whether sign-out also ends the session at the provider.
    pub sign_out_at_provider: bool,
    /// Where the provider sends the browser after its sign-out, when set.
    pub post_logout_redirect: Option<RedirectTarget>,
    /// How old a back-channel logout token may be.
    pub logout_token_max_age_secs: u64,
    /// How close to its expiry a session's access token is refreshed.
    pub refresh_before: Duration,
    /// The headers that carry a session's identity.
    pub headers: IdentityHeaders,
    /// Whether the session's access token goes to the app.
    pub pass_access_token: bool,
}

impl SsoSettings {
    /// Checks every key and reads the client secret (`variable` looks up the environment);
    /// every problem is reported, not only the first.
    pub fn compile(&self, variable: impl Fn(&str) -> Option<String>) -> Result<SsoConfig, Vec<SsoSettingsError>> {
        let mut errors = Vec::new();
        let single_form = self.providers.is_empty();
        let single;
        let entries = if single_form {
            single = [ProviderSettings::single(
                &self.issuer,
                &self.client_id,
                self.client_secret_file.as_ref(),
                self.client_secret_env.as_ref(),
                &self.scopes,
            )];
            &single[..]
        } else {
            let written_at_top = !self.issuer.is_empty()
                || !self.client_id.is_empty()
                || self.client_secret_file.is_some()
                || self.client_secret_env.is_some()
                || self.scopes != SsoSettings::default().scopes;
            if written_at_top {
                let message = "set either `providers` or the single provider's `issuer`, `client_id`, \
                               `client_secret_*` and `scopes`, not both";
                errors.push(SsoSettingsError { within: String::new(), key: "providers", message: message.into() });
            }
            &self.providers[..]
        };
        let mut provider_problems = Vec::new();
        let providers = compile_providers(entries, single_form, &variable, &mut |found| provider_problems.push(found));
        for ProviderProblem { index, key, message } in provider_problems {
            let within = index.map(|index| format!("providers[{index}].")).unwrap_or_default();
            errors.push(SsoSettingsError { within, key, message });
        }
        let mut problem =
            |key: &'static str, message: String| errors.push(SsoSettingsError { within: String::new(), key, message });
        if !is_web_url(&self.redirect_url) {
            problem("redirect_url", format!("`{}` is not an http(s) URL", self.redirect_url));
        }
        let prefix = &self.endpoint_prefix;
        if !(prefix.starts_with('/') && prefix.ends_with('/') && prefix.bytes().all(|b| b.is_ascii_graphic())) {
            problem("endpoint_prefix", format!("`{prefix}` must start and end with `/`"));
        }
        if self.cookie_name.is_empty() || !self.cookie_name.bytes().all(is_cookie_name_byte) {
            problem("cookie_name", format!("`{}` is not a cookie name", self.cookie_name));
        }
        let cookie_domain = self.cookie_domain.as_deref().map(|domain| domain.trim_start_matches('.'));
        if let Some(domain) = cookie_domain
            && AllowedDomain::parse(domain).is_err()
        {
            problem("cookie_domain", format!("`{domain}` is not a domain name"));
        }
        let mut domains: Vec<AllowedDomain> = self
            .allowed_redirect_domains
            .iter()
            .filter_map(|entry| {
                AllowedDomain::parse(entry).map_err(|error| problem("allowed_redirect_domains", error.to_string())).ok()
            })
            .collect();
        // The sites are where a login comes back to: allowed on any port (a bad one is reported
        // under `sites` below).
        domains.extend(self.sites.iter().filter_map(|site| AllowedDomain::parse(&format!("{}:*", site.host())).ok()));
        for (key, value) in [
            ("session_idle_timeout_secs", self.session_idle_timeout_secs),
            ("session_max_lifetime_secs", self.session_max_lifetime_secs),
            ("login_timeout_secs", self.login_timeout_secs),
            ("logout_token_max_age_secs", self.logout_token_max_age_secs),
        ] {
            if value == 0 {
                problem(key, "must be at least 1".into());
            }
        }
        if self.max_sessions == 0 {
            problem("max_sessions", "must be at least 1".into());
        }
        let sites: Vec<Site> = self
            .sites
            .iter()
            .filter_map(|entry| {
                Site::parse(entry.host()).map(|site| Site { anonymous: entry.anonymous(), ..site }).or_else(|| {
                    problem("sites", format!("`{}` is not a host name or `.parent` domain", entry.host()));
                    None
                })
            })
            .collect();
        if self.sites.is_empty() {
            problem("sites", "name at least one host that offers a browser login".into());
        }
        let redirects = RedirectPolicy::new(domains, self.allow_http_redirects);
        let post_logout_redirect =
            self.post_logout_redirect_url.as_deref().and_then(|url| match redirects.check(url) {
                Ok(target) if is_web_url(url) => Some(target),
                _ => {
                    problem(
                        "post_logout_redirect_url",
                        format!("`{url}` is not an absolute URL to an allowed redirect domain"),
                    );
                    None
                }
            });
        let redis = self.redis.as_ref().and_then(|redis| redis.compile(&variable, &mut problem));
        let headers = self.headers.compile(&mut problem);
        let Some(providers) = providers.filter(|_| errors.is_empty()) else { return Err(errors) };
        let secure_prefix = if self.cookie_secure { "__Secure-" } else { "" };
        Ok(SsoConfig {
            providers,
            redirect_url: self.redirect_url.as_str().into(),
            endpoint_prefix: prefix.as_str().into(),
            cookie_name: format!("{secure_prefix}{}", self.cookie_name).into(),
            state_cookie_prefix: format!("{secure_prefix}{}_login_", self.cookie_name).into(),
            cookie_domain: cookie_domain.map(Into::into),
            cookie_secure: self.cookie_secure,
            redirects,
            idle_timeout: Duration::from_secs(self.session_idle_timeout_secs),
            max_lifetime: Duration::from_secs(self.session_max_lifetime_secs),
            max_sessions: self.max_sessions,
            login_timeout: Duration::from_secs(self.login_timeout_secs),
            sites: sites.into(),
            redis,
            sign_out_at_provider: self.sign_out_at_provider,
            post_logout_redirect,
            logout_token_max_age_secs: self.logout_token_max_age_secs,
            refresh_before: Duration::from_secs(self.refresh_before_secs),
            headers,
            pass_access_token: self.pass_access_token,
        })
    }
}

impl RedisSettings {
    /// Checks every key of `sso.redis` and reads its secrets, reporting each problem to `problem`.
    fn compile(
        &self,
        variable: &impl Fn(&str) -> Option<String>,
        problem: &mut impl FnMut(&'static str, String),
    ) -> Option<RedisConfig> {
        let mut complete = true;
        let mut fail = |key: &'static str, message: String| {
            complete = false;
            problem(key, message);
        };
        match redis::Client::open(self.url.as_str()) {
            Ok(client) if client.get_connection_info().redis_settings().password().is_some() => fail(
                "redis.url",
                "holds a password: put it in `password_file` or `password_env`, never in the settings".into(),
            ),
            Ok(_) => {}
            Err(error) => fail(
                "redis.url",
                format!("`{}` is not a redis:// or rediss:// URL: {error}", without_userinfo(&self.url)),
            ),
        }
        let password = match (&self.password_file, &self.password_env) {
            (None, None) => None,
            (Some(file), None) => read_secret_file(file).map_err(|message| fail("redis.password_file", message)).ok(),
            (None, Some(name)) => match variable(name).filter(|value| !value.is_empty()) {
                Some(value) => Some(value),
                None => {
                    fail("redis.password_env", format!("environment variable `{name}` is unset or empty"));
                    None
                }
            },
            (Some(_), Some(_)) => {
                fail("redis.password_file", "set at most one of `password_file` and `password_env`".into());
                None
            }
        };
        let mut keys = Vec::new();
        for (index, source) in self.encryption_keys.iter().enumerate() {
            let text = match (&source.file, &source.env) {
                (Some(file), None) => read_secret_file(file),
                (None, Some(name)) => variable(name).ok_or_else(|| format!("environment variable `{name}` is unset")),
                _ => Err("set exactly one of `file` and `env`".into()),
            };
            match text.and_then(|text| SessionKey::from_text(&text).map_err(|error| error.to_string())) {
                Ok(key) => keys.push(key),
                Err(message) => fail("redis.encryption_keys", format!("entry {}: {message}", index + 1)),
            }
        }
        let ring = KeyRing::new(keys);
        if self.encryption_keys.is_empty() {
            fail("redis.encryption_keys", "name at least one key, from a `file` or an `env` variable".into());
        }
        for (key, value) in [
            ("redis.local_copy_secs", self.local_copy_secs),
            ("redis.outage_grace_secs", self.outage_grace_secs),
            ("redis.timeout_ms", self.timeout_ms),
        ] {
            if value == 0 {
                fail(key, "must be at least 1".into());
            }
        }
        if self.key_prefix.is_empty() {
            fail("redis.key_prefix", "must not be empty".into());
        }
        if self.channel.is_empty() {
            fail("redis.channel", "must not be empty".into());
        }
        let ring = ring.filter(|_| complete)?;
        Some(RedisConfig {
            url: self.url.as_str().into(),
            password: password.map(|password| RedisPassword(password.into())),
            keys: Arc::new(ring),
            key_prefix: self.key_prefix.as_str().into(),
            channel: self.channel.as_str().into(),
            local_copy: Duration::from_secs(self.local_copy_secs),
            outage_grace: Duration::from_secs(self.outage_grace_secs),
            timeout: Duration::from_millis(self.timeout_ms),
        })
    }
}

/// A secret file's text without its trailing whitespace; a message naming the file when it
/// cannot be read or is empty.
pub(crate) fn read_secret_file(file: &Path) -> Result<String, String> {
    match std::fs::read_to_string(file) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim_end().to_string()),
        Ok(_) => Err(format!("`{}` is empty", file.display())),
        Err(error) => Err(format!("cannot read `{}`: {error}", file.display())),
    }
}

/// A URL as it may be shown: without what comes before an `@` in its authority.
fn without_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_string(),
    }
}

impl SsoConfig {
    /// Whether `host` offers a browser login to its anonymous visitors.
    pub fn is_site(&self, host: &str) -> bool {
        self.site(host).is_some()
    }

    /// The first of the `sites` that `host` is, when there is one.
    pub fn site(&self, host: &str) -> Option<&Site> {
        self.sites.iter().find(|site| site.admits(host))
    }
}

/// An `http://` or `https://` URL with a host, printable ASCII only.
pub(crate) fn is_web_url(url: &str) -> bool {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
    rest.is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/') && url.bytes().all(|b| b.is_ascii_graphic()))
}

/// RFC 6265's cookie-name token characters.
fn is_cookie_name_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(secret_file: &std::path::Path) -> SsoSettings {
        SsoSettings {
            issuer: "https://idp.example.com/realms/jobs/".into(),
            client_id: "portcullis".into(),
            client_secret_file: Some(secret_file.into()),
            redirect_url: "https://auth.example.com/oauth2/callback".into(),
            cookie_domain: Some(".example.com".into()),
            allowed_redirect_domains: vec![".example.com".into()],
            sites: vec![".example.com".into()],
            ..SsoSettings::default()
        }
    }

    #[test]
    fn a_complete_block_compiles_with_the_secure_cookie_names_and_openid_first() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let config = settings(&secret).compile(|_| None).unwrap();
        let [provider] = config.providers.all() else { panic!("one provider") };
        assert_eq!(provider.client_secret.expose(), "s3cret");
        assert_eq!(provider.issuer(), "https://idp.example.com/realms/jobs");
        assert_eq!(&*provider.name, "default", "the single-provider form is a provider named `default`");
        assert_eq!(&*config.cookie_name, "__Secure-_portcullis_session");
        assert_eq!(config.cookie_domain.as_deref(), Some("example.com"));
        assert_eq!(provider.scopes.first().map(|scope| &**scope), Some("openid"));
        assert!(config.is_site("grafana.example.com:443") && config.is_site("example.com"));
        assert!(!config.is_site("evilexample.com") && !config.is_site("example.com.evil.org"));
    }

    #[test]
    fn the_sites_are_redirect_targets_on_any_port_without_being_listed() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s").unwrap();
        let block = SsoSettings { allowed_redirect_domains: Vec::new(), ..settings(&secret) };
        let config = block.compile(|_| None).unwrap();
        assert!(config.redirects.check("https://grafana.example.com:8443/d").is_ok());
        assert!(config.redirects.check("https://evilexample.com/").is_err());
    }

    #[test]
    fn the_post_logout_redirect_is_an_absolute_url_to_an_allowed_domain() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s").unwrap();
        let defaults = settings(&secret).compile(|_| None).unwrap();
        assert!(!defaults.sign_out_at_provider, "off unless asked for");
        assert_eq!((defaults.post_logout_redirect, defaults.logout_token_max_age_secs), (None, 300));
        let good =
            SsoSettings { post_logout_redirect_url: Some("https://www.example.com/bye".into()), ..settings(&secret) };
        let config = good.compile(|_| None).unwrap();
        assert_eq!(
            config.post_logout_redirect.map(|target| target.as_str().to_string()).as_deref(),
            Some("https://www.example.com/bye")
        );
        for bad in ["https://evil.example.org/", "/bye", "//evil.example.org/"] {
            let block = SsoSettings {
                post_logout_redirect_url: Some(bad.into()),
                logout_token_max_age_secs: 0,
                ..settings(&secret)
            };
            let keys: Vec<&str> = block.compile(|_| None).unwrap_err().iter().map(|error| error.key).collect();
            assert_eq!(keys, ["logout_token_max_age_secs", "post_logout_redirect_url"], "{bad}");
        }
    }

    #[test]
    fn the_client_secret_never_shows_in_debug_output() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "hunter2-very-secret").unwrap();
        let config = settings(&secret).compile(|_| None).unwrap();
        assert!(!format!("{config:?}").contains("hunter2"), "{config:?}");
    }

    #[test]
    fn the_client_secret_comes_from_the_named_variable() {
        let dir = tempfile::tempdir().unwrap();
        let block = SsoSettings {
            client_secret_file: None,
            client_secret_env: Some("SSO_SECRET".into()),
            ..settings(&dir.path().join("unused"))
        };
        let config = block.compile(|name| (name == "SSO_SECRET").then(|| "from-env".into())).unwrap();
        assert_eq!(config.providers.all().first().unwrap().client_secret.expose(), "from-env");
        let errors = block.compile(|_| None).unwrap_err();
        assert_eq!(errors.iter().map(|error| error.key).collect::<Vec<_>>(), ["client_secret_env"]);
    }

    #[test]
    fn every_problem_is_reported_by_its_key() {
        let block = SsoSettings {
            endpoint_prefix: "oauth2".into(),
            allowed_redirect_domains: vec!["evil com".into()],
            max_sessions: 0,
            cookie_name: "a;b".into(),
            ..SsoSettings::default()
        };
        let errors = block.compile(|_| None).unwrap_err();
        let keys: Vec<&str> = errors.iter().map(|error| error.key).collect();
        assert_eq!(
            keys,
            [
                "issuer",
                "client_id",
                "client_secret_file",
                "redirect_url",
                "endpoint_prefix",
                "cookie_name",
                "allowed_redirect_domains",
                "max_sessions",
                "sites"
            ]
        );
        assert!(errors.iter().all(|error| error.to_string().starts_with("sso.")), "{errors:?}");
    }

    #[test]
    fn a_bad_sso_block_fails_the_settings_naming_the_file_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("portcullis.yaml");
        std::fs::write(&file, "http_mode: traefik\nsso:\n  issuer: https://idp.example.com\n  client_id: portcullis\n")
            .unwrap();
        let error = crate::settings::Settings::load(Some(&file), crate::settings::Overrides::default()).unwrap_err();
        let message = error.to_string();
        let expected = format!("config file `{}`: sso.client_secret_file: set exactly one of", file.display());
        assert!(message.contains(&expected), "{message}");
        assert!(message.contains("sso.redirect_url") && message.contains("sso.sites"), "{message}");
    }

    const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn a_redis_block_reads_its_password_and_keys_from_files_and_variables_and_never_shows_them() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("session-key");
        std::fs::write(&key_file, format!("{KEY_HEX}\n")).unwrap();
        let redis = RedisSettings {
            url: "redis://redis.example.com:6379/2".into(),
            password_env: Some("REDIS_PASSWORD".into()),
            encryption_keys: vec![
                KeySource { file: None, env: Some("SESSION_KEY".into()) },
                KeySource { file: Some(key_file), env: None },
            ],
            ..RedisSettings::default()
        };
        let block = SsoSettings { redis: Some(redis), ..settings(&dir.path().join("secret")) };
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        let variables = |name: &str| match name {
            "REDIS_PASSWORD" => Some("hunter2-redis".to_string()),
            "SESSION_KEY" => Some("IBOhMNYXtIP4NtEZm-Svx3nAH4yXVVxjf3HCPpVCzV0".to_string()),
            _ => None,
        };
        let config = block.compile(variables).unwrap();
        let redis = config.redis.as_ref().unwrap();
        assert_eq!(redis.password.as_ref().map(RedisPassword::expose), Some("hunter2-redis"));
        assert_eq!(format!("{:?}", redis.keys), "KeyRing { keys: 2 }");
        assert_eq!((redis.local_copy.as_secs(), redis.outage_grace.as_secs()), (5, 300), "the defaults");
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2") && !shown.contains(KEY_HEX), "{shown}");
    }

    #[test]
    fn every_problem_of_the_redis_block_is_reported_by_its_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        std::fs::write(dir.path().join("short-key"), "c2hvcnQ=").unwrap();
        let redis = RedisSettings {
            url: "redis://:hunter2@redis.example.com:6379".into(),
            encryption_keys: vec![
                KeySource { file: Some(dir.path().join("short-key")), env: None },
                KeySource { file: Some(dir.path().join("missing")), env: None },
                KeySource { file: None, env: Some("UNSET".into()) },
                KeySource { file: None, env: None },
            ],
            local_copy_secs: 0,
            ..RedisSettings::default()
        };
        let block = SsoSettings { redis: Some(redis), ..settings(&dir.path().join("secret")) };
        let errors = block.compile(|_| None).unwrap_err();
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages.iter().map(|message| message.split(':').next().unwrap_or_default()).collect::<Vec<_>>(),
            [
                "sso.redis.url",
                "sso.redis.encryption_keys",
                "sso.redis.encryption_keys",
                "sso.redis.encryption_keys",
                "sso.redis.encryption_keys",
                "sso.redis.local_copy_secs"
            ],
            "{messages:?}"
        );
        assert!(messages.iter().all(|message| !message.contains("hunter2")), "{messages:?}");
        assert!(messages.get(1).is_some_and(|message| message.contains("entry 1: a session key is 32 bytes")));
        let no_keys = SsoSettings {
            redis: Some(RedisSettings { url: "redis://localhost".into(), ..RedisSettings::default() }),
            ..settings(&dir.path().join("secret"))
        };
        let errors = no_keys.compile(|_| None).unwrap_err();
        assert_eq!(errors.iter().map(|error| error.key).collect::<Vec<_>>(), ["redis.encryption_keys"]);
    }

    #[test]
    fn a_site_with_options_chooses_its_anonymous_answer_and_the_others_keep_the_login_default() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s").unwrap();
        let api = SiteEntry::WithOptions(super::super::site::SiteOptions {
            host: "api.example.com".into(),
            anonymous: AnonymousAnswer::Unauthorized,
        });
        let block = SsoSettings { sites: vec![api, ".example.com".into()], ..settings(&secret) };
        let config = block.compile(|_| None).unwrap();
        let answer = |host: &str| config.site(host).map(|site| site.anonymous);
        assert_eq!(answer("api.example.com:443"), Some(AnonymousAnswer::Unauthorized), "the first entry that fits");
        assert_eq!(answer("grafana.example.com"), Some(AnonymousAnswer::Login));
        assert_eq!(answer("evil.org"), None);
        assert!(
            config.redirects.check("https://api.example.com/x").is_ok(),
            "a site with options is a redirect target"
        );
    }

    #[test]
    fn the_identity_headers_default_to_oauth2_proxys_names_and_take_other_names_lowercase() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        let defaults = settings(&dir.path().join("secret")).compile(|_| None).unwrap();
        assert_eq!(
            defaults.headers.all(),
            [
                "x-auth-request-user",
                "x-auth-request-email",
                "x-auth-request-groups",
                "x-auth-request-preferred-username",
                "x-auth-user",
                "x-auth-request-access-token"
            ]
        );
        assert!(!defaults.pass_access_token, "the access token goes on only when asked for");
        assert_eq!(defaults.refresh_before.as_secs(), 60);
        let renamed = SsoSettings {
            headers: HeaderNameSettings { user: "X-Remote-User".into(), ..HeaderNameSettings::default() },
            ..settings(&dir.path().join("secret"))
        };
        assert_eq!(&*renamed.compile(|_| None).unwrap().headers.user, "x-remote-user");
    }

    #[test]
    fn every_bad_identity_header_name_is_reported_by_its_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        let headers = HeaderNameSettings {
            user: "X Remote User".into(),
            email: String::new(),
            groups: "Cookie".into(),
            preferred_username: "X-Name".into(),
            plain_user: "x-name".into(),
            access_token: ":authority".into(),
        };
        let block = SsoSettings { headers, ..settings(&dir.path().join("secret")) };
        let messages: Vec<String> = block.compile(|_| None).unwrap_err().iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            [
                "sso.headers.user: `X Remote User` is not a header name",
                "sso.headers.email: `` is not a header name",
                "sso.headers.groups: `Cookie` is reserved; name another header",
                "sso.headers.plain_user: `x-name` is already the name of another identity header",
                "sso.headers.access_token: `:authority` is not a header name",
            ]
        );
    }

    #[test]
    fn a_bad_site_entry_is_reported_with_its_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("portcullis.yaml");
        let head = "http_mode: traefik\nsso:\n  issuer: https://idp.example.com\n  sites:\n  - .example.com\n";
        for (entry, expected) in [
            ("  - {host: api.example.com, anonymous: redirect}\n", "redirect"),
            ("  - {host: api.example.com, answer: unauthorized}\n", "answer"),
        ] {
            std::fs::write(&file, format!("{head}{entry}")).unwrap();
            let error =
                crate::settings::Settings::load(Some(&file), crate::settings::Overrides::default()).unwrap_err();
            let message = error.to_string();
            assert!(message.starts_with(&format!("config file `{}`:6:", file.display())), "{message}");
            assert!(message.contains(expected), "{message}");
        }
        std::fs::write(&file, format!("{head}  - {{host: \"evil com\", anonymous: unauthorized}}\n")).unwrap();
        let error = crate::settings::Settings::load(Some(&file), crate::settings::Overrides::default()).unwrap_err();
        assert!(error.to_string().contains("sso.sites: `evil com` is not a host name"), "{error}");
    }

    #[test]
    fn browser_logins_need_the_http_door() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("portcullis.yaml");
        std::fs::write(&file, "sso:\n  issuer: https://idp.example.com\n").unwrap();
        let error = crate::settings::Settings::load(Some(&file), crate::settings::Overrides::default()).unwrap_err();
        assert!(error.to_string().contains("set http_mode"), "{error}");
    }
}
