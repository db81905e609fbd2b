//! A Redis server every replica shares: the client and its reconnecting connection, built from a URL and a password, and a pub/sub listener that subscribes again after every loss, with back-off; never shows the password, never decides.

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo as _, RedisResult};

/// The listener's first wait before subscribing again; it doubles up to the next bound.
const LISTEN_RETRY_MIN: Duration = Duration::from_millis(250);
/// The listener's longest wait before subscribing again.
const LISTEN_RETRY_MAX: Duration = Duration::from_secs(5);

/// One Redis server: a client (for pub/sub) and a connection manager (for commands) that
/// connects on first use and again after every failure, each command bounded by `timeout`.
#[derive(Clone)]
pub struct RedisLink {
    /// Opens pub/sub connections.
    pub client: redis::Client,
    /// Runs commands; cloned per command.
    pub connection: ConnectionManager,
    /// The bound on connecting and on one command.
    pub timeout: Duration,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

/// What a pub/sub listener does with its channel.
pub trait Subscriber: Sync {
    /// The listener subscribed (again): catch up with whatever may have been missed meanwhile.
    /// An error counts as a loss.
    fn subscribed(&self) -> impl Future<Output = Result<(), String>> + Send;
    /// A message arrived on the channel.
    fn message(&self, payload: &str);
    /// The subscription was lost, or could not be made, for `cause`.
    fn lost(&self, cause: String);
}

impl RedisLink {
    /// A link to the server `url` names (without a password; `password` given apart), not yet
    /// connected; an error says why the URL cannot be used.
    pub fn new(url: &str, password: Option<&str>, timeout: Duration) -> Result<Self, String> {
        let info = url.into_connection_info().map_err(|error| error.to_string())?;
        let info = match password {
            Some(password) => {
                let settings = info.redis_settings().clone().set_password(password);
                info.set_redis_settings(settings)
            }
            None => info,
        };
        let client = redis::Client::open(info).map_err(|error| error.to_string())?;
        let manager = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let connection =
            ConnectionManager::new_lazy_with_config(client.clone(), manager).map_err(|error| error.to_string())?;
        Ok(Self { client, connection, timeout })
    }

    /// Listens on `channel` for `subscriber` until cancelled: subscribes, lets it catch up, hands
    /// it every message; after a loss, waits (250 ms, doubling up to 5 s) and subscribes again.
    pub async fn listen(&self, channel: &str, subscriber: &impl Subscriber) {
        let mut retry = LISTEN_RETRY_MIN;
        loop {
            let cause = match tokio::time::timeout(self.timeout, self.subscribe(channel)).await {
                Ok(Ok(mut pubsub)) => match subscriber.subscribed().await {
                    Ok(()) => {
                        retry = LISTEN_RETRY_MIN;
                        let mut messages = pubsub.on_message();
                        while let Some(message) = messages.next().await {
                            if let Ok(payload) = message.get_payload::<String>() {
                                subscriber.message(&payload);
                            }
                        }
                        "the connection closed".to_string()
                    }
                    Err(cause) => cause,
                },
                Ok(Err(error)) => error.to_string(),
                Err(_) => format!("no answer within {} ms", self.timeout.as_millis()),
            };
            subscriber.lost(cause);
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(LISTEN_RETRY_MAX);
        }
    }

    async fn subscribe(&self, channel: &str) -> RedisResult<redis::aio::PubSub> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok(pubsub)
    }

    /// `command` within the timeout; an error says why it failed.
    pub async fn bounded<T>(&self, command: impl Future<Output = RedisResult<T>>) -> Result<T, String> {
        match tokio::time::timeout(self.timeout, command).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {} ms", self.timeout.as_millis())),
        }
    }
}
