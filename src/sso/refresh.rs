//! Keeps a session's access token fresh: a check that finds it close to its expiry has it refreshed at the provider's token endpoint in the background (waited for, within the provider timeout, only once it has expired); one refresh per session at a time, in the replica and, with Redis, across replicas (a lock, the losers wait for the winner's answer), so that a rotating refresh token is never used twice; never logs a token.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::config::SsoConfig;
use super::login::{Provider, ProviderClient, provider_of, verify_with_provider_keys};
use super::oidc::OidcError;
use super::redis_store::{RedisSessions, unix_now};
use super::session::{IdTokenHint, ProviderTokens, Session};
use super::sessions::{SessionEnd, Sessions};
use super::store::{HashedId, SessionId};
use crate::core::id_token::{self, RefreshedIdTokenExpectations};
use crate::identity::jwks::KeyStore;
use crate::telemetry::Metrics;

/// The first wait before a session whose refresh failed (not refused) is refreshed again; it
/// doubles after each failure up to [`RETRY_MAX_SECS`].
const RETRY_MIN_SECS: u64 = 2;
/// The longest wait between two refreshes of a session that keep failing.
const RETRY_MAX_SECS: u64 = 60;
/// How often a replica that lost the race for a session's refresh lock reads the session again.
const WINNER_POLL: Duration = Duration::from_millis(100);

/// How soon a session's access token needs a refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Not yet, or never (no refresh token, no expiry given).
    NotYet,
    /// Within the refresh margin of its expiry: refresh in the background, the token still counts.
    Soon,
    /// Expired: wait for the refresh before the token counts again.
    Expired,
}

/// How soon `tokens` need a refresh at `now`: within `refresh_before` of the access token's
/// expiry, or half its lifetime when that is shorter (a short-lived token is not refreshed at
/// every check).
pub fn due(tokens: &ProviderTokens, refresh_before: Duration, now: u64) -> Due {
    let (Some(_), Some(expires_at)) = (tokens.refresh_token(), tokens.expires_at()) else { return Due::NotYet };
    let margin = refresh_before.as_secs().min(tokens.lifetime_secs().unwrap_or_default() / 2);
    if now >= expires_at {
        Due::Expired
    } else if now.saturating_add(margin) >= expires_at {
        Due::Soon
    } else {
        Due::NotYet
    }
}

/// One run of a piece of work per key at a time: a caller asking while a run is under way
/// joins it instead of starting another. Each run is a task of its own, so a caller that stops
/// waiting does not cancel it.
#[derive(Debug)]
pub struct SingleFlight<K, V> {
    running: Mutex<HashMap<K, watch::Receiver<Option<V>>>>,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self { running: Mutex::new(HashMap::new()) }
    }
}

impl<K: Copy + Eq + Hash + Send + 'static, V: Clone + Send + Sync + 'static> SingleFlight<K, V> {
    fn lock(&self) -> MutexGuard<'_, HashMap<K, watch::Receiver<Option<V>>>> {
        // Each change is one insert or one remove: a panic leaves the map consistent.
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The run under way for `key`, else a new one of the work `start` makes; its answer
    /// arrives on the receiver.
    pub fn join_or_start<F>(self: &Arc<Self>, key: K, start: impl FnOnce() -> F) -> watch::Receiver<Option<V>>
    where
        F: Future<Output = V> + Send + 'static,
    {
        let mut running = self.lock();
        if let Some(under_way) = running.get(&key) {
            return under_way.clone();
        }
        let (answer, receiver) = watch::channel(None);
        running.insert(key, receiver.clone());
        drop(running);
        let work = start();
        let flights = self.clone();
        tokio::spawn(async move {
            let value = work.await;
            // Answered before it is forgotten: a caller joining in between gets this answer.
            answer.send_replace(Some(value));
            flights.lock().remove(&key);
        });
        receiver
    }

    /// Whether a run for `key` is under way.
    #[cfg(test)]
    fn is_running(&self, key: &K) -> bool {
        self.lock().contains_key(key)
    }
}

/// The answer of a run, waited for at most `bound`; `None` when it did not come in time.
pub async fn answer<V: Clone>(mut receiver: watch::Receiver<Option<V>>, bound: Duration) -> Option<V> {
    let answered = tokio::time::timeout(bound, receiver.wait_for(Option::is_some)).await.ok()?.ok()?;
    answered.clone()
}

