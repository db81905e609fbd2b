//! The OpenID Connect client of the browser login: the provider's discovery document, the authorization URL (code flow, PKCE S256, `state`, `nonce`), the code exchanged at the token endpoint, and the provider's sign-out URL (RP-initiated logout); fetches through [`crate::outbound`], never logs a code, token or secret.

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use tokio::sync::Mutex;

use super::providers::ProviderConfig;
use crate::outbound::{Outbound, OutboundError};

/// What the login needs of the provider's discovery document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderMetadata {
    /// The issuer, as the provider names itself (and its ID tokens' `iss`).
    pub issuer: Box<str>,
    /// Where the browser is sent to log in.
    pub authorization_endpoint: Box<str>,
    /// Where a code is exchanged for tokens.
    pub token_endpoint: Box<str>,
    /// Where the browser is sent to end its session at the provider, when it offers that.
    pub end_session_endpoint: Option<Box<str>>,
}

/// Why the provider could not be used.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The discovery document could not be fetched.
    #[error("discovery: {0}")]
    Discovery(OutboundError),
    /// The discovery document lacks a field.
    #[error("discovery: `{0}` is missing or not text")]
    MissingField(&'static str),
    /// The discovery document names another issuer.
    #[error("discovery: the provider names itself `{found}`, not the configured issuer")]
    IssuerMismatch {
        /// The issuer the document names.
        found: String,
    },
    /// The token endpoint refused or failed.
    #[error("code exchange: {0}")]
    Exchange(OutboundError),
    /// The token endpoint's answer has no ID token.
    #[error("code exchange: the answer has no `id_token`")]
    NoIdToken,
    /// The token endpoint refused or failed a refresh.
    #[error("refresh: {0}")]
    Refresh(OutboundError),
    /// The token endpoint's answer to a refresh has no access token.
    #[error("refresh: the answer has no `access_token`")]
    NoAccessToken,
}

impl OidcError {
    /// Whether the provider refused the grant itself (`invalid_grant`: the refresh token is
    /// expired, revoked or used before; the provider ended the session).
    pub fn is_invalid_grant(&self) -> bool {
        matches!(self, Self::Refresh(OutboundError::OAuth { error, .. }) if &**error == "invalid_grant")
    }
}

/// The tokens of a token endpoint's answer (never shown by `Debug`).
pub struct TokenAnswer {
    /// The ID token, when the answer has one (a refresh's answer may not).
    pub id_token: Option<String>,
    /// The access token, when the answer has one.
    pub access_token: Option<String>,
    /// The access token's lifetime in seconds, when given.
    pub expires_in: Option<u64>,
    /// The refresh token, when one was issued.
    pub refresh_token: Option<String>,
}

impl std::fmt::Debug for TokenAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAnswer").field("expires_in", &self.expires_in).finish_non_exhaustive()
    }
}

impl TokenAnswer {
    fn of(answer: &Value) -> Self {
        let text = |name: &str| answer.get(name).and_then(Value::as_str).map(str::to_string);
        Self {
            id_token: text("id_token"),
            access_token: text("access_token"),
            expires_in: answer.get("expires_in").and_then(Value::as_u64),
            refresh_token: text("refresh_token"),
        }
    }
}

/// The provider, discovered on first use and remembered once discovery succeeded.
#[derive(Debug)]
pub struct OidcClient {
    outbound: Outbound,
    discovered: Mutex<Option<Arc<ProviderMetadata>>>,
    timeout: Duration,
}

impl OidcClient {
    /// A client fetching through `outbound`, each request bounded by `timeout`.
    pub fn new(outbound: Outbound, timeout: Duration) -> Self {
        Self { outbound, discovered: Mutex::new(None), timeout }
    }

