//! OpenID Connect Back-Channel Logout for bearer-token issuers: a provider's logout token verified with that issuer's fetched keys, its `jti` taken once, and the `sid` it names (or its subject, for tokens issued until now) revoked; answers as a status and a JSON body, never logs the token.

use std::time::{Duration, Instant};

use super::admin::AdminAnswer;
use super::{Revocations, Source, unix_now};
use crate::core::authn::KeyLookup as _;
use crate::core::jwt;
use crate::core::logout_token::{self, LogoutClaims, LogoutTokenExpectations};
use crate::core::revocation::Entry;
use crate::sso::replay::HashedName;

const INVALID_REQUEST: &str = r#"{"error":"invalid_request"}"#;
const UNAVAILABLE: &str = r#"{"error":"temporarily_unavailable"}"#;

fn answer(status: u16, json: &str) -> AdminAnswer {
    AdminAnswer { status, json: json.into() }
}

impl Revocations {
    /// The provider's back-channel call: a form POST with one `logout_token` from one of
    /// `logout_token_issuers`. 200 once its entry is in force here, 400 for a refused token
    /// (Back-Channel Logout 1.0, 2.8), 503 when the issuer's keys or Redis are not at hand.
    pub async fn back_channel_logout(&self, content_type: Option<&str>, body: &[u8]) -> AdminAnswer {
        let is_form = content_type
            .and_then(|value| value.split(';').next())
            .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
        let tokens: Vec<_> =
            form_urlencoded::parse(body).filter(|(name, _)| name == "logout_token").map(|(_, value)| value).collect();
        let (true, [token]) = (is_form, tokens.as_slice()) else {
            tracing::info!("Refused a back-channel logout that is not a form POST with one logout_token");
            return answer(400, INVALID_REQUEST);
        };
        let issuer = jwt::parse(token, self.max_token_bytes, &|_| false)
            .ok()
            .and_then(|parsed| parsed.claims.get("iss").and_then(|iss| iss.as_str()).map(str::to_string));
        let Some(configured) =
            self.config.logout_token_issuers.iter().find(|configured| Some(&configured.issuer) == issuer.as_ref())
        else {
            tracing::warn!("Refused a back-channel logout token from an issuer not in revocation.logout_token_issuers");
            return answer(400, INVALID_REQUEST);
        };
        let expected = LogoutTokenExpectations {
            issuer: &configured.issuer,
            client_id: &configured.client_id,
            now: unix_now(),
            clock_skew_secs: self.clock_skew_secs,
            max_age_secs: self.config.logout_token_max_age_secs,
            max_token_bytes: self.max_token_bytes,
        };
        let verify = |keys: &jwt::KeySet| logout_token::verify(token, keys, &expected);
        let mut verified = self.keys().key_set(&configured.issuer).as_deref().map(verify);
        if !matches!(verified, Some(Ok(_))) && self.keys().refetch(&configured.issuer).await {
            verified = self.keys().key_set(&configured.issuer).as_deref().map(verify);
        }
        let claims = match verified {
            Some(Ok(claims)) => claims,
            Some(Err(error)) => {
                tracing::warn!(%error, issuer = %configured.issuer, "Refused a back-channel logout token");
                return answer(400, INVALID_REQUEST);
            }
            None => {
                tracing::warn!(issuer = %configured.issuer, "Cannot take a back-channel logout: no keys for its issuer");
                return answer(503, UNAVAILABLE);
            }
        };
        match self.first_use_of_logout_token(&configured.issuer, &claims).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("Refused a back-channel logout token used before (its jti)");
                return answer(400, INVALID_REQUEST);
            }
            Err(cause) => {
                tracing::warn!(%cause, "Cannot take a back-channel logout: its jti cannot be checked in Redis");
                return answer(503, UNAVAILABLE);
            }
        }
        self.add_logout(&configured.issuer, claims.sid.as_deref(), claims.sub.as_deref(), Source::BackChannel).await;
        answer(200, "{}")
    }

    /// Revokes what a verified logout of `issuer` names: its `sid` when given, else every token
    /// of `sub` issued until now; each entry as long as a token may live.
    pub async fn add_logout(&self, issuer: &str, sid: Option<&str>, sub: Option<&str>, source: Source) {
        let now = unix_now();
        let expires_at = now.saturating_add(self.config.max_token_lifetime_secs);
        let entry = match (sid, sub) {
            (Some(sid), _) => Entry::session(issuer, sid, expires_at),
            (None, Some(sub)) => Entry::subject_before(issuer, sub, now.saturating_add(1), expires_at),
            (None, None) => return,
        };
        let shared = self.add(entry, source).await;
        tracing::info!(
            kind = entry.kind.as_str(),
            source = source.as_str(),
            shared,
            "Revoked what a back-channel logout named"
        );
    }

    /// True the first time the logout token's `jti` is offered within its window (on any
    /// replica, with Redis); false for a replay.
    async fn first_use_of_logout_token(&self, issuer: &str, claims: &LogoutClaims) -> Result<bool, String> {
        let id = HashedName::of(issuer, "jti", &claims.jti);
        let window = Duration::from_secs(claims.replay_window_secs);
        match &self.shared {
            Some(shared) => shared.first_use_of_logout_token(&id, window).await,
            None => Ok(self.seen_logout_tokens.first_use(id, window, Instant::now())),
        }
    }
}