/// How a refresh ended.
#[derive(Debug, Clone)]
pub enum Refreshed {
    /// The session with fresh tokens (this replica's refresh, or another's).
    Session(Arc<Session>),
    /// The session ended: the provider refused the refresh token, or it had ended already.
    Ended,
    /// The refresh failed (provider or store unavailable): the session keeps its tokens, and a
    /// refresh is tried again later.
    Failed,
}

/// How a refresh went: the `result` of `portcullis_session_refreshes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RefreshResult {
    /// New tokens from the provider, written back.
    Ok,
    /// The provider refused the refresh token: the session ended.
    InvalidGrant,
    /// The provider or the store failed.
    Error,
    /// Another replica's refresh was waited for, or found done.
    Waited,
}

impl RefreshResult {
    #[cfg(test)]
    const ALL: [Self; 4] = [Self::Ok, Self::InvalidGrant, Self::Error, Self::Waited];

    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::InvalidGrant => "invalid_grant",
            Self::Error => "error",
            Self::Waited => "waited",
        }
    }
}

/// Why the provider did not give new tokens.
#[derive(Debug)]
enum Refusal {
    /// `invalid_grant`: the provider ended the session, or the refresh token is spent.
    InvalidGrant,
    /// Anything else: unreachable, 5xx, an answer that does not verify.
    Failure,
}

/// What a replica that lost the race for a session's refresh lock does after reading the
/// session again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStep {
    /// The winner wrote new tokens: take them.
    Refreshed,
    /// The session is gone (the provider refused, or it ended otherwise).
    Ended,
    /// The winner is still at work.
    KeepWaiting,
    /// The winner gave up without new tokens (its lock is gone, the tokens unchanged).
    WinnerFailed,
}

/// The next step of a replica waiting for the winner: `read` is the session as Redis holds it
/// now (`None`: gone), `asked` the tokens this replica wanted refreshed, `locked` whether the
/// lock is still held.
pub fn wait_step(read: Option<Option<&ProviderTokens>>, asked: Option<&ProviderTokens>, locked: bool) -> WaitStep {
    match read {
        None => WaitStep::Ended,
        Some(tokens) if tokens != asked => WaitStep::Refreshed,
        Some(_) if locked => WaitStep::KeepWaiting,
        Some(_) => WaitStep::WinnerFailed,
    }
}

/// When a session whose refresh failed is tried again.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    retry_at: u64,
    delay_secs: u64,
}

/// The parts of single sign-on a refresh uses.
#[derive(Debug)]
pub struct RefreshContext {
    /// The settings.
    pub config: Arc<SsoConfig>,
    /// The providers sessions are opened with.
    pub(super) providers: Arc<[Provider]>,
    /// The provider's keys, for a new ID token.
    pub keys: Arc<KeyStore>,
    /// The session store.
    pub sessions: Arc<Sessions>,
    /// Where refreshes are counted.
    pub metrics: Arc<Metrics>,
    /// The bound on one request to the provider.
    pub timeout: Duration,
    /// Tolerance when checking a new ID token's times.
    pub clock_skew_secs: u64,
    /// Longer ID tokens are refused unread.
    pub max_token_bytes: usize,
}

/// Refreshes sessions' access tokens.
#[derive(Debug)]
pub struct Refresher {
    context: RefreshContext,
    flights: Arc<SingleFlight<HashedId, Refreshed>>,
    backoff: Mutex<HashMap<HashedId, Backoff>>,
}

impl Refresher {
    /// A refresher working with `context`.
    pub fn new(context: RefreshContext) -> Self {
        Self { context, flights: Arc::default(), backoff: Mutex::new(HashMap::new()) }
    }

    fn backoff(&self) -> MutexGuard<'_, HashMap<HashedId, Backoff>> {
        self.backoff.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The session `id` names as a check should use it: `session` itself while its access token
    /// is not due (a refresh started in the background when it soon is), the refreshed session
    /// once it has expired (waited for within the provider timeout), `None` when the provider
    /// refused the refresh (the session ended). When the refresh fails otherwise, `session`,
    /// whose expired access token then no longer counts.
    pub async fn current(self: &Arc<Self>, id: SessionId, session: Arc<Session>) -> Option<Arc<Session>> {
        let now = unix_now();
        let due = session.tokens().map_or(Due::NotYet, |tokens| due(tokens, self.context.config.refresh_before, now));
        if due == Due::NotYet {
            return Some(session);
        }
        let hashed = HashedId::of(&id);
        if self.is_backing_off(&hashed, now) {
            return Some(session);
        }
        let refresher = self.clone();
        let asked = session.clone();
        let flight = self.flights.join_or_start(hashed, move || async move { refresher.refresh(id, asked).await });
        if due == Due::Soon {
            return Some(session);
        }
        match answer(flight, self.context.timeout).await {
            Some(Refreshed::Session(refreshed)) => Some(refreshed),
            Some(Refreshed::Ended) => None,
            Some(Refreshed::Failed) | None => Some(session),
        }
    }

