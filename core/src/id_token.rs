//! An OpenID Connect ID token verified at a browser login (signature with the provider's keys, issuer, audience, lifetime, nonce; keys and `now` are inputs), and the claims a session keeps from it; the session's [`Identity`] is built here only. Pure.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::identity::{ClaimPaths, Identity, IdentitySource, KeyOrigin, Proof, Verifier};
use super::jwt::{self, JwtError, KeyFingerprint, KeySet, Lifetime};

/// What the ID token of one login must say.
#[derive(Debug, Clone, Copy)]
pub struct IdTokenExpectations<'e> {
    /// The provider's issuer, exactly as its discovery document names it.
    pub issuer: &'e str,
    /// portcullis's client id: an audience of the token (and its `azp` when it has several).
    pub client_id: &'e str,
    /// The nonce this login sent in its authorization request.
    pub nonce: &'e str,
    /// Seconds since the epoch.
    pub now: u64,
    /// Tolerance when checking `exp`, `nbf` and `iat`.
    pub clock_skew_secs: u64,
    /// Longer tokens are refused unread.
    pub max_token_bytes: usize,
}

/// Why an ID token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdTokenError {
    /// The token itself: its form, signature or lifetime.
    #[error("the token: {0}")]
    Token(JwtError),
    /// Another issuer.
    #[error("`iss` is not the provider's issuer")]
    WrongIssuer,
    /// Another client.
    #[error("`aud` does not name the client, or `azp` names another")]
    WrongAudience,
    /// No expiry.
    #[error("no `exp`")]
    NoExpiry,
    /// Not this login's nonce.
    #[error("`nonce` is not this login's")]
    NonceMismatch,
    /// No subject, or (after a refresh) another one than the login's.
    #[error("no `sub`, or not the login's")]
    NoSubject,
}

impl From<JwtError> for IdTokenError {
    fn from(error: JwtError) -> Self {
        Self::Token(error)
    }
}

/// The claims of an ID token that [`verify`] accepted: what a session remembers of its login.
/// Only [`verify`] makes one, so a session's identity always comes from a verified token.
#[derive(Debug, Clone)]
pub struct SessionClaims {
    issuer: Arc<str>,
    claims: Map<String, Value>,
    proof: Proof,
}

/// The claims split into words when given as one string, as for tokens.
pub(crate) const SPACE_DELIMITED: [&str; 2] = ["scope", "permission"];

/// What the ID token of a refresh must say (OpenID Connect Core 12.2): as at the login, but
/// without a nonce, and about the same person.
#[derive(Debug, Clone, Copy)]
pub struct RefreshedIdTokenExpectations<'e> {
    /// The provider's issuer, exactly as its discovery document names it.
    pub issuer: &'e str,
    /// portcullis's client id.
    pub client_id: &'e str,
    /// The `sub` of the session's login.
    pub subject: &'e str,
    /// Seconds since the epoch.
    pub now: u64,
    /// Tolerance when checking `exp`, `nbf` and `iat`.
    pub clock_skew_secs: u64,
    /// Longer tokens are refused unread.
    pub max_token_bytes: usize,
}

/// Verifies the ID token of a login (OpenID Connect Core 3.1.3.7) with the provider's `keys`:
/// its signature, `iss`, `aud` (and `azp`), `exp` (which it must have), `nbf`, and the login's
/// `nonce` (which it must carry).
pub fn verify(token: &str, keys: &KeySet, expected: &IdTokenExpectations<'_>) -> Result<SessionClaims, IdTokenError> {
    let claims = verify_for_client(token, keys, expected)?;
    if claims.claims.get("nonce").and_then(Value::as_str) != Some(expected.nonce) {
        return Err(IdTokenError::NonceMismatch);
    }
    if claims.claims.get("sub").and_then(Value::as_str).is_none_or(str::is_empty) {
        return Err(IdTokenError::NoSubject);
    }
    Ok(claims)
}

