//! The browser login's endpoints (start, callback, sign-out, user info, back-channel logout) and what a check of a login site needs (the session behind a cookie, the login challenge, the identity headers); answers in typed form, never in a wire format, and never logs a cookie, code or token.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::config::SsoConfig;
use super::github::{self, GithubClient};
use super::oidc::{LoginSecrets, OidcClient, SignOutAtProvider, authorization_url, end_session_url};
use super::pages::{self, Choice};
use super::providers::{GithubConfig, OidcRules, Protocol, ProviderConfig};
use super::redis_store::{Lifetimes, RedisSessions, StoredLoginTransaction, unix_now};
use super::refresh::{RefreshContext, Refresher};
use super::replay::SeenTokenIds;
use super::session::{IdTokenHint, ProviderTokens, Session};
use super::sessions::{ProviderNames, SessionEnd, Sessions};
use super::store::{SessionId, SessionStore, StoreError, StoreLimits};
use crate::core::authn::{KeyLookup, RemoteIssuer};
use crate::core::decision::Challenge;
use crate::core::id_token::{self, IdTokenExpectations, SessionClaims};
use crate::core::identity::ClaimPaths;
use crate::core::jwt::{self, KeySet};
use crate::core::logout_token::{self, LogoutTokenExpectations};
use crate::core::redirect::RedirectTarget;
use crate::core::{Decision, HttpRequest, Identity, Reason};
use crate::identity::jwks::KeyStore;
use crate::outbound::Outbound;
use crate::revocation::{Revocations, Source};
use crate::tasks::Tasks;
use crate::telemetry::Metrics;

/// Logins under way at once; more end the oldest.
const MAX_LOGINS_UNDER_WAY: usize = 10_000;

/// Back-channel logout token ids one replica remembers (without Redis); more forget the one
/// whose window ends first.
const MAX_LOGOUT_TOKENS_REMEMBERED: usize = 10_000;

/// The answer to a back-channel logout whose token is refused (Back-Channel Logout 1.0, 2.8).
const INVALID_LOGOUT_REQUEST: &str = r#"{"error":"invalid_request"}"#;

/// The answer to a login while the shared session store cannot be reached.
const SIGN_IN_UNAVAILABLE: &str = "sign-in is unavailable: sessions cannot be stored right now; try again shortly";

/// One login under way, named by its `state`.
#[derive(Debug)]
struct LoginTransaction {
    /// The name of the provider it started with: its callback is completed with that one only.
    provider: Box<str>,
    /// The value of this login's own cookie: the callback must come from the browser that started it.
    binding: String,
    nonce: String,
    code_verifier: String,
    return_to: RedirectTarget,
}

impl LoginTransaction {
    fn to_stored(&self) -> StoredLoginTransaction {
        StoredLoginTransaction {
            binding: self.binding.clone(),
            nonce: self.nonce.clone(),
            code_verifier: self.code_verifier.clone(),
            return_to: self.return_to.as_str().into(),
            provider: self.provider.to_string(),
        }
    }
}

/// A request to one of the login endpoints, as the HTTP door read it.
#[derive(Debug, Clone, Copy)]
pub struct EndpointRequest<'r> {
    /// What follows the endpoint prefix: `start`, `callback`, `sign_out`, `userinfo`,
    /// `backchannel_logout`.
    pub endpoint: &'r str,
    /// The request method.
    pub method: &'r str,
    /// The query, undecoded.
    pub query: &'r str,
    /// Every `Cookie` header's value.
    pub cookies: &'r [&'r str],
    /// The `Content-Type` header, when there is one.
    pub content_type: Option<&'r str>,
    /// The body (empty unless the method is POST, or when it was too long to read).
    pub body: &'r [u8],
}

/// What a login endpoint answers, for the HTTP door to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginAnswer {
    /// 302 to `location`, setting `cookies`.
    Redirect {
        /// Where the browser goes.
        location: String,
        /// `Set-Cookie` values.
        cookies: Vec<String>,
    },
    /// `status` with a short text; `cookies` set even so.
    Refused {
        /// The HTTP status.
        status: u16,
        /// The text of the answer.
        message: &'static str,
        /// `Set-Cookie` values.
        cookies: Vec<String>,
    },
    /// 200 with the signed-in person's identity.
    UserInfo {
        /// The identity as a JSON object.
        json: String,
    },
    /// `status` with an HTML page for a person (the provider chooser, a refused sign-in).
    Page {
        /// The HTTP status.
        status: u16,
        /// The page.
        html: String,
    },
    /// `status` with a JSON body, for a machine (the provider's back-channel logout).
    Json {
        /// The HTTP status.
        status: u16,
        /// The body.
        json: &'static str,
    },
}

fn refused(status: u16, message: &'static str) -> LoginAnswer {
    LoginAnswer::Refused { status, message, cookies: Vec::new() }
}

/// Browser single sign-on: the login endpoints, the sessions they open, and the login offered to
/// anonymous visitors of the configured sites.
#[derive(Debug)]
pub struct Sso {
    config: Arc<SsoConfig>,
    providers: Arc<[Provider]>,
    keys: Arc<KeyStore>,
    sessions: Arc<Sessions>,
    refresher: Arc<Refresher>,
    logins: SessionStore<LoginTransaction>,
    random: SystemRandom,
    clock_skew_secs: u64,
    max_token_bytes: usize,
    /// The revocation list a back-channel logout also feeds, when configured.
    revocations: Option<Arc<Revocations>>,
}