    /// The metadata of the provider at `issuer`: discovered now unless already known.
    pub async fn provider(&self, issuer: &str) -> Result<Arc<ProviderMetadata>, OidcError> {
        let mut discovered = self.discovered.lock().await;
        if let Some(known) = discovered.as_ref() {
            return Ok(known.clone());
        }
        let url = format!("{issuer}/.well-known/openid-configuration");
        let document = self.outbound.get_json(&url, self.timeout).await.map_err(OidcError::Discovery)?;
        let text = |name: &'static str| -> Result<Box<str>, OidcError> {
            document.get(name).and_then(Value::as_str).map(Into::into).ok_or(OidcError::MissingField(name))
        };
        let metadata = ProviderMetadata {
            issuer: text("issuer")?,
            authorization_endpoint: text("authorization_endpoint")?,
            token_endpoint: text("token_endpoint")?,
            end_session_endpoint: text("end_session_endpoint").ok(),
        };
        if metadata.issuer.trim_end_matches('/') != issuer {
            return Err(OidcError::IssuerMismatch { found: metadata.issuer.into() });
        }
        let metadata = Arc::new(metadata);
        *discovered = Some(metadata.clone());
        Ok(metadata)
    }

    /// Exchanges `code` at the token endpoint (client authenticated with its secret, the
    /// login's PKCE verifier sent) for the ID token and the access and refresh tokens.
    pub async fn exchange(
        &self,
        config: &ProviderConfig,
        redirect_url: &str,
        provider: &ProviderMetadata,
        code: &str,
        code_verifier: &str,
    ) -> Result<TokenAnswer, OidcError> {
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_url),
            ("code_verifier", code_verifier),
        ];
        let answer = self.token_request(config, provider, &form).await.map_err(OidcError::Exchange)?;
        let answer = TokenAnswer::of(&answer);
        if answer.id_token.is_none() {
            return Err(OidcError::NoIdToken);
        }
        Ok(answer)
    }

    /// Asks the token endpoint for a new access token with `refresh_token` (client
    /// authenticated as for the code exchange).
    pub async fn refresh(
        &self,
        config: &ProviderConfig,
        provider: &ProviderMetadata,
        refresh_token: &str,
    ) -> Result<TokenAnswer, OidcError> {
        let form = [("grant_type", "refresh_token"), ("refresh_token", refresh_token)];
        let answer = self.token_request(config, provider, &form).await.map_err(OidcError::Refresh)?;
        let answer = TokenAnswer::of(&answer);
        if answer.access_token.is_none() {
            return Err(OidcError::NoAccessToken);
        }
        Ok(answer)
    }

    /// POSTs `form` to the token endpoint, the client authenticated with its secret.
    async fn token_request(
        &self,
        config: &ProviderConfig,
        provider: &ProviderMetadata,
        form: &[(&str, &str)],
    ) -> Result<Value, OutboundError> {
        let client = Some((&*config.client_id, config.client_secret.expose()));
        self.outbound.post_form_json(&provider.token_endpoint, form, client, self.timeout).await
    }
}

/// The secrets of one login: `state` names it, `nonce` binds its ID token, the PKCE verifier
/// binds its code.
#[derive(Debug, Clone, Copy)]
pub struct LoginSecrets<'s> {
    /// The `state` parameter.
    pub state: &'s str,
    /// The `nonce` parameter.
    pub nonce: &'s str,
    /// The PKCE code verifier (RFC 7636); its S256 challenge is sent.
    pub code_verifier: &'s str,
}

/// The PKCE S256 challenge of `verifier`: base64url of its SHA-256.
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest(&SHA256, verifier.as_bytes()))
}

/// The URL that sends the browser to the provider's login, for the code flow with PKCE S256,
/// back to `redirect_url`.
pub fn authorization_url(
    config: &ProviderConfig,
    redirect_url: &str,
    provider: &ProviderMetadata,
    secrets: LoginSecrets<'_>,
) -> String {
    let scope = config.scopes.join(" ");
    let challenge = pkce_challenge(secrets.code_verifier);
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", &config.client_id)
        .append_pair("redirect_uri", redirect_url)
        .append_pair("scope", &scope)
        .append_pair("state", secrets.state)
        .append_pair("nonce", secrets.nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .finish();
    let separator = if provider.authorization_endpoint.contains('?') { '&' } else { '?' };
    format!("{}{separator}{query}", provider.authorization_endpoint)
}

/// What the provider's sign-out is told: the session's ID token, where to send the browser after.
#[derive(Debug, Clone, Copy)]
pub struct SignOutAtProvider<'s> {
    /// The provider's `end_session_endpoint`.
    pub end_session_endpoint: &'s str,
    /// The session's ID token (`id_token_hint`), when kept.
    pub id_token_hint: Option<&'s str>,
    /// Where the provider sends the browser after (`post_logout_redirect_uri`), already checked.
    pub post_logout_redirect_uri: Option<&'s str>,
}

