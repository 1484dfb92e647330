//! The data subject's rights. Access (GDPR Art. 15): every event of one
//! subject, in an Export format, each with its receipt against one signed
//! checkpoint, then a report a person can read. Erasure (Art. 17): its
//! personal fields erased or pseudonymised everywhere under the data
//! directory (`erasure`), every proof intact.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;

use super::integrity::{receipt_in, to_proto};
use super::outbox::{Outbox, Sent};
use super::read::ReadService;
use super::trail::{self, TRAIL_TYPE};
use super::{AppError, Origin};
use crate::auth::{Caller, ReadScope, StoredKind};
use crate::erasure::PseudonymKey;
use crate::formats::{rfc3339, Format};
use crate::ingest::{now_micros, IngestService};
use crate::integrity::checkpointer::{Integrity, SignedCheckpoint};
use crate::proto::{
    AuditEvent, EraseSubjectRequest, EraseSubjectResponse, ErasureMode, EventFilter,
    ExportSubjectRequest, KeptEvents, SubjectEventProof, SubjectExportChunk,
};
use crate::retention::record::EraseRequest;
use crate::retention::{Applied, Change, Hold, RetentionRecord};
use crate::schema::timestamp_micros;
use crate::search::{HitPage, PageRequest};
use std::sync::atomic::Ordering;

/// Events read, proven and formatted at a time.
pub const SUBJECT_SLICE_EVENTS: usize = 1_000;
/// Hits one index read finds.
pub const SUBJECT_PAGE_HITS: usize = 20_000;
/// Chunks waiting for a slow reader.
pub const SUBJECT_BUFFER_CHUNKS: usize = 4;
/// Rows of each table of the report at most (the rest is summed up).
pub const MAX_REPORT_ROWS: usize = 1_000;
/// How long an export waits for a checkpoint that covers every event.
pub(super) const CHECKPOINT_WAIT: Duration = Duration::from_secs(10);

/// How long an erasure waits for what it needs of the pipeline: every
/// acknowledged event searchable before it looks, and the log trimmed
/// below it after.
const ERASURE_WAIT: Duration = Duration::from_secs(60);

pub struct SubjectService {
    pub(super) reads: Arc<ReadService>,
    pub(super) integrity: Option<Arc<Integrity>>,
    ingest: Arc<IngestService>,
}

impl SubjectService {
    pub fn new(
        reads: Arc<ReadService>,
        integrity: Option<Arc<Integrity>>,
        ingest: Arc<IngestService>,
    ) -> Self {
        SubjectService {
            reads,
            integrity,
            ingest,
        }
    }

    /// Erases or pseudonymises the personal fields of every event of
    /// `request.subject` acknowledged before the call, and the subject's
    /// name in the `query` of the read trail's events. Admin only. The
    /// trail event holds the request id and the counts, not the subject.
    pub async fn erase(
        &self,
        caller: &Caller,
        origin: &Origin,
        request: EraseSubjectRequest,
    ) -> Result<EraseSubjectResponse, AppError> {
        let id = ulid::Ulid::new().to_string();
        let mut query = BTreeMap::from([
            ("request_id".to_owned(), id.clone()),
            ("reason".to_owned(), request.reason.clone()),
        ]);
        let result = self.erase_now(caller, &id, &request).await;
        if let Ok(done) = &result {
            query.insert("mode".into(), request.mode.to_string());
            query.insert("erased".into(), done.erased.to_string());
            query.insert("references".into(), done.references.to_string());
            let kept: u64 = done.kept.iter().map(|k| k.events).sum();
            query.insert("kept".into(), kept.to_string());
        }
        self.reads
            .trail
            .audited(caller, trail::SUBJECT_ERASE, origin, query, result)
            .await
    }