/// One provider and how it is talked to.
#[derive(Debug)]
pub(super) struct Provider {
    pub(super) config: Arc<ProviderConfig>,
    pub(super) client: ProviderClient,
}

/// The client of one provider, with the settings of its protocol.
#[derive(Debug)]
pub(super) enum ProviderClient {
    /// OpenID Connect: its discovery document, its token endpoint, the rules its ID tokens meet.
    Oidc(OidcClient, OidcRules),
    /// GitHub: its token endpoint, its REST API, who may log in.
    Github(GithubClient, GithubConfig),
}

/// A login the provider vouched for: the claims of its session, the ID token and the provider's
/// tokens, when any.
type VouchedLogin = (SessionClaims, Option<IdTokenHint>, Option<ProviderTokens>);

impl Sso {
    /// Browser logins at the providers of `config`, its ID tokens verified with its keys from
    /// `keys` (fetched as every issuer's are), the provider reached through `outbound`; the
    /// session store's failures are counted in `metrics`. An error says why the configured
    /// Redis store cannot be used.
    pub fn new(
        config: SsoConfig,
        keys: Arc<KeyStore>,
        outbound: Outbound,
        clock_skew_secs: u64,
        max_token_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let timeout = outbound.limits().timeout;
        let sessions = match &config.redis {
            Some(redis) => {
                let lifetimes =
                    Lifetimes { idle_secs: config.idle_timeout.as_secs(), max_secs: config.max_lifetime.as_secs() };
                Sessions::Redis(Arc::new(RedisSessions::new(redis, lifetimes, config.max_sessions, metrics.clone())?))
            }
            None => Sessions::Memory {
                sessions: SessionStore::new(StoreLimits {
                    idle_timeout: config.idle_timeout,
                    max_lifetime: config.max_lifetime,
                    max_sessions: config.max_sessions,
                }),
                seen_logout_tokens: SeenTokenIds::new(MAX_LOGOUT_TOKENS_REMEMBERED),
                metrics: metrics.clone(),
            },
        };
        let (config, sessions) = (Arc::new(config), Arc::new(sessions));
        let providers = config
            .providers
            .all()
            .iter()
            .map(|provider| Provider {
                config: provider.clone(),
                client: match &provider.protocol {
                    Protocol::Oidc(rules) => {
                        ProviderClient::Oidc(OidcClient::new(outbound.clone(), timeout), rules.clone())
                    }
                    Protocol::Github(github) => {
                        ProviderClient::Github(GithubClient::new(outbound.clone(), timeout), github.clone())
                    }
                },
            })
            .collect::<Arc<[Provider]>>();
        let refresher = Arc::new(Refresher::new(RefreshContext {
            config: config.clone(),
            providers: providers.clone(),
            keys: keys.clone(),
            sessions: sessions.clone(),
            metrics,
            timeout,
            clock_skew_secs,
            max_token_bytes,
        }));
        let logins = SessionStore::new(StoreLimits {
            idle_timeout: config.login_timeout,
            max_lifetime: config.login_timeout,
            max_sessions: MAX_LOGINS_UNDER_WAY,
        });
        Ok(Self {
            config,
            providers,
            keys,
            sessions,
            refresher,
            logins,
            random: SystemRandom::new(),
            clock_skew_secs,
            max_token_bytes,
            revocations: None,
        })
    }

    /// The same sign-on, its back-channel logouts also revoking the `sid` (or subject) they
    /// name in `revocations`, when given: the bearer tokens of that login stop at once too.
    pub fn with_revocations(self, revocations: Option<Arc<Revocations>>) -> Self {
        Self { revocations, ..self }
    }

    /// Starts what the session store runs in the background: with Redis, the listener for
    /// sessions other replicas end.
    pub fn spawn_tasks(&self, tasks: &Tasks) {
        if let Sessions::Redis(store) = &*self.sessions {
            drop(tasks.spawn("session listener", store.clone().listen_for_ended_sessions()));
        }
    }

    /// The session store: where the callback opens a login's session (a bench opens one
    /// directly, without a provider).
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// What is wrong with the session store now, when something is: for `/readyz`.
    pub fn session_store_problem(&self) -> Option<String> {
        self.sessions.problem()
    }

    /// `issuers` with every OpenID Connect provider's added when no policy names it, so that its
    /// keys are fetched and kept across reloads.
    pub fn with_provider_keys(&self, mut issuers: Vec<RemoteIssuer>) -> Vec<RemoteIssuer> {
        for issuer in self.config.providers.oidc_issuers() {
            if !issuers.iter().any(|remote| *remote.issuer == *issuer) {
                issuers.push(RemoteIssuer { issuer: issuer.into(), jwks_uri: None, timeout: None });
            }
        }
        issuers
    }

    /// The provider named `name`.
    fn provider(&self, name: &str) -> Option<&Provider> {
        self.providers.iter().find(|provider| *provider.config.name == *name)
    }

