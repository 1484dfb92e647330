//! Tokens every node of a cluster shares: a JetStream KV bucket
//! (`<stream>-tokens`, e.g. `AUDITD-tokens`: one a cluster, so clusters on
//! other streams of the same NATS keep theirs apart), so a token made or
//! revoked on one node holds on all.
//!
//! **Keys.** Each token is one key, `t.<id>`, holding the same JSON as a
//! node's `tokens.json` (the SHA-256 of the secret, never the secret).
//! The cluster's first admin token is the key `first-admin`: written with
//! the bucket's create (which fails when the key exists), so however many
//! nodes start at once, one makes it, and that node writes its secret to
//! its `admin.token`.
//!
//! **Reads.** A node loads every key at start, before it serves, then a
//! watch from the revision after what it loaded applies each change as it
//! comes ([`TokenStore::apply`]). A token never changes but to be revoked,
//! and a revocation is never undone, so a change heard twice or late does
//! no harm. A revocation made on another node holds here once the watch
//! brings it (milliseconds on one network).
//!
//! **Cut off.** Every second the node checks that it still hears NATS (a
//! ping's round trip) while its watch runs. After `cluster.token_staleness_ms`
//! without both, it takes no token at all (UNAVAILABLE naming the bucket):
//! a revocation made meanwhile on another node could not reach it. A
//! broken watch is made again every second, from the last revision
//! applied; once it runs and NATS answers, tokens are taken again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

use super::ClusterError;
use crate::auth::{SharedTokens, StoredToken, TokenStore};

/// The tokens bucket of the cluster on `stream`.
pub fn bucket_name(stream: &str) -> String {
    format!("{stream}-tokens")
}

/// The first admin token's key.
const FIRST_ADMIN: &str = "first-admin";

/// How long a broken watch waits before it is made again, and how often
/// the node checks that it still hears NATS.
const WATCH_RETRY: Duration = Duration::from_secs(1);

/// The tokens bucket, as a [`SharedTokens`] store.
pub struct TokenBucket {
    kv: kv::Store,
    /// The bucket's stream, `KV_<bucket>`, for errors.
    name: String,
    client: async_nats::Client,
    /// When the node last knew its tokens current (NATS answered while
    /// the watch ran), in milliseconds since `epoch`.
    fresh_at: AtomicU64,
    epoch: Instant,
    watching: AtomicBool,
    /// `cluster.token_staleness_ms` (zero: tokens never go stale).
    stale_after: Duration,
}

/// What [`TokenBucket::open`] read: every token, and the bucket's last
/// revision, from which [`TokenBucket::follow`] goes on.
pub struct Loaded {
    pub bucket: Arc<TokenBucket>,
    pub tokens: Vec<StoredToken>,
    pub revision: u64,
}

impl TokenBucket {
    /// Opens (or creates, with `replicas` copies) the bucket and reads
    /// every token in it. A value that is not a token is refused: a node
    /// must not serve on a partial list (a revocation could be the
    /// unreadable one).
    pub async fn open(
        client: async_nats::Client,
        context: &jetstream::Context,
        bucket: &str,
        replicas: usize,
        stale_after: Duration,
    ) -> Result<Loaded, ClusterError> {
        let name = format!("KV_{bucket}");
        let remote = |reason: String| ClusterError::Remote {
            stream: name.clone(),
            reason,
        };
        let kv = super::open_kv(context, bucket, Duration::ZERO, replicas)
            .await
            .map_err(|e| remote(format!("cannot open or create the tokens bucket: {e}")))?;
        // The revision first: a change after it is heard by the watch,
        // whether or not the reads below saw it.
        let revision = kv
            .stream
            .clone()
            .info()
            .await
            .map_err(|e| remote(format!("tokens bucket info: {e}")))?
            .state
            .last_sequence;
        let keys: Vec<String> = kv
            .keys()
            .await
            .map_err(|e| remote(format!("listing tokens: {e}")))?
            .try_collect()
            .await
            .map_err(|e| remote(format!("listing tokens: {e}")))?;
        let mut tokens = Vec::with_capacity(keys.len());
        for key in keys {
            let value = kv
                .get(key.as_str())
                .await
                .map_err(|e| remote(format!("reading {key}: {e}")))?;
            if let Some(value) = value {
                tokens.push(decode(&name, &key, &value)?);
            }
        }
        Ok(Loaded {
            bucket: Arc::new(TokenBucket {
                kv,
                name,
                client,
                fresh_at: AtomicU64::new(0),
                epoch: Instant::now(),
                watching: AtomicBool::new(false),
                stale_after,
            }),
            tokens,
            revision,
        })
    }

