//! Serves an axum router's connections with bounds: a connection limit (shared by a door's listeners), a header-read timeout and an idle timeout; graceful shutdown empties the listen backlog and lets in-flight and first requests finish; knows nothing of checks.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use futures_util::{Stream, StreamExt, stream};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::counter::Counter;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::time::Instant;
use tower_service::Service;

use crate::settings::ConnectionLimits;

/// Pause after a failed `accept` (out of file descriptors, say), so the loop does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Connection slots shared by every listener of a door: at most `max_connections` of its
/// connections are served at once, whichever runtime accepted them.
#[derive(Debug, Clone)]
pub struct ConnectionSlots(Arc<Semaphore>);

impl ConnectionSlots {
    /// `limits.max_connections` free slots.
    pub fn new(limits: ConnectionLimits) -> Self {
        Self(Arc::new(Semaphore::new(limits.max_connections as usize)))
    }
}

/// Serves the connections of `listener` ([`until_shutdown`]), then waits for every one of them
/// to finish its requests. Each connection takes one of `slots`: when none is free the
/// connection waits, unserved, until one closes, and the next ones wait in the listen backlog;
/// from shutdown on, the backlog is emptied at once and its connections wait for their slots
/// (freed as the others close) in turn. Taking the slot after the accept lets no listener hold
/// a slot for a connection that may never come while another listener's connection waits.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    slots: ConnectionSlots,
    accepted: Option<Counter>,
    shutdown: watch::Receiver<bool>,
) {
    let builder = connection_builder(limits);
    // Each connection holds a sender; the receiver ends once every one of them has closed.
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    let incoming = until_shutdown(listener, accepted, shutdown.clone());
    tokio::pin!(incoming);
    while let Some((stream, peer)) = incoming.next().await {
        let slot = tokio::select! {
            slot = slots.0.clone().acquire_owned() => Some(slot),
            () = stopped(shutdown.clone()) => None,
        };
        let connection = Connection { builder: builder.clone(), router: router.clone(), limits, peer };
        let (slots, shutdown, open) = (slots.clone(), shutdown.clone(), open.clone());
        tokio::spawn(async move {
            let slot = match slot {
                Some(slot) => slot,
                None => slots.0.acquire_owned().await,
            };
            if let Ok(slot) = slot {
                connection.serve(stream, shutdown).await;
                drop(slot);
            }
            drop(open);
        });
    }
    drop(open);
    let _ = all_closed.recv().await;
}

/// The connections of `listener`, each counted in `accepted`, with `TCP_NODELAY` set: accepted
/// until `shutdown` turns true, then those already queued in its backlog, accepted without
/// waiting until none is left; then the stream ends and the listener closes. Closing a listener
/// resets the connections its backlog still holds, so the backlog is emptied first; what is
/// left is a handshake completing between the last accept and the close (docs/operations.md,
/// "Runtime and cores").
pub fn until_shutdown(
    listener: TcpListener,
    accepted: Option<Counter>,
    shutdown: watch::Receiver<bool>,
) -> impl Stream<Item = (TcpStream, SocketAddr)> {
    let connections = stream::unfold(Phase::Accepting(listener, shutdown), |mut state| async move {
        loop {
            state = match state {
                Phase::Accepting(listener, shutdown) => {
                    let accepted = tokio::select! {
                        accepted = listener.accept() => Some(accepted),
                        () = stopped(shutdown.clone()) => None,
                    };
                    match accepted {
                        Some(Ok(connection)) => return Some((connection, Phase::Accepting(listener, shutdown))),
                        Some(Err(error)) => {
                            tracing::warn!(%error, "Cannot accept a connection");
                            tokio::time::sleep(ACCEPT_RETRY).await;
                            Phase::Accepting(listener, shutdown)
                        }
                        None => Phase::Draining(accept_queued(listener).into_iter()),
                    }
                }
                Phase::Draining(mut queued) => {
                    return queued.next().map(|connection| (connection, Phase::Draining(queued)));
                }
            }
        }
    });
    connections.inspect(move |(stream, _)| {
        if let Some(accepted) = &accepted {
            accepted.inc();
        }
        // Without TCP_NODELAY, Nagle's algorithm meets delayed ACKs: ~40 ms per answer.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "Cannot set TCP_NODELAY");
        }
    })
}

/// Where [`until_shutdown`] is: accepting, or handing over what the backlog held at shutdown.
enum Phase {
    Accepting(TcpListener, watch::Receiver<bool>),
    Draining(std::vec::IntoIter<(TcpStream, SocketAddr)>),
}

