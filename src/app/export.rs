//! Export: every event a filter matches in one snapshot, in time order,
//! as lines of a format a SIEM reads, streamed in chunks the caller can
//! resume after.
//!
//! The snapshot is the first page's (the page token carries it), so an
//! export running while ingest goes on neither misses nor repeats an
//! event, and a resumed one continues the same snapshot. Memory is one
//! page and a few chunks, whatever the size of the result.
//!
//! On a node of several partitions the events come from the partitions'
//! owners, merged in the order of a fan-out search (`cluster::scan`): the
//! same order and the same snapshot promise, a page of each partition in
//! memory.

use std::sync::Arc;

use futures::Stream;

use super::outbox::{Outbox, Sent};
use super::read::{ReadService, Routes};
use super::trail;
use super::{AppError, Origin};
use crate::auth::Caller;
use crate::auth::ReadScope;
use crate::cluster::scan::MergedScan;
use crate::formats::Format;
use crate::proto::{AuditEvent, EventFilter, ExportChunk, ExportFormat, ExportRequest};
use crate::search::{HitPage, PageRequest};

/// Hits one index read finds (their place and sort key only: 32 bytes
/// each). Each read of a page starts from the cursor again, so pages much
/// smaller than this spent most of an export finding their place.
pub const EXPORT_PAGE_HITS: usize = 20_000;
/// Events read and formatted at a time: what an export holds in memory.
pub const EXPORT_SLICE_EVENTS: usize = 1_000;
/// A chunk ends after the event that takes it to this many bytes: whole
/// lines, so a chunk is at most this plus one event.
pub const EXPORT_CHUNK_BYTES: usize = 1 << 20;
/// Chunks waiting for a slow reader; when they are full the export stops
/// reading the index until the reader takes one.
pub const EXPORT_BUFFER_CHUNKS: usize = 4;

impl ReadService {
    /// Streams every event `request.filter` matches inside the caller's
    /// scope. A bad request fails before the stream starts; the trail
    /// event is stored when the stream ends, with the format and the
    /// number of events sent.
    pub async fn export<E>(
        &self,
        caller: Caller,
        origin: Origin,
        request: ExportRequest,
    ) -> Result<impl Stream<Item = Result<ExportChunk, E>> + Send + 'static, AppError>
    where
        E: From<AppError> + Send + 'static,
    {
        let filter = request.filter.clone().unwrap_or_default();
        let mut query = trail::filter_query(&filter);
        let format = format_of(request.format);
        if let Ok(format) = &format {
            query.insert("format".into(), format.name().into());
        }
        if !request.resume_token.is_empty() {
            query.insert("resume".into(), "true".into());
        }
        let first = async {
            let scope = caller.read_scope("export")?;
            let format = format?;
            let source = match self.partitioned {
                false => Source::Index(IndexPages {
                    filter: filter.clone(),
                    scope,
                    ascending: request.ascending,
                    token: request.resume_token.clone(),
                    page: None,
                    next: 0,
                }),
                true => {
                    self.check_filter(Some(&filter), &scope)?;
                    let routes = self.partition_routes()?;
                    let n = routes().len() as u32;
                    let (ascending, token) = (request.ascending, &request.resume_token);
                    let scan = MergedScan::new(
                        filter.clone(),
                        ascending,
                        scope,
                        n,
                        token,
                        "resume_token",
                    )?;
                    Source::Partitions { routes, scan }
                }
            };
            let mut reader = Slices {
                reads: self.clone(),
                format,
                header: match request.resume_token.is_empty() {
                    true => format.header(),
                    false => &[][..],
                },
                source,
            };
            // A bad filter or token fails here, before the stream starts.
            let first = reader.next_chunks().await?;
            Ok((reader, first))
        }
        .await;
        let (reader, first) = match first {
            Ok(ok) => ok,
            Err(error) => {
                return Err(self
                    .trail
                    .audited::<()>(&caller, trail::EXPORT, &origin, query, Err(error))
                    .await
                    .expect_err("an error stays an error"))
            }
        };
        let (outbox, stream) = Outbox::new(EXPORT_BUFFER_CHUNKS, &self.streams);
        let (tasks, trail) = (self.streams.tasks.clone(), self.trail.clone());
        self.streams.tasks.spawn(async move {
            let mut sent = 0u64;
            let mut resume = request.resume_token.clone();
            let mut chunks = first;
            let mut reader = reader;
            let outcome = 'chunks: loop {
                let Some(batch) = chunks else { break Ok(()) };
                // The next slice is read while this one goes out.
                let next = tasks.spawn(async move {
                    let next = reader.next_chunks().await;
                    (reader, next)
                });
                for chunk in batch {
                    let (events, token) = (chunk.events, chunk.resume_token.clone());
                    match outbox.send(chunk, &resume).await {
                        Ok(Sent::Queued) => {}
                        Ok(Sent::Gone) => {
                            query.insert("hung_up".into(), "true".into());
                            break 'chunks Ok(());
                        }
                        Err(error) => break 'chunks Err(error),
                    }
                    sent += events;
                    if !token.is_empty() {
                        resume = token;
                    }
                }
                match next.await {
                    Ok((r, Ok(c))) => (reader, chunks) = (r, c),
                    Ok((_, Err(error))) => break Err(error),
                    Err(error) => break Err(AppError::Internal(format!("export task: {error}"))),
                }
            };
            query.insert("events".into(), sent.to_string());
            let audited = trail
                .audited(&caller, trail::EXPORT, &origin, query, outcome)
                .await;
            outbox.finish(audited.err());
        });
        Ok(stream)
    }
}