    /// The endpoint a request path names (`start`, ...), when it is under the endpoint prefix.
    pub fn endpoint<'p>(&self, path: &'p str) -> Option<&'p str> {
        path.strip_prefix(&*self.config.endpoint_prefix)
    }

    /// Answers a request to a login endpoint.
    pub async fn serve(&self, request: EndpointRequest<'_>) -> LoginAnswer {
        match request.endpoint {
            "start" => self.start(request).await,
            "callback" => self.callback(request).await,
            "sign_out" => self.sign_out(request).await,
            "userinfo" => self.user_info(request).await,
            "backchannel_logout" => self.back_channel_logout(request).await,
            _ => refused(404, "Not Found"),
        }
    }

    async fn start(&self, request: EndpointRequest<'_>) -> LoginAnswer {
        let target = query_value(request.query, "rd").unwrap_or_else(|| "/".into());
        let Ok(return_to) = self.config.redirects.check(&target) else {
            tracing::info!("Refused a login whose redirect target is not allowed");
            return refused(400, "redirect target not allowed");
        };
        // A path comes back to the login host itself.
        let target_host = host_of(return_to.as_str()).or_else(|| host_of(&self.config.redirect_url)).unwrap_or("");
        let applying: Vec<&Provider> =
            self.providers.iter().filter(|provider| provider.config.applies_to(target_host)).collect();
        let provider = match (query_value(request.query, "provider"), applying.as_slice()) {
            (Some(name), _) => match applying.iter().find(|provider| *provider.config.name == *name) {
                Some(provider) => *provider,
                None => {
                    tracing::info!("Refused a login at a provider that is unknown or not offered for its target");
                    return refused(400, "no such sign-in provider for this site");
                }
            },
            (None, [only]) => *only,
            (None, []) => return refused(400, "no sign-in provider is offered for this site"),
            (None, several) => return self.chooser(several, &target),
        };
        let (Some(binding), Some(nonce), Some(code_verifier)) = (self.secret(), self.secret(), self.secret()) else {
            return refused(500, "cannot start a login");
        };
        let discovered = match &provider.client {
            ProviderClient::Oidc(client, rules) => match client.provider(&rules.issuer).await {
                Ok(discovered) => Some(discovered),
                Err(error) => {
                    tracing::warn!(%error, provider = %provider.config.name, "Cannot start a login: the identity provider is unavailable");
                    return refused(502, "the identity provider is unavailable");
                }
            },
            ProviderClient::Github(..) => None,
        };
        let transaction = LoginTransaction {
            provider: provider.config.name.clone(),
            binding: binding.clone(),
            nonce: nonce.clone(),
            code_verifier: code_verifier.clone(),
            return_to,
        };
        let state = match self.open_login(transaction).await {
            Ok(state) => state,
            Err(StoreError::Unavailable) => return refused(503, SIGN_IN_UNAVAILABLE),
            Err(StoreError::Random) => return refused(500, "cannot start a login"),
        };
        let state = state.to_cookie_value();
        let redirect_url = &self.config.redirect_url;
        let location = match (&provider.client, discovered) {
            (ProviderClient::Github(_, github), _) => {
                github::authorization_url(&provider.config, github, redirect_url, &state, &code_verifier)
            }
            (ProviderClient::Oidc(..), Some(discovered)) => {
                let secrets = LoginSecrets { state: &state, nonce: &nonce, code_verifier: &code_verifier };
                authorization_url(&provider.config, redirect_url, &discovered, secrets)
            }
            (ProviderClient::Oidc(..), None) => return refused(502, "the identity provider is unavailable"),
        };
        let cookie = self.cookie(
            &self.login_cookie_name(&state),
            &binding,
            &self.config.endpoint_prefix,
            false,
            self.config.login_timeout,
        );
        LoginAnswer::Redirect { location, cookies: vec![cookie] }
    }

    /// The page that lets the person pick one of `providers` for a login ending at `target`.
    fn chooser(&self, providers: &[&Provider], target: &str) -> LoginAnswer {
        let rd: String = form_urlencoded::byte_serialize(target.as_bytes()).collect();
        let links: Vec<String> = providers
            .iter()
            .map(|provider| format!("{}start?provider={}&rd={rd}", self.config.endpoint_prefix, provider.config.name))
            .collect();
        let choices: Vec<Choice<'_>> = providers
            .iter()
            .zip(&links)
            .map(|(provider, href)| Choice { label: &provider.config.display_name, href })
            .collect();
        LoginAnswer::Page { status: 200, html: pages::chooser(&choices) }
    }

    async fn callback(&self, request: EndpointRequest<'_>) -> LoginAnswer {
        let (Some(state), Some(code)) = (query_value(request.query, "state"), query_value(request.query, "code"))
        else {
            return refused(400, "the login was refused or is incomplete");
        };
        // Only a well-formed state names a cookie: nothing of the query reaches a header unchecked.
        let Some(id) = SessionId::from_cookie_value(&state) else { return refused(400, "unknown login") };
        let cookie_name = self.login_cookie_name(&id.to_cookie_value());
        let clear_login_cookie = self.cookie(&cookie_name, "", &self.config.endpoint_prefix, false, Duration::ZERO);
        let refused_clearing =
            |message| LoginAnswer::Refused { status: 400, message, cookies: vec![clear_login_cookie.clone()] };
        let transaction = match self.login(&id).await {
            Ok(Some(transaction)) => transaction,
            Ok(None) => return refused_clearing("unknown or expired login"),
            Err(_) => return refused(503, SIGN_IN_UNAVAILABLE),
        };
        let binding = cookie_values(request.cookies, &cookie_name).next().unwrap_or_default();
        if verify_slices_are_equal(binding.as_bytes(), transaction.binding.as_bytes()).is_err() {
            tracing::info!("Refused a login callback from a browser that did not start that login");
            return refused_clearing("this login was started elsewhere");
        }
        // One callback per login: a repeated one (a browser retry, a replayed code) finds nothing.
        match self.take_login(&id).await {
            Ok(true) => {}
            Ok(false) => return refused_clearing("unknown or expired login"),
            Err(_) => return refused(503, SIGN_IN_UNAVAILABLE),
        }
        // The provider the login started with, and no other, completes it.
        let Some(provider) = self.provider(&transaction.provider) else {
            return refused_clearing("unknown or expired login");
        };
        let (claims, id_token, tokens) = match self.exchange(provider, &code, &transaction).await {
            Ok(login) => login,
            Err(answer) => return answer,
        };
        // A new id at every login; a session this browser had before ends.
        for old in cookie_values(request.cookies, &self.config.cookie_name).filter_map(SessionId::from_cookie_value) {
            // Not ended when the store is down: the new id replaces it in this browser even so.
            let _ = self.sessions.end(&old, SessionEnd::SignOut).await;
        }
        let session = match self.sessions.open(&provider.config.name, claims, id_token, tokens).await {
            Ok(session) => session,
            Err(StoreError::Unavailable) => return refused(503, SIGN_IN_UNAVAILABLE),
            Err(StoreError::Random) => return refused(500, "cannot open a session"),
        };
        let session_cookie =
            self.cookie(&self.config.cookie_name, &session.to_cookie_value(), "/", true, self.config.max_lifetime);
        tracing::info!(provider = %provider.config.name, "Opened a browser session");
        LoginAnswer::Redirect {
            location: transaction.return_to.as_str().into(),
            cookies: vec![clear_login_cookie, session_cookie],
        }
    }

    /// The code exchanged at `provider`, and what it vouches for checked: the ID token with its
    /// keys and its rules, or GitHub's user and its restrictions; the access and refresh tokens
    /// an OpenID Connect provider's answer had.
    async fn exchange(
        &self,
        provider: &Provider,
        code: &str,
        transaction: &LoginTransaction,
    ) -> Result<VouchedLogin, LoginAnswer> {
        let unavailable = |error: &dyn std::fmt::Display| failed_at_provider(provider, error);
        let redirect_url = &self.config.redirect_url;
        let (client, github) = match &provider.client {
            ProviderClient::Oidc(client, rules) => {
                return self.exchange_oidc(provider, client, rules, code, transaction).await;
            }
            ProviderClient::Github(client, github) => (client, github),
        };
        let token = client
            .exchange(&provider.config, github, redirect_url, code, &transaction.code_verifier)
            .await
            .map_err(|error| unavailable(&error))?;
        let profile = client.profile(github, &token).await.map_err(|error| unavailable(&error))?;
        match github::session_claims(github, &profile).map_err(|error| unavailable(&error))? {
            Ok(claims) => Ok((claims, None, None)),
            Err(refusal) => {
                tracing::info!(provider = %provider.config.name, reason = %refusal, "Refused a GitHub login");
                Err(LoginAnswer::Page { status: 403, html: pages::refused(&refusal.to_string()) })
            }
        }
    }

    /// The code exchanged at an OpenID Connect provider and its ID token verified with the
    /// provider's keys, then held to its rules (Google's hosted domain, a verified email).
    async fn exchange_oidc(
        &self,
        provider: &Provider,
        client: &OidcClient,
        rules: &OidcRules,
        code: &str,
        transaction: &LoginTransaction,
    ) -> Result<VouchedLogin, LoginAnswer> {
        let unavailable = |error: &dyn std::fmt::Display| failed_at_provider(provider, error);
        let discovered = client.provider(&rules.issuer).await.map_err(|error| unavailable(&error))?;
        let answer = client
            .exchange(&provider.config, &self.config.redirect_url, &discovered, code, &transaction.code_verifier)
            .await
            .map_err(|error| unavailable(&error))?;
        let id_token = answer.id_token.unwrap_or_default();
        let now = unix_now();
        let tokens = answer.access_token.as_deref().map(|access_token| {
            ProviderTokens::new(access_token, answer.expires_in, answer.refresh_token.as_deref(), now)
        });
        let expected = IdTokenExpectations {
            issuer: &discovered.issuer,
            client_id: &provider.config.client_id,
            nonce: &transaction.nonce,
            now,
            clock_skew_secs: self.clock_skew_secs,
            max_token_bytes: self.max_token_bytes,
        };
        let claims = match self
            .verify_with_provider_keys(&rules.issuer, |keys| id_token::verify(&id_token, keys, &expected))
            .await
        {
            Some(Ok(claims)) => claims,
            Some(Err(error)) => {
                tracing::warn!(%error, provider = %provider.config.name, "Refused a login's ID token");
                return Err(refused(401, "the login's ID token was refused"));
            }
            None => return Err(refused(502, "the identity provider's keys are unavailable")),
        };
        if let Some(reason) = refusal_by_rules(rules, &claims) {
            tracing::info!(provider = %provider.config.name, reason, "Refused a login its provider's rules exclude");
            return Err(LoginAnswer::Page { status: 403, html: pages::refused(reason) });
        }
        Ok((claims, Some(IdTokenHint::new(&id_token)), tokens))
    }

    /// `verify` with the keys of `issuer` (see [`verify_with_provider_keys`]).
    async fn verify_with_provider_keys<T, E>(
        &self,
        issuer: &str,
        verify: impl Fn(&KeySet) -> Result<T, E>,
    ) -> Option<Result<T, E>> {
        verify_with_provider_keys(&self.keys, issuer, verify).await
    }

    async fn sign_out(&self, request: EndpointRequest<'_>) -> LoginAnswer {
        let mut signed_in = None;
        for id in cookie_values(request.cookies, &self.config.cookie_name).filter_map(SessionId::from_cookie_value) {
            if signed_in.is_none() && self.config.sign_out_at_provider {
                signed_in = self.sessions.get(&id).await.and_then(|session| {
                    let provider = self.provider_of(&session)?;
                    Some((provider, session.id_token().cloned()))
                });
            }
            match self.sessions.end(&id, SessionEnd::SignOut).await {
                Ok(true) => tracing::info!("Ended a browser session at sign-out"),
                Ok(false) => {}
                // The cookie stays, so that signing out again ends the session once the store is back.
                Err(_) => {
                    return refused(503, "sign-out is unavailable: the session store cannot be reached; try again");
                }
            }
        }
        let cookies = vec![self.cookie(&self.config.cookie_name, "", "/", true, Duration::ZERO)];
        let target = query_value(request.query, "rd").and_then(|target| self.config.redirects.check(&target).ok());
        let at_provider = match &signed_in {
            Some((provider, id_token)) => self.sign_out_at_provider(provider, id_token.as_ref(), target.as_ref()).await,
            None => None,
        };
        if let Some(location) = at_provider {
            return LoginAnswer::Redirect { location, cookies };
        }
        match target {
            Some(target) => LoginAnswer::Redirect { location: target.as_str().into(), cookies },
            None => LoginAnswer::Refused { status: 200, message: "signed out", cookies },
        }
    }

    /// Where the browser ends the person's session at the provider, when sign-out is to go
    /// there and the provider offers it: the session's ID token as the hint, and `target` (when
    /// absolute) or the configured post-logout redirect as where it comes back.
    async fn sign_out_at_provider(
        &self,
        provider: &Provider,
        id_token: Option<&IdTokenHint>,
        target: Option<&RedirectTarget>,
    ) -> Option<String> {
        // GitHub has no sign-out to send the browser to.
        let ProviderClient::Oidc(client, rules) = &provider.client else { return None };
        let discovered = match client.provider(&rules.issuer).await {
            Ok(provider) => provider,
            Err(error) => {
                tracing::warn!(%error, "Signed out here only: the identity provider is unavailable");
                return None;
            }
        };
        let Some(end_session_endpoint) = discovered.end_session_endpoint.as_deref() else {
            tracing::debug!("Signed out here only: the identity provider names no end_session_endpoint");
            return None;
        };
        let absolute_target = target.filter(|target| !target.as_str().starts_with('/'));
        let come_back = absolute_target.or(self.config.post_logout_redirect.as_ref());
        let sign_out = SignOutAtProvider {
            end_session_endpoint,
            id_token_hint: id_token.map(IdTokenHint::expose),
            post_logout_redirect_uri: come_back.map(RedirectTarget::as_str),
        };
        tracing::info!("Sending a signed-out browser to the identity provider's sign-out");
        Some(end_session_url(&provider.config.client_id, sign_out))
    }

    /// OpenID Connect Back-Channel Logout 1.0: the provider POSTs a signed logout token; every
    /// session it names ends, on every replica.
    async fn back_channel_logout(&self, request: EndpointRequest<'_>) -> LoginAnswer {
        let invalid = LoginAnswer::Json { status: 400, json: INVALID_LOGOUT_REQUEST };
        let is_form = request
            .content_type
            .and_then(|value| value.split(';').next())
            .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
        if !request.method.eq_ignore_ascii_case("POST") || !is_form {
            tracing::info!("Refused a back-channel logout that is not a form POST");
            return invalid;
        }
        let tokens: Vec<_> =
            form_urlencoded::parse(request.body).filter(|(name, _)| name == "logout_token").map(|(_, v)| v).collect();
        let [token] = tokens.as_slice() else {
            tracing::info!("Refused a back-channel logout without exactly one logout_token");
            return invalid;
        };
        let unavailable = LoginAnswer::Json { status: 503, json: r#"{"error":"temporarily_unavailable"}"# };
        // The token names its issuer; only the OpenID Connect providers of that issuer may vouch
        // for it, each with its own keys and client id.
        let named_issuer = jwt::parse(token, self.max_token_bytes, &|_| true)
            .ok()
            .and_then(|parsed| parsed.claims.get("iss").and_then(serde_json::Value::as_str).map(str::to_string));
        let candidates = self.providers.iter().filter_map(|provider| match &provider.client {
            ProviderClient::Oidc(client, rules) if named_issuer.as_deref() == Some(&*rules.issuer) => {
                Some((provider, client, rules))
            }
            _ => None,
        });
        let mut verified = None;
        for (provider, client, rules) in candidates {
            let discovered = match client.provider(&rules.issuer).await {
                Ok(discovered) => discovered,
                Err(error) => {
                    tracing::warn!(%error, "Cannot take a back-channel logout: the identity provider is unavailable");
                    return unavailable;
                }
            };
            let expected = LogoutTokenExpectations {
                issuer: &discovered.issuer,
                client_id: &provider.config.client_id,
                now: unix_now(),
                clock_skew_secs: self.clock_skew_secs,
                max_age_secs: self.config.logout_token_max_age_secs,
                max_token_bytes: self.max_token_bytes,
            };
            match self
                .verify_with_provider_keys(&rules.issuer, |keys| logout_token::verify(token, keys, &expected))
                .await
            {
                Some(Ok(claims)) => {
                    verified = Some((discovered, claims));
                    break;
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, provider = %provider.config.name, "Refused a back-channel logout token")
                }
                None => return unavailable,
            }
        }
        let Some((provider, claims)) = verified else {
            tracing::info!("Refused a back-channel logout token no provider vouches for");
            return invalid;
        };
        let window = Duration::from_secs(claims.replay_window_secs);
        match self.sessions.first_use_of_logout_token(&provider.issuer, &claims.jti, window).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("Refused a back-channel logout token used before (its jti)");
                return invalid;
            }
            Err(_) => return unavailable,
        }
        let names = ProviderNames { issuer: &provider.issuer, sid: claims.sid.as_deref(), sub: claims.sub.as_deref() };
        if let Some(revocations) = &self.revocations {
            revocations.add_logout(names.issuer, names.sid, names.sub, Source::SsoLogout).await;
        }
        match self.sessions.end_named(names).await {
            Ok(ended) => {
                tracing::info!(sessions = ended, "Ended the sessions a back-channel logout named");
                LoginAnswer::Json { status: 200, json: "{}" }
            }
            Err(_) => unavailable,
        }
    }

    async fn user_info(&self, request: EndpointRequest<'_>) -> LoginAnswer {
        let Some(session) = self.session_of(request.cookies).await else { return refused(401, "not signed in") };
        let provider = self.provider_of(&session).map(|provider| provider.config.name.to_string());
        let session = session.claims();
        let mut json = serde_json::Map::new();
        json.insert("issuer".into(), session.issuer().into());
        json.insert("subject".into(), session.subject().into());
        if let Some(provider) = provider {
            json.insert("provider".into(), provider.into());
        }
        for name in ["email", "preferred_username", "groups"] {
            if let Some(value) = session.claims().get(name) {
                json.insert(name.into(), value.clone());
            }
        }
        LoginAnswer::UserInfo { json: serde_json::Value::Object(json).to_string() }
    }

    /// The session a request's cookie names, when it is open and its provider still configured;
    /// its access token refreshed when due (see [`Refresher::current`]).
    async fn session_of(&self, cookies: &[&str]) -> Option<Arc<Session>> {
        for id in cookie_values(cookies, &self.config.cookie_name).filter_map(SessionId::from_cookie_value) {
            if let Some(session) = self.sessions.get(&id).await
                && self.provider_of(&session).is_some()
                && let Some(session) = self.refresher.current(id, session).await
            {
                return Some(session);
            }
        }
        None
    }

    /// The provider a session was opened with: the one it names, when that still has the
    /// session's issuer (a session stored before sessions named theirs: the provider of its
    /// issuer); `None` when no configured provider vouches for it any more.
    fn provider_of(&self, session: &Session) -> Option<&Provider> {
        provider_of(&self.providers, session)
    }

    /// The identity of the session a checked request carries, as policies reading `kept` see it.
    pub async fn session_identity(
        &self,
        http: &HttpRequest<'_>,
        kept: &Arc<ClaimPaths>,
    ) -> Option<(Arc<Identity>, Arc<Session>)> {
        let cookies: Vec<&str> = http.header_values("cookie").collect();
        let session = self.session_of(&cookies).await?;
        // A provider limited to some sites vouches for its people there only.
        if !self.provider_of(&session)?.config.applies_to(http.host) {
            return None;
        }
        Some((session.identity(kept), session))
    }

    /// What the check of a request adds when single sign-on is on: on allow with a session, the
    /// identity headers (the access token too with `pass_access_token`, while it is valid) and
    /// the session cookie taken out of `Cookie`; on allow, client copies of every identity header
    /// stripped; on a deny of an anonymous visitor of a login site, the login challenge.
    pub fn complete(&self, decision: &mut Decision, http: &HttpRequest<'_>, session: Option<&Session>) {
        if decision.is_allow() {
            if let Some(session) = session {
                self.add_identity_headers(decision, session);
            }
            self.strip_session_cookie(decision, http);
            for name in self.config.headers.all() {
                if !decision.headers_to_set.iter().any(|(set, _)| set.eq_ignore_ascii_case(name)) {
                    decision.headers_to_remove.push(name.into());
                }
            }
            return;
        }
        let anonymous_refusal = decision.identity.is_none()
            && decision.jwt_error.is_none()
            && matches!(decision.reason, Reason::NoAllowMatch | Reason::DeniedByPolicy);
        if let Some(site) = self.config.site(http.host).filter(|_| anonymous_refusal) {
            decision.challenge = self.login_challenge(http, site.anonymous.redirects(is_browser_navigation(http)));
        }
    }

    fn add_identity_headers(&self, decision: &mut Decision, session: &Session) {
        let access_token = session
            .tokens()
            .filter(|tokens| self.config.pass_access_token && tokens.is_access_token_valid(unix_now()))
            .map(|tokens| tokens.access_token().to_string());
        let session = session.claims();
        let groups = match session.claims().get("groups") {
            Some(serde_json::Value::Array(items)) => {
                Some(items.iter().filter_map(serde_json::Value::as_str).collect::<Vec<_>>().join(","))
            }
            Some(serde_json::Value::String(group)) => Some(group.clone()),
            _ => None,
        };
        let email = session.claim_text("email");
        let names = &self.config.headers;
        let values = [
            (&names.user, Some(session.subject().to_string())),
            (&names.email, email.map(str::to_string)),
            (&names.groups, groups),
            (&names.preferred_username, session.claim_text("preferred_username").map(str::to_string)),
            (&names.plain_user, Some(email.unwrap_or(session.subject()).to_string())),
            (&names.access_token, access_token),
        ];
        for (name, value) in values {
            if let Some(value) = value.filter(|value| is_header_text(value)) {
                decision.headers_to_set.push((Arc::from(&**name), value));
            }
        }
    }

    /// The app never sees the session cookie: the other cookies go on, or none at all.
    fn strip_session_cookie(&self, decision: &mut Decision, http: &HttpRequest<'_>) {
        if cookie_values_of(http, &self.config.cookie_name).next().is_none() {
            return;
        }
        let others: Vec<&str> = http
            .header_values("cookie")
            .flat_map(|header| header.split(';'))
            .map(str::trim)
            .filter(|pair| {
                !pair.is_empty() && pair.split_once('=').is_none_or(|(name, _)| name != &*self.config.cookie_name)
            })
            .collect();
        if others.is_empty() {
            decision.headers_to_remove.push("cookie".into());
        } else {
            decision.headers_to_set.push(("cookie".into(), others.join("; ")));
        }
    }

    /// The login challenge for a request: the start endpoint on the callback's host, bringing
    /// the browser back to the request's URL; a redirect to it when `redirects`, else a 401
    /// naming it.
    fn login_challenge(&self, http: &HttpRequest<'_>, redirects: bool) -> Option<Challenge> {
        let scheme = if http.scheme.is_empty() { "http" } else { http.scheme };
        let original = format!("{scheme}://{}{}", http.host, http.path);
        let origin = origin_of(&self.config.redirect_url)?;
        let rd: String = form_urlencoded::byte_serialize(original.as_bytes()).collect();
        let url = format!("{origin}{}start?rd={rd}", self.config.endpoint_prefix);
        is_header_text(&url).then(|| Challenge::Login { url: url.into(), navigation: redirects })
    }

    /// Keeps a login under way under a new `state`: in Redis when sessions are there, so that
    /// its callback may reach any replica.
    async fn open_login(&self, transaction: LoginTransaction) -> Result<SessionId, StoreError> {
        match &*self.sessions {
            Sessions::Redis(store) => store.open_login(&transaction.to_stored(), self.config.login_timeout).await,
            Sessions::Memory { .. } => self.logins.open(transaction, Instant::now()),
        }
    }

    /// The login under way `state` names, when there is one (its target checked again).
    async fn login(&self, state: &SessionId) -> Result<Option<Arc<LoginTransaction>>, StoreError> {
        match &*self.sessions {
            Sessions::Redis(store) => {
                let stored = store.login(state).await?;
                Ok(stored.and_then(|stored| self.restore_login(stored)).map(Arc::new))
            }
            Sessions::Memory { .. } => Ok(self.logins.get(state, Instant::now())),
        }
    }

    /// Ends the login `state` names: true for the one caller that ended it.
    async fn take_login(&self, state: &SessionId) -> Result<bool, StoreError> {
        match &*self.sessions {
            Sessions::Redis(store) => store.take_login(state).await,
            Sessions::Memory { .. } => Ok(self.logins.take(state, Instant::now()).is_some()),
        }
    }

    fn restore_login(&self, stored: StoredLoginTransaction) -> Option<LoginTransaction> {
        let StoredLoginTransaction { binding, nonce, code_verifier, return_to, provider } = stored;
        let return_to = self.config.redirects.check(&return_to).ok()?;
        Some(LoginTransaction { provider: provider.into(), binding, nonce, code_verifier, return_to })
    }

    /// A fresh 256-bit random text, base64url.
    fn secret(&self) -> Option<String> {
        let mut bytes = [0u8; 32];
        self.random.fill(&mut bytes).ok()?;
        Some(URL_SAFE_NO_PAD.encode(bytes))
    }

    fn login_cookie_name(&self, state: &str) -> String {
        format!("{}{state}", self.config.state_cookie_prefix)
    }

    /// A `Set-Cookie` value: HttpOnly, SameSite=Lax, `Secure` when configured, the configured
    /// domain for the session cookie only; `max_age` zero removes it.
    fn cookie(&self, name: &str, value: &str, path: &str, with_domain: bool, max_age: Duration) -> String {
        let mut cookie = format!("{name}={value}; Path={path}; Max-Age={}; HttpOnly; SameSite=Lax", max_age.as_secs());
        if let Some(domain) = self.config.cookie_domain.as_deref().filter(|_| with_domain) {
            cookie.push_str(&format!("; Domain={domain}"));
        }
        if self.config.cookie_secure {
            cookie.push_str("; Secure");
        }
        cookie
    }
}

