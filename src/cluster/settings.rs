//! Settings every node of a cluster must hold alike, checked when a node
//! starts: the KV bucket `<stream>-settings`, one key a setting, written
//! by the first node to start. `node-secret` is what nodes show one
//! another (`cluster::remote`): 32 random bytes, base64url, made by the
//! first node to start; whoever may read the bucket may read the stream
//! itself, so it guards nothing the stream does not. `integrity-key` is
//! the cluster's checkpoint signing key, likewise made by the first node. `retention` holds the
//! rules of `[retention]` (not how often the sweep runs). Each node judges every
//! drop by its own rules, so nodes with different rules would keep
//! different days; a node whose rules are not the cluster's is refused at
//! start, naming `retention`.
//!
//! To change them for every node: give every node the new rules, start
//! one of them with `cluster.adopt_settings = true` (its rules replace
//! the cluster's), then restart the others. A node already running keeps
//! the rules it started with until it restarts.

use std::time::Duration;

use async_nats::jetstream::{self, kv};

use super::ClusterError;
use crate::config::RetentionConfig;
use crate::integrity::checkpointer::new_key;
use crate::integrity::note::NoteSigner;

/// The settings bucket of the cluster on `stream`.
pub fn bucket_name(stream: &str) -> String {
    format!("{stream}-settings")
}

/// The cluster's node secret: read, or made when no node has yet.
pub async fn node_secret(
    context: &jetstream::Context,
    bucket: &str,
    replicas: usize,
) -> Result<String, ClusterError> {
    use base64::Engine;
    let kv = open(context, bucket, replicas).await?;
    let made = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let stored = made_or_stored(&kv, bucket, NODE_SECRET, made.into_bytes()).await?;
    match String::from_utf8(stored) {
        Ok(secret) if secret.len() >= 32 && secret.is_ascii() => Ok(secret),
        _ => Err(ClusterError::Corrupt {
            stream: format!("KV_{bucket}"),
            reason: format!("{NODE_SECRET} is not a secret auditd made"),
        }),
    }
}

/// The node secret's key.
const NODE_SECRET: &str = "node-secret";

/// `key`'s value: `made`, written now if no node wrote one yet, or the
/// one stored first (the first node to start makes each setting).
async fn made_or_stored(
    kv: &kv::Store,
    bucket: &str,
    key: &str,
    made: Vec<u8>,
) -> Result<Vec<u8>, ClusterError> {
    let remote = |reason: String| remote(bucket, reason);
    match kv.create(key, made.clone().into()).await {
        Ok(_) => return Ok(made),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
        Err(e) => return Err(remote(format!("writing {key}: {e}"))),
    }
    kv.get(key)
        .await
        .map_err(|e| remote(format!("reading {key}: {e}")))?
        .map(|stored| stored.to_vec())
        .ok_or_else(|| remote(format!("{key}: the key went away")))
}

/// The cluster's checkpoint signing key's key.
const INTEGRITY_KEY: &str = "integrity-key";

/// The cluster's checkpoint signing key (docs/cluster.md, "Integrity over
/// partitions"): read, or made, named `origin` (`integrity.origin`; empty:
/// `auditd/<8 random hex>`), when no node has yet. Every tree of the
/// cluster is signed with it, whichever node owns it, so that one
/// verifier key checks every checkpoint and receipt, across hand-overs.
/// Whoever may read the bucket may sign as the cluster: it is guarded as
/// the stream is.
pub async fn integrity_key(
    context: &jetstream::Context,
    bucket: &str,
    replicas: usize,
    origin: &str,
) -> Result<NoteSigner, ClusterError> {
    let kv = open(context, bucket, replicas).await?;
    let made = new_key(origin).map_err(|e| remote(bucket, format!("making a key: {e}")))?;
    let stored = made_or_stored(&kv, bucket, INTEGRITY_KEY, made.to_text().into_bytes()).await?;
    let corrupt = |reason: String| ClusterError::Corrupt {
        stream: format!("KV_{bucket}"),
        reason: format!("{INTEGRITY_KEY}: {reason}"),
    };
    let text = String::from_utf8(stored).map_err(|e| corrupt(e.to_string()))?;
    let signer = NoteSigner::from_text(&text).map_err(|e| corrupt(e.to_string()))?;
    if !origin.is_empty() && signer.name() != origin {
        return Err(ClusterError::Config {
            field: "integrity.origin",
            reason: format!(
                "this node names its log {origin}, the cluster {} (its key, in KV_{bucket}, \
                 was made by the first node to start): give every node the same origin",
                signer.name()
            ),
        });
    }
    Ok(signer)
}

/// The settings bucket, opened or made.
async fn open(
    context: &jetstream::Context,
    bucket: &str,
    replicas: usize,
) -> Result<kv::Store, ClusterError> {
    super::open_kv(context, bucket, Duration::ZERO, replicas)
        .await
        .map_err(|e| {
            remote(
                bucket,
                format!("cannot open or create the settings bucket: {e}"),
            )
        })
}

/// NATS failed or refused on `bucket`.
fn remote(bucket: &str, reason: String) -> ClusterError {
    ClusterError::Remote {
        stream: format!("KV_{bucket}"),
        reason,
    }
}

/// What of `[retention]` every node must share, as stored.
fn retention_value(config: &RetentionConfig) -> serde_json::Value {
    serde_json::json!({
        "default_days": config.default_days,
        "trail_days": config.trail_days,
        "rules": config.rules,
    })
}

/// Checks this node's `[retention]` rules against the cluster's, writing
/// them when the cluster has none yet, or when `adopt` says this node's
/// replace them.
pub async fn agree_on_retention(
    context: &jetstream::Context,
    bucket: &str,
    replicas: usize,
    retention: &RetentionConfig,
    adopt: bool,
) -> Result<(), ClusterError> {
    let remote = |reason: String| remote(bucket, reason);
    let kv = open(context, bucket, replicas).await?;
    let ours = retention_value(retention);
    let bytes = serde_json::to_vec(&ours).expect("rules serialize");
    if adopt {
        kv.put("retention", bytes.into())
            .await
            .map_err(|e| remote(format!("writing retention: {e}")))?;
        tracing::warn!(rules = %ours, "this node's retention rules are now the cluster's (cluster.adopt_settings)");
        return Ok(());
    }
    match kv.create("retention", bytes.into()).await {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
        Err(e) => return Err(remote(format!("writing retention: {e}"))),
    }
    let theirs = kv
        .get("retention")
        .await
        .map_err(|e| remote(format!("reading retention: {e}")))?
        .ok_or_else(|| remote("retention: the key went away".into()))?;
    let theirs: serde_json::Value =
        serde_json::from_slice(&theirs).map_err(|e| ClusterError::Corrupt {
            stream: format!("KV_{bucket}"),
            reason: format!("retention is not rules: {e}"),
        })?;
    if theirs == ours {
        return Ok(());
    }
    Err(ClusterError::Config {
        field: "retention",
        reason: format!(
            "this node keeps {ours}, the cluster {theirs} (in KV_{bucket}, written by the first \
             node to start): every node must keep the same, or they would drop different days. \
             Give this node the cluster's [retention]; to change the rules of every node, give \
             them all the new ones and start one with cluster.adopt_settings = true"
        ),
    })
}