/// Reads an export a slice of `EXPORT_SLICE_EVENTS` events at a time,
/// formatted on the blocking pool.
struct Slices {
    reads: ReadService,
    format: Format,
    /// What goes before the next chunk (the CSV header, once).
    header: &'static [u8],
    source: Source,
}

/// Where an export's events come from.
enum Source {
    /// This node's index.
    Index(IndexPages),
    /// The owners of the partitions (a node of several partitions): a
    /// page of each partition at a time, merged (`cluster::scan`).
    Partitions { routes: Routes, scan: MergedScan },
}

impl Slices {
    /// The next slice's chunks, or `None` past the last event.
    async fn next_chunks(&mut self) -> Result<Option<Vec<ExportChunk>>, AppError> {
        let (format, header) = (self.format, self.header);
        let chunks = match &mut self.source {
            Source::Index(pages) => pages.next_chunks(&self.reads, format, header).await?,
            Source::Partitions { routes, scan } => {
                let slice = scan.next(&routes(), EXPORT_SLICE_EVENTS).await?;
                match slice.events.is_empty() {
                    true => None,
                    false => Some(
                        tokio::task::spawn_blocking(move || {
                            chunks(&slice.events, |i| slice.token_after(i), format, header)
                        })
                        .await
                        .map_err(|e| AppError::Internal(format!("export task: {e}")))?,
                    ),
                }
            }
        };
        if chunks.is_some() {
            self.header = &[][..];
            return Ok(chunks);
        }
        // At the end: a last chunk holding only a header not sent yet (an
        // empty CSV export), else nothing.
        let header = std::mem::take(&mut self.header);
        Ok((!header.is_empty()).then(|| {
            vec![ExportChunk {
                data: header.to_vec(),
                events: 0,
                resume_token: String::new(),
            }]
        }))
    }
}

/// An export from this node's index: a page of `EXPORT_PAGE_HITS` hits,
/// then its events a slice at a time.
struct IndexPages {
    filter: EventFilter,
    scope: ReadScope,
    ascending: bool,
    /// Where the next page starts.
    token: String,
    page: Option<Arc<HitPage>>,
    /// The page's next hit to read.
    next: usize,
}

impl IndexPages {
    /// The next slice's chunks, `header` first, or `None` past the last
    /// event.
    async fn next_chunks(
        &mut self,
        reads: &ReadService,
        format: Format,
        header: &'static [u8],
    ) -> Result<Option<Vec<ExportChunk>>, AppError> {
        let page = match self.page.take() {
            Some(page) if self.next < page.len() => page,
            Some(page) if !page.more => return Ok(None),
            _ => {
                let page = Arc::new(self.read_page(reads).await?);
                self.next = 0;
                if page.len() == 0 {
                    return Ok(None);
                }
                page
            }
        };
        let range = self.next..page.len().min(self.next + EXPORT_SLICE_EVENTS);
        self.next = range.end;
        let slice = page.clone();
        let chunks = reads
            .blocking(move |s| {
                let events = s.events(&slice, range)?;
                let token_after = |i: usize| slice.token_after(&events[i]);
                Ok(chunks(&events, token_after, format, header))
            })
            .await?;
        if let Some(token) = chunks.iter().rev().find(|c| !c.resume_token.is_empty()) {
            self.token = token.resume_token.clone();
        }
        self.page = Some(page);
        Ok(Some(chunks))
    }

    async fn read_page(&self, reads: &ReadService) -> Result<HitPage, AppError> {
        let (filter, scope) = (self.filter.clone(), self.scope.clone());
        let (ascending, token) = (self.ascending, self.token.clone());
        reads
            .blocking(move |s| {
                s.page(
                    &filter,
                    &scope,
                    &PageRequest {
                        limit: EXPORT_PAGE_HITS,
                        ascending,
                        token: &token,
                        token_field: "resume_token",
                        count_up_to: 0,
                    },
                )
            })
            .await
    }
}

/// The export format a request names.
pub(super) fn format_of(value: i32) -> Result<Format, AppError> {
    match ExportFormat::try_from(value) {
        Ok(ExportFormat::Ndjson) => Ok(Format::Ndjson),
        Ok(ExportFormat::Ocsf) => Ok(Format::Ocsf),
        Ok(ExportFormat::Ecs) => Ok(Format::Ecs),
        Ok(ExportFormat::Cef) => Ok(Format::Cef),
        Ok(ExportFormat::Csv) => Ok(Format::Csv),
        Err(_) => Err(AppError::Invalid {
            field: "format",
            reason: format!("unknown value {value}"),
        }),
    }
}

/// `events` as chunks of whole lines, `header` first; each chunk carries
/// the token that resumes right after its last event (`token_after` its
/// index).
fn chunks(
    events: &[AuditEvent],
    token_after: impl Fn(usize) -> String,
    format: Format,
    header: &[u8],
) -> Vec<ExportChunk> {
    let mut out = Vec::new();
    let mut data = header.to_vec();
    let mut count = 0;
    for (i, event) in events.iter().enumerate() {
        format.write(event, &mut data);
        count += 1;
        if data.len() >= EXPORT_CHUNK_BYTES || i + 1 == events.len() {
            out.push(ExportChunk {
                data: std::mem::take(&mut data),
                events: std::mem::take(&mut count),
                resume_token: token_after(i),
            });
        }
    }
    out
}