/// The answer to a login the provider could not complete (unreachable, an error answer, a
/// refused code), logged with the provider's name.
fn failed_at_provider(provider: &Provider, error: &dyn std::fmt::Display) -> LoginAnswer {
    tracing::warn!(%error, provider = %provider.config.name, "A login failed at the identity provider");
    refused(502, "the identity provider refused the login")
}

/// The provider among `providers` a session was opened with (see [`Sso::provider_of`]).
pub(super) fn provider_of<'p>(providers: &'p [Provider], session: &Session) -> Option<&'p Provider> {
    let issuer = session.claims().issuer();
    match session.provider() {
        Some(name) => providers
            .iter()
            .find(|provider| *provider.config.name == *name)
            .filter(|provider| provider.config.issuer() == issuer),
        None => providers.iter().find(|provider| provider.config.issuer() == issuer),
    }
}

/// `verify` with the provider's keys from `keys`; when that fails, once more with its keys
/// fetched again (it may have rotated them); `None` when its keys are not at hand.
pub(super) async fn verify_with_provider_keys<T, E>(
    keys: &Arc<KeyStore>,
    issuer: &str,
    verify: impl Fn(&KeySet) -> Result<T, E>,
) -> Option<Result<T, E>> {
    let mut key_set = keys.key_set(issuer);
    let mut verified = key_set.as_deref().map(&verify);
    if !matches!(verified, Some(Ok(_))) && keys.refetch(issuer).await {
        key_set = keys.key_set(issuer);
        verified = key_set.as_deref().map(&verify);
    }
    verified
}