    async fn erase_now(
        &self,
        caller: &Caller,
        id: &str,
        request: &EraseSubjectRequest,
    ) -> Result<EraseSubjectResponse, AppError> {
        caller.require_admin("erase a subject's personal data")?;
        if self.ingest.in_cluster() {
            return Err(AppError::NotInCluster(
                "erasing a subject",
                "the stream every node reads would keep the erased events",
            ));
        }
        let subject = request.subject.clone();
        if subject.is_empty() {
            return Err(AppError::Invalid {
                field: "subject",
                reason: "required".into(),
            });
        }
        let mode = ErasureMode::try_from(request.mode).map_err(|_| AppError::Invalid {
            field: "mode",
            reason: format!("unknown value {}", request.mode),
        })?;
        let retention = self.ingest.retention().clone();
        // Everything acknowledged so far is searchable, so the search
        // below finds all of it.
        tokio::time::timeout(ERASURE_WAIT, self.ingest.wait_all_searchable())
            .await
            .map_err(|_| AppError::Internal("the index did not catch up with the log".into()))??;
        let holds = retention.holds();
        let (who, what) = (subject.clone(), naming(&subject));
        let (events, references, held) = self
            .reads
            .blocking(move |s| {
                let held = holds_on(&s, &who, &holds)?;
                Ok((s.subject_seqs(&who)?, s.filter_seqs(&what)?, held))
            })
            .await?;
        if let Some(hold) = held {
            return Err(AppError::BelowFloor(format!(
                "legal hold {} ({}) covers events of this subject; release it first",
                hold.id, hold.reason
            )));
        }
        let scrub_holds: Vec<String> = retention
            .state()
            .holds
            .iter()
            .filter(|h| h.subject == subject)
            .map(|h| h.id.clone())
            .collect();
        // Even when the index holds nothing of the subject, the record is
        // written: older log records (of a day retention dropped since)
        // may still hold its events, and go with the segments below it.
        if mode == ErasureMode::Pseudonymise {
            PseudonymKey::load_or_create(retention.data_dir())
                .map_err(|e| AppError::Internal(format!("pseudonym.key: {e}")))?;
        }
        let mut days: Vec<i64> = events.iter().chain(&references).map(|(d, _)| *d).collect();
        days.sort_unstable();
        days.dedup();
        let seqs = |found: &[(i64, u64)]| {
            let mut seqs: Vec<u64> = found.iter().map(|(_, s)| *s).collect();
            crate::erasure::flatten(&crate::retention::runs(&mut seqs))
        };
        let settings = retention.erasure();
        let record = RetentionRecord {
            id: id.to_owned(),
            at_micros: now_micros(),
            change: Some(Change::Erase(EraseRequest {
                mode: mode as u32,
                fields: u32::from(settings.fields),
                days,
                seq_runs: seqs(&events),
                keep_type_prefixes: settings.keep_type_prefixes.clone(),
                reference_runs: seqs(&references),
                scrub_holds,
            })),
        };
        // The saved dense terms (`<data_dir>/dense-terms.json`) may name
        // the subject: rewritten without it before the erasure, and again
        // after, for a set a search made meanwhile.
        self.forget_dense_terms_of(&subject)?;
        let (applied, span) = self.ingest.change_retention(record).await?;
        let Applied::Erased(done) = applied else {
            return Err(AppError::Internal(format!("erasure: {applied:?}")));
        };
        self.forget_dense_terms_of(&subject)?;
        // Every record before the erasure's goes from the log: the WAL
        // thread started a new segment for it.
        let positions = self.ingest.positions().clone();
        let trimmed = async {
            while positions.trimmed.load(Ordering::Acquire) < span.start.get() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(ERASURE_WAIT, trimmed).await.map_err(|_| {
            AppError::Internal(
                "erased in the index, but the write-ahead log still holds older records;                  they go once the index and the Merkle tree pass the erasure"
                    .into(),
            )
        })?;
        let damaged = remove_damaged(retention.data_dir())
            .map_err(|e| AppError::Internal(format!("damaged/: {e}")))?;
        Ok(EraseSubjectResponse {
            request_id: id.to_owned(),
            erased: done.erased,
            references: done.references,
            kept: done
                .kept
                .into_iter()
                .map(|(type_prefix, events)| KeptEvents {
                    type_prefix,
                    events,
                })
                .collect(),
            damaged_files_removed: damaged,
        })
    }

    fn forget_dense_terms_of(&self, subject: &str) -> Result<(), AppError> {
        let searcher = self.reads.searcher();
        searcher
            .forget_dense_terms_of(subject)
            .map_err(|e| AppError::Internal(format!("dense-terms.json: {e}")))
    }

    /// Streams the access package of `request.subject`: the checkpoint,
    /// the events with their receipts, then the report. An admin token,
    /// or the subject's own personal token.
    pub async fn export<E>(
        &self,
        caller: Caller,
        origin: Origin,
        request: ExportSubjectRequest,
    ) -> Result<impl Stream<Item = Result<SubjectExportChunk, E>> + Send + 'static, AppError>
    where
        E: From<AppError> + Send + 'static,
    {
        let subject = request.subject.clone();
        let mut query = BTreeMap::from([("subjects".to_owned(), subject.clone())]);
        let first = async {
            if subject.is_empty() {
                return Err(AppError::Invalid {
                    field: "subject",
                    reason: "required".into(),
                });
            }
            let own = caller.kind == StoredKind::Personal && caller.subject == subject;
            if !own {
                caller.require_admin("export another subject's events")?;
            }
            let format = super::export::format_of(request.format)?;
            query.insert("format".into(), format.name().into());
            match self.reads.partitioned {
                true => Ok(Packing::Spread(Box::new(
                    self.spread(&subject, format).await?,
                ))),
                false => Ok(Packing::Here(Package {
                    reads: self.reads.clone(),
                    integrity: self.integrity.clone(),
                    checkpoint: self.checkpoint_covering_all().await?,
                    subject: subject.clone(),
                    format,
                })),
            }
        }
        .await;
        let packing = match first {
            Ok(ok) => ok,
            Err(error) => {
                return Err(self
                    .reads
                    .trail
                    .audited::<()>(&caller, trail::SUBJECT_EXPORT, &origin, query, Err(error))
                    .await
                    .expect_err("an error stays an error"))
            }
        };
        let (outbox, stream) = Outbox::new(SUBJECT_BUFFER_CHUNKS, &self.reads.streams);
        let trail = self.reads.trail.clone();
        self.reads.streams.tasks.spawn(async move {
            let outcome = match packing {
                Packing::Here(package) => package.send(&outbox).await,
                Packing::Spread(spread) => spread.send(&outbox).await,
            };
            if let Ok(events) = &outcome {
                query.insert("events".into(), events.to_string());
            }
            let audited = trail
                .audited(&caller, trail::SUBJECT_EXPORT, &origin, query, outcome)
                .await;
            outbox.finish(audited.err());
        });
        Ok(stream)
    }

    /// The latest checkpoint once it holds every searchable event (`None`
    /// when integrity is off).
    async fn checkpoint_covering_all(&self) -> Result<Option<SignedCheckpoint>, AppError> {
        let Some(integrity) = &self.integrity else {
            return Ok(None);
        };
        let searchable = *self.reads.searcher().searchable().borrow();
        let deadline = tokio::time::Instant::now() + CHECKPOINT_WAIT;
        loop {
            let latest = integrity.checkpoints.latest();
            if let Some(checkpoint) = latest.as_ref().filter(|c| c.size >= searchable) {
                return Ok(Some(checkpoint.clone()));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(AppError::NotCheckpointed {
                    seq: searchable.saturating_sub(1),
                    latest: latest.map_or(0, |c| c.size),
                    retry_after: Duration::from_secs(1),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// How a package is made: from this node's index and tree, or from the
/// owner of the subject's partition (`subject_partitions`).
enum Packing {
    Here(Package),
    Spread(Box<super::subject_partitions::Spread>),
}

/// One export under way.
struct Package {
    reads: Arc<ReadService>,
    integrity: Option<Arc<Integrity>>,
    checkpoint: Option<SignedCheckpoint>,
    subject: String,
    format: Format,
}

/// What the report counts as the events go by.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) events: u64,
    first: Option<i64>,
    last: Option<i64>,
    by_action: BTreeMap<String, u64>,
    by_access: BTreeMap<String, u64>,
}

impl Tally {
    pub(super) fn add(&mut self, event: &AuditEvent) {
        let time = timestamp_micros(event.time.as_ref());
        self.events += 1;
        self.first = Some(self.first.map_or(time, |t| t.min(time)));
        self.last = Some(self.last.map_or(time, |t| t.max(time)));
        count(&mut self.by_action, &event.action);
        count(&mut self.by_access, &event.access_id);
    }
}

/// A package's first chunk: the checkpoint its receipts are against,
/// and the format's header.
pub(super) fn opening_chunk(
    checkpoint: Option<&SignedCheckpoint>,
    format: Format,
) -> SubjectExportChunk {
    SubjectExportChunk {
        checkpoint: checkpoint.cloned().map(to_proto),
        data: format.header().to_vec(),
        ..Default::default()
    }
}

/// A package's last chunk: the report.
pub(super) fn report_chunk(
    subject: &str,
    tally: &Tally,
    checkpoint: Option<&SignedCheckpoint>,
    readers: &(Vec<AuditEvent>, u64),
) -> SubjectExportChunk {
    SubjectExportChunk {
        report_html: report(subject, tally, checkpoint, readers),
        ..Default::default()
    }
}

/// Counts `key`, or under "(others)" once the table is full.
fn count(table: &mut BTreeMap<String, u64>, key: &str) {
    let key = match table.contains_key(key) || table.len() < MAX_REPORT_ROWS {
        true => key,
        false => "(others)",
    };
    *table.entry(key.to_owned()).or_default() += 1;
}

impl Package {
    /// Sends the whole package; the number of events sent.
    async fn send<E: From<AppError> + Send + 'static>(
        self,
        outbox: &Outbox<SubjectExportChunk, E>,
    ) -> Result<u64, AppError> {
        let mut tally = Tally::default();
        let first = opening_chunk(self.checkpoint.as_ref(), self.format);
        if let Sent::Gone = outbox.send(first, "").await? {
            return Ok(0);
        }
        let filter = EventFilter {
            subjects: vec![self.subject.clone()],
            ..Default::default()
        };
        let mut token = String::new();
        loop {
            let (page_filter, page_token) = (filter.clone(), token.clone());
            let page = Arc::new(
                self.reads
                    .blocking(move |s| {
                        s.page(
                            &page_filter,
                            &ReadScope::All,
                            &PageRequest {
                                limit: SUBJECT_PAGE_HITS,
                                ascending: true,
                                token: &page_token,
                                token_field: "resume_token",
                                count_up_to: 0,
                            },
                        )
                    })
                    .await?,
            );
            for start in (0..page.len()).step_by(SUBJECT_SLICE_EVENTS) {
                let range = start..page.len().min(start + SUBJECT_SLICE_EVENTS);
                let (chunk, events) = self.slice(&page, range).await?;
                for event in &events {
                    tally.add(event);
                }
                if let Some(last) = events.last() {
                    token = page.token_after(last);
                }
                if let Sent::Gone = outbox.send(chunk, "").await? {
                    return Ok(tally.events);
                }
            }
            if !page.more || page.len() == 0 {
                break;
            }
        }
        let readers = self.readers().await?;
        let last = report_chunk(&self.subject, &tally, self.checkpoint.as_ref(), &readers);
        outbox.send(last, "").await?;
        Ok(tally.events)
    }

    /// One slice of a page: its lines, its receipts, and its events.
    async fn slice(
        &self,
        page: &Arc<HitPage>,
        range: std::ops::Range<usize>,
    ) -> Result<(SubjectExportChunk, Vec<AuditEvent>), AppError> {
        let (page, format) = (page.clone(), self.format);
        let proving = self.integrity.clone().zip(self.checkpoint.clone());
        let stored = self
            .reads
            .blocking(move |s| s.stored_events(&page, range))
            .await?;
        tokio::task::spawn_blocking(move || {
            let snapshot = proving.as_ref().map(|(i, _)| i.tree.snapshot());
            let mut chunk = SubjectExportChunk::default();
            let mut events = Vec::with_capacity(stored.len());
            for (event, salt) in stored {
                format.write(&event, &mut chunk.data);
                let tlog_proof = match (&snapshot, &proving) {
                    (Some(snapshot), Some((_, checkpoint))) if event.seq < checkpoint.size => {
                        receipt_in(snapshot, checkpoint, &event, salt)?.to_text()
                    }
                    _ => String::new(),
                };
                chunk.proofs.push(SubjectEventProof {
                    id: event.id.clone(),
                    seq: event.seq,
                    tlog_proof,
                });
                events.push(event);
            }
            chunk.events = events.len() as u64;
            Ok((chunk, events))
        })
        .await
        .map_err(|e| AppError::Internal(format!("subject export task: {e}")))?
    }

    /// The trail of reads that named this subject, newest first (at most
    /// `MAX_REPORT_ROWS`), and how many there were.
    async fn readers(&self) -> Result<(Vec<AuditEvent>, u64), AppError> {
        let filter = naming(&self.subject);
        self.reads
            .blocking(move |s| {
                let page = s.page(
                    &filter,
                    &ReadScope::All,
                    &PageRequest {
                        limit: MAX_REPORT_ROWS,
                        ascending: false,
                        token: "",
                        token_field: "query",
                        count_up_to: u64::MAX,
                    },
                )?;
                let events = s.events(&page, 0..page.len())?;
                Ok((events, page.total))
            })
            .await
    }
}

/// The trail events whose `query` names `subject`: searches and exports
/// for it, holds on it.
pub(super) fn naming(subject: &str) -> EventFilter {
    let quoted = subject.replace('\\', "\\\\").replace('"', "\\\"");
    EventFilter {
        types: vec![TRAIL_TYPE.to_owned()],
        query: format!("query.subjects:\"{quoted}\" OR query.subject:\"{quoted}\""),
        ..Default::default()
    }
}

/// The first hold in force that covers an event of `subject`.
fn holds_on(
    searcher: &crate::search::Searcher,
    subject: &str,
    holds: &[Hold],
) -> Result<Option<Hold>, crate::search::SearchError> {
    for hold in holds {
        if hold.subject == subject {
            return Ok(Some(hold.clone()));
        }
        // Someone else's hold, or one on a subject alone: not this one's.
        if !hold.subject.is_empty() || hold.query.is_empty() {
            continue;
        }
        let filter = EventFilter {
            subjects: vec![subject.to_owned()],
            query: hold.query.clone(),
            ..Default::default()
        };
        if !searcher.filter_seqs(&filter)?.is_empty() {
            return Ok(Some(hold.clone()));
        }
    }
    Ok(None)
}

/// Removes every file under `<data_dir>/damaged/` (what `auditd recover`
/// moved aside may hold erased values); how many went.
fn remove_damaged(data_dir: &std::path::Path) -> std::io::Result<u64> {
    let dir = crate::datadir::DataDir::new(data_dir).damaged();
    let mut removed = 0;
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        removed += count_files(&path)?;
        match path.is_dir() {
            true => std::fs::remove_dir_all(&path)?,
            false => std::fs::remove_file(&path)?,
        }
    }
    std::fs::File::open(&dir)?.sync_all()?;
    Ok(removed)
}

fn count_files(path: &std::path::Path) -> std::io::Result<u64> {
    if !path.is_dir() {
        return Ok(1);
    }
    let mut n = 0;
    for entry in std::fs::read_dir(path)? {
        n += count_files(&entry?.path())?;
    }
    Ok(n)
}

/// The report: the period, counts by action and by access, who read the
/// data, as one self-contained HTML page (no script, no outside resource).
fn report(
    subject: &str,
    tally: &Tally,
    checkpoint: Option<&SignedCheckpoint>,
    (readers, read_total): &(Vec<AuditEvent>, u64),
) -> String {
    let mut html = String::from(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <style>body{font-family:sans-serif;max-width:60em;margin:2em auto}\
         table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:.2em .6em;text-align:left}\
         </style>",
    );
    let subject = escape(subject);
    html += &format!("<title>Audit report: {subject}</title></head><body>\n");
    html += &format!("<h1>What was done with the data of {subject}</h1>\n");
    let period = match (tally.first, tally.last) {
        (Some(first), Some(last)) => format!("from {} to {}", rfc3339(first), rfc3339(last)),
        _ => "none".into(),
    };
    html += &format!(
        "<p>{} event(s) whose subject is {subject}, {period}.</p>\n",
        tally.events
    );
    match checkpoint {
        Some(c) => {
            html += &format!(
                "<p>Each event comes with a receipt: its inclusion proof in the tree of {} \
                 events signed by <code>{}</code> (checkpoint of {}). Check them with \
                 <code>auditctl verify-receipt</code> and the log's verifier key.</p>\n",
                c.size,
                escape(c.note.lines().next().unwrap_or("")),
                rfc3339(c.time)
            )
        }
        None => {
            html +=
                "<p>Integrity is off on this deployment: the events come without receipts.</p>\n"
        }
    }
    for (title, column, table) in [
        ("By action", "Action", &tally.by_action),
        ("By access", "Access", &tally.by_access),
    ] {
        html += &format!("<h2>{title}</h2>\n<table><tr><th>{column}</th><th>Events</th></tr>\n");
        let mut rows: Vec<_> = table.iter().collect();
        rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (key, n) in rows {
            html += &format!("<tr><td>{}</td><td>{n}</td></tr>\n", escape(key));
        }
        html += "</table>\n";
    }
    html += &format!(
        "<h2>Who read this data</h2>\n<p>{read_total} read(s) of the audit log named this subject \
         (searches, tails, exports).</p>\n<table><tr><th>Time</th><th>Token</th><th>Access</th>\
         <th>What</th><th>From</th></tr>\n"
    );
    for read in readers {
        let source = read.source.as_ref();
        html += &format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            rfc3339(timestamp_micros(read.time.as_ref())),
            escape(read.attributes.get("token_id").map_or("", String::as_str)),
            escape(&read.access_id),
            escape(&read.action),
            escape(&source.map_or(String::new(), |s| format!("{} {}", s.name, s.ip))),
        );
    }
    html += "</table>\n</body></html>\n";
    html
}

/// Text as HTML character data or an attribute value.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_escapes_what_it_shows() {
        let mut tally = Tally::default();
        tally.add(&AuditEvent {
            action: "<script>".into(),
            access_id: "a&b".into(),
            ..Default::default()
        });
        let html = report("\"bob\"", &tally, None, &(Vec::new(), 0));
        assert!(html.contains("&lt;script&gt;"));
        assert!(html.contains("a&amp;b"));
        assert!(html.contains("&quot;bob&quot;"));
        assert!(!html.contains("<script>"));
    }
}