    fn is_backing_off(&self, hashed: &HashedId, now: u64) -> bool {
        self.backoff().get(hashed).is_some_and(|backoff| now < backoff.retry_at)
    }

    /// One refresh of the session `id` names, whose tokens were `asked`'s when it was started.
    async fn refresh(&self, id: SessionId, asked: Arc<Session>) -> Refreshed {
        let refreshed = match &*self.context.sessions {
            Sessions::Memory { .. } => self.refresh_here(&id, &asked).await,
            Sessions::Redis(store) => self.refresh_shared(store, &id, &asked).await,
        };
        let hashed = HashedId::of(&id);
        let mut backoff = self.backoff();
        match refreshed {
            Refreshed::Failed => {
                let delay_secs =
                    backoff.get(&hashed).map_or(RETRY_MIN_SECS, |b| (b.delay_secs * 2).min(RETRY_MAX_SECS));
                if backoff.len() >= self.context.config.max_sessions {
                    backoff.clear();
                }
                backoff.insert(hashed, Backoff { retry_at: unix_now().saturating_add(delay_secs), delay_secs });
            }
            Refreshed::Session(_) | Refreshed::Ended => {
                backoff.remove(&hashed);
            }
        }
        refreshed
    }

    /// A refresh of a session in this replica's memory: the single flight is the only lock.
    async fn refresh_here(&self, id: &SessionId, asked: &Session) -> Refreshed {
        let Some(current) = self.context.sessions.get(id).await else { return Refreshed::Ended };
        // A check that read the session just before the last refresh wrote it back.
        if current.tokens() != asked.tokens() {
            return Refreshed::Session(current);
        }
        match self.at_provider(&current).await {
            Ok(fresh) => {
                let fresh = Arc::new(fresh);
                let kept = match &*self.context.sessions {
                    Sessions::Memory { sessions, .. } => sessions.replace(id, fresh.clone()),
                    Sessions::Redis(_) => false,
                };
                self.context.metrics.record_session_refresh(RefreshResult::Ok.as_str());
                if kept { Refreshed::Session(fresh) } else { Refreshed::Ended }
            }
            Err(refusal) => self.refused(id, refusal).await,
        }
    }

    /// A refresh of a session shared through Redis: the replica that takes the session's lock
    /// refreshes, every other waits for its answer by reading the session again, and never
    /// sends the refresh token it had (a rotating one is spent once the winner used it).
    async fn refresh_shared(&self, store: &RedisSessions, id: &SessionId, asked: &Session) -> Refreshed {
        // Held no longer than the winner may take: a replica that stops mid-way holds up no one for long.
        let hold = self.context.timeout.saturating_mul(2).saturating_add(Duration::from_secs(1));
        match store.lock_refresh(id, hold).await {
            Ok(Some(lock)) => {
                let refreshed = self.refresh_locked(store, id, asked).await;
                store.unlock_refresh(lock).await;
                refreshed
            }
            Ok(None) => self.wait_for_winner(store, id, asked, hold).await,
            Err(_) => {
                self.context.metrics.record_session_refresh(RefreshResult::Error.as_str());
                Refreshed::Failed
            }
        }
    }

    /// The refresh, under the session's lock: read again first, since another replica may have
    /// refreshed it just before.
    async fn refresh_locked(&self, store: &RedisSessions, id: &SessionId, asked: &Session) -> Refreshed {
        let current = match store.read_fresh(id).await {
            Ok(Some(current)) => current,
            Ok(None) => return Refreshed::Ended,
            Err(_) => {
                self.context.metrics.record_session_refresh(RefreshResult::Error.as_str());
                return Refreshed::Failed;
            }
        };
        if current.tokens() != asked.tokens() {
            self.context.metrics.record_session_refresh(RefreshResult::Waited.as_str());
            return Refreshed::Session(current);
        }
        match self.at_provider(&current).await {
            Ok(fresh) => match store.write_refreshed(id, fresh).await {
                Ok(Some(written)) => {
                    self.context.metrics.record_session_refresh(RefreshResult::Ok.as_str());
                    Refreshed::Session(written)
                }
                Ok(None) => Refreshed::Ended,
                Err(_) => {
                    // The provider may have rotated the refresh token: the next refresh may be refused.
                    tracing::warn!("A session's refreshed tokens could not be stored");
                    self.context.metrics.record_session_refresh(RefreshResult::Error.as_str());
                    Refreshed::Failed
                }
            },
            Err(refusal) => self.refused(id, refusal).await,
        }
    }

