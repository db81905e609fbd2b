//! One signed-in person's session: the claims its login's ID token gave, the ID token itself (sent back to the provider at sign-out, never shown), the provider's access and refresh tokens (never shown), and the identity the live policy set sees, built once per policy set instead of at every check.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use crate::core::Identity;
use crate::core::id_token::SessionClaims;
use crate::core::identity::ClaimPaths;

/// An identity built for the claims one policy set keeps.
#[derive(Debug)]
struct BuiltIdentity {
    kept: Arc<ClaimPaths>,
    identity: Arc<Identity>,
}

/// The ID token of a login, kept to name the session to the provider at sign-out
/// (`id_token_hint`); `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct IdTokenHint(Box<str>);

impl IdTokenHint {
    /// The token as the provider issued it.
    pub fn new(token: &str) -> Self {
        Self(token.into())
    }

    /// The token, for the sign-out redirect and the sealed store only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IdTokenHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdTokenHint([redacted])")
    }
}

/// The provider's tokens of a session: the access token, when it expires, and the refresh
/// token that gets a new one; `Debug` never shows a token.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProviderTokens {
    access_token: Box<str>,
    /// Seconds since the epoch; `None` when the provider did not say (`expires_in`).
    expires_at: Option<u64>,
    /// Seconds since the epoch when the access token was received.
    received_at: u64,
    refresh_token: Option<Box<str>>,
}

impl ProviderTokens {
    /// The tokens of a token endpoint's answer received at `now`: the access token, its
    /// `expires_in`, the refresh token when one was issued.
    pub fn new(access_token: &str, expires_in: Option<u64>, refresh_token: Option<&str>, now: u64) -> Self {
        Self {
            access_token: access_token.into(),
            expires_at: expires_in.map(|secs| now.saturating_add(secs)),
            received_at: now,
            refresh_token: refresh_token.map(Into::into),
        }
    }

    /// The access token, for the app's header and the sealed store only.
    pub fn access_token(&self) -> &str {
        &self.access_token
    }

    /// The refresh token, for the token endpoint and the sealed store only.
    pub fn refresh_token(&self) -> Option<&str> {
        self.refresh_token.as_deref()
    }

    /// When the access token expires (seconds since the epoch), when the provider said.
    pub fn expires_at(&self) -> Option<u64> {
        self.expires_at
    }

    /// How long the access token was issued for, when the provider said.
    pub fn lifetime_secs(&self) -> Option<u64> {
        self.expires_at.map(|end| end.saturating_sub(self.received_at))
    }

    /// Whether the access token is still valid at `now` (one without an expiry is).
    pub fn is_access_token_valid(&self, now: u64) -> bool {
        self.expires_at.is_none_or(|end| now < end)
    }
}

