//! The log on a NATS JetStream stream (`log.kind = "jetstream"`): each
//! record is one message on `log.jetstream.subject`, and an acknowledged
//! record is one JetStream has acknowledged, which with `replicas = 3`
//! means a quorum of servers has it on disk. The index stays local.
//!
//! **Positions.** A record's span ends at its message's stream sequence
//! and starts where the record before it ended: `[previous, seq]`. A
//! repair deletes the messages of records that were never acknowledged,
//! so the stream may skip sequences, but spans stay contiguous and a
//! position is always a record boundary, as the pipeline expects. The
//! lag budget therefore counts records (`log.jetstream.lag_budget_records`),
//! not bytes.
//!
//! **One writer.** Every publish carries `Nats-Expected-Last-Sequence`:
//! the sequence this log predicted for it, less one. A second daemon
//! writing to the same stream makes the publish fail, instead of two
//! writers interleaving their records. Each message also names its writer
//! (`Auditd-Writer`, a ULID per opened log), and a repair deletes only
//! its own writer's messages: it stops, naming the other writer's, rather
//! than delete what another daemon had acknowledged.
//!
//! **Calls.** The `Log` methods are blocking (one thread owns the log);
//! they run the client's futures on a runtime of their own (one worker),
//! so the connection is served while the WAL thread waits, and no call
//! ever needs the daemon's runtime. Every call is bounded by
//! `log.jetstream.timeout_ms`.

use std::future::{Future, IntoFuture};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::message::{PublishMessage, StreamMessage};
use async_nats::jetstream::{self, stream};
use async_nats::{ConnectOptions, ServerAddr};
use serde::{Deserialize, Serialize};

use super::{Log, LogPosition, LogReader, Record, ReplayReport, Span, WalError};