/// A browser navigation: GET or HEAD, asking for HTML, not sent by a script (`X-Requested-With`).
pub fn is_browser_navigation(http: &HttpRequest<'_>) -> bool {
    let method_fits = http.method.eq_ignore_ascii_case("GET") || http.method.eq_ignore_ascii_case("HEAD");
    let wants_html = http.header_values("accept").any(|accept| accept.to_ascii_lowercase().contains("text/html"));
    method_fits && wants_html && http.header_values("x-requested-with").next().is_none()
}

/// Why an ID token the provider vouched for is refused by its rules: Google's hosted domain
/// (`hd`) not among `hosted_domains`, or an email not verified; `None` when it passes.
fn refusal_by_rules(rules: &OidcRules, claims: &SessionClaims) -> Option<&'static str> {
    if rules.require_verified_email && claims.claims().get("email_verified") != Some(&serde_json::Value::Bool(true)) {
        return Some("your account's email address is not verified");
    }
    let hosted_domain = claims.claim_text("hd").map(str::to_ascii_lowercase);
    let is_hosted_domain_allowed = rules.hosted_domains.is_empty()
        || hosted_domain.is_some_and(|domain| rules.hosted_domains.iter().any(|allowed| **allowed == *domain));
    (!is_hosted_domain_allowed).then_some("your account does not belong to an organization allowed to sign in here")
}