/// Accepts, without waiting, every connection queued in `listener`'s backlog, then closes it.
fn accept_queued(listener: TcpListener) -> Vec<(TcpStream, SocketAddr)> {
    // The accept system call itself: tokio's readiness may not have seen the latest arrivals.
    let listener = match listener.into_std() {
        Ok(listener) => listener,
        Err(error) => {
            tracing::warn!(%error, "Cannot empty a listener's backlog at shutdown");
            return Vec::new();
        }
    };
    let mut queued = Vec::new();
    loop {
        match listener.accept() {
            Ok((stream, peer)) => match stream.set_nonblocking(true).and_then(|()| TcpStream::from_std(stream)) {
                Ok(stream) => queued.push((stream, peer)),
                Err(error) => tracing::warn!(%error, %peer, "Cannot serve a connection queued at shutdown"),
            },
            Err(error) if error.kind() == ErrorKind::WouldBlock => break,
            Err(error) if matches!(error.kind(), ErrorKind::Interrupted | ErrorKind::ConnectionAborted) => {}
            Err(error) => {
                tracing::warn!(%error, "Cannot accept a connection queued at shutdown");
                break;
            }
        }
    }
    tracing::debug!(connections = queued.len(), "Accepted the connections queued at shutdown");
    queued
}

/// Resolves once shutdown starts (or its sender is gone).
pub async fn stopped(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn connection_builder(limits: ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.idle_timeout)
        .keep_alive_timeout(limits.header_read_timeout);
    builder
}

/// One accepted connection.
struct Connection {
    builder: auto::Builder<TokioExecutor>,
    router: Router,
    limits: ConnectionLimits,
    peer: SocketAddr,
}

impl Connection {
    /// Serves the connection until the client closes it, it overstays a timeout, or shutdown
    /// once it has had a request: a connection accepted just before shutdown, or out of the
    /// backlog at shutdown, has its first request answered (or overstays the header-read
    /// timeout) before it closes, where closing it at once would lose a request already sent.
    async fn serve(self, stream: TcpStream, shutdown: watch::Receiver<bool>) {
        let Self { builder, router, limits, peer } = self;
        let activity = Arc::new(Activity::new());
        let service = {
            let activity = activity.clone();
            hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                let busy = Busy::start(activity.clone());
                let mut router = router.clone();
                async move {
                    let response = router.call(request).await;
                    drop(busy);
                    response
                }
            })
        };
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
        let overstayed = loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, %peer, "HTTP connection ended with an error");
                    }
                    return;
                }
                () = tokio::time::sleep_until(activity.deadline(limits)) => {
                    if activity.is_overdue(limits) {
                        break true;
                    }
                }
                // The first request started: shutdown may now close the connection.
                () = activity.first_request.notified() => {}
                () = stopped(shutdown.clone()), if activity.has_had_a_request() => break false,
            }
        };
        connection.as_mut().graceful_shutdown();
        if overstayed {
            tracing::debug!(%peer, "Closing an HTTP connection that sent no request in time");
            // Nothing is in flight; an answer the client does not read may still hold it.
            let _ = tokio::time::timeout(limits.header_read_timeout, connection).await;
        } else if let Err(error) = connection.await {
            tracing::debug!(%error, %peer, "HTTP connection ended with an error while draining");
        }
    }
}

/// What a connection is doing, for its timeouts: requests in flight, and since when it waits.
#[derive(Debug)]
struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `opened` when the last request ended; `u64::MAX` before the first
    /// request started.
    idle_since_ms: AtomicU64,
    /// Wakes the connection's loop when its first request starts.
    first_request: Notify,
}

const NO_REQUEST_YET: u64 = u64::MAX;

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(NO_REQUEST_YET),
            first_request: Notify::new(),
        }
    }

    /// When the connection would overstay if nothing happens: the header-read timeout before
    /// its first request, then the idle timeout after its last one. While a request is in
    /// flight, the next look is one idle timeout away.
    fn deadline(&self, limits: ConnectionLimits) -> Instant {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Instant::now() + limits.idle_timeout;
        }
        match self.idle_since_ms.load(Ordering::Acquire) {
            NO_REQUEST_YET => self.opened + limits.header_read_timeout,
            since => self.opened + Duration::from_millis(since) + limits.idle_timeout,
        }
    }

    /// Whether a request has started on the connection.
    fn has_had_a_request(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0 || self.idle_since_ms.load(Ordering::Acquire) != NO_REQUEST_YET
    }

    fn is_overdue(&self, limits: ConnectionLimits) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && Instant::now() >= self.deadline(limits)
    }
}

/// A request in flight on a connection; dropped when its answer is ready.
///
/// Only the connection's first request wakes the connection's loop (shutdown may be waiting
/// for it). Later requests only move the deadline later, so the loop, waking at the deadline
/// it last saw, finds the connection not overdue and looks again: no wake-up and no new timer
/// per request.
struct Busy(Arc<Activity>);

impl Busy {
    fn start(activity: Arc<Activity>) -> Self {
        let none_in_flight = activity.in_flight.fetch_add(1, Ordering::AcqRel) == 0;
        if none_in_flight && activity.idle_since_ms.load(Ordering::Acquire) == NO_REQUEST_YET {
            activity.first_request.notify_one();
        }
        Self(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let activity = &self.0;
        let since = u64::try_from(activity.opened.elapsed().as_millis()).unwrap_or(NO_REQUEST_YET - 1);
        activity.idle_since_ms.store(since, Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
