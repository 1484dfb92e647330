//! Tail: every matching event not yet searchable when the call starts
//! (or after a resume token), in the log's order, until the caller hangs
//! up.
//!
//! A subscriber holds no events of its own. It reads new seqs, a page at
//! a time and at its own pace, from the indexer's live entries as soon as
//! they are added (`search::recent`), when its filter can be matched in
//! memory, and otherwise from the index after each commit. A slow reader
//! therefore never slows ingest and never grows memory past its outbox;
//! it catches up from the index, and one that takes nothing for
//! `limits.stream_idle_timeout_ms` is ended with its resume token. The
//! token is a seq: "every event below this one was considered".

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::Instant;

use super::outbox::{Outbox, Sent};
use super::read::ReadService;
use super::trail;
use super::{AppError, Origin};
use crate::auth::{Caller, ReadScope};
use crate::search::live::LiveFilter;
use prost::Message;

use crate::proto::{AuditEvent, EventFilter, TailRequest, TailResponse};

/// Seqs read from the index at a time (a response holds at most this
/// many events).
pub const TAIL_PAGE_SEQS: u64 = 1_000;
/// Responses waiting for a slow reader; when full the subscriber stops
/// reading the index until the reader takes one.
pub const TAIL_BUFFER_RESPONSES: usize = 8;
/// A response ends after the event that takes it to this many encoded
/// bytes, well under any message limit.
pub const TAIL_RESPONSE_BYTES: usize = 1 << 20;
/// The longest a subscriber goes without a response: an empty one, with
/// the current resume token, says it is still there.
pub const TAIL_HEARTBEAT: Duration = Duration::from_secs(15);

const TOKEN_VERSION: &str = "t1";

/// The resume token for "every seq below `seq` was considered".
pub fn resume_token(seq: u64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{TOKEN_VERSION}:{seq}"))
}

fn decode_token(token: &str) -> Result<u64, AppError> {
    let bad = || AppError::Invalid {
        field: "resume_token",
        reason: "not a token from a previous TailResponse".into(),
    };
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let (version, seq) = raw.split_once(':').ok_or_else(bad)?;
    if version != TOKEN_VERSION {
        return Err(bad());
    }
    seq.parse().map_err(|_| bad())
}

impl ReadService {
    /// Follows `request.filter` inside the caller's scope. The trail
    /// event is stored when the subscription starts, before any event
    /// goes out.
    pub async fn tail<E>(
        &self,
        caller: Caller,
        origin: Origin,
        request: TailRequest,
    ) -> Result<BoxStream<'static, Result<TailResponse, E>>, AppError>
    where
        E: From<AppError> + Send + 'static,
    {
        let filter = request.filter.unwrap_or_default();
        let mut query = trail::filter_query(&filter);
        if !request.resume_token.is_empty() {
            query.insert("resume".into(), "true".into());
        }
        if self.partitioned {
            let token = request.resume_token;
            let stream = self.tail_partitions(caller, origin, filter, token, query);
            return Ok(stream.await?.boxed());
        }
        let started = async {
            let scope = caller.read_scope("tail")?;
            let permit = self.subscribe(&filter, &scope).await?;
            let searchable = self.searcher().searchable();
            let now = *searchable.borrow();
            let start = match request.resume_token.as_str() {
                "" => now,
                token => decode_token(token)?,
            };
            // A live follower's token may be past what is searchable, not
            // past what the indexer has taken.
            if start > now.max(*self.searcher().live_added().borrow()) {
                return Err(AppError::Invalid {
                    field: "resume_token",
                    reason: "it is ahead of the log".into(),
                });
            }
            Ok((scope, permit, start, searchable))
        }
        .await;
        let (scope, permit, start, searchable) = self
            .trail
            .audited(&caller, trail::TAIL, &origin, query, started)
            .await?;
        let (outbox, stream) = Outbox::new(TAIL_BUFFER_RESPONSES, &self.streams);
        let reads = self.clone();
        self.streams.tasks.spawn(async move {
            let _permit = permit;
            let end = reads
                .follow(&filter, &scope, start, searchable, &outbox)
                .await
                .err();
            outbox.finish(end);
        });
        Ok(stream.boxed())
    }

    /// A subscriber's slot (`limits.max_tail_subscribers`), once the
    /// filter is checked (reading nothing).
    pub(super) async fn subscribe(
        &self,
        filter: &EventFilter,
        scope: &ReadScope,
    ) -> Result<OwnedSemaphorePermit, AppError> {
        let permit = self
            .subscribers
            .clone()
            .try_acquire_owned()
            .map_err(|_| AppError::TooManySubscribers(self.max_subscribers))?;
        let (f, s) = (filter.clone(), scope.clone());
        self.blocking(move |searcher| searcher.in_log_order(&f, &s, 0, 0))
            .await?;
        Ok(permit)
    }