/// Verifies the ID token a refresh brought: as [`verify`] does, but without a nonce, and its
/// `sub` must be the login's.
pub fn verify_refreshed(
    token: &str,
    keys: &KeySet,
    expected: &RefreshedIdTokenExpectations<'_>,
) -> Result<SessionClaims, IdTokenError> {
    let without_nonce = IdTokenExpectations {
        issuer: expected.issuer,
        client_id: expected.client_id,
        nonce: "",
        now: expected.now,
        clock_skew_secs: expected.clock_skew_secs,
        max_token_bytes: expected.max_token_bytes,
    };
    let claims = verify_for_client(token, keys, &without_nonce)?;
    if claims.claims.get("sub").and_then(Value::as_str) != Some(expected.subject) {
        return Err(IdTokenError::NoSubject);
    }
    Ok(claims)
}

/// The signature, `iss`, `aud` (and `azp`), `exp` (which it must have) and `nbf` of an ID token;
/// everything `expected` says but its nonce.
fn verify_for_client(
    token: &str,
    keys: &KeySet,
    expected: &IdTokenExpectations<'_>,
) -> Result<SessionClaims, IdTokenError> {
    let (issuer, client_id) = (expected.issuer, expected.client_id);
    let parsed = jwt::parse(token, expected.max_token_bytes, &|_| true)?;
    let key = jwt::verify_signature(&parsed, keys)?;
    let claims = parsed.claims;
    if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
        return Err(IdTokenError::WrongIssuer);
    }
    let client: [Box<str>; 1] = [client_id.into()];
    let audiences = match claims.get("aud") {
        Some(Value::Array(list)) => list.len(),
        _ => 1,
    };
    let authorized_party = claims.get("azp").and_then(Value::as_str);
    let azp_fits = match authorized_party {
        Some(azp) => azp == client_id,
        None => audiences == 1,
    };
    if !jwt::audience_allowed(&claims, &client) || !azp_fits {
        return Err(IdTokenError::WrongAudience);
    }
    let lifetime = Lifetime::of(&claims)?;
    if lifetime.expires_at().is_none() {
        return Err(IdTokenError::NoExpiry);
    }
    lifetime.check(expected.now, expected.clock_skew_secs)?;
    let proof = Proof { lifetime, kid: key.kid.clone(), key: key.fingerprint, source: IdentitySource::Session };
    Ok(SessionClaims { issuer: issuer.into(), claims, proof })
}

/// What a session store keeps of a login to restore its [`SessionClaims`] on another replica or
/// after a restart: the verified claims, the issuer, and the key that verified the ID token.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoredLogin {
    /// The provider's issuer.
    pub issuer: String,
    /// Every claim of the ID token.
    pub claims: Map<String, Value>,
    /// The `kid` of the key that verified the ID token.
    pub kid: Option<String>,
    /// The fingerprint of that key.
    pub key: [u8; 32],
}

impl SessionClaims {
    /// What a session store keeps of this login.
    pub fn to_stored(&self) -> StoredLogin {
        StoredLogin {
            issuer: self.issuer.to_string(),
            claims: self.claims.clone(),
            kid: self.proof.kid.as_deref().map(str::to_string),
            key: self.proof.key.0,
        }
    }