    fn mark_fresh(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.fresh_at.fetch_max(now, Ordering::Relaxed);
    }

    /// Marks the tokens current when NATS answers a ping while the watch
    /// runs.
    async fn check_fresh(&self) {
        let answered = tokio::time::timeout(WATCH_RETRY, self.client.flush()).await;
        if matches!(answered, Ok(Ok(()))) && self.watching.load(Ordering::Relaxed) {
            self.mark_fresh();
        }
    }

    /// Applies every change after `revision` to `store` until `stop`, or
    /// until the store is gone. A broken watch is made again from the
    /// last revision applied.
    pub async fn follow(
        self: Arc<Self>,
        store: Weak<TokenStore>,
        mut revision: u64,
        stop: CancellationToken,
    ) {
        let mut check = tokio::time::interval(WATCH_RETRY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let watch = tokio::select! {
                () = stop.cancelled() => return,
                watch = self.kv.watch_all_from_revision(revision + 1) => watch,
            };
            match watch {
                Ok(mut entries) => loop {
                    self.watching.store(true, Ordering::Relaxed);
                    let next = tokio::select! {
                        () = stop.cancelled() => return,
                        _ = check.tick() => {
                            self.check_fresh().await;
                            continue;
                        }
                        next = entries.next() => next,
                    };
                    let entry = match next {
                        Some(Ok(entry)) => entry,
                        Some(Err(error)) => {
                            tracing::warn!(%error, "tokens bucket: the watch broke; again in a second");
                            break;
                        }
                        None => break,
                    };
                    revision = entry.revision;
                    if entry.operation != kv::Operation::Put {
                        continue;
                    }
                    let Some(store) = store.upgrade() else {
                        return;
                    };
                    match decode(&self.name, &entry.key, &entry.value) {
                        Ok(token) => store.apply(token),
                        // Not a token: nothing to apply; the keys written
                        // by auditd always are.
                        Err(error) => tracing::error!(%error, "tokens bucket"),
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, "tokens bucket: cannot watch; again in a second")
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(WATCH_RETRY) => {}
            }
        }
    }
}

impl SharedTokens for TokenBucket {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn put(&self, token: &StoredToken) -> BoxFuture<'_, Result<(), String>> {
        let key = format!("t.{}", token.id);
        let value = encode(token);
        Box::pin(async move {
            self.kv
                .put(key.as_str(), value.into())
                .await
                .map(|_| ())
                .map_err(|e| format!("writing {key}: {e}"))
        })
    }

    fn stale(&self) -> Option<String> {
        if self.stale_after.is_zero() {
            return None;
        }
        let fresh_at = Duration::from_millis(self.fresh_at.load(Ordering::Relaxed));
        let unheard = self.epoch.elapsed().saturating_sub(fresh_at);
        (unheard > self.stale_after).then(|| {
            format!(
                "not heard from for {:.1} s (cluster.token_staleness_ms = {}): a revocation \
                 made on another node could be missed, so no token is taken until NATS is back",
                unheard.as_secs_f64(),
                self.stale_after.as_millis()
            )
        })
    }

    fn create_first_admin(&self, token: &StoredToken) -> BoxFuture<'_, Result<bool, String>> {
        let value = encode(token);
        Box::pin(async move {
            match self.kv.create(FIRST_ADMIN, value.into()).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(format!("writing {FIRST_ADMIN}: {e}")),
            }
        })
    }
}

fn encode(token: &StoredToken) -> Vec<u8> {
    serde_json::to_vec(token).expect("a token serializes")
}

fn decode(stream: &str, key: &str, value: &[u8]) -> Result<StoredToken, ClusterError> {
    serde_json::from_slice(value).map_err(|e| ClusterError::Corrupt {
        stream: stream.to_owned(),
        reason: format!("{key} is not a token: {e}"),
    })
}