    /// Reads the session again until the winner wrote new tokens, ended it, or gave up.
    async fn wait_for_winner(
        &self,
        store: &RedisSessions,
        id: &SessionId,
        asked: &Session,
        hold: Duration,
    ) -> Refreshed {
        let deadline = Instant::now() + hold;
        while Instant::now() < deadline {
            tokio::time::sleep(WINNER_POLL).await;
            let (Ok(read), Ok(locked)) = (store.read_fresh(id).await, store.is_refresh_locked(id).await) else { break };
            match wait_step(read.as_ref().map(|session| session.tokens()), asked.tokens(), locked) {
                WaitStep::KeepWaiting => {}
                WaitStep::Refreshed => {
                    self.context.metrics.record_session_refresh(RefreshResult::Waited.as_str());
                    return read.map_or(Refreshed::Ended, Refreshed::Session);
                }
                WaitStep::Ended => return Refreshed::Ended,
                WaitStep::WinnerFailed => break,
            }
        }
        self.context.metrics.record_session_refresh(RefreshResult::Error.as_str());
        Refreshed::Failed
    }

    /// What a refusal does: `invalid_grant` ends the session; anything else leaves it as it is.
    async fn refused(&self, id: &SessionId, refusal: Refusal) -> Refreshed {
        match refusal {
            Refusal::InvalidGrant => {
                self.context.metrics.record_session_refresh(RefreshResult::InvalidGrant.as_str());
                tracing::info!("Ended a browser session: the identity provider refused to refresh its tokens");
                // Not ended when the store is down: its next refresh is refused again.
                let _ = self.context.sessions.end(id, SessionEnd::RefreshFailed).await;
                Refreshed::Ended
            }
            Refusal::Failure => {
                self.context.metrics.record_session_refresh(RefreshResult::Error.as_str());
                Refreshed::Failed
            }
        }
    }