    /// Sends what the indexer takes from `cursor` on, until the reader
    /// hangs up (`Ok`) or the stream must end (`Err`, with the token).
    ///
    /// Seqs below `searchable` are read from the index. Past it, a filter
    /// with a live form (`search::live`) is matched against the indexer's
    /// live entries as they come; one without (free text, a query string)
    /// waits for the next commit.
    async fn follow<E: From<AppError> + Send + 'static>(
        &self,
        filter: &EventFilter,
        scope: &ReadScope,
        mut cursor: u64,
        mut searchable: watch::Receiver<u64>,
        outbox: &Outbox<TailResponse, E>,
    ) -> Result<(), AppError> {
        let live = LiveFilter::new(filter, scope)?;
        let mut added = self.searcher().live_added();
        let mut last_sent = Instant::now();
        loop {
            let upto = *searchable.borrow_and_update();
            while cursor < upto {
                let to = upto.min(cursor.saturating_add(TAIL_PAGE_SEQS));
                let (f, s, from) = (filter.clone(), scope.clone(), cursor);
                let events = self
                    .blocking(move |searcher| searcher.in_log_order(&f, &s, from, to))
                    .await?;
                cursor = to;
                if let Sent::Gone = send(outbox, events, from, to, &mut last_sent).await? {
                    return Ok(());
                }
            }
            if let Some(live) = &live {
                // Marked seen before the read: an entry added after it
                // wakes the wait below.
                added.borrow_and_update();
                let (l, from) = (live.clone(), cursor);
                let taken = self
                    .blocking(move |searcher| {
                        Ok(searcher.live_in_log_order(&l, from, TAIL_PAGE_SEQS as usize))
                    })
                    .await?;
                if let Some((events, to)) = taken.filter(|(_, to)| *to > from) {
                    cursor = to;
                    if let Sent::Gone = send(outbox, events, from, to, &mut last_sent).await? {
                        return Ok(());
                    }
                    continue;
                }
            }
            let token = resume_token(cursor);
            tokio::select! {
                changed = searchable.changed() => {
                    if changed.is_err() {
                        return Err(AppError::ShuttingDownResume { resume_token: token });
                    }
                }
                Ok(()) = added.changed(), if live.is_some() => {}
                _ = tokio::time::sleep_until(last_sent + TAIL_HEARTBEAT) => {
                    let heartbeat = TailResponse { events: Vec::new(), resume_token: token.clone() };
                    if let Sent::Gone = outbox.send(heartbeat, &token).await? {
                        return Ok(());
                    }
                    last_sent = Instant::now();
                }
                closed = outbox.closed(&token) => return closed.map_or(Ok(()), Err),
            }
        }
    }
}

/// Sends the events read for seqs `[from, to)` as responses
/// (`responses`); nothing when there are none.
async fn send<E: From<AppError> + Send + 'static>(
    outbox: &Outbox<TailResponse, E>,
    events: Vec<AuditEvent>,
    mut from: u64,
    to: u64,
    last_sent: &mut Instant,
) -> Result<Sent, AppError> {
    for (events, next) in responses(events, to) {
        let response = TailResponse {
            events,
            resume_token: resume_token(next),
        };
        if let Sent::Gone = outbox.send(response, &resume_token(from)).await? {
            return Ok(Sent::Gone);
        }
        from = next;
        *last_sent = Instant::now();
    }
    Ok(Sent::Queued)
}

/// The events read for seqs below `to`, in seq order, cut into responses
/// of about `TAIL_RESPONSE_BYTES`; each with the seq its resume token
/// names (past its last event; `to` for the last one).
pub(super) fn responses(events: Vec<AuditEvent>, to: u64) -> Vec<(Vec<AuditEvent>, u64)> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    let count = events.len();
    for (i, event) in events.into_iter().enumerate() {
        bytes += event.encoded_len();
        let next = event.seq + 1;
        current.push(event);
        if i + 1 == count {
            out.push((std::mem::take(&mut current), to));
        } else if bytes >= TAIL_RESPONSE_BYTES {
            out.push((std::mem::take(&mut current), next));
            bytes = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        assert_eq!(decode_token(&resume_token(42)).unwrap(), 42);
        for bad in ["", "x", "dDE6", &URL_SAFE_NO_PAD.encode("p3:1")] {
            assert!(decode_token(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn responses_are_cut_by_size_and_resume_past_their_last_event() {
        let big = |seq| AuditEvent {
            seq,
            error_message: "x".repeat(TAIL_RESPONSE_BYTES / 2),
            ..Default::default()
        };
        let cut = responses(vec![big(3), big(5), big(9)], 20);
        let shape: Vec<(Vec<u64>, u64)> = cut
            .iter()
            .map(|(events, next)| (events.iter().map(|e| e.seq).collect(), *next))
            .collect();
        assert_eq!(shape, vec![(vec![3, 5], 6), (vec![9], 20)]);
        assert!(responses(Vec::new(), 20).is_empty());
    }
}
