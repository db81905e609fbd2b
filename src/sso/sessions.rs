//! Where sessions live: in this replica's memory (the default), or in Redis shared by every replica; one interface for the login endpoints and the check, whichever it is.

use std::sync::Arc;
use std::time::Instant;

use super::redis_store::RedisSessions;
use super::session::Session;
use super::store::{SessionId, SessionStore, StoreError};
use crate::core::id_token::SessionClaims;

/// The session store.
#[derive(Debug)]
pub enum Sessions {
    /// This replica's memory: one replica, and a restart ends every session.
    Memory(SessionStore<Session>),
    /// Redis, shared by every replica.
    Redis(Arc<RedisSessions>),
}

impl Sessions {
    /// Opens a session for the login whose ID token gave `claims`.
    pub async fn open(&self, claims: SessionClaims) -> Result<SessionId, StoreError> {
        match self {
            Self::Memory(store) => store.open(Session::new(claims), Instant::now()),
            Self::Redis(store) => store.open(claims).await,
        }
    }

    /// The session `id` names, when it is open.
    pub async fn get(&self, id: &SessionId) -> Option<Arc<Session>> {
        match self {
            Self::Memory(store) => store.get(id, Instant::now()),
            Self::Redis(store) => store.get(id).await,
        }
    }

    /// Ends the session `id` names; false when there was none, `Unavailable` when the shared
    /// store cannot be reached.
    pub async fn end(&self, id: &SessionId) -> Result<bool, StoreError> {
        match self {
            Self::Memory(store) => Ok(store.end(id)),
            Self::Redis(store) => store.end(id).await,
        }
    }

    /// What is wrong with the store now, when something is (Redis only).
    pub fn problem(&self) -> Option<String> {
        match self {
            Self::Memory(_) => None,
            Self::Redis(store) => store.problem(),
        }
    }
}
