//! An OpenID Connect Back-Channel Logout token verified (signature with the provider's keys, issuer, audience, `iat` within bounds, the logout event, no `nonce`, a `sid` or `sub`, a `jti`; keys and `now` are inputs), and what it names; never decides whether it was seen before (the caller keeps the `jti`s). Pure.

use serde_json::{Map, Value};

use super::jwt::{self, JwtError, KeySet, Lifetime};

/// The event a logout token must carry (Back-Channel Logout 1.0, section 2.4).
pub const LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// What a logout token from the provider must say.
#[derive(Debug, Clone, Copy)]
pub struct LogoutTokenExpectations<'e> {
    /// The provider's issuer, exactly as its discovery document names it.
    pub issuer: &'e str,
    /// portcullis's client id: one of the token's audiences.
    pub client_id: &'e str,
    /// Seconds since the epoch.
    pub now: u64,
    /// Tolerance when checking `exp`, `nbf` and `iat`.
    pub clock_skew_secs: u64,
    /// A token issued longer ago than this (clock skew added) is refused.
    pub max_age_secs: u64,
    /// Longer tokens are refused unread.
    pub max_token_bytes: usize,
}

/// Why a logout token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LogoutTokenError {
    /// The token itself: its form, signature or lifetime.
    #[error("the token: {0}")]
    Token(JwtError),
    /// Another issuer.
    #[error("`iss` is not the provider's issuer")]
    WrongIssuer,
    /// Another client.
    #[error("`aud` does not name the client")]
    WrongAudience,
    /// No `iat`, or one too far in the past or the future.
    #[error("`iat` is missing or out of bounds")]
    IssuedAtOutOfBounds,
    /// No `events` object with the back-channel logout event.
    #[error("`events` lacks the back-channel logout event")]
    NoLogoutEvent,
    /// A `nonce`: an ID token passed off as a logout token.
    #[error("a logout token must not carry `nonce`")]
    NonceForbidden,
    /// Neither `sid` nor `sub`.
    #[error("neither `sid` nor `sub`")]
    NoSessionOrSubject,
    /// No `jti`, so a replay could not be told.
    #[error("no `jti`")]
    NoTokenId,
}

impl From<JwtError> for LogoutTokenError {
    fn from(error: JwtError) -> Self {
        Self::Token(error)
    }
}

/// What a verified logout token names: the provider's session (`sid`), the person (`sub`), or
/// both; and its `jti` with how long it must be remembered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutClaims {
    /// The provider's session id, when given.
    pub sid: Option<Box<str>>,
    /// The person's subject, when given.
    pub sub: Option<Box<str>>,
    /// The token's unique id.
    pub jti: Box<str>,
    /// Seconds from `now` after which the token is refused by its `iat` anyway: how long its
    /// `jti` must be remembered to refuse a replay. At least 1.
    pub replay_window_secs: u64,
}

/// A non-empty top-level string claim.
fn text_claim(claims: &Map<String, Value>, name: &str) -> Option<Box<str>> {
    claims.get(name).and_then(Value::as_str).filter(|text| !text.is_empty()).map(Into::into)
}

