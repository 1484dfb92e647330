//! Reading one partition as its records arrive: what a partition's
//! indexer runs on (docs/cluster.md, item 5a).
//!
//! A [`Follower`] holds an ordered consumer on `<prefix>.<p>`, starting
//! after a stream sequence (the index's checkpoint), and hands back each
//! record with its span in the partition's positions (`[previous stream
//! sequence on the subject, its own]`, as the JetStream log numbers
//! them). It checks what the publishers promise: every batch starts at
//! the seq the one before it ended (`Auditd-Seq-End`), so a gap, a
//! repeat, or a message auditd did not write stops the follower with an
//! error naming the stream sequence (`ClusterError::Corrupt`), instead of
//! being indexed. A lost connection or consumer is `Remote`: open a new
//! follower at [`Follower::resume`].
//!
//! Bounded: the consumer pulls at most [`FOLLOW_BATCH`] messages at a
//! time (each at most the servers' `max_payload`), and nothing else is
//! buffered.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::stream;
use futures::StreamExt;

use super::publish::SEQ_END_HEADER;
use super::{ClusterError, Layout};
use crate::metrics as m;
use crate::record::{self, LogRecord};
use crate::wal::{LogPosition, Record};

/// Messages the consumer pulls at a time.
pub const FOLLOW_BATCH: i64 = 16;

/// Where a follower starts: after the record ending at `after` (a stream
/// sequence; `START` for the partition's beginning), whose successor
/// holds seq `next_seq`.
#[derive(Debug, Clone, Copy)]
pub struct Resume {
    pub after: LogPosition,
    pub next_seq: u64,
}

/// Reads partition `p` in order.
pub struct Follower {
    messages: pull::Ordered,
    partition: u32,
    /// The end of the last record handed back.
    end: LogPosition,
    /// The seq the next batch must start at.
    next_seq: u64,
    name: PathBuf,
    stream_name: String,
}

impl Follower {
    /// Follows `partition` of `layout`'s stream from `resume`.
    pub async fn open(
        stream: &stream::Stream,
        layout: &Layout,
        partition: u32,
        resume: Resume,
    ) -> Result<Follower, ClusterError> {
        let stream_name = layout.jetstream.stream.clone();
        let remote = |reason: String| ClusterError::Remote {
            stream: stream_name.clone(),
            reason,
        };
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: layout.subject(partition),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: resume.after.get() + 1,
                },
                max_batch: FOLLOW_BATCH,
                ..Default::default()
            })
            .await
            .map_err(|e| remote(format!("follow partition {partition}: {e}")))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| remote(format!("follow partition {partition}: {e}")))?;
        Ok(Follower {
            messages,
            partition,
            end: resume.after,
            next_seq: resume.next_seq,
            name: PathBuf::from(format!(
                "nats:{}/{}",
                layout.jetstream.stream,
                layout.subject(partition)
            )),
            stream_name,
        })
    }

    /// Where the next record starts.
    pub fn resume(&self) -> Resume {
        Resume {
            after: self.end,
            next_seq: self.next_seq,
        }
    }

    /// The next record, waiting up to `wait` for one (`None`: none came).
    pub async fn next(&mut self, wait: Duration) -> Result<Option<LogRecord>, ClusterError> {
        let message = match tokio::time::timeout(wait, self.messages.next()).await {
            Err(_) => return Ok(None),
            Ok(None) => return Err(self.remote("the consumer ended".into())),
            Ok(Some(Err(e))) => return Err(self.remote(format!("follow: {e}"))),
            Ok(Some(Ok(message))) => message,
        };
        let info = message
            .info()
            .map_err(|e| self.corrupt(format!("a message without its metadata: {e}")))?;
        let stream_seq = info.stream_sequence;
        metrics::gauge!(m::CLUSTER_FOLLOW_LAG, "partition" => self.partition.to_string())
            .set(info.pending as f64);
        let seq_end = message
            .headers
            .as_ref()
            .and_then(|h| h.get(SEQ_END_HEADER))
            .and_then(|v| v.as_str().parse::<u64>().ok());
        let Some(seq_end) = seq_end else {
            return Err(self.corrupt(format!(
                "stream sequence {stream_seq} on partition {} has no {SEQ_END_HEADER} header: \
                 something other than auditd publishes to the partition",
                self.partition
            )));
        };
        let decoded = record::decode(Record {
            start: self.end,
            end: LogPosition::new(stream_seq),
            payload: &message.payload,
            path: &self.name,
            offset: stream_seq,
        })
        .map_err(|e| self.corrupt(e.to_string()))?;
        let (first_seq, count) = match &decoded {
            LogRecord::Batch(batch) => (batch.first_seq, batch.batch.events.len() as u64),
            LogRecord::Retention(..) | LogRecord::Skip(_) => (self.next_seq, 0),
        };
        if first_seq != self.next_seq || seq_end != first_seq + count {
            return Err(self.corrupt(format!(
                "stream sequence {stream_seq} on partition {} holds seqs {first_seq}..{seq_end} \
                 ({count} events) where {} was next: a gap or a repeat; stopped before it",
                self.partition, self.next_seq
            )));
        }
        self.end = LogPosition::new(stream_seq);
        self.next_seq = seq_end;
        Ok(Some(decoded))
    }

    fn corrupt(&self, reason: String) -> ClusterError {
        ClusterError::Corrupt {
            stream: self.stream_name.clone(),
            reason,
        }
    }

    fn remote(&self, reason: String) -> ClusterError {
        ClusterError::Remote {
            stream: self.stream_name.clone(),
            reason,
        }
    }
}
