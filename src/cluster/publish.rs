//! An ingest node's side of the partitioned stream: a validated, salted
//! batch goes out as one message per partition it touches, and every
//! event comes back with its partition and its seq there.
//!
//! **Dense seqs by compare-and-set.** A partition's message is a log
//! record (`record.rs`: the header with the first seq, then the
//! `WalBatch` of the partition's events, in request order), published
//! with `Nats-Expected-Last-Subject-Sequence` = the stream sequence of the
//! last message this node saw on the partition's subject, whose
//! `Auditd-Seq-End` header is the partition's next seq. If another node
//! published in between, JetStream refuses the message; this node reads
//! the subject's last message again and tries again, up to
//! [`MAX_PUBLISH_ATTEMPTS`]. JetStream is the only arbiter: no two
//! messages of a partition can claim the same seq, and none leaves a gap.
//! Within one node, publishes to a partition take turns (one lock a
//! partition), so its own requests never race each other.
//!
//! **Retries are stored once.** Each message carries `Nats-Msg-Id` =
//! `<batch id>/<p>`. JetStream answers a repeated id within its duplicate
//! window with the first message's sequence (before it checks the
//! expected sequence), and the answer is read back from that message:
//! its first seq and its events' ids, so a retry on any node gets the
//! first attempt's ids and seqs.
//!
//! **A batch over K partitions is K messages**, atomic each, not
//! together: if one fails the caller gets the error, and its retry with
//! the same batch id stores the rest exactly once. A batch without a
//! batch id gets a fresh one (a ULID), so even its partitions share one.
//!
//! Nothing here deletes a message: a deleted one's id stays a duplicate
//! for the window, so a retry of it would be acknowledged and not stored.
//! Whoever purges what is indexed must keep each subject's last message
//! (`purge` with `keep = 1` per subject): it carries the next seq.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use prost::Message;
use tokio::sync::Mutex;

use super::{partition_of, ClusterError, Layout};
use crate::messages::WalBatch;
use crate::metrics as m;
use crate::record::{self, LogRecord, RecordKind};
use crate::wal::{LogPosition, Record};

/// Attempts at one partition's compare-and-set before the batch is
/// refused (UNAVAILABLE: the partition is too contended to take it now).
pub const MAX_PUBLISH_ATTEMPTS: usize = 64;

/// The header with the seq after a message's last event.
pub const SEQ_END_HEADER: &str = "Auditd-Seq-End";

/// Where one event went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub id: String,
    pub partition: u32,
    pub seq: u64,
}

/// Where one record went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Its message's stream sequence (the first copy's, for a repeat).
    pub stream_seq: u64,
    /// The seq of its first event.
    pub first_seq: u64,
    /// For a repeat: the ids its first copy stored, which the caller
    /// answers with instead of its own.
    pub stored_ids: Option<Vec<String>>,
}

/// The last message of a partition, as this node last saw it.
#[derive(Debug, Clone, Copy)]
struct Tip {
    /// Its stream sequence (0: the subject has no message yet).
    stream_seq: u64,
    /// The partition's next seq.
    next_seq: u64,
}

/// Publishes batches into the partitions. Cheap to share: calls on
/// different partitions run side by side.
pub struct Publisher {
    layout: Layout,
    context: jetstream::Context,
    stream: stream::Stream,
    /// Per partition: the tip this node knows (`None`: read it first).
    tips: Vec<Mutex<Option<Tip>>>,
    /// The largest message the servers take.
    max_payload: usize,
    timeout: Duration,
    /// Publishes refused because another node published first.
    conflicts: AtomicU64,
}

impl Publisher {
    /// Connects and opens (or creates) the stream of `layout`.
    pub async fn open(layout: Layout) -> Result<Publisher, ClusterError> {
        let (client, context, stream) = layout.open().await?;
        let tips = (0..layout.partitions).map(|_| Mutex::new(None)).collect();
        Ok(Publisher {
            max_payload: client.server_info().max_payload,
            timeout: layout.jetstream.timeout(),
            layout,
            context,
            stream,
            tips,
            conflicts: AtomicU64::new(0),
        })
    }

    pub fn partitions(&self) -> u32 {
        self.layout.partitions
    }

    /// The stream, for followers on the same connection.
    pub fn stream(&self) -> &stream::Stream {
        &self.stream
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Publishes this node had to try again because another node had
    /// published to the partition first.
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }

    /// Stores `batch` (validated, ids and salts set) and says where each
    /// event went, in request order. An error leaves a retry with the same
    /// batch id safe.
    pub async fn publish(&self, mut batch: WalBatch) -> Result<Vec<Placed>, ClusterError> {
        if batch.batch_id.is_empty() {
            batch.batch_id = ulid::Ulid::new().to_string();
        }
        let groups = self.split(batch);
        let placed = futures::future::try_join_all(
            groups
                .iter()
                .map(|(partition, (_, part))| self.publish_partition(*partition, part)),
        )
        .await?;
        for ((partition, (at, part)), (_, ids)) in groups.iter().zip(&placed) {
            if ids.len() != at.len() {
                return Err(ClusterError::BatchIdReused {
                    batch_id: part.batch_id.clone(),
                    partition: *partition,
                    stored: ids.len(),
                    sent: at.len(),
                });
            }
        }
        let total = groups.values().map(|(at, _)| at.len()).sum();
        let mut out = vec![None; total];
        for ((partition, (at, _)), (first_seq, ids)) in groups.iter().zip(placed) {
            for ((&i, id), seq) in at.iter().zip(ids).zip(first_seq..) {
                out[i] = Some(Placed {
                    id,
                    partition: *partition,
                    seq,
                });
            }
        }
        Ok(out
            .into_iter()
            .map(|p| p.expect("every event placed"))
            .collect())
    }

    /// The batch by partition: each event's place in the request, and the
    /// partition's own batch (same batch id, events and salts in order).
    fn split(&self, batch: WalBatch) -> BTreeMap<u32, (Vec<usize>, WalBatch)> {
        let salted = batch.is_salted();
        let salt_len = crate::integrity::leaf::SALT_LEN;
        let mut groups: BTreeMap<u32, (Vec<usize>, WalBatch)> = BTreeMap::new();
        for (i, event) in batch.events.into_iter().enumerate() {
            let partition = partition_of(&event.subject, self.layout.partitions);
            let (at, part) = groups.entry(partition).or_insert_with(|| {
                (
                    Vec::new(),
                    WalBatch {
                        batch_id: batch.batch_id.clone(),
                        events: Vec::new(),
                        salts: Vec::new(),
                        leaf_version: batch.leaf_version,
                        // Its events are not one run of the seed's
                        // leaves: each keeps its salt.
                        salt_seed: Vec::new(),
                    },
                )
            });
            if salted {
                part.salts
                    .extend_from_slice(&batch.salts[i * salt_len..(i + 1) * salt_len]);
            }
            at.push(i);
            part.events.push(event);
        }
        groups
    }

    /// Publishes one partition's events: their first seq and ids (the
    /// first attempt's, for a retry).
    async fn publish_partition(
        &self,
        partition: u32,
        part: &WalBatch,
    ) -> Result<(u64, Vec<String>), ClusterError> {
        let body = part.encode_to_vec();
        let count = part.events.len() as u64;
        let message_id = format!("{}/{partition}", part.batch_id);
        let published = self
            .publish_record(
                partition,
                RecordKind::Batch,
                &body,
                count,
                Some(&message_id),
            )
            .await?;
        let ids = match published.stored_ids {
            Some(ids) => ids,
            None => part.events.iter().map(|e| e.id.clone()).collect(),
        };
        Ok((published.first_seq, ids))
    }

