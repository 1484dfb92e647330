//! Who owns which partition: a lease per partition in a JetStream KV
//! bucket, so that each partition has one indexer at a time and another
//! takes it over when its owner dies.
//!
//! **Keys.** `p.<p>` holds the owner's node name, or nothing once it is
//! released; `n.<node>` is a node's heartbeat, a [`Member`] in JSON
//! (`{"v":1,"address":…,"ready":[…]}`): the address where its
//! `Partitions` service answers (`cluster::remote`) and the partitions it
//! can answer for now. The bucket's `max_age` is
//! the lease time: a key nobody renews disappears that long after its
//! last write, by the servers' clock alone, so no two nodes' clocks are
//! ever compared.
//!
//! **Safety.** Every write to a `p.` key is a compare-and-set on its
//! revision: taking a free one, renewing one's own, releasing one's own.
//! An owner counts a lease as held until the time it *sent* its last
//! renewal plus the lease time, less a twentieth for clock rates: the key
//! cannot expire before then, since the server stored the renewal after
//! it was sent, and nobody else can take it while it lives. So an owner
//! stops counting a partition as its own before anyone else can take it,
//! even when it cannot reach NATS at all.
//!
//! **Balance.** A node aims at `ceil(N / live nodes)` partitions: it takes
//! free ones (starting at a place its name picks, so that nodes starting
//! together do not all race for partition 0) up to that share, and
//! releases what it holds above it, so a node that joins gets work and a
//! node that dies or leaves has its partitions spread over the rest. A
//! release above the share is [`Change::released`], not lost: nobody else
//! holds the lease yet, so the node may keep answering for the partition
//! (`cluster::owner`'s hand-over) until the new owner says it is ready.
//! [`Leases::tick`] does one round; run it every third of the lease time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures::TryStreamExt;

use super::ClusterError;
use crate::metrics as m;

/// What a node asks of the lease bucket.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// The KV bucket (`auditd-leases`).
    pub bucket: String,
    /// This node's name: unique in the cluster, a valid KV key token.
    pub node: String,
    /// `N`: the partitions to share out.
    pub partitions: u32,
    /// How long a lease lives unrenewed: the bucket's `max_age`, fixed
    /// when the bucket is created. A dead owner's partitions move after
    /// at most this long (plus a tick).
    pub lease: Duration,
    /// Copies of the bucket (1, 3 or 5), when it is created.
    pub replicas: usize,
    /// Where this node's `Partitions` service answers (`http://host:port`,
    /// or `https://` with TLS), for the other nodes' fan-outs: the value
    /// of its heartbeat. Empty: nowhere (a node that only indexes for
    /// itself, in tests).
    pub address: String,
}

/// A lease this node holds.
#[derive(Debug, Clone, Copy)]
struct Held {
    revision: u64,
    /// Until when it is surely this node's (see the module's "Safety").
    until: Instant,
}

/// A partition's key as last read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// No key: never taken, or expired.
    Absent,
    /// Released (an empty value) at this revision.
    Free(u64),
    Owned {
        node: String,
        revision: u64,
    },
}

/// What one round changed for this node.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Change {
    pub gained: Vec<u32>,
    /// Taken over by another node, or expired.
    pub lost: Vec<u32>,
    /// Released above the share, for another node to take.
    pub released: Vec<u32>,
}

/// A live node, as its heartbeat says.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// Where its `Partitions` service answers; empty: nowhere.
    pub address: String,
    /// The partitions it answers for now: its ready pipelines, and those
    /// it hands over.
    #[serde(default)]
    pub ready: BTreeSet<u32>,
}

/// The heartbeat's format version (`v`).
const HEARTBEAT_VERSION: u32 = 1;

#[derive(serde::Serialize, serde::Deserialize)]
struct Heartbeat {
    v: u32,
    #[serde(flatten)]
    member: Member,
}

impl Member {
    /// A heartbeat's value; one of another version, or not JSON, is a
    /// member at no known address answering for nothing.
    fn parse(value: &[u8]) -> Member {
        match serde_json::from_slice::<Heartbeat>(value) {
            Ok(beat) if beat.v == HEARTBEAT_VERSION => beat.member,
            _ => Member::default(),
        }
    }
}

/// This node's leases.
pub struct Leases {
    kv: kv::Store,
    settings: LeaseSettings,
    held: BTreeMap<u32, Held>,
    /// What this node's heartbeat says it answers for.
    ready: BTreeSet<u32>,
}