    /// The claims a session store kept with [`Self::to_stored`]. Only for storage that
    /// authenticates what it hands back (the session store's AEAD, sealed with its own key):
    /// then only what [`verify`] once accepted comes back, and its proof carries over.
    pub fn from_stored(stored: StoredLogin) -> Result<Self, IdTokenError> {
        let StoredLogin { issuer, claims, kid, key } = stored;
        if claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str()) {
            return Err(IdTokenError::WrongIssuer);
        }
        if claims.get("sub").and_then(Value::as_str).is_none_or(str::is_empty) {
            return Err(IdTokenError::NoSubject);
        }
        let lifetime = Lifetime::of(&claims)?;
        let proof =
            Proof { lifetime, kid: kid.map(Into::into), key: KeyFingerprint(key), source: IdentitySource::Session };
        Ok(Self { issuer: issuer.into(), claims, proof })
    }

    /// The claims of a login at an OAuth 2.0 provider that issues no ID token (GitHub): what its
    /// user API answered, over TLS, for the access token its token endpoint gave this very login
    /// in exchange for the login's code and PKCE verifier. `iss` and `sub` are set here and win
    /// over any of `claims`; no lifetime (the session's own bounds it), no key.
    pub fn from_user_api(issuer: &str, subject: &str, mut claims: Map<String, Value>) -> Result<Self, IdTokenError> {
        if subject.is_empty() {
            return Err(IdTokenError::NoSubject);
        }
        claims.insert("iss".into(), issuer.into());
        claims.insert("sub".into(), subject.into());
        let proof = Proof {
            lifetime: Lifetime::UNBOUNDED,
            kid: None,
            key: KeyFingerprint::default(),
            source: IdentitySource::Session,
        };
        Ok(Self { issuer: issuer.into(), claims, proof })
    }

    /// The provider's issuer.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The token's `sub`.
    pub fn subject(&self) -> &str {
        self.claim_text("sub").unwrap_or_default()
    }

    /// A top-level string claim (`email`, `preferred_username`, ...).
    pub fn claim_text(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }

    /// A top-level claim as it is, for the user-info endpoint.
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }

    /// The session's caller as policies see it: principal `iss/sub`, and the claims `kept`
    /// names (the policy set's), exactly as for a bearer token with these claims.
    pub fn identity(&self, kept: &Arc<ClaimPaths>) -> Identity {
        let verifier = Arc::new(Verifier {
            issuer: Some(self.issuer.clone()),
            keys: KeyOrigin::Remote,
            kept: kept.clone(),
            space_delimited: SPACE_DELIMITED.iter().map(|name| Box::from(*name)).collect(),
        });
        Identity::from_verified_claims(&self.claims, &verifier, self.proof.clone())
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::Algorithm;
    use serde_json::json;

    use super::*;
    use crate::test_util::{ISSUER, NOW, jwks, sign};

    fn keys() -> KeySet {
        KeySet::from_jwks_json(&jwks(&[("rsa-2048.pem", Algorithm::RS256, "k1")])).unwrap()
    }

    fn expected() -> IdTokenExpectations<'static> {
        IdTokenExpectations {
            issuer: ISSUER,
            client_id: "portcullis",
            nonce: "n-0S6_WzA2Mj",
            now: NOW,
            clock_skew_secs: 60,
            max_token_bytes: 8192,
        }
    }

    fn id_token_claims() -> Value {
        json!({"iss": ISSUER, "sub": "alice", "aud": "portcullis", "exp": NOW + 300, "iat": NOW,
               "nonce": "n-0S6_WzA2Mj", "email": "alice@example.com", "groups": ["admins", "dev"]})
    }

    fn with(change: impl FnOnce(&mut Map<String, Value>)) -> String {
        let mut claims = id_token_claims();
        if let Value::Object(map) = &mut claims {
            change(map);
        }
        sign("rsa-2048.pem", Algorithm::RS256, "k1", &claims)
    }

    #[test]
    fn a_login_id_token_becomes_the_identity_policies_know() {
        let session = verify(&with(|_| {}), &keys(), &expected()).unwrap();
        assert_eq!((session.issuer(), session.subject()), (ISSUER, "alice"));
        assert_eq!(session.claim_text("email"), Some("alice@example.com"));
        let kept = Arc::new(ClaimPaths::new(vec![Box::from([Box::from("groups")])], false));
        let identity = session.identity(&kept);
        assert_eq!((identity.issuer(), identity.subject()), (ISSUER, "alice"));
        assert_eq!(identity.claim_values(&["groups"]).collect::<Vec<_>>(), ["admins", "dev"]);
    }

    #[test]
    fn a_session_identity_says_it_came_from_a_session() {
        let session = verify(&with(|_| {}), &keys(), &expected()).unwrap();
        let identity = session.identity(&Arc::new(ClaimPaths::default()));
        assert_eq!(identity.source(), IdentitySource::Session);
    }

    #[test]
    fn a_stored_login_restores_the_same_identity() {
        let session = verify(&with(|_| {}), &keys(), &expected()).unwrap();
        let restored = SessionClaims::from_stored(session.to_stored()).unwrap();
        let kept = Arc::new(ClaimPaths::new(vec![Box::from([Box::from("groups")])], true));
        assert_eq!(restored.identity(&kept), session.identity(&kept));
        let mut foreign = session.to_stored();
        foreign.issuer = "https://evil.example".into();
        assert_eq!(SessionClaims::from_stored(foreign).err(), Some(IdTokenError::WrongIssuer));
    }

    #[test]
    fn id_tokens_that_do_not_fit_this_login_are_refused() {
        let other_key = sign("rsa-2048-other.pem", Algorithm::RS256, "k1", &id_token_claims());
        let rows: Vec<(&str, String, IdTokenError)> = vec![
            ("signed by another key", other_key, IdTokenError::Token(JwtError::VerificationFails)),
            (
                "another issuer",
                with(|c| drop(c.insert("iss".into(), json!("https://evil.example")))),
                IdTokenError::WrongIssuer,
            ),
            (
                "another client",
                with(|c| drop(c.insert("aud".into(), json!("someone-else")))),
                IdTokenError::WrongAudience,
            ),
            (
                "several audiences and no azp",
                with(|c| drop(c.insert("aud".into(), json!(["portcullis", "other"])))),
                IdTokenError::WrongAudience,
            ),
            (
                "azp of another client",
                with(|c| drop(c.insert("azp".into(), json!("other")))),
                IdTokenError::WrongAudience,
            ),
            ("no exp", with(|c| drop(c.remove("exp"))), IdTokenError::NoExpiry),
            (
                "expired",
                with(|c| drop(c.insert("exp".into(), json!(NOW - 120)))),
                IdTokenError::Token(JwtError::Expired),
            ),
            (
                "another login's nonce",
                with(|c| drop(c.insert("nonce".into(), json!("other")))),
                IdTokenError::NonceMismatch,
            ),
            ("no nonce", with(|c| drop(c.remove("nonce"))), IdTokenError::NonceMismatch),
            ("no subject", with(|c| drop(c.remove("sub"))), IdTokenError::NoSubject),
            ("not a token", "a.b".into(), IdTokenError::Token(JwtError::BadFormat)),
        ];
        for (case, token, error) in rows {
            assert_eq!(verify(&token, &keys(), &expected()).err(), Some(error), "{case}");
        }
        let several = with(|c| {
            c.insert("aud".into(), json!(["portcullis", "other"]));
            c.insert("azp".into(), json!("portcullis"));
        });
        assert!(verify(&several, &keys(), &expected()).is_ok(), "several audiences with azp naming the client");
    }

    #[test]
    fn a_refreshed_id_token_needs_no_nonce_but_must_be_about_the_same_person() {
        let refreshed = |subject| RefreshedIdTokenExpectations {
            issuer: ISSUER,
            client_id: "portcullis",
            subject,
            now: NOW,
            clock_skew_secs: 60,
            max_token_bytes: 8192,
        };
        let without_nonce = with(|c| drop(c.remove("nonce")));
        let session = verify_refreshed(&without_nonce, &keys(), &refreshed("alice")).unwrap();
        assert_eq!(session.subject(), "alice");
        assert_eq!(verify_refreshed(&without_nonce, &keys(), &refreshed("bob")).err(), Some(IdTokenError::NoSubject));
        let other_key = sign("rsa-2048-other.pem", Algorithm::RS256, "k1", &id_token_claims());
        assert_eq!(
            verify_refreshed(&other_key, &keys(), &refreshed("alice")).err(),
            Some(IdTokenError::Token(JwtError::VerificationFails))
        );
        let expired = with(|c| drop(c.insert("exp".into(), json!(NOW - 120))));
        assert_eq!(
            verify_refreshed(&expired, &keys(), &refreshed("alice")).err(),
            Some(IdTokenError::Token(JwtError::Expired))
        );
    }
}