    /// Publishes one record of `kind` whose body is `body` and which holds
    /// `count` events into `partition`, at the partition's next seqs.
    /// With a `message_id`, a repeat within the duplicate window is
    /// answered from the first copy.
    pub async fn publish_record(
        &self,
        partition: u32,
        kind: RecordKind,
        body: &[u8],
        count: u64,
        message_id: Option<&str>,
    ) -> Result<Published, ClusterError> {
        let subject = self.layout.subject(partition);
        if record::HEADER_LEN + body.len() + 1024 > self.max_payload {
            return Err(self.remote(format!(
                "the events of partition {partition} take {} bytes, more than the servers' \
                 max_payload ({}) less room for headers: send smaller batches",
                body.len(),
                self.max_payload
            )));
        }
        let mut tip = self.tips[partition as usize].lock().await;
        for _ in 0..MAX_PUBLISH_ATTEMPTS {
            let current = match *tip {
                Some(current) => current,
                None => self.read_tip(&subject).await?,
            };
            // Unknown until the answer: a failure below leaves it unread.
            *tip = None;
            let mut payload = record::header(kind, current.next_seq).to_vec();
            payload.extend_from_slice(body);
            let seq_end = current.next_seq + count;
            let mut message = PublishMessage::build()
                .payload(payload.into())
                .expected_last_subject_sequence(current.stream_seq)
                .header(SEQ_END_HEADER, seq_end.to_string().as_str());
            if let Some(id) = message_id {
                message = message.message_id(id);
            }
            let ack = self
                .bounded("publish", async {
                    let ack = self.context.send_publish(subject.clone(), message).await?;
                    Ok::<_, async_nats::Error>(ack.await)
                })
                .await?;
            match ack {
                Ok(ack) if ack.duplicate => {
                    let id = message_id.unwrap_or_default();
                    let (first_seq, ids) = self.stored(ack.sequence, id).await?;
                    return Ok(Published {
                        stream_seq: ack.sequence,
                        first_seq,
                        stored_ids: Some(ids),
                    });
                }
                Ok(ack) => {
                    *tip = Some(Tip {
                        stream_seq: ack.sequence,
                        next_seq: seq_end,
                    });
                    return Ok(Published {
                        stream_seq: ack.sequence,
                        first_seq: current.next_seq,
                        stored_ids: None,
                    });
                }
                // Another node published first: read its message, go again.
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    self.conflicts.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(m::CLUSTER_PUBLISH_CONFLICTS, "partition" => partition.to_string())
                        .increment(1);
                }
                Err(e) => return Err(self.remote(format!("publish to {subject}: {e}"))),
            }
        }
        Err(self.remote(format!(
            "partition {partition} changed under each of {MAX_PUBLISH_ATTEMPTS} attempts \
             (too many nodes publishing to it at once): retry the batch"
        )))
    }

    /// The last message on `subject`, as a tip.
    async fn read_tip(&self, subject: &str) -> Result<Tip, ClusterError> {
        let got = self
            .bounded("read the partition's last message", async {
                Ok::<_, std::convert::Infallible>(
                    self.stream.direct_get_last_for_subject(subject).await,
                )
            })
            .await?;
        let message = match got {
            Ok(message) => message,
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => {
                return Ok(Tip {
                    stream_seq: 0,
                    next_seq: 0,
                })
            }
            Err(e) => return Err(self.remote(format!("read the last message of {subject}: {e}"))),
        };
        let next_seq = message
            .headers
            .get(SEQ_END_HEADER)
            .and_then(|v| v.as_str().parse::<u64>().ok())
            .ok_or_else(|| {
                self.remote(format!(
                    "the message at stream sequence {} on {subject} has no {SEQ_END_HEADER} \
                     header: something other than auditd publishes to the partition",
                    message.sequence
                ))
            })?;
        Ok(Tip {
            stream_seq: message.sequence,
            next_seq,
        })
    }

    /// What the message a duplicate was first stored as holds: its first
    /// seq and its events' ids.
    async fn stored(
        &self,
        stream_seq: u64,
        message_id: &str,
    ) -> Result<(u64, Vec<String>), ClusterError> {
        let got = self
            .bounded("read the first copy of a retried batch", async {
                Ok::<_, std::convert::Infallible>(self.stream.direct_get(stream_seq).await)
            })
            .await?;
        let message = got.map_err(|e| {
            self.remote(format!(
                "{message_id} was stored at stream sequence {stream_seq}, which cannot be \
                 read back ({e}): its seqs are unknown"
            ))
        })?;
        let name = format!("nats:{}", self.layout.jetstream.stream);
        let decoded = record::decode(Record {
            start: LogPosition::new(stream_seq - 1),
            end: LogPosition::new(stream_seq),
            payload: &message.payload,
            path: Path::new(&name),
            offset: stream_seq,
        })
        .map_err(|e| self.remote(e.to_string()))?;
        let LogRecord::Batch(stored) = decoded else {
            return Err(self.remote(format!(
                "{message_id} names stream sequence {stream_seq}, which is not a batch"
            )));
        };
        let ids = stored.batch.events.into_iter().map(|e| e.id).collect();
        Ok((stored.first_seq, ids))
    }

    /// `call`, bounded by the timeout; its own error or none in time is
    /// a remote error.
    async fn bounded<T, E: std::fmt::Display>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, ClusterError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.remote(format!("{what}: {e}"))),
            Err(_) => Err(self.remote(format!(
                "{what}: no answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    fn remote(&self, reason: String) -> ClusterError {
        self.layout.remote(reason)
    }
}