/// The URL that sends the browser to the sign-out (RP-initiated logout 1.0) of the provider
/// portcullis is `client_id` at.
pub fn end_session_url(client_id: &str, sign_out: SignOutAtProvider<'_>) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(hint) = sign_out.id_token_hint {
        query.append_pair("id_token_hint", hint);
    }
    if let Some(target) = sign_out.post_logout_redirect_uri {
        query.append_pair("post_logout_redirect_uri", target);
    }
    query.append_pair("client_id", client_id);
    let separator = if sign_out.end_session_endpoint.contains('?') { '&' } else { '?' };
    format!("{}{separator}{}", sign_out.end_session_endpoint, query.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pkce_challenge_is_the_unpadded_base64url_sha256_of_the_verifier() {
        // Computed independently: Python's hashlib and base64.
        let verifier = "dBjftJeZ4CVP-mJ92K27uTMVZpL1ckl1hhkvIr9SpJs";
        assert_eq!(pkce_challenge(verifier), "W6sW9C8A5hrhGZuemd0hex4ogmWFU39zh0gzOjvZo7s");
    }

    fn config() -> crate::sso::config::SsoConfig {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s").unwrap();
        let settings = crate::sso::config::SsoSettings {
            issuer: "https://idp.example.com".into(),
            client_id: "portcullis".into(),
            client_secret_file: Some(secret),
            redirect_url: "https://auth.example.com/oauth2/callback".into(),
            sites: vec![".example.com".into()],
            ..Default::default()
        };
        settings.compile(|_| None).unwrap()
    }

    #[test]
    fn the_sign_out_url_names_the_session_the_client_and_where_to_come_back() {
        let sign_out = SignOutAtProvider {
            end_session_endpoint: "https://idp.example.com/logout?realm=a",
            id_token_hint: Some("h.p.s"),
            post_logout_redirect_uri: Some("https://www.example.com/bye?x=1"),
        };
        assert_eq!(
            end_session_url("portcullis", sign_out),
            "https://idp.example.com/logout?realm=a&id_token_hint=h.p.s\
             &post_logout_redirect_uri=https%3A%2F%2Fwww.example.com%2Fbye%3Fx%3D1&client_id=portcullis"
        );
        let bare = SignOutAtProvider {
            end_session_endpoint: "https://idp.example.com/logout",
            id_token_hint: None,
            post_logout_redirect_uri: None,
        };
        assert_eq!(end_session_url("portcullis", bare), "https://idp.example.com/logout?client_id=portcullis");
    }

    #[test]
    fn the_authorization_url_asks_for_a_code_with_pkce_state_and_nonce() {
        let config = config();
        let provider = ProviderMetadata {
            issuer: "https://idp.example.com".into(),
            authorization_endpoint: "https://idp.example.com/auth".into(),
            token_endpoint: "https://idp.example.com/token".into(),
            end_session_endpoint: None,
        };
        let secrets =
            LoginSecrets { state: "st", nonce: "no", code_verifier: "dBjftJeZ4CVP-mJ92K27uTMVZpL1ckl1hhkvIr9SpJs" };
        let url = authorization_url(config.providers.all().first().unwrap(), &config.redirect_url, &provider, secrets);
        assert_eq!(
            url,
            "https://idp.example.com/auth?response_type=code&client_id=portcullis\
             &redirect_uri=https%3A%2F%2Fauth.example.com%2Foauth2%2Fcallback&scope=openid+email+profile\
             &state=st&nonce=no&code_challenge=W6sW9C8A5hrhGZuemd0hex4ogmWFU39zh0gzOjvZo7s&code_challenge_method=S256"
        );
    }
}