impl Leases {
    /// Opens (or creates) the bucket. One whose `max_age` is not the
    /// configured lease is refused: a shorter one would let a partition
    /// move while its owner still counts it as held.
    pub async fn open(
        context: &jetstream::Context,
        settings: LeaseSettings,
    ) -> Result<Leases, ClusterError> {
        let remote = |reason: String| ClusterError::Remote {
            stream: format!("KV_{}", settings.bucket),
            reason,
        };
        if settings.lease < Duration::from_secs(1) {
            return Err(ClusterError::Config {
                field: "cluster.lease_ms",
                reason: "at least 1000".into(),
            });
        }
        let valid_token = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if !valid_token(&settings.node) {
            return Err(ClusterError::Config {
                field: "cluster.node",
                reason: "letters, digits, '-' and '_' only".into(),
            });
        }
        let kv = super::open_kv(context, &settings.bucket, settings.lease, settings.replicas)
            .await
            .map_err(|e| remote(format!("cannot open or create the lease bucket: {e}")))?;
        let mut stream = kv.stream.clone();
        let info = stream
            .info()
            .await
            .map_err(|e| remote(format!("lease bucket info: {e}")))?;
        if info.config.max_age != settings.lease {
            return Err(ClusterError::Config {
                field: "cluster.lease_ms",
                reason: format!(
                    "the lease bucket {} exists with leases of {:?}, not the {:?} configured; \
                     every node must use the same",
                    settings.bucket, info.config.max_age, settings.lease
                ),
            });
        }
        Ok(Leases {
            kv,
            settings,
            held: BTreeMap::new(),
            ready: BTreeSet::new(),
        })
    }

    pub fn node(&self) -> &str {
        &self.settings.node
    }

    /// The partitions surely this node's at `now`.
    pub fn held(&self, now: Instant) -> BTreeSet<u32> {
        self.held
            .iter()
            .filter(|(_, held)| held.until > now)
            .map(|(&p, _)| p)
            .collect()
    }

    /// Every partition's owner, as the bucket says now (a partition
    /// nobody owns is absent).
    pub async fn owners(&self) -> Result<BTreeMap<u32, String>, ClusterError> {
        let mut owners = BTreeMap::new();
        for (p, state) in self.read_all().await?.into_iter().enumerate() {
            if let State::Owned { node, .. } = state {
                owners.insert(p as u32, node);
            }
        }
        Ok(owners)
    }

    /// One round: heartbeat, renew, then take free partitions up to the
    /// share or release those above it.
    pub async fn tick(&mut self) -> Result<Change, ClusterError> {
        let mut change = Change::default();
        self.heartbeat().await?;
        let share = self.share().await?;
        let states = self.read_all().await?;
        let now = Instant::now();
        // Renew what is still ours; anything else is lost.
        for (p, held) in std::mem::take(&mut self.held) {
            let ours = matches!(&states[p as usize],
                State::Owned { node, revision } if *node == self.settings.node && *revision == held.revision);
            if !ours || held.until <= now {
                change.lost.push(p);
                continue;
            }
            match self.write(p, &self.settings.node, held.revision).await {
                Ok(renewed) => {
                    self.held.insert(p, renewed);
                }
                Err(Write::Refused) => change.lost.push(p),
                // Unanswered: still ours until its deadline.
                Err(Write::Failed(reason)) => {
                    tracing::warn!(partition = p, %reason, "a lease renewal failed; held until its deadline");
                    self.held.insert(p, held);
                }
            }
        }
        // Release what is above the share, highest first.
        while self.held.len() > share {
            let (p, held) = self.held.pop_last().expect("non-empty");
            let _ = self.write(p, "", held.revision).await;
            change.released.push(p);
        }
        // Take free partitions up to the share.
        let n = self.settings.partitions;
        let start = start_for(&self.settings.node, n);
        for p in (0..n).map(|i| (start + i) % n) {
            if self.held.len() >= share {
                break;
            }
            let revision = match &states[p as usize] {
                State::Absent => 0,
                State::Free(revision) => *revision,
                State::Owned { .. } => continue,
            };
            if let Ok(held) = self.write(p, &self.settings.node, revision).await {
                self.held.insert(p, held);
                change.gained.push(p);
            }
        }
        change.lost.sort_unstable();
        change.released.sort_unstable();
        let changes = [
            ("gained", &change.gained),
            ("lost", &change.lost),
            ("released", &change.released),
        ];
        for (what, partitions) in changes {
            for p in partitions {
                metrics::counter!(m::CLUSTER_LEASE_CHANGES, "change" => what, "partition" => p.to_string())
                    .increment(1);
            }
        }
        Ok(change)
    }

    /// Releases every lease and the heartbeat, so that the others take the
    /// partitions on their next round instead of after the lease time.
    pub async fn release_all(&mut self) -> Result<(), ClusterError> {
        for (p, held) in std::mem::take(&mut self.held) {
            let _ = self.write(p, "", held.revision).await;
        }
        self.kv
            .stream
            .purge()
            .filter(self.member_subject())
            .await
            .map_err(|e| self.remote(format!("remove the heartbeat: {e}")))?;
        Ok(())
    }

    fn member_subject(&self) -> String {
        format!("$KV.{}.n.{}", self.settings.bucket, self.settings.node)
    }

