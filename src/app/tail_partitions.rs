//! Tail on a node of several partitions (docs/cluster.md): each partition
//! the filter and the token can reach is followed at its owner
//! (`PartitionReader::log_page`, a long poll of up to
//! [`TAIL_HEARTBEAT`]), and what each answers goes out as it comes, in
//! each partition's log order (partitions have no order between them).
//!
//! The resume token (`t2`) holds a seq a partition: "every event of
//! partition p below this seq was considered". A partition whose owner
//! is missing or fails is asked again every [`RETRY_AFTER`], from where
//! it stood, so a handover delays its events and loses none.
//!
//! Bounded: one task a partition followed, each holding at most one page
//! (`TAIL_PAGE_SEQS` seqs) while the channel to the sender (one slot a
//! partition) is full; the sender writes into the same outbox as a
//! one-node Tail, and stops reading the channel while the reader is slow.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures::Stream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::outbox::{Outbox, Sent};
use super::read::{ReadService, Routes};
use super::tail::{responses, TAIL_BUFFER_RESPONSES, TAIL_HEARTBEAT, TAIL_PAGE_SEQS};
use super::trail;
use super::{AppError, Origin};
use crate::auth::{Caller, ReadScope};
use crate::cluster::fanout::{partitions_for, unowned, LogPage};
use crate::proto::{EventFilter, TailResponse};

/// How long a partition whose owner is missing or failed waits before it
/// is asked again.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

const TOKEN_VERSION: &str = "t2";

/// Each followed partition's cursor.
type Cursors = BTreeMap<u32, u64>;

/// The resume token for `cursors`.
fn resume_token(cursors: &Cursors) -> String {
    let places: Vec<String> = cursors
        .iter()
        .map(|(p, seq)| format!("{p}={seq}"))
        .collect();
    URL_SAFE_NO_PAD.encode(format!("{TOKEN_VERSION}:{}", places.join(",")))
}

/// The cursors of `token`, which must name exactly `partitions`.
fn decode_token(token: &str, partitions: &[u32]) -> Result<Cursors, AppError> {
    let bad = |reason: &str| AppError::Invalid {
        field: "resume_token",
        reason: reason.into(),
    };
    let not_ours = || bad("not a token from a previous TailResponse of this cluster");
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| not_ours())?;
    let raw = String::from_utf8(raw).map_err(|_| not_ours())?;
    let places = raw
        .strip_prefix(TOKEN_VERSION)
        .and_then(|rest| rest.strip_prefix(':'))
        .ok_or_else(not_ours)?;
    let mut cursors = Cursors::new();
    for place in places.split(',').filter(|p| !p.is_empty()) {
        let (p, seq) = place.split_once('=').ok_or_else(not_ours)?;
        let p: u32 = p.parse().map_err(|_| not_ours())?;
        let seq: u64 = seq.parse().map_err(|_| not_ours())?;
        cursors.insert(p, seq);
    }
    if !cursors.keys().copied().eq(partitions.iter().copied()) {
        return Err(bad("made for another filter or token (other partitions)"));
    }
    Ok(cursors)
}

impl ReadService {
    /// [`ReadService::tail`] on a node of several partitions.
    pub(super) async fn tail_partitions<E>(
        &self,
        caller: Caller,
        origin: Origin,
        filter: EventFilter,
        token: String,
        query: BTreeMap<String, String>,
    ) -> Result<impl Stream<Item = Result<TailResponse, E>> + Send + 'static, AppError>
    where
        E: From<AppError> + Send + 'static,
    {
        let started = async {
            let scope = caller.read_scope("tail")?;
            let routes = self.partition_routes()?;
            let permit = self.subscribe(&filter, &scope).await?;
            let n = routes().len() as u32;
            let partitions = partitions_for(&filter.subjects, &scope, n);
            let cursors = match token.as_str() {
                "" => starting_cursors(&routes, &filter, &scope, &partitions).await?,
                token => decode_token(token, &partitions)?,
            };
            Ok((scope, permit, routes, cursors))
        }
        .await;
        let (scope, permit, routes, cursors) = self
            .trail
            .audited(&caller, trail::TAIL, &origin, query, started)
            .await?;
        let (outbox, stream) = Outbox::new(TAIL_BUFFER_RESPONSES, &self.streams);
        self.streams.tasks.spawn(async move {
            let _permit = permit;
            let end = follow(&routes, &filter, &scope, cursors, &outbox)
                .await
                .err();
            outbox.finish(end);
        });
        Ok(stream)
    }
}

