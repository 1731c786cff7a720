//! Wake-ups for lock waiters, so that they wait for a release instead of
//! polling Redis (as Redisson does with its lock channels).
//!
//! One pub/sub connection per process subscribes to the channel of every
//! lock that has waiters here. A release publishes on the lock's channel:
//! an empty message wakes one waiter of this process (lease lock: any waiter
//! may take it), a token wakes exactly that waiter (fair lock: only the head
//! may take it). A message can be missed (it was published before the waiter
//! registered, or the connection broke), so waiters always wait with a
//! timeout and try again; the waker only makes the common case fast.
//!
//! Subscribing never holds a waiter up: the first registration of a
//! channel subscribes on a task of its own, given [`SUBSCRIBE_WITHIN`]; a
//! pub/sub connection that does not answer in time (half-open, a host that
//! drops packets) is dropped and the next first registration opens another.
//! Until then waiters poll.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use redis::aio::PubSubSink;
use tokio::sync::Notify;

#[derive(Debug, Default)]
struct Channel {
    registrations: usize,
    /// Woken by an empty message: any one waiter of this process.
    anyone: Arc<Notify>,
    /// Woken by a message naming the token.
    by_token: HashMap<String, Arc<Notify>>,
}

type Channels = Arc<Mutex<HashMap<String, Channel>>>;

/// The longest a subscription (with the connection it may have to open)
/// may take before its connection is given up.
pub const SUBSCRIBE_WITHIN: Duration = Duration::from_secs(1);

/// Per-process dispatcher of lock-release messages.
pub struct LockWaker {
    client: redis::Client,
    runtime: tokio::runtime::Handle,
    channels: Channels,
    /// The subscribing side; `None` until first used or after it broke.
    sink: tokio::sync::Mutex<Option<PubSubSink>>,
}

impl std::fmt::Debug for LockWaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockWaker").finish_non_exhaustive()
    }
}

/// A waiter's registration: wait on it, drop it when done.
#[derive(Debug)]
pub struct Registration {
    waker: Arc<LockWaker>,
    channel: String,
    token: Option<String>,
    notify: Arc<Notify>,
}

impl Registration {
    /// Waits for a release message, at most `timeout`.
    pub async fn wait(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.notify.notified()).await;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let unsubscribe = {
            let mut channels = self
                .waker
                .channels
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(channel) = channels.get_mut(&self.channel) else {
                return;
            };
            if let Some(token) = &self.token {
                channel.by_token.remove(token);
            }
            channel.registrations -= 1;
            if channel.registrations == 0 {
                channels.remove(&self.channel);
                true
            } else {
                false
            }
        };
        if unsubscribe {
            let (waker, channel) = (self.waker.clone(), self.channel.clone());
            self.waker.runtime.spawn(async move {
                if tokio::time::timeout(SUBSCRIBE_WITHIN, waker.unsubscribe(&channel))
                    .await
                    .is_err()
                {
                    waker.sink.lock().await.take();
                }
            });
        }
    }
}

impl LockWaker {
    /// Must be called within a tokio runtime; the pub/sub connection runs there.
    pub fn new(client: redis::Client) -> Arc<Self> {
        Arc::new(Self {
            client,
            runtime: tokio::runtime::Handle::current(),
            channels: Arc::default(),
            sink: tokio::sync::Mutex::new(None),
        })
    }

    /// Registers a waiter on `channel`; with a `token`, only a message naming
    /// it wakes this waiter. Returns at once: the channel's first
    /// registration subscribes in the background (a message published
    /// before that is missed, and the waiter's timeout covers it).
    pub fn register(self: &Arc<Self>, channel: &str, token: Option<&str>) -> Registration {
        let (notify, first) = {
            let mut channels = self
                .channels
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let entry = channels.entry(channel.to_owned()).or_default();
            entry.registrations += 1;
            let notify = match token {
                Some(t) => entry.by_token.entry(t.to_owned()).or_default().clone(),
                None => entry.anyone.clone(),
            };
            (notify, entry.registrations == 1)
        };
        let registration = Registration {
            waker: self.clone(),
            channel: channel.to_owned(),
            token: token.map(str::to_owned),
            notify,
        };
        if first {
            let (waker, channel) = (self.clone(), channel.to_owned());
            self.runtime.spawn(async move {
                match tokio::time::timeout(SUBSCRIBE_WITHIN, waker.subscribe(&channel)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "lock wake-ups unavailable; waiters poll");
                    }
                    Err(_) => {
                        // The subscription was dropped with the lock on the
                        // sink; the connection that did not answer goes too.
                        waker.sink.lock().await.take();
                        tracing::warn!(
                            within = ?SUBSCRIBE_WITHIN,
                            "lock wake-ups: no answer from the pub/sub connection; waiters poll"
                        );
                    }
                }
            });
        }
        registration
    }

    /// Subscribes to `channel`; on a new connection, to every channel with
    /// waiters (those of a connection that broke included).
    async fn subscribe(&self, channel: &str) -> Result<(), redis::RedisError> {
        let mut sink = self.sink.lock().await;
        let mut wanted = vec![channel.to_owned()];
        if sink.is_none() {
            *sink = Some(self.connect().await?);
            wanted = self
                .channels
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .keys()
                .cloned()
                .collect();
        }
        let result = match sink.as_mut() {
            Some(s) if !wanted.is_empty() => s.subscribe(wanted).await,
            _ => Ok(()),
        };
        if result.is_err() {
            *sink = None;
        }
        result
    }

    async fn unsubscribe(&self, channel: &str) {
        let still_wanted = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(channel);
        let mut sink = self.sink.lock().await;
        if still_wanted {
            // Registered again meanwhile (and subscribed again, in order).
            return;
        }
        if let Some(s) = sink.as_mut()
            && s.unsubscribe(channel).await.is_err()
        {
            *sink = None;
        }
    }

    /// Opens the pub/sub connection and starts dispatching its messages.
    async fn connect(&self) -> Result<PubSubSink, redis::RedisError> {
        let client = self.client.clone();
        let pubsub = self
            .runtime
            .spawn(async move { client.get_async_pubsub().await })
            .await
            .map_err(|e| redis::RedisError::from(std::io::Error::other(e)))??;
        let (sink, mut stream) = pubsub.split();
        let channels = self.channels.clone();
        self.runtime.spawn(async move {
            while let Some(message) = stream.next().await {
                let token: String = message.get_payload().unwrap_or_default();
                let channels = channels
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some(channel) = channels.get(message.get_channel_name()) {
                    if token.is_empty() {
                        channel.anyone.notify_one();
                    } else if let Some(notify) = channel.by_token.get(&token) {
                        notify.notify_one();
                    }
                }
            }
            // The connection ended: waiters fall back to their timeouts, and
            // the next first registration of a channel reconnects.
        });
        Ok(sink)
    }
}