impl fmt::Debug for ProviderTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderTokens")
            .field("access_token", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// A session's login, and its identity as last built.
#[derive(Debug)]
pub struct Session {
    /// The name of the provider the person logged in with (`None`: a session stored before
    /// sessions named theirs).
    provider: Option<Box<str>>,
    claims: SessionClaims,
    id_token: Option<IdTokenHint>,
    tokens: Option<ProviderTokens>,
    identity: ArcSwapOption<BuiltIdentity>,
}

impl Session {
    /// The session of a login at `provider` whose ID token `id_token` gave `claims` (`None`: a
    /// provider without ID tokens, or a session stored before ID tokens were kept), with the
    /// provider's `tokens` (`None`: stored before they were kept, or the provider gave no access
    /// token).
    pub fn new(
        provider: Option<&str>,
        claims: SessionClaims,
        id_token: Option<IdTokenHint>,
        tokens: Option<ProviderTokens>,
    ) -> Self {
        Self { provider: provider.map(Into::into), claims, id_token, tokens, identity: ArcSwapOption::empty() }
    }

    /// The name of the provider the person logged in with, when the session knows it.
    pub fn provider(&self) -> Option<&str> {
        self.provider.as_deref()
    }

    /// The provider's tokens, when kept.
    pub fn tokens(&self) -> Option<&ProviderTokens> {
        self.tokens.as_ref()
    }

    /// What the login's ID token said.
    pub fn claims(&self) -> &SessionClaims {
        &self.claims
    }

    /// The login's ID token, when kept.
    pub fn id_token(&self) -> Option<&IdTokenHint> {
        self.id_token.as_ref()
    }

    /// Whether the provider names this session by `sid` (its session id) or, when no `sid` is
    /// given, by `sub`: what a back-channel logout ends.
    pub fn is_named_by(&self, sid: Option<&str>, sub: Option<&str>) -> bool {
        match (sid, sub) {
            (Some(sid), _) => self.claims.claim_text("sid") == Some(sid),
            (None, Some(sub)) => self.claims.subject() == sub,
            (None, None) => false,
        }
    }

    /// The session's identity as the policy set keeping `kept` sees it: the one built before for
    /// the same policy set, else (at the first check, and once after each reload) built now by
    /// the core and kept.
    pub fn identity(&self, kept: &Arc<ClaimPaths>) -> Arc<Identity> {
        if let Some(built) = self.identity.load().as_ref()
            && Arc::ptr_eq(&built.kept, kept)
        {
            return built.identity.clone();
        }
        let identity = Arc::new(self.claims.identity(kept));
        self.identity.store(Some(Arc::new(BuiltIdentity { kept: kept.clone(), identity: identity.clone() })));
        identity
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::Algorithm;
    use serde_json::json;

    use super::*;
    use crate::core::id_token::{self, IdTokenExpectations};
    use crate::core::jwt::KeySet;
    use crate::core::test_util::{ISSUER, NOW, jwks, sign};

    /// The session of alice's login, her ID token in the groups `admins` and `dev`.
    fn alice() -> Session {
        let keys = KeySet::from_jwks_json(&jwks(&[("rsa-2048.pem", Algorithm::RS256, "k1")])).unwrap();
        let claims = json!({"iss": ISSUER, "sub": "alice", "aud": "portcullis", "exp": NOW + 300, "iat": NOW,
                            "nonce": "n", "sid": "s-1", "email": "alice@example.com", "groups": ["admins", "dev"]});
        let token = sign("rsa-2048.pem", Algorithm::RS256, "k1", &claims);
        let expected = IdTokenExpectations {
            issuer: ISSUER,
            client_id: "portcullis",
            nonce: "n",
            now: NOW,
            clock_skew_secs: 60,
            max_token_bytes: 8192,
        };
        let tokens = ProviderTokens::new("access-secret", Some(300), Some("refresh-secret"), NOW);
        Session::new(
            Some("default"),
            id_token::verify(&token, &keys, &expected).unwrap(),
            Some(IdTokenHint::new(&token)),
            Some(tokens),
        )
    }

    fn keeping(claims: &[&str]) -> Arc<ClaimPaths> {
        Arc::new(ClaimPaths::new(claims.iter().map(|claim| Box::from([Box::from(*claim)])), false))
    }

    #[test]
    fn a_session_is_named_by_its_provider_session_else_by_its_subject_and_never_shows_its_id_token() {
        let session = alice();
        assert!(session.is_named_by(Some("s-1"), None));
        assert!(session.is_named_by(Some("s-1"), Some("someone-else")), "a sid given decides alone");
        assert!(!session.is_named_by(Some("other-sid"), Some("alice")), "a sid given decides alone");
        assert!(session.is_named_by(None, Some("alice")));
        assert!(!session.is_named_by(None, Some("bob")));
        assert!(!session.is_named_by(None, None));
        let hint = session.id_token().unwrap();
        assert_eq!(format!("{hint:?}"), "IdTokenHint([redacted])");
        assert!(!format!("{session:?}").contains(hint.expose()));
    }

    #[test]
    fn a_session_never_shows_its_access_or_refresh_token() {
        let shown = format!("{:?}", alice());
        assert!(!shown.contains("access-secret") && !shown.contains("refresh-secret"), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
    }

    #[test]
    fn an_access_token_is_valid_until_its_expiry_and_one_without_expiry_always_is() {
        let tokens = ProviderTokens::new("a", Some(300), None, NOW);
        assert_eq!((tokens.expires_at(), tokens.lifetime_secs()), (Some(NOW + 300), Some(300)));
        assert!(tokens.is_access_token_valid(NOW + 299) && !tokens.is_access_token_valid(NOW + 300));
        assert!(ProviderTokens::new("a", None, None, NOW).is_access_token_valid(u64::MAX));
    }

    #[test]
    fn a_session_builds_its_identity_once_per_policy_set() {
        let session = alice();
        let groups = keeping(&["groups"]);
        let first = session.identity(&groups);
        assert!(Arc::ptr_eq(&first, &session.identity(&groups)), "the same identity, not a new one");
        let reloaded = keeping(&["groups"]);
        let after_reload = session.identity(&reloaded);
        assert!(Arc::ptr_eq(&after_reload, &session.identity(&reloaded)), "built once for the new policy set");
        assert_eq!(first.claim_values(&["groups"]).collect::<Vec<_>>(), ["admins", "dev"]);
        let email = keeping(&["email"]);
        let rebuilt = session.identity(&email);
        assert_eq!(rebuilt.claim_values(&["email"]).collect::<Vec<_>>(), ["alice@example.com"]);
        assert_eq!(rebuilt.claim_values(&["groups"]).count(), 0);
    }
}
