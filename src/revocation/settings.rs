//! The `revocation` block of the server settings and its checked form; reads the admin token and the Redis password from files or environment variables, never from the settings themselves, and never shows them.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use aws_lc_rs::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};

use crate::sso::config::read_secret_file;

/// The `revocation` block as written in the settings file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RevocationSettings {
    /// Consult the revocation list on every check.
    pub enabled: bool,
    /// Entries held at most; when full, the entry that would expire first is dropped.
    pub max_entries: usize,
    /// How long a `sid` or subject entry holds, and a `jti` entry without `expires_at`: the
    /// longest lifetime of a token the list must cover.
    pub max_token_lifetime_secs: u64,
    /// A file holding the bearer token of `POST /revocations` and `GET /revocations` on the
    /// admin door (trailing whitespace ignored).
    pub admin_token_file: Option<PathBuf>,
    /// An environment variable holding that token.
    pub admin_token_env: Option<String>,
    /// Where on the admin door the providers of `logout_token_issuers` POST their back-channel
    /// logout tokens.
    pub back_channel_logout_path: String,
    /// The issuers whose back-channel logout tokens revoke bearer tokens, each with the client
    /// id the tokens are addressed to (`aud`).
    pub logout_token_issuers: Vec<LogoutTokenIssuer>,
    /// A back-channel logout token issued longer ago than this is refused (clock skew added).
    pub logout_token_max_age_secs: u64,
    /// The list shared by every replica through Redis; unset, each replica keeps its own.
    pub redis: Option<RevocationRedisSettings>,
}

impl Default for RevocationSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_entries: 100_000,
            max_token_lifetime_secs: 24 * 60 * 60,
            admin_token_file: None,
            admin_token_env: None,
            back_channel_logout_path: "/revocations/backchannel_logout".into(),
            logout_token_issuers: Vec::new(),
            logout_token_max_age_secs: 300,
            redis: None,
        }
    }
}

/// One issuer whose back-channel logout tokens are taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogoutTokenIssuer {
    /// The issuer exactly as its tokens' `iss` and a `RequestAuthentication` name it (its keys
    /// are the ones fetched for that rule).
    pub issuer: String,
    /// The client id its logout tokens name in `aud`.
    pub client_id: String,
}

/// The `revocation.redis` block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RevocationRedisSettings {
    /// `redis://host:6379/0`, or `rediss://` for TLS; no password in it.
    pub url: String,
    /// A file holding the password (trailing whitespace ignored).
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the password.
    pub password_env: Option<String>,
    /// What the list's Redis keys start with.
    pub key_prefix: String,
    /// The channel additions are announced on.
    pub channel: String,
    /// The bound on one Redis command, connecting included.
    pub timeout_ms: u64,
}

impl Default for RevocationRedisSettings {
    fn default() -> Self {
        Self {
            url: String::new(),
            password_file: None,
            password_env: None,
            key_prefix: "portcullis:revocation:".into(),
            channel: "portcullis:revocations".into(),
            timeout_ms: 500,
        }
    }
}

/// The SHA-256 of the admin token: what a presented token is compared with, in constant time.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminTokenDigest([u8; 32]);

impl AdminTokenDigest {
    fn of(token: &str) -> Self {
        let mut bytes = [0; 32];
        for (slot, byte) in bytes.iter_mut().zip(digest(&SHA256, token.as_bytes()).as_ref()) {
            *slot = *byte;
        }
        Self(bytes)
    }

    /// Whether `presented` is the admin token; compared by digest, in constant time.
    pub fn admits(&self, presented: &str) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(&Self::of(presented).0, &self.0).is_ok()
    }
}

impl fmt::Debug for AdminTokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The Redis password: shown as `[redacted]`.
#[derive(Clone)]
pub struct Password(Box<str>);