/// The host (without port) of an absolute URL; `None` for a path.
fn host_of(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    Some(host.rsplit_once(':').map_or(host, |(name, _)| name))
}

/// `scheme://authority` of an absolute URL.
fn origin_of(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let end = url.len() - rest.len() + rest.find('/').unwrap_or(rest.len());
    url.get(..end)
}

/// The first value of `name` in a query string, decoded.
fn query_value(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == name).map(|(_, value)| value.into_owned())
}

/// The values of every cookie named `name` a checked request carries.
fn cookie_values_of<'r>(http: &'r HttpRequest<'_>, name: &'r str) -> impl Iterator<Item = &'r str> + 'r {
    http.header_values("cookie")
        .flat_map(|header| header.split(';'))
        .filter_map(move |pair| pair.trim().split_once('=').filter(|(key, _)| *key == name).map(|(_, value)| value))
}

/// The values of every cookie named `name` in `headers`.
fn cookie_values<'c>(headers: &'c [&'c str], name: &'c str) -> impl Iterator<Item = &'c str> + 'c {
    headers
        .iter()
        .flat_map(|header| header.split(';'))
        .filter_map(move |pair| pair.trim().split_once('=').filter(|(key, _)| *key == name).map(|(_, value)| value))
}

/// Text a header value may carry: printable ASCII and spaces only.
fn is_header_text(value: &str) -> bool {
    value.bytes().all(|byte| byte == b' ' || byte.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http<'a>(method: &'a str, headers: Vec<(&'a str, &'a str)>) -> HttpRequest<'a> {
        HttpRequest { method, host: "app.example.com", path: "/x", headers, ..HttpRequest::default() }
    }

    #[test]
    fn only_html_navigations_without_a_script_marker_count_as_browser_navigations() {
        let html = ("accept", "text/html,application/xhtml+xml,*/*;q=0.8");
        assert!(is_browser_navigation(&http("GET", vec![html])));
        assert!(is_browser_navigation(&http("HEAD", vec![html])));
        assert!(!is_browser_navigation(&http("POST", vec![html])), "a form post");
        assert!(!is_browser_navigation(&http("GET", vec![("accept", "application/json")])), "an API call");
        assert!(!is_browser_navigation(&http("GET", vec![])), "no Accept");
        assert!(!is_browser_navigation(&http("GET", vec![html, ("x-requested-with", "XMLHttpRequest")])), "XHR");
    }

    #[test]
    fn cookies_are_found_by_their_exact_name_across_headers() {
        let headers = ["a=1; session=abc", "xsession=no;session=def"];
        assert_eq!(cookie_values(&headers, "session").collect::<Vec<_>>(), ["abc", "def"]);
        assert_eq!(origin_of("https://auth.example.com:8443/oauth2/callback"), Some("https://auth.example.com:8443"));
        assert_eq!(query_value("rd=%2Fa%3Fb%3D1&x=2", "rd").as_deref(), Some("/a?b=1"));
    }
}