    /// The session with the tokens the provider gives for its refresh token; the claims of a
    /// new ID token when the answer has one (verified as at the login, without a nonce, about
    /// the same person).
    async fn at_provider(&self, current: &Session) -> Result<Session, Refusal> {
        let context = &self.context;
        let tokens = current.tokens().ok_or(Refusal::Failure)?;
        let refresh_token = tokens.refresh_token().ok_or(Refusal::Failure)?;
        let failed = |error: &OidcError| {
            tracing::warn!(%error, "Cannot refresh a browser session's tokens at the identity provider");
            if error.is_invalid_grant() { Refusal::InvalidGrant } else { Refusal::Failure }
        };
        // Only an OpenID Connect provider still configured for the session refreshes it.
        let provider = provider_of(&context.providers, current).ok_or(Refusal::Failure)?;
        let ProviderClient::Oidc(client, rules) = &provider.client else { return Err(Refusal::Failure) };
        let metadata = client.provider(&rules.issuer).await.map_err(|error| failed(&error))?;
        let answer =
            client.refresh(&provider.config, &metadata, refresh_token).await.map_err(|error| failed(&error))?;
        let now = unix_now();
        let (claims, id_token) = match answer.id_token.as_deref() {
            Some(token) => {
                let expected = RefreshedIdTokenExpectations {
                    issuer: &metadata.issuer,
                    client_id: &provider.config.client_id,
                    subject: current.claims().subject(),
                    now,
                    clock_skew_secs: context.clock_skew_secs,
                    max_token_bytes: context.max_token_bytes,
                };
                let verified = verify_with_provider_keys(&context.keys, &rules.issuer, |keys| {
                    id_token::verify_refreshed(token, keys, &expected)
                })
                .await;
                match verified {
                    Some(Ok(claims)) => (claims, Some(IdTokenHint::new(token))),
                    Some(Err(error)) => {
                        tracing::warn!(%error, "Refused the ID token of a refresh");
                        return Err(Refusal::Failure);
                    }
                    None => return Err(Refusal::Failure),
                }
            }
            None => (current.claims().clone(), current.id_token().cloned()),
        };
        let access_token = answer.access_token.as_deref().ok_or(Refusal::Failure)?;
        // A provider that sends no new refresh token leaves the old one valid (RFC 6749 6).
        let refresh_token = answer.refresh_token.as_deref().or(Some(refresh_token));
        let tokens = ProviderTokens::new(access_token, answer.expires_in, refresh_token, now);
        Ok(Session::new(current.provider(), claims, id_token, Some(tokens)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn tokens(expires_in: Option<u64>, refresh: Option<&str>) -> ProviderTokens {
        ProviderTokens::new("access", expires_in, refresh, NOW)
    }

    #[test]
    fn a_token_is_due_within_the_margin_of_its_expiry_and_expired_after_it() {
        let hour = tokens(Some(3600), Some("r"));
        let minute = Duration::from_secs(60);
        assert_eq!(due(&hour, minute, NOW + 3539), Due::NotYet);
        assert_eq!(due(&hour, minute, NOW + 3540), Due::Soon);
        assert_eq!(due(&hour, minute, NOW + 3599), Due::Soon);
        assert_eq!(due(&hour, minute, NOW + 3600), Due::Expired);
    }

    #[test]
    fn a_short_lived_token_is_refreshed_at_half_its_lifetime_not_at_every_check() {
        let short = tokens(Some(10), Some("r"));
        let minute = Duration::from_secs(60);
        assert_eq!(due(&short, minute, NOW + 4), Due::NotYet);
        assert_eq!(due(&short, minute, NOW + 5), Due::Soon);
        assert_eq!(due(&short, minute, NOW + 10), Due::Expired);
    }

    #[test]
    fn a_token_without_refresh_token_or_expiry_is_never_due() {
        let minute = Duration::from_secs(60);
        assert_eq!(due(&tokens(Some(10), None), minute, NOW + 100), Due::NotYet);
        assert_eq!(due(&tokens(None, Some("r")), minute, u64::MAX), Due::NotYet);
    }

    #[tokio::test]
    async fn callers_asking_at_once_share_one_run_and_its_answer() {
        let flights: Arc<SingleFlight<u8, usize>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let first = {
            let runs = runs.clone();
            flights.join_or_start(1, move || async move {
                let _ = released.await;
                runs.fetch_add(1, Ordering::SeqCst) + 1
            })
        };
        let second = flights.join_or_start(1, || async { unreachable!("joined the run under way") });
        assert!(flights.is_running(&1));
        let _ = release.send(());
        let bound = Duration::from_secs(30);
        assert_eq!((answer(first, bound).await, answer(second, bound).await), (Some(1), Some(1)));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let deadline = Instant::now() + bound;
        while flights.is_running(&1) {
            assert!(Instant::now() < deadline, "the run is forgotten once answered");
            tokio::task::yield_now().await;
        }
        let third = flights.join_or_start(1, || async { 7 });
        assert_eq!(answer(third, bound).await, Some(7), "a later caller starts a new run");
    }

    #[tokio::test]
    async fn a_caller_that_stops_waiting_leaves_the_run_going() {
        let flights: Arc<SingleFlight<u8, u8>> = Arc::default();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let first = flights.join_or_start(1, move || async move {
            let _ = released.await;
            5
        });
        assert_eq!(answer(first, Duration::from_millis(1)).await, None, "did not wait for it");
        let joined = flights.join_or_start(1, || async { unreachable!("joined the run under way") });
        let _ = release.send(());
        assert_eq!(answer(joined, Duration::from_secs(30)).await, Some(5));
    }

    #[test]
    fn every_refresh_result_is_exported_from_start_up() {
        let results: Vec<&str> = RefreshResult::ALL.iter().map(|result| result.as_str()).collect();
        assert_eq!(results, crate::telemetry::SESSION_REFRESH_RESULTS);
    }

    #[test]
    fn a_replica_that_lost_the_race_takes_the_winners_tokens_and_never_refreshes_itself() {
        let old = tokens(Some(10), Some("spent"));
        let new = ProviderTokens::new("access-2", Some(10), Some("rotated"), NOW + 9);
        assert_eq!(wait_step(Some(Some(&old)), Some(&old), true), WaitStep::KeepWaiting);
        assert_eq!(wait_step(Some(Some(&new)), Some(&old), true), WaitStep::Refreshed, "written before unlocking");
        assert_eq!(wait_step(Some(Some(&new)), Some(&old), false), WaitStep::Refreshed);
        assert_eq!(wait_step(None, Some(&old), false), WaitStep::Ended, "the provider refused: the winner ended it");
        assert_eq!(wait_step(None, Some(&old), true), WaitStep::Ended);
        assert_eq!(wait_step(Some(Some(&old)), Some(&old), false), WaitStep::WinnerFailed);
    }
}