impl Password {
    /// The password, for the connection only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The `revocation.redis` block, checked.
#[derive(Debug, Clone)]
pub struct RevocationRedisConfig {
    /// The server's URL, without a password.
    pub url: Box<str>,
    /// The password, from its file or variable.
    pub password: Option<Password>,
    /// The sorted set of every entry (member: the entry, score: its expiry).
    pub entries_key: Box<str>,
    /// What the keys of the logout tokens already taken start with.
    pub logout_token_prefix: Box<str>,
    /// The channel additions are announced on.
    pub channel: Box<str>,
    /// The bound on one command.
    pub timeout: Duration,
}

/// The `revocation` block, checked.
#[derive(Debug, Clone)]
pub struct RevocationConfig {
    /// Entries held at most.
    pub max_entries: usize,
    /// How long a `sid` or subject entry holds, and a `jti` entry without its own end.
    pub max_token_lifetime_secs: u64,
    /// The admin token's digest; unset, the admin endpoints are off.
    pub admin_token: Option<AdminTokenDigest>,
    /// Where the back-channel logout endpoint is served on the admin door.
    pub back_channel_logout_path: Box<str>,
    /// The issuers whose logout tokens are taken; none, the endpoint is off.
    pub logout_token_issuers: Vec<LogoutTokenIssuer>,
    /// How old a logout token may be.
    pub logout_token_max_age_secs: u64,
    /// The shared list, when configured.
    pub redis: Option<RevocationRedisConfig>,
}

/// A secret from exactly one of a file and an environment variable (`variable` looks it up);
/// `None` when neither is set, a message naming the key when it cannot be read.
fn secret(
    file: Option<&PathBuf>,
    env: Option<&String>,
    keys: (&'static str, &'static str),
    variable: &impl Fn(&str) -> Option<String>,
) -> Result<Option<String>, (&'static str, String)> {
    match (file, env) {
        (None, None) => Ok(None),
        (Some(file), None) => read_secret_file(file).map(Some).map_err(|message| (keys.0, message)),
        (None, Some(name)) => match variable(name).filter(|value| !value.is_empty()) {
            Some(value) => Ok(Some(value)),
            None => Err((keys.1, format!("environment variable `{name}` is unset or empty"))),
        },
        (Some(_), Some(_)) => Err((keys.0, format!("set at most one of `{}` and `{}`", keys.0, keys.1))),
    }
}

impl RevocationSettings {
    /// Checks every key and reads the secrets (`variable` looks up the environment); every
    /// problem is reported as `revocation.<key>: <what is wrong>`, not only the first.
    pub fn compile(&self, variable: impl Fn(&str) -> Option<String>) -> Result<RevocationConfig, Vec<String>> {
        let mut errors = Vec::new();
        let mut problem = |key: &str, message: String| errors.push(format!("revocation.{key}: {message}"));
        if self.max_entries == 0 {
            problem("max_entries", "must be at least 1".into());
        }
        if self.max_token_lifetime_secs == 0 {
            problem("max_token_lifetime_secs", "must be at least 1".into());
        }
        let admin_token = secret(
            self.admin_token_file.as_ref(),
            self.admin_token_env.as_ref(),
            ("admin_token_file", "admin_token_env"),
            &variable,
        )
        .map_err(|(key, message)| problem(key, message))
        .ok()
        .flatten();
        let path = &self.back_channel_logout_path;
        if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) || path.contains(['?', '#']) {
            problem("back_channel_logout_path", format!("`{path}` is not an absolute path"));
        } else if path.contains(['{', '}', '*', ':']) {
            problem("back_channel_logout_path", format!("`{path}` holds `{{`, `}}`, `*` or `:`"));
        } else if ["/healthz", "/readyz", "/metrics", "/revocations"].contains(&path.as_str()) {
            problem("back_channel_logout_path", format!("`{path}` is taken by the admin door"));
        }
        for (index, issuer) in self.logout_token_issuers.iter().enumerate() {
            if !(issuer.issuer.starts_with("https://") || issuer.issuer.starts_with("http://")) {
                problem(&format!("logout_token_issuers[{index}].issuer"), format!("`{}` is not a URL", issuer.issuer));
            }
            if issuer.client_id.is_empty() {
                problem(&format!("logout_token_issuers[{index}].client_id"), "is required".into());
            }
        }
        let redis = self.redis.as_ref().and_then(|redis| {
            let mut complete = true;
            let mut fail = |key: &str, message: String| {
                complete = false;
                problem(&format!("redis.{key}"), message);
            };
            match redis::Client::open(redis.url.as_str()) {
                Ok(client) if client.get_connection_info().redis_settings().password().is_some() => {
                    fail("url", "holds a password: put it in `password_file` or `password_env`".into());
                }
                Ok(_) => {}
                Err(_) => fail("url", "is not a redis:// or rediss:// URL".into()),
            }
            let password = secret(
                redis.password_file.as_ref(),
                redis.password_env.as_ref(),
                ("password_file", "password_env"),
                &variable,
            )
            .map_err(|(key, message)| fail(key, message))
            .ok()
            .flatten();
            if redis.timeout_ms == 0 {
                fail("timeout_ms", "must be at least 1".into());
            }
            complete.then(|| RevocationRedisConfig {
                url: redis.url.as_str().into(),
                password: password.map(|password| Password(password.into())),
                entries_key: format!("{}entries", redis.key_prefix).into(),
                logout_token_prefix: format!("{}logout-jti:", redis.key_prefix).into(),
                channel: redis.channel.as_str().into(),
                timeout: Duration::from_millis(redis.timeout_ms),
            })
        });
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(RevocationConfig {
            max_entries: self.max_entries,
            max_token_lifetime_secs: self.max_token_lifetime_secs,
            admin_token: admin_token.as_deref().map(AdminTokenDigest::of),
            back_channel_logout_path: path.as_str().into(),
            logout_token_issuers: self.logout_token_issuers.clone(),
            logout_token_max_age_secs: self.logout_token_max_age_secs,
            redis,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(yaml: &str, variables: &[(&str, &str)]) -> Result<RevocationConfig, Vec<String>> {
        let settings: RevocationSettings = serde_saphyr::from_str(yaml).unwrap();
        settings.compile(|name| variables.iter().find(|(n, _)| *n == name).map(|(_, v)| (*v).to_string()))
    }

    #[test]
    fn the_defaults_keep_a_local_list_without_admin_endpoints() {
        let config = compile("enabled: true", &[]).unwrap();
        assert_eq!((config.max_entries, config.max_token_lifetime_secs), (100_000, 86_400));
        assert!(config.admin_token.is_none() && config.redis.is_none() && config.logout_token_issuers.is_empty());
    }

    #[test]
    fn the_admin_token_is_read_from_its_variable_and_never_shown() {
        let config = compile("admin_token_env: TOKEN", &[("TOKEN", "s3cret-admin")]).unwrap();
        let digest = config.admin_token.clone().unwrap();
        assert!(digest.admits("s3cret-admin") && !digest.admits("s3cret-admiN") && !digest.admits(""));
        assert!(!format!("{config:?}").contains("s3cret"), "{config:?}");
    }

    #[test]
    fn a_back_channel_path_must_be_a_plain_absolute_path() {
        for path in ["relative", "/a b", "/a?b", "/{id}", "/logout/*", "/:id"] {
            let errors = compile(&format!("back_channel_logout_path: '{path}'"), &[]).unwrap_err();
            assert!(errors[0].starts_with("revocation.back_channel_logout_path: "), "{path}: {errors:?}");
        }
        assert!(compile("back_channel_logout_path: /idp/logout-tokens", &[]).is_ok());
    }

    #[test]
    fn every_problem_of_the_block_is_reported_by_its_key() {
        let yaml = "max_entries: 0
max_token_lifetime_secs: 0
admin_token_env: UNSET
back_channel_logout_path: /metrics
logout_token_issuers: [{issuer: idp, client_id: ''}]
redis: {url: 'redis://:pw@localhost', timeout_ms: 0}
";
        let errors = compile(yaml, &[]).unwrap_err();
        assert_eq!(
            errors,
            [
                "revocation.max_entries: must be at least 1",
                "revocation.max_token_lifetime_secs: must be at least 1",
                "revocation.admin_token_env: environment variable `UNSET` is unset or empty",
                "revocation.back_channel_logout_path: `/metrics` is taken by the admin door",
                "revocation.logout_token_issuers[0].issuer: `idp` is not a URL",
                "revocation.logout_token_issuers[0].client_id: is required",
                "revocation.redis.url: holds a password: put it in `password_file` or `password_env`",
                "revocation.redis.timeout_ms: must be at least 1",
            ]
        );
    }
}
