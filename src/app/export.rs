//! Export: every event a filter matches in one snapshot, in time order,
//! as lines of a format a SIEM reads, streamed in chunks the caller can
//! resume after.
//!
//! The snapshot is the first page's (the page token carries it), so an
//! export running while ingest goes on neither misses nor repeats an
//! event, and a resumed one continues the same snapshot. Memory is one
//! page and a few chunks, whatever the size of the result.

use std::sync::Arc;

use futures::Stream;

use super::outbox::{Outbox, Sent};
use super::read::ReadService;
use super::trail;
use super::{AppError, Origin};
use crate::auth::Caller;
use crate::auth::ReadScope;
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
            self.not_partitioned("Export")?;
            let format = format?;
            let mut reader = PageReader {
                reads: self.clone(),
                filter: filter.clone(),
                scope,
                ascending: request.ascending,
                format,
                header: match request.resume_token.is_empty() {
                    true => format.header(),
                    false => &[][..],
                },
                token: request.resume_token.clone(),
                page: None,
                next: 0,
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

/// Reads an export a slice at a time: a page of `EXPORT_PAGE_HITS` hits,
/// then its events `EXPORT_SLICE_EVENTS` at a time, read and formatted on
/// the blocking pool.
struct PageReader {
    reads: ReadService,
    filter: EventFilter,
    scope: ReadScope,
    ascending: bool,
    format: Format,
    /// What goes before the next chunk (the CSV header, once).
    header: &'static [u8],
    /// Where the next page starts.
    token: String,
    page: Option<Arc<HitPage>>,
    /// The page's next hit to read.
    next: usize,
}

impl PageReader {
    /// The next slice's chunks, or `None` past the last event.
    async fn next_chunks(&mut self) -> Result<Option<Vec<ExportChunk>>, AppError> {
        let page = match self.page.take() {
            Some(page) if self.next < page.len() => page,
            Some(page) if !page.more => return Ok(self.header_only()),
            _ => {
                let page = Arc::new(self.read_page().await?);
                self.next = 0;
                if page.len() == 0 {
                    return Ok(self.header_only());
                }
                page
            }
        };
        let range = self.next..page.len().min(self.next + EXPORT_SLICE_EVENTS);
        self.next = range.end;
        let (format, header) = (self.format, std::mem::take(&mut self.header));
        let slice = page.clone();
        let chunks = self
            .reads
            .blocking(move |s| Ok(chunks(&slice, &s.events(&slice, range)?, format, header)))
            .await?;
        if let Some(token) = chunks.iter().rev().find(|c| !c.resume_token.is_empty()) {
            self.token = token.resume_token.clone();
        }
        self.page = Some(page);
        Ok(Some(chunks))
    }

    async fn read_page(&self) -> Result<HitPage, AppError> {
        let (filter, scope) = (self.filter.clone(), self.scope.clone());
        let (ascending, token) = (self.ascending, self.token.clone());
        self.reads
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

    /// At the end: a last chunk holding only a header not sent yet (an
    /// empty CSV export), else nothing.
    fn header_only(&mut self) -> Option<Vec<ExportChunk>> {
        let header = std::mem::take(&mut self.header);
        (!header.is_empty()).then(|| {
            vec![ExportChunk {
                data: header.to_vec(),
                events: 0,
                resume_token: String::new(),
            }]
        })
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

/// `events` (a slice of `page`) as chunks of whole lines, `header` first;
/// each chunk carries the token that resumes right after its last event.
fn chunks(
    page: &HitPage,
    events: &[AuditEvent],
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
                resume_token: page.token_after(event),
            });
        }
    }
    out
}
