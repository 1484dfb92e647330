//! Tokens every node of a cluster shares: a JetStream KV bucket
//! (`auditd-tokens`), so a token made or revoked on one node holds on all.
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
//! brings it (milliseconds on one network). A node cut off from NATS
//! keeps the tokens it last heard of, and tries the watch again every
//! second.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

use super::ClusterError;
use crate::auth::{SharedTokens, StoredToken, TokenStore};

/// The bucket's name.
pub const TOKENS_BUCKET: &str = "auditd-tokens";

/// The first admin token's key.
const FIRST_ADMIN: &str = "first-admin";

/// How long a broken watch waits before it is made again.
const WATCH_RETRY: Duration = Duration::from_secs(1);

/// The tokens bucket, as a [`SharedTokens`] store.
pub struct TokenBucket {
    kv: kv::Store,
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
        context: &jetstream::Context,
        replicas: usize,
    ) -> Result<Loaded, ClusterError> {
        let remote = |reason: String| ClusterError::Remote {
            stream: format!("KV_{TOKENS_BUCKET}"),
            reason,
        };
        let kv = super::open_kv(context, TOKENS_BUCKET, Duration::ZERO, replicas)
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
                tokens.push(decode(&key, &value)?);
            }
        }
        Ok(Loaded {
            bucket: Arc::new(TokenBucket { kv }),
            tokens,
            revision,
        })
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
        loop {
            let watch = tokio::select! {
                () = stop.cancelled() => return,
                watch = self.kv.watch_all_from_revision(revision + 1) => watch,
            };
            match watch {
                Ok(mut entries) => loop {
                    let next = tokio::select! {
                        () = stop.cancelled() => return,
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
                    match decode(&entry.key, &entry.value) {
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
        format!("KV_{TOKENS_BUCKET}")
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

fn decode(key: &str, value: &[u8]) -> Result<StoredToken, ClusterError> {
    serde_json::from_slice(value).map_err(|e| ClusterError::Corrupt {
        stream: format!("KV_{TOKENS_BUCKET}"),
        reason: format!("{key} is not a token: {e}"),
    })
}