/// Where each partition is searchable now: a new Tail starts there. A
/// partition without owner refuses the Tail, naming it.
async fn starting_cursors(
    routes: &Routes,
    filter: &EventFilter,
    scope: &ReadScope,
    partitions: &[u32],
) -> Result<Cursors, AppError> {
    let readers = routes();
    let mut cursors = Cursors::new();
    for &p in partitions {
        let reader = readers[p as usize].clone().ok_or_else(|| unowned(p))?;
        let now = reader.log_page(filter.clone(), scope.clone(), None, 0, Duration::ZERO);
        cursors.insert(p, now.await?.to);
    }
    Ok(cursors)
}

/// Sends what each partition's owner makes searchable past its cursor,
/// until the reader hangs up (`Ok`) or the stream must end (`Err`, with
/// the token).
async fn follow<E: From<AppError> + Send + 'static>(
    routes: &Routes,
    filter: &EventFilter,
    scope: &ReadScope,
    mut cursors: Cursors,
    outbox: &Outbox<TailResponse, E>,
) -> Result<(), AppError> {
    let (pages, mut arrived) = mpsc::channel(cursors.len().max(1));
    let mut pollers = JoinSet::new();
    for (&p, &from) in &cursors {
        let (f, s) = (filter.clone(), scope.clone());
        pollers.spawn(poll_partition(routes.clone(), p, from, f, s, pages.clone()));
    }
    drop(pages);
    let mut last_sent = Instant::now();
    loop {
        let token = resume_token(&cursors);
        tokio::select! {
            page = arrived.recv() => {
                let Some((p, page)) = page else {
                    return Err(AppError::ShuttingDownResume { resume_token: token });
                };
                if let Sent::Gone = send_page(&mut cursors, p, page, outbox).await? {
                    return Ok(());
                }
                last_sent = Instant::now();
            }
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

/// Sends partition `p`'s page, cut into responses as a one-node Tail cuts
/// them, moving its cursor past each.
async fn send_page<E: From<AppError> + Send + 'static>(
    cursors: &mut Cursors,
    p: u32,
    page: LogPage,
    outbox: &Outbox<TailResponse, E>,
) -> Result<Sent, AppError> {
    if page.events.is_empty() {
        cursors.insert(p, page.to);
        return Ok(Sent::Queued);
    }
    for (events, next) in responses(page.events, page.to) {
        let before = resume_token(cursors);
        cursors.insert(p, next);
        let response = TailResponse {
            events,
            resume_token: resume_token(cursors),
        };
        if let Sent::Gone = outbox.send(response, &before).await? {
            return Ok(Sent::Gone);
        }
    }
    Ok(Sent::Queued)
}

/// A task that long-polls partition `p`'s owner (as routed at each call)
/// from `from` on, handing each page that moves its cursor to `pages`,
/// until `pages` is closed.
async fn poll_partition(
    routes: Routes,
    p: u32,
    mut from: u64,
    filter: EventFilter,
    scope: ReadScope,
    pages: mpsc::Sender<(u32, LogPage)>,
) {
    while !pages.is_closed() {
        let page = match routes()[p as usize].clone() {
            Some(reader) => {
                let (f, s) = (filter.clone(), scope.clone());
                reader
                    .log_page(f, s, Some(from), TAIL_PAGE_SEQS, TAIL_HEARTBEAT)
                    .await
            }
            None => Err(unowned(p)),
        };
        match page {
            Ok(page) if page.to == from => {}
            Ok(page) => {
                from = page.to;
                if pages.send((p, page)).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                tracing::debug!(partition = p, %error, "a tail's partition did not answer; again");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_AFTER) => {}
                    _ = pages.closed() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_name_their_partitions() {
        let cursors = Cursors::from([(0, 12), (3, 0), (7, 99)]);
        let token = resume_token(&cursors);
        assert_eq!(decode_token(&token, &[0, 3, 7]).unwrap(), cursors);
        assert!(decode_token(&token, &[0, 3]).is_err());
        assert!(decode_token(&token, &[0, 3, 7, 8]).is_err());
        let one_node = super::super::tail::resume_token(5);
        for bad in [
            "",
            "x",
            one_node.as_str(),
            &URL_SAFE_NO_PAD.encode("t2:0=x"),
        ] {
            assert!(decode_token(bad, &[0]).is_err(), "{bad}");
        }
    }
}
