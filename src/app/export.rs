//! Export: every event a filter matches in one snapshot, in time order,
//! as lines of a format a SIEM reads, streamed in chunks the caller can
//! resume after.
//!
//! The snapshot is the first page's (the page token carries it), so an
//! export running while ingest goes on neither misses nor repeats an
//! event, and a resumed one continues the same snapshot. Memory is one
//! page and a few chunks, whatever the size of the result.

use futures::Stream;

use super::outbox::{Outbox, Sent};
use super::read::ReadService;
use super::trail;
use super::{AppError, Origin};
use crate::auth::Caller;
use crate::formats::Format;
use crate::proto::{ExportChunk, ExportFormat, ExportRequest};
use crate::search::{EventPage, PageRequest};

/// Events read from the index at a time.
pub const EXPORT_PAGE_EVENTS: usize = 1_000;
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
            let page = self
                .page(
                    filter.clone(),
                    scope.clone(),
                    &request,
                    &request.resume_token,
                )
                .await?;
            Ok((scope, format, page))
        }
        .await;
        let (scope, format, first) = match first {
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
        let reads = self.clone();
        self.streams.tasks.spawn(async move {
            let mut sent = 0u64;
            let mut header = match request.resume_token.is_empty() {
                true => format.header(),
                false => &[][..],
            };
            let mut page = first;
            let mut resume = request.resume_token.clone();
            let outcome = 'pages: loop {
                for chunk in chunks(&page, format, std::mem::take(&mut header)) {
                    let (events, token) = (chunk.events, chunk.resume_token.clone());
                    match outbox.send(chunk, &resume).await {
                        Ok(Sent::Queued) => {}
                        Ok(Sent::Gone) => {
                            query.insert("hung_up".into(), "true".into());
                            break 'pages Ok(());
                        }
                        Err(error) => break 'pages Err(error),
                    }
                    sent += events;
                    resume = token;
                }
                if !page.more {
                    break Ok(());
                }
                match reads
                    .page(filter.clone(), scope.clone(), &request, &resume)
                    .await
                {
                    Ok(next) => page = next,
                    Err(error) => break Err(error),
                }
            };
            query.insert("events".into(), sent.to_string());
            let audited = reads
                .trail
                .audited(&caller, trail::EXPORT, &origin, query, outcome)
                .await;
            outbox.finish(audited.err());
        });
        Ok(stream)
    }

    /// The next page of an export, read on the blocking pool.
    async fn page(
        &self,
        filter: crate::proto::EventFilter,
        scope: crate::auth::ReadScope,
        request: &ExportRequest,
        token: &str,
    ) -> Result<EventPage, AppError> {
        let ascending = request.ascending;
        let token = token.to_owned();
        self.blocking(move |s| {
            s.page(
                &filter,
                &scope,
                &PageRequest {
                    limit: EXPORT_PAGE_EVENTS,
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
fn format_of(value: i32) -> Result<Format, AppError> {
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

/// A page's events as chunks of whole lines, `header` first; each chunk
/// carries the token that resumes right after its last event. An empty
/// page makes a chunk only when there is a header to send.
fn chunks(page: &EventPage, format: Format, header: &[u8]) -> Vec<ExportChunk> {
    let mut out = Vec::new();
    let mut data = header.to_vec();
    let mut events = 0;
    for (i, event) in page.events.iter().enumerate() {
        format.write(event, &mut data);
        events += 1;
        let last = i + 1 == page.events.len();
        if data.len() >= EXPORT_CHUNK_BYTES || last {
            out.push(ExportChunk {
                data: std::mem::take(&mut data),
                events: std::mem::take(&mut events),
                resume_token: page.token_after(event),
            });
        }
    }
    if !data.is_empty() {
        out.push(ExportChunk {
            data,
            events: 0,
            resume_token: String::new(),
        });
    }
    out
}