    /// Sets what this node's heartbeats say it answers for; written with
    /// the next [`Leases::heartbeat`].
    pub fn set_ready(&mut self, ready: BTreeSet<u32>) {
        self.ready = ready;
    }

    /// Every live node, by name (its heartbeat).
    pub async fn members(&self) -> Result<BTreeMap<String, Member>, ClusterError> {
        let keys: Vec<String> = self
            .kv
            .keys()
            .await
            .map_err(|e| self.remote(format!("list the nodes: {e}")))?
            .try_collect()
            .await
            .map_err(|e| self.remote(format!("list the nodes: {e}")))?;
        let mut members = BTreeMap::new();
        for key in keys {
            let Some(node) = key.strip_prefix("n.") else {
                continue;
            };
            let value = self
                .kv
                .get(key.as_str())
                .await
                .map_err(|e| self.remote(format!("read {key}: {e}")))?;
            if let Some(value) = value {
                members.insert(node.to_owned(), Member::parse(&value));
            }
        }
        Ok(members)
    }

    /// Says this node is alive, where it answers and for what.
    pub async fn heartbeat(&self) -> Result<(), ClusterError> {
        let beat = Heartbeat {
            v: HEARTBEAT_VERSION,
            member: Member {
                address: self.settings.address.clone(),
                ready: self.ready.clone(),
            },
        };
        let value = serde_json::to_vec(&beat).expect("a heartbeat serializes");
        self.kv
            .put(format!("n.{}", self.settings.node), value.into())
            .await
            .map_err(|e| self.remote(format!("heartbeat: {e}")))?;
        Ok(())
    }

    /// `ceil(N / live nodes)`, counting this one.
    async fn share(&self) -> Result<usize, ClusterError> {
        let filter = format!("$KV.{}.n.>", self.settings.bucket);
        let info = self
            .kv
            .stream
            .info_with_subjects(filter)
            .await
            .map_err(|e| self.remote(format!("list the nodes: {e}")))?;
        let nodes: Vec<(String, usize)> = info
            .try_collect()
            .await
            .map_err(|e| self.remote(format!("list the nodes: {e}")))?;
        let live = nodes.len().max(1);
        Ok((self.settings.partitions as usize).div_ceil(live))
    }

    async fn read_all(&self) -> Result<Vec<State>, ClusterError> {
        let mut states = Vec::with_capacity(self.settings.partitions as usize);
        for p in 0..self.settings.partitions {
            let entry = self
                .kv
                .entry(format!("p.{p}"))
                .await
                .map_err(|e| self.remote(format!("read the lease of partition {p}: {e}")))?;
            states.push(match entry {
                None => State::Absent,
                Some(entry) if entry.operation != kv::Operation::Put || entry.value.is_empty() => {
                    State::Free(entry.revision)
                }
                Some(entry) => State::Owned {
                    node: String::from_utf8_lossy(&entry.value).into_owned(),
                    revision: entry.revision,
                },
            });
        }
        Ok(states)
    }

    /// Writes `value` to partition `p`'s key if its revision is still
    /// `revision` (0: the key has no message).
    async fn write(&self, p: u32, value: &str, revision: u64) -> Result<Held, Write> {
        let sent = Instant::now();
        let written = self
            .kv
            .update(format!("p.{p}"), value.to_owned().into(), revision)
            .await;
        match written {
            Ok(revision) => Ok(Held {
                revision,
                until: sent + self.settings.lease - self.settings.lease / 20,
            }),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(Write::Refused),
            Err(e) => Err(Write::Failed(e.to_string())),
        }
    }

    fn remote(&self, reason: String) -> ClusterError {
        ClusterError::Remote {
            stream: format!("KV_{}", self.settings.bucket),
            reason,
        }
    }
}

/// Why a compare-and-set did not happen.
#[derive(Debug)]
enum Write {
    /// The revision moved: someone else wrote the key.
    Refused,
    /// No answer, or another error: the write may or may not be stored.
    Failed(String),
}

/// Where `node` starts looking for free partitions.
fn start_for(node: &str, partitions: u32) -> u32 {
    super::partition_of(node, partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_reads_back_and_an_unknown_one_answers_for_nothing() {
        let member = Member {
            address: "http://127.0.0.1:7000".into(),
            ready: BTreeSet::from([1, 3]),
        };
        let value = serde_json::to_vec(&Heartbeat {
            v: HEARTBEAT_VERSION,
            member: member.clone(),
        })
        .unwrap();
        assert_eq!(Member::parse(&value), member);
        let later = br#"{"v":2,"address":"http://x","ready":[0]}"#;
        assert_eq!(Member::parse(later), Member::default());
        assert_eq!(Member::parse(b"http://x"), Member::default());
    }

    #[test]
    fn nodes_start_looking_at_different_partitions() {
        let starts: BTreeSet<u32> = (0..8)
            .map(|i| start_for(&format!("node-{i}"), 32))
            .collect();
        assert!(starts.len() > 4, "{starts:?}");
    }
}
