//! Where sessions live: in this replica's memory (the default), or in Redis shared by every replica; one interface for the login endpoints, the back-channel logout and the check, whichever it is.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::redis_store::RedisSessions;
use super::replay::{HashedName, SeenTokenIds};
use super::session::{IdTokenHint, ProviderTokens, Session};
use super::store::{Expiry, Lookup, SessionId, SessionStore, StoreError};
use crate::core::id_token::SessionClaims;
use crate::telemetry::Metrics;

/// The session store.
#[derive(Debug)]
pub enum Sessions {
    /// This replica's memory: one replica, and a restart ends every session.
    Memory {
        /// The sessions.
        sessions: SessionStore<Session>,
        /// The logout tokens accepted.
        seen_logout_tokens: SeenTokenIds,
        /// Where sessions opened and ended are counted.
        metrics: Arc<Metrics>,
    },
    /// Redis, shared by every replica.
    Redis(Arc<RedisSessions>),
}

/// Why a session ended: the `reason` of `portcullis_sessions_ended_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// Signed out, or replaced by a new login in the same browser.
    SignOut,
    /// Not used for the idle timeout.
    Idle,
    /// Opened longer ago than the absolute lifetime.
    MaxLifetime,
    /// Ended to make room in a full store.
    Evicted,
    /// Named by the provider's back-channel logout.
    BackChannel,
    /// The provider refused to refresh its access token (`invalid_grant`).
    RefreshFailed,
}

impl SessionEnd {
    /// Every reason, in the order the metric lists them.
    #[cfg(test)]
    const ALL: [Self; 6] =
        [Self::SignOut, Self::Idle, Self::MaxLifetime, Self::Evicted, Self::BackChannel, Self::RefreshFailed];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SignOut => "sign_out",
            Self::Idle => "idle",
            Self::MaxLifetime => "max_lifetime",
            Self::Evicted => "evicted",
            Self::BackChannel => "back_channel",
            Self::RefreshFailed => "refresh_failed",
        }
    }
}

impl From<Expiry> for SessionEnd {
    fn from(expiry: Expiry) -> Self {
        match expiry {
            Expiry::Idle => Self::Idle,
            Expiry::MaxLifetime => Self::MaxLifetime,
        }
    }
}

/// What a back-channel logout names, as the provider gave it.
#[derive(Debug, Clone, Copy)]
pub struct ProviderNames<'n> {
    /// The provider's issuer.
    pub issuer: &'n str,
    /// The provider's session id: when given, it alone picks the sessions.
    pub sid: Option<&'n str>,
    /// The person's subject: picks every session of theirs when no `sid` is given.
    pub sub: Option<&'n str>,
}

impl Sessions {
    /// Opens a session for the login at `provider` whose ID token `id_token` (none for a
    /// provider without ID tokens) gave `claims`, with the provider's `tokens`.
    pub async fn open(
        &self,
        provider: &str,
        claims: SessionClaims,
        id_token: Option<IdTokenHint>,
        tokens: Option<ProviderTokens>,
    ) -> Result<SessionId, StoreError> {
        match self {
            Self::Memory { sessions, metrics, .. } => {
                let (id, evicted) =
                    sessions.open_evicting(Session::new(Some(provider), claims, id_token, tokens), Instant::now())?;
                metrics.record_session_opened();
                metrics.record_session_ended(SessionEnd::Evicted.as_str(), evicted);
                metrics.record_sessions_held(sessions.len());
                Ok(id)
            }
            Self::Redis(store) => store.open(provider, claims, id_token, tokens).await,
        }
    }

    /// The session `id` names, when it is open.
    pub async fn get(&self, id: &SessionId) -> Option<Arc<Session>> {
        match self {
            Self::Memory { sessions, metrics, .. } => match sessions.lookup(id, Instant::now()) {
                Lookup::Found(session) => Some(session),
                Lookup::Missing => None,
                Lookup::Expired(expiry) => {
                    metrics.record_session_ended(SessionEnd::from(expiry).as_str(), 1);
                    metrics.record_sessions_held(sessions.len());
                    None
                }
            },
            Self::Redis(store) => store.get(id).await,
        }
    }

    /// Ends the session `id` names for `reason`; false when there was none, `Unavailable` when
    /// the shared store cannot be reached.
    pub async fn end(&self, id: &SessionId, reason: SessionEnd) -> Result<bool, StoreError> {
        match self {
            Self::Memory { sessions, metrics, .. } => {
                let ended = sessions.end(id);
                metrics.record_session_ended(reason.as_str(), usize::from(ended));
                metrics.record_sessions_held(sessions.len());
                Ok(ended)
            }
            Self::Redis(store) => store.end(id, reason).await,
        }
    }

    /// Ends every session the provider's `names` pick (every replica is told); how many ended.
    pub async fn end_named(&self, names: ProviderNames<'_>) -> Result<usize, StoreError> {
        match self {
            Self::Memory { sessions, metrics, .. } => {
                let ended = sessions.end_where(|session| {
                    session.claims().issuer() == names.issuer && session.is_named_by(names.sid, names.sub)
                });
                metrics.record_session_ended(SessionEnd::BackChannel.as_str(), ended);
                metrics.record_sessions_held(sessions.len());
                Ok(ended)
            }
            Self::Redis(store) => store.end_named(names).await,
        }
    }

    /// True the first time the logout token `jti` of `issuer` is offered within `window`
    /// (across replicas with Redis); false for a replay.
    pub async fn first_use_of_logout_token(
        &self,
        issuer: &str,
        jti: &str,
        window: Duration,
    ) -> Result<bool, StoreError> {
        let id = HashedName::of(issuer, "jti", jti);
        match self {
            Self::Memory { seen_logout_tokens, .. } => Ok(seen_logout_tokens.first_use(id, window, Instant::now())),
            Self::Redis(store) => store.first_use_of_logout_token(&id, window).await,
        }
    }

    /// What is wrong with the store now, when something is (Redis only).
    pub fn problem(&self) -> Option<String> {
        match self {
            Self::Memory { .. } => None,
            Self::Redis(store) => store.problem(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_a_session_ends_for_is_exported_from_start_up() {
        let reasons: Vec<&str> = SessionEnd::ALL.iter().map(|reason| reason.as_str()).collect();
        assert_eq!(reasons, crate::telemetry::SESSION_END_REASONS);
    }
}