/// Verifies a logout token (Back-Channel Logout 1.0, section 2.6) with the provider's `keys`.
pub fn verify(
    token: &str,
    keys: &KeySet,
    expected: &LogoutTokenExpectations<'_>,
) -> Result<LogoutClaims, LogoutTokenError> {
    let parsed = jwt::parse(token, expected.max_token_bytes, &|name| matches!(name, "events" | "sid" | "nonce"))?;
    jwt::verify_signature(&parsed, keys)?;
    let claims = parsed.claims;
    if claims.get("iss").and_then(Value::as_str) != Some(expected.issuer) {
        return Err(LogoutTokenError::WrongIssuer);
    }
    if !jwt::audience_allowed(&claims, &[expected.client_id.into()]) {
        return Err(LogoutTokenError::WrongAudience);
    }
    Lifetime::of(&claims)?.check(expected.now, expected.clock_skew_secs)?;
    let issued_at = claims.get("iat").and_then(Value::as_f64).ok_or(LogoutTokenError::IssuedAtOutOfBounds)?;
    let (now, skew) = (expected.now as f64, expected.clock_skew_secs as f64);
    let refused_from = issued_at + expected.max_age_secs as f64 + skew;
    if issued_at - skew > now || refused_from <= now {
        return Err(LogoutTokenError::IssuedAtOutOfBounds);
    }
    let has_event = claims.get("events").and_then(Value::as_object).and_then(|events| events.get(LOGOUT_EVENT));
    if !has_event.is_some_and(Value::is_object) {
        return Err(LogoutTokenError::NoLogoutEvent);
    }
    if claims.contains_key("nonce") {
        return Err(LogoutTokenError::NonceForbidden);
    }
    let (sid, sub) = (text_claim(&claims, "sid"), text_claim(&claims, "sub"));
    if sid.is_none() && sub.is_none() {
        return Err(LogoutTokenError::NoSessionOrSubject);
    }
    let jti = text_claim(&claims, "jti").ok_or(LogoutTokenError::NoTokenId)?;
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "positive and at most `max_age_secs` plus twice the skew, by the `iat` check above"
    )]
    let replay_window_secs = ((refused_from - now).ceil() as u64).max(1);
    Ok(LogoutClaims { sid, sub, jti, replay_window_secs })
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

    fn expected() -> LogoutTokenExpectations<'static> {
        LogoutTokenExpectations {
            issuer: ISSUER,
            client_id: "portcullis",
            now: NOW,
            clock_skew_secs: 60,
            max_age_secs: 300,
            max_token_bytes: 8192,
        }
    }

    fn logout_claims() -> Value {
        json!({"iss": ISSUER, "sub": "alice", "aud": "portcullis", "iat": NOW, "exp": NOW + 120, "jti": "j-1",
               "sid": "s-1", "events": {LOGOUT_EVENT: {}}})
    }

    fn with(change: impl FnOnce(&mut Map<String, Value>)) -> String {
        let mut claims = logout_claims();
        if let Value::Object(map) = &mut claims {
            change(map);
        }
        sign("rsa-2048.pem", Algorithm::RS256, "k1", &claims)
    }

    #[test]
    fn a_logout_token_names_the_session_and_the_person_and_how_long_to_remember_it() {
        let claims = verify(&with(|_| {}), &keys(), &expected()).unwrap();
        assert_eq!(claims.sid.as_deref(), Some("s-1"));
        assert_eq!(claims.sub.as_deref(), Some("alice"));
        assert_eq!(&*claims.jti, "j-1");
        assert_eq!(claims.replay_window_secs, 360, "iat + max age + skew - now");
        let only_sub = verify(&with(|c| drop(c.remove("sid"))), &keys(), &expected()).unwrap();
        assert_eq!((only_sub.sid, only_sub.sub.as_deref()), (None, Some("alice")));
        let only_sid = verify(&with(|c| drop(c.remove("sub"))), &keys(), &expected()).unwrap();
        assert_eq!((only_sid.sid.as_deref(), only_sid.sub), (Some("s-1"), None));
        let several = with(|c| drop(c.insert("aud".into(), json!(["other", "portcullis"]))));
        assert!(verify(&several, &keys(), &expected()).is_ok(), "the client among several audiences");
    }

    #[test]
    fn logout_tokens_that_break_the_specification_are_refused_each_for_its_reason() {
        let other_key = sign("rsa-2048-other.pem", Algorithm::RS256, "k1", &logout_claims());
        let set = |name: &str, value: Value| {
            let name = name.to_string();
            with(move |c| drop(c.insert(name, value)))
        };
        let remove = |name: &'static str| with(move |c| drop(c.remove(name)));
        let rows: Vec<(&str, String, LogoutTokenError)> = vec![
            ("signed by another key", other_key, LogoutTokenError::Token(JwtError::VerificationFails)),
            ("not a token", "a.b".into(), LogoutTokenError::Token(JwtError::BadFormat)),
            ("another issuer", set("iss", json!("https://evil.example")), LogoutTokenError::WrongIssuer),
            ("another client", set("aud", json!("someone-else")), LogoutTokenError::WrongAudience),
            ("no audience", remove("aud"), LogoutTokenError::WrongAudience),
            ("expired", set("exp", json!(NOW - 120)), LogoutTokenError::Token(JwtError::Expired)),
            ("no iat", remove("iat"), LogoutTokenError::IssuedAtOutOfBounds),
            ("iat too old", set("iat", json!(NOW - 361)), LogoutTokenError::IssuedAtOutOfBounds),
            ("iat in the future", set("iat", json!(NOW + 61)), LogoutTokenError::IssuedAtOutOfBounds),
            ("no events", remove("events"), LogoutTokenError::NoLogoutEvent),
            ("events not an object", set("events", json!([LOGOUT_EVENT])), LogoutTokenError::NoLogoutEvent),
            ("another event", set("events", json!({"urn:other": {}})), LogoutTokenError::NoLogoutEvent),
            ("event not an object", set("events", json!({LOGOUT_EVENT: "yes"})), LogoutTokenError::NoLogoutEvent),
            ("a nonce", set("nonce", json!("n")), LogoutTokenError::NonceForbidden),
            (
                "neither sid nor sub",
                with(|c| {
                    c.remove("sid");
                    c.remove("sub");
                }),
                LogoutTokenError::NoSessionOrSubject,
            ),
            (
                "empty sid, no sub",
                with(|c| {
                    c.insert("sid".into(), json!(""));
                    c.remove("sub");
                }),
                LogoutTokenError::NoSessionOrSubject,
            ),
            ("no jti", remove("jti"), LogoutTokenError::NoTokenId),
        ];
        for (case, token, error) in rows {
            assert_eq!(verify(&token, &keys(), &expected()).err(), Some(error), "{case}");
        }
    }
}
