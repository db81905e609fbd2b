//! Where sessions live: in this replica's memory (the default), or in Redis shared by every replica; one interface for the login endpoints, the back-channel logout and the check, whichever it is.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::redis_store::RedisSessions;
use super::replay::{HashedName, SeenTokenIds};
use super::session::{IdTokenHint, Session};
use super::store::{SessionId, SessionStore, StoreError};
use crate::core::id_token::SessionClaims;

/// The session store.
#[derive(Debug)]
pub enum Sessions {
    /// This replica's memory: one replica, and a restart ends every session.
    Memory {
        /// The sessions.
        sessions: SessionStore<Session>,
        /// The logout tokens accepted.
        seen_logout_tokens: SeenTokenIds,
    },
    /// Redis, shared by every replica.
    Redis(Arc<RedisSessions>),
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
    /// provider without ID tokens) gave `claims`.
    pub async fn open(
        &self,
        provider: &str,
        claims: SessionClaims,
        id_token: Option<IdTokenHint>,
    ) -> Result<SessionId, StoreError> {
        match self {
            Self::Memory { sessions, .. } => {
                sessions.open(Session::new(Some(provider), claims, id_token), Instant::now())
            }
            Self::Redis(store) => store.open(provider, claims, id_token).await,
        }
    }

    /// The session `id` names, when it is open.
    pub async fn get(&self, id: &SessionId) -> Option<Arc<Session>> {
        match self {
            Self::Memory { sessions, .. } => sessions.get(id, Instant::now()),
            Self::Redis(store) => store.get(id).await,
        }
    }

    /// Ends the session `id` names; false when there was none, `Unavailable` when the shared
    /// store cannot be reached.
    pub async fn end(&self, id: &SessionId) -> Result<bool, StoreError> {
        match self {
            Self::Memory { sessions, .. } => Ok(sessions.end(id)),
            Self::Redis(store) => store.end(id).await,
        }
    }

    /// Ends every session the provider's `names` pick (every replica is told); how many ended.
    pub async fn end_named(&self, names: ProviderNames<'_>) -> Result<usize, StoreError> {
        match self {
            Self::Memory { sessions, .. } => Ok(sessions.end_where(|session| {
                session.claims().issuer() == names.issuer && session.is_named_by(names.sid, names.sub)
            })),
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