/// `[log.jetstream]`: where the stream is and how to reach it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct JetStreamConfig {
    /// NATS server URLs (`nats://host:4222`, `tls://host:4222`); the
    /// client fails over between them.
    pub servers: Vec<String>,
    /// The stream's name; created on first start when missing.
    pub stream: String,
    /// The subject the records are published on (the stream's subject).
    pub subject: String,
    /// Copies JetStream keeps (1, 3 or 5); used when the stream is
    /// created. An acknowledgement means a quorum of them has the record.
    pub replicas: usize,
    /// The stream's size limit; past it JetStream refuses new records
    /// (discard "new"), and Ingest answers UNAVAILABLE. `-1`: no limit.
    /// Indexed records are purged, so this bounds what waits for the index.
    pub max_bytes: i64,
    /// Bound on each call to NATS: connecting, a publish's
    /// acknowledgement, a read, a purge.
    pub timeout_ms: u64,
    /// Records the log may run ahead of the index before Ingest refuses
    /// with RESOURCE_EXHAUSTED (`wal.lag_budget_bytes` for this log).
    pub lag_budget_records: u64,
    /// A NATS credentials file (`.creds`: a user JWT and its NKey seed).
    pub credentials: Option<PathBuf>,
    /// PEM file of the CA that signed the servers' certificates; setting
    /// it requires TLS.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate and its key (PEM), for servers that verify
    /// clients.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        JetStreamConfig {
            servers: vec!["nats://127.0.0.1:4222".into()],
            stream: "AUDITD".into(),
            subject: "auditd.log".into(),
            replicas: 1,
            max_bytes: -1,
            timeout_ms: 5000,
            lag_budget_records: 20_000,
            credentials: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl JetStreamConfig {
    /// What is wrong with the settings, as `(field, reason)`.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.servers.is_empty() {
            return Err(("log.jetstream.servers", "name at least one server".into()));
        }
        let name_ok = !self.stream.is_empty()
            && self
                .stream
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !name_ok {
            return Err((
                "log.jetstream.stream",
                "letters, digits, '_' and '-' only".into(),
            ));
        }
        let subject_ok = !self.subject.is_empty()
            && self.subject.split('.').all(|token| {
                !token.is_empty()
                    && token
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            });
        if !subject_ok {
            return Err((
                "log.jetstream.subject",
                "dot-separated tokens of letters, digits, '_' and '-' (no wildcards)".into(),
            ));
        }
        if !matches!(self.replicas, 1 | 3 | 5) {
            return Err(("log.jetstream.replicas", "1, 3 or 5".into()));
        }
        if self.timeout_ms == 0 {
            return Err(("log.jetstream.timeout_ms", "must be at least 1".into()));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err((
                "log.jetstream.tls_cert",
                "set tls_cert and tls_key together".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// Connects to `config.servers` with its credentials and TLS settings,
/// every request bounded by `config.timeout_ms`: the client and its
/// JetStream context. The error says what failed, for a `Remote` error.
pub(crate) async fn connect(
    config: &JetStreamConfig,
) -> Result<(async_nats::Client, jetstream::Context), String> {
    let timeout = config.timeout();
    let mut options = ConnectOptions::new()
        .name("auditd")
        .connection_timeout(timeout)
        .request_timeout(Some(timeout));
    if let Some(path) = &config.credentials {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| format!("credentials file {}: {e}", path.display()))?;
    }
    if let Some(ca) = &config.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    let mut addrs = Vec::with_capacity(config.servers.len());
    for url in &config.servers {
        let addr: ServerAddr = url.parse().map_err(|e| format!("server {url:?}: {e}"))?;
        addrs.push(addr);
    }
    let servers = config.servers.join(", ");
    let client = options
        .connect(addrs)
        .await
        .map_err(|e| format!("cannot connect to {servers}: {e}"))?;
    let context = jetstream::ContextBuilder::new()
        .timeout(timeout)
        .build(client.clone());
    Ok((client, context))
}

/// The connection, shared by the log and its readers.
struct Remote {
    /// `Some` until dropped: a runtime cannot be dropped inside another
    /// one's task, so `Drop` shuts it down in the background instead.
    runtime: Option<tokio::runtime::Runtime>,
    stream: stream::Stream,
    context: jetstream::Context,
    subject: String,
    timeout: Duration,
    /// `nats:<stream>`, for errors and records' `path`.
    name: PathBuf,
    /// The largest message the servers take (their `max_payload`).
    max_payload: usize,
}

impl Drop for Remote {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Remote {
    fn connect(config: &JetStreamConfig) -> Result<Remote, WalError> {
        let name = PathBuf::from(format!("nats:{}", config.stream));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("auditd-nats")
            .enable_all()
            .build()
            .map_err(|e| WalError::io(&name, e))?;
        let timeout = config.timeout();
        let remote_error = |reason: String| WalError::Remote {
            stream: config.stream.clone(),
            reason,
        };
        let (client, context, stream) = runtime.block_on(async {
            let (client, context) = connect(config).await.map_err(remote_error)?;
            let stream = context
                .get_or_create_stream(stream::Config {
                    name: config.stream.clone(),
                    subjects: vec![config.subject.clone()],
                    storage: stream::StorageType::File,
                    num_replicas: config.replicas,
                    discard: stream::DiscardPolicy::New,
                    max_bytes: config.max_bytes,
                    allow_direct: true,
                    ..Default::default()
                })
                .await
                .map_err(|e| remote_error(format!("cannot open or create the stream: {e}")))?;
            Ok::<_, WalError>((client, context, stream))
        })?;
        let stream_config = &stream.cached_info().config;
        if !stream_config.subjects.contains(&config.subject) {
            return Err(remote_error(format!(
                "the stream exists without the subject {:?} (it has {:?})",
                config.subject, stream_config.subjects
            )));
        }
        if !stream_config.allow_direct {
            return Err(remote_error(
                "the stream exists without allow_direct, which reads need".into(),
            ));
        }
        if stream_config.num_replicas != config.replicas {
            tracing::warn!(
                stream = %config.stream,
                configured = config.replicas,
                actual = stream_config.num_replicas,
                "the stream already exists with another replica count; it is kept"
            );
        }
        let max_payload = client.server_info().max_payload;
        Ok(Remote {
            runtime: Some(runtime),
            stream,
            context,
            subject: config.subject.clone(),
            timeout,
            name,
            max_payload,
        })
    }

    /// Runs `call` on the log's runtime, bounded by the timeout.
    fn block<T, E: std::fmt::Display>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, WalError> {
        let runtime = self.runtime.as_ref().expect("the runtime lives until drop");
        match runtime.block_on(async { tokio::time::timeout(self.timeout, call).await }) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(self.error(format!("{what}: {error}"))),
            Err(_) => Err(self.error(format!(
                "{what}: no answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    fn error(&self, reason: String) -> WalError {
        WalError::Remote {
            stream: self.stream.cached_info().config.name.clone(),
            reason,
        }
    }

    /// The stream's first and last sequence.
    fn bounds(&self) -> Result<(u64, u64), WalError> {
        let info = self.block("stream info", self.stream.get_info())?;
        Ok((info.state.first_sequence, info.state.last_sequence))
    }

    /// The first message at or after `seq`, if any.
    fn next_at(&self, seq: u64) -> Result<Option<StreamMessage>, WalError> {
        let next = self
            .stream
            .direct_get_next_for_subject(self.subject.as_str(), Some(seq));
        self.found(seq, next)
    }

    /// The message at `seq`, if any.
    fn get(&self, seq: u64) -> Result<Option<StreamMessage>, WalError> {
        self.found(seq, self.stream.direct_get(seq))
    }

    /// A direct get's answer: "not found" is `None`.
    fn found(
        &self,
        seq: u64,
        get: impl Future<Output = Result<StreamMessage, stream::DirectGetError>>,
    ) -> Result<Option<StreamMessage>, WalError> {
        let runtime = self.runtime.as_ref().expect("the runtime lives until drop");
        let got = runtime.block_on(async { tokio::time::timeout(self.timeout, get).await });
        match got {
            Ok(Ok(message)) => Ok(Some(message)),
            Ok(Err(e)) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
            Ok(Err(e)) => Err(self.error(format!("read at sequence {seq}: {e}"))),
            Err(_) => Err(self.error(format!(
                "read at sequence {seq}: no answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    /// Hands every record in `[from, to)` to `visit`: the messages after
    /// sequence `from` up to sequence `to`, each spanning from the one
    /// before. Returns the end of the last record visited (`from` if none).
    fn read(
        &self,
        from: LogPosition,
        to: LogPosition,
        visit: &mut dyn FnMut(Record<'_>) -> Result<(), WalError>,
    ) -> Result<LogPosition, WalError> {
        let mut start = from;
        while start < to {
            let Some(message) = self.next_at(start.get() + 1)? else {
                break;
            };
            let end = LogPosition::new(message.sequence);
            if end > to {
                break;
            }
            visit(Record {
                start,
                end,
                payload: &message.payload,
                path: &self.name,
                offset: message.sequence,
            })?;
            start = end;
        }
        Ok(start)
    }
}

/// The header naming the log that published a message.
const WRITER_HEADER: &str = "Auditd-Writer";

/// The log on a JetStream stream.
pub struct JetStreamLog {
    remote: Arc<Remote>,
    /// This log's `Auditd-Writer`.
    writer: String,
    /// Appended records not yet published.
    buffered: Vec<(Span, Vec<u8>)>,
    /// The end of the last appended record.
    end: LogPosition,
    /// The sequence the next appended record's message will get: one past
    /// the stream's last sequence, plus what is buffered.
    next: u64,
}

impl JetStreamLog {
    /// Connects, creates the stream when it is missing, and hands every
    /// record after `from` to `visit`, in order.
    pub fn open(
        config: &JetStreamConfig,
        from: LogPosition,
        mut visit: impl FnMut(Record<'_>) -> Result<(), WalError>,
    ) -> Result<(JetStreamLog, ReplayReport), WalError> {
        let remote = Remote::connect(config)?;
        let (first, last) = remote.bounds()?;
        if from.get() > last {
            return Err(remote.error(format!(
                "the stream ends at sequence {last}, before the index's checkpoint {from}: \
                 it is not the stream this data directory was indexed from \
                 (was it deleted, or is log.jetstream.stream another one?)"
            )));
        }
        if last > 0 && from.get() + 1 < first {
            // Records after the checkpoint were purged: never by this
            // log, which purges only what is indexed.
            tracing::warn!(
                stream = %config.stream, first, checkpoint = %from,
                "the stream starts after the index's checkpoint; the records between were removed"
            );
        }
        let mut report = ReplayReport::default();
        let end = remote.read(from, LogPosition::new(last), &mut |record| {
            report.records += 1;
            report.bytes += record.payload.len() as u64;
            visit(record)
        })?;
        Ok((
            JetStreamLog {
                remote: Arc::new(remote),
                writer: ulid::Ulid::new().to_string(),
                buffered: Vec::new(),
                end,
                next: last + 1,
            },
            report,
        ))
    }

    /// Publishes every buffered record and waits for each acknowledgement:
    /// the stream must give each the sequence this log predicted.
    fn publish(&mut self) -> Result<(), WalError> {
        if self.buffered.is_empty() {
            return Ok(());
        }
        let remote = &self.remote;
        let records = std::mem::take(&mut self.buffered);
        let subject = remote.subject.clone();
        let context = remote.context.clone();
        let writer = self.writer.as_str();
        let published = remote.block("publish", async {
            let mut acks = Vec::with_capacity(records.len());
            for (span, payload) in records {
                let message = PublishMessage::build()
                    .payload(payload.into())
                    .header(WRITER_HEADER, writer)
                    .expected_last_sequence(span.end.get() - 1);
                acks.push((
                    span.end.get(),
                    context.send_publish(subject.clone(), message).await?,
                ));
            }
            let mut wrong = None;
            for (expected, ack) in acks {
                let ack = ack.await?;
                if ack.sequence != expected || ack.duplicate {
                    wrong.get_or_insert((expected, ack.sequence));
                }
            }
            Ok::<_, async_nats::Error>(wrong)
        })?;
        if let Some((expected, got)) = published {
            return Err(remote.error(format!(
                "a record expected at sequence {expected} was stored at {got}: \
                 does another daemon write to this stream?"
            )));
        }
        Ok(())
    }
}

impl Log for JetStreamLog {
    fn append(&mut self, parts: &[&[u8]]) -> Result<Span, WalError> {
        let span = Span {
            start: self.end,
            end: LogPosition::new(self.next),
        };
        self.next += 1;
        self.end = span.end;
        self.buffered.push((span, parts.concat()));
        Ok(span)
    }

    /// The same as `sync`: JetStream acknowledges a message once it is
    /// stored, and nothing less is worth waiting for.
    fn flush(&mut self) -> Result<(), WalError> {
        self.publish()
    }

    fn sync(&mut self) -> Result<(), WalError> {
        self.publish()
    }

    fn end(&self) -> LogPosition {
        self.end
    }

    /// Deletes the messages past `keep` (published, perhaps stored, never
    /// acknowledged), so that no replay finds them, and goes on after the
    /// stream's last sequence.
    fn repair(&mut self, keep: LogPosition) -> Result<(), WalError> {
        self.buffered.clear();
        let (_, last) = self.remote.bounds()?;
        if last < keep.get() {
            return Err(self.remote.error(format!(
                "the stream ends at sequence {last}, before the acknowledged end {keep}: \
                 it was deleted or replaced while auditd ran"
            )));
        }
        for seq in keep.get() + 1..=last {
            let stream = &self.remote.stream;
            let Some(message) = self.remote.get(seq)? else {
                continue; // already gone (a repair before this one)
            };
            let writer = message.headers.get(WRITER_HEADER).map(|v| v.as_str());
            if writer != Some(self.writer.as_str()) {
                return Err(self.remote.error(format!(
                    "sequence {seq} was written by another writer ({}): \
                     two daemons write to this stream; stop one of them",
                    writer.unwrap_or("not auditd")
                )));
            }
            self.remote.block(
                "delete an unacknowledged record",
                stream.delete_message(seq),
            )?;
        }
        self.end = keep;
        self.next = last + 1;
        Ok(())
    }

    fn probe(&self) -> Result<(), WalError> {
        self.remote.bounds().map(|_| ())
    }

    /// Purges the messages up to sequence `position` (every one indexed).
    fn trim(&mut self, position: LogPosition) -> Result<usize, WalError> {
        let stream = &self.remote.stream;
        let purged = self.remote.block(
            "purge",
            stream.purge().sequence(position.get() + 1).into_future(),
        )?;
        Ok(purged.purged as usize)
    }

    /// Nothing to do: `trim` purges message by message.
    fn retire_indexed(&mut self, _: LogPosition, _: u64) -> Result<bool, WalError> {
        Ok(false)
    }

    /// Nothing to do: `trim` purges message by message.
    fn start_piece(&mut self) -> Result<(), WalError> {
        Ok(())
    }

    /// The stream, as one piece.
    fn pieces(&self) -> usize {
        1
    }

    fn max_record_bytes(&self) -> Option<u64> {
        // Room for the message's headers.
        Some((self.remote.max_payload as u64).saturating_sub(1024))
    }

    fn reader(&self) -> Box<dyn LogReader> {
        Box::new(JetStreamReader {
            config: None,
            remote: Mutex::new(Some(self.remote.clone())),
        })
    }
}

/// Reads acknowledged records beside the log's owner: on the log's
/// connection, or on one of its own made at the first read (the indexer's
/// reader exists before the log is opened).
pub struct JetStreamReader {
    config: Option<JetStreamConfig>,
    remote: Mutex<Option<Arc<Remote>>>,
}

impl JetStreamReader {
    /// A reader that connects when it first reads.
    pub fn lazy(config: &JetStreamConfig) -> JetStreamReader {
        JetStreamReader {
            config: Some(config.clone()),
            remote: Mutex::new(None),
        }
    }

    fn remote(&self) -> Result<Arc<Remote>, WalError> {
        let mut remote = self.remote.lock().expect("reader lock");
        if let Some(remote) = &*remote {
            return Ok(remote.clone());
        }
        let config = self
            .config
            .as_ref()
            .expect("a reader without a log has a config");
        let connected = Arc::new(Remote::connect(config)?);
        *remote = Some(connected.clone());
        Ok(connected)
    }
}

impl LogReader for JetStreamReader {
    fn read(
        &self,
        from: LogPosition,
        to: LogPosition,
        visit: &mut dyn FnMut(Record<'_>) -> Result<(), WalError>,
    ) -> Result<(), WalError> {
        let reached = self.remote()?.read(from, to, visit)?;
        if reached < to {
            // The record ending at `to` was acknowledged, so it must be there.
            return Err(WalError::Trimmed(reached));
        }
        Ok(())
    }
}
