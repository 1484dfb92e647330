//! The read path: a `SearchRequest` becomes one Tantivy query, run over the
//! partitions its time range touches, ordered by (time, seq) segment by
//! segment, newest first (`time_order`), and cut into pages by a cursor that stays right while events
//! keep arriving.
//!
//! Synchronous: the gRPC adapter runs it on the blocking pool.

use std::net::IpAddr;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rayon::prelude::*;
use tantivy::query::{
    AllQuery, BooleanQuery, EnableScoring, InvertedIndexRangeQuery, Occur, Query, QueryParser,
    TermQuery,
};
use tantivy::schema::{IndexRecordOption, Term};
use tantivy::tokenizer::TextAnalyzer;
use tantivy::{DocAddress, Index};
use tokio::sync::watch;

use crate::app::trail::TRAIL_TYPE;
use crate::auth::ReadScope;
use crate::config::Limits;
use crate::idempotency::Stored;
use crate::integrity::leaf::Salt;
use crate::integrity::opening::Opening;
use crate::integrity::seeds::SaltSeeds;
use crate::partition::{Day, Partition, Partitions};
use crate::proto::{
    AggregateRequest, AggregateResponse, AuditEvent, EventFilter, Outcome, SearchRequest,
    SearchResponse,
};
use crate::schema::{decode_stored, id_key, timestamp_micros, to_v6, AuditSchema};

pub mod aggregate;
mod dense;
mod exclude;
pub mod live;
mod log_order;
mod query_string;
pub mod recent;
mod term_union;
mod time_range;

pub use dense::DenseTerms;
use recent::{RecentEvents, StoredEvent};

/// One event, named by its id or its seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventRef {
    Id(String),
    Seq(u64),
}

mod time_order;
pub mod view;
use time_order::{Hit, TimeOrder};
use view::View;

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The request is wrong; `field` names the request field.
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("index error: {0}")]
    Index(#[from] tantivy::TantivyError),
    #[error("stored event {address:?} does not decode: {reason}")]
    Corrupt { address: DocAddress, reason: String },
    /// The answer would take more memory than a call may: the message
    /// says which limit and what to narrow.
    #[error("{0}")]
    TooLarge(String),
    /// A page's snapshot is past what this index holds yet (a partition
    /// that moved to a node still catching up): retry.
    #[error("the page's snapshot, seq {snapshot}, is past this index's {searchable}")]
    Behind { snapshot: u64, searchable: u64 },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> SearchError {
    SearchError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Searches the partitions. Cheap to clone.
#[derive(Clone)]
pub struct Searcher {
    partitions: Arc<Partitions>,
    schema: AuditSchema,
    limits: Limits,
    /// The indexed position: what a new page snapshot may see.
    searchable: watch::Receiver<u64>,
    /// What the last commits made searchable, in memory (`recent.rs`).
    recent: Arc<RecentEvents>,
    /// An empty in-memory index with the schema, for parsing `query`
    /// strings and tokenizing `text` when no partition exists yet.
    parsing: Index,
    text_analyzer: TextAnalyzer,
    /// The Merkle tree's seeds, which make the salts of seeded batches
    /// (`integrity::seeds`); `None` with integrity off.
    seeds: Option<Arc<SaltSeeds>>,
    /// When a caller's read last started, shared by every clone.
    reads: Arc<ReadActivity>,
    /// The bit sets of terms most events of a big segment hold (`dense.rs`).
    dense: Arc<dense::DenseTerms>,
}

/// When a caller's read last started: background readers of the index
/// (the self-audit) wait for a quiet moment rather than run beside
/// searches, whose p99 they doubled (BENCHMARKS.md, issue 17).
#[derive(Debug)]
pub struct ReadActivity {
    origin: std::time::Instant,
    /// Milliseconds after `origin`, plus one; 0: none yet.
    last: std::sync::atomic::AtomicU64,
}

impl Default for ReadActivity {
    fn default() -> Self {
        ReadActivity {
            origin: std::time::Instant::now(),
            last: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl ReadActivity {
    /// A read starts now.
    pub fn note(&self) {
        let now = self.origin.elapsed().as_millis() as u64 + 1;
        self.last.store(now, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long ago the last read started (`None`: no read yet).
    pub fn since_last(&self) -> Option<Duration> {
        match self.last.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            last => Some(
                self.origin
                    .elapsed()
                    .saturating_sub(Duration::from_millis(last - 1)),
            ),
        }
    }
}

/// Where a page ends: the last event's (time, seq), and the snapshot the
/// first page saw (the seq after the last event searchable then), so
/// later pages see the same set of events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    time: i64,
    seq: u64,
    snapshot: u64,
    ascending: bool,
}

/// `p3`: seq and snapshot are dense event seqs (data format 2). `p2`
/// tokens held byte-derived seqs and `p1` tokens `position << 16`; both
/// are refused as not a page token.
const PAGE_TOKEN_VERSION: &str = "p3";

/// How many events sharing an id's index key `get` fetches to find the one
/// with that id. Keys of two different ids collide about never; the same id
/// stored more than once (a client's own duplicates) is the usual case.
const GET_CANDIDATES: usize = 16;

/// A page's events are fetched in parallel in runs of at least this many
/// neighbouring hits: fewer would cost more in hand-offs between threads
/// than the blocks they share save.
const FETCH_RUN_HITS: usize = 8;

impl Cursor {
    fn encode(&self) -> String {
        let raw = format!(
            "{PAGE_TOKEN_VERSION}:{}:{}:{}:{}",
            self.time, self.seq, self.snapshot, self.ascending as u8
        );
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The cursor of a page token for a search in the `ascending` order
    /// (`None` for the first page).
    fn of_page(
        token: &str,
        field: &'static str,
        ascending: bool,
    ) -> Result<Option<Cursor>, SearchError> {
        if token.is_empty() {
            return Ok(None);
        }
        let cursor = Cursor::decode(token, field)?;
        if cursor.ascending != ascending {
            return Err(invalid(
                field,
                "the token was made for the other sort order",
            ));
        }
        Ok(Some(cursor))
    }

    /// `field` names the request field the token came in.
    fn decode(token: &str, field: &'static str) -> Result<Cursor, SearchError> {
        let bad = || invalid(field, "not a token from a previous response");
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
        let raw = String::from_utf8(raw).map_err(|_| bad())?;
        let mut parts = raw.split(':');
        if parts.next() != Some(PAGE_TOKEN_VERSION) {
            return Err(bad());
        }
        let mut next = || parts.next().ok_or_else(bad);
        let time = next()?.parse().map_err(|_| bad())?;
        let seq = next()?.parse().map_err(|_| bad())?;
        let snapshot = next()?.parse().map_err(|_| bad())?;
        let ascending = match next()? {
            "0" => false,
            "1" => true,
            _ => return Err(bad()),
        };
        Ok(Cursor {
            time,
            seq,
            snapshot,
            ascending,
        })
    }
}

/// Where a page starts without a page token (`Searcher::search_at`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageAt {
    /// The last (time, seq) already had, in the request's order.
    pub after: Option<(i64, u64)>,
    /// The snapshot the first page saw; `None` on the first page.
    pub snapshot: Option<u64>,
}

/// One page of `Searcher::search_at`.
#[derive(Debug, Clone, Default)]
pub struct SnapshotPage {
    pub events: Vec<AuditEvent>,
    /// More matches past this page.
    pub more: bool,
    /// Matches inside the snapshot, counted up to the request's bound
    /// (`Searcher::count_up_to`): the same on every page.
    pub counted: u64,
    /// The snapshot this page saw: pass it back for the next page.
    pub snapshot: u64,
}

/// What an aggregate's passes read (`Searcher::counting`).
struct Counting {
    planned: aggregate::Planned,
    query: Box<dyn Query>,
    searchers: Vec<tantivy::Searcher>,
}

/// What `Searcher::page` reads.
pub(crate) struct PageRequest<'a> {
    pub limit: usize,
    pub ascending: bool,
    /// Where the previous page ended, or empty for the first page.
    pub token: &'a str,
    /// The request field `token` came in, for errors.
    pub token_field: &'static str,
    /// Matches are counted up to this many (0: not counted).
    pub count_up_to: u64,
}

/// One page of hits in time order, with the views that found them:
/// its events are read (`Searcher::events`) a slice at a time if need be,
/// so a long page need not be held whole.
pub(crate) struct HitPage {
    views: Vec<Arc<View>>,
    hits: Vec<Hit>,
    /// More events past this page.
    pub more: bool,
    /// Matches inside the snapshot, counted up to the request's bound.
    pub total: u64,
    snapshot: u64,
    ascending: bool,
}

impl HitPage {
    pub fn len(&self) -> usize {
        self.hits.len()
    }

    /// The token that continues right after `event`, one of this page's.
    pub fn token_after(&self, event: &AuditEvent) -> String {
        Cursor {
            time: timestamp_micros(event.time.as_ref()),
            seq: event.seq,
            snapshot: self.snapshot,
            ascending: self.ascending,
        }
        .encode()
    }
}

impl Searcher {
    pub fn new(
        partitions: Arc<Partitions>,
        limits: Limits,
        searchable: watch::Receiver<u64>,
        recent: Arc<RecentEvents>,
    ) -> Searcher {
        let schema = partitions.schema().clone();
        let parsing = Index::create_in_ram(schema.schema.clone());
        crate::schema::register_tokenizers(&parsing);
        let text_analyzer = parsing
            .tokenizer_for_field(schema.text)
            .expect("the text field has a tokenizer");
        Searcher {
            partitions,
            schema,
            limits,
            searchable,
            recent,
            parsing,
            text_analyzer,
            seeds: None,
            reads: Arc::default(),
            dense: Arc::new(dense::DenseTerms::new(
                crate::config::IndexConfig::default().dense_terms_bytes,
            )),
        }
    }

    /// When a caller's read last started (`note` it at each one).
    pub fn reads(&self) -> &ReadActivity {
        &self.reads
    }

    /// The same, reading the salts of seeded batches from the tree's
    /// `seeds`.
    pub fn with_seeds(mut self, seeds: Arc<SaltSeeds>) -> Searcher {
        self.seeds = Some(seeds);
        self
    }

    /// Keeps up to `budget` bytes of dense terms' bit sets
    /// (`index.dense_terms_bytes`); 0 keeps none. With `saved_at`, which
    /// terms' sets it keeps is saved there at stop
    /// (`DenseTerms::save`) and the last run's are read from there.
    pub fn with_dense_terms(mut self, budget: u64, saved_at: Option<&Path>) -> Searcher {
        let dense = dense::DenseTerms::new(budget);
        self.dense = Arc::new(match saved_at {
            Some(path) => dense.remembering(path, self.schema.schema.clone()),
            None => dense,
        });
        self
    }

    /// The bit sets of dense terms its searches share.
    pub fn dense_terms(&self) -> &Arc<DenseTerms> {
        &self.dense
    }

    /// Forgets `subject`'s name in the dense terms' bit sets, kept and
    /// saved: the subject's term and the words of the name in free text
    /// (`DenseTerms::forget`). Erasure calls it.
    pub fn forget_dense_terms_of(&self, subject: &str) -> std::io::Result<()> {
        let s = &self.schema;
        let mut names = vec![Term::from_field_text(s.subject, subject)];
        names.extend(
            self.words(subject)
                .iter()
                .map(|word| Term::from_field_text(s.text, word)),
        );
        self.dense.forget(&names)
    }

    /// The tree's seeds it reads the salts of seeded batches from.
    pub fn seeds(&self) -> Option<&SaltSeeds> {
        self.seeds.as_deref()
    }

    /// `Err(Invalid)` naming the field if `search` would refuse `request`;
    /// searches nothing.
    /// The partitions it searches.
    pub fn partitions(&self) -> &Arc<Partitions> {
        &self.partitions
    }

    pub fn schema(&self) -> &AuditSchema {
        &self.schema
    }

    pub fn check(&self, request: &SearchRequest, scope: &ReadScope) -> Result<(), SearchError> {
        self.matching(&filter_of(request), scope)?;
        Cursor::of_page(&request.page_token, "page_token", request.ascending)?;
        Ok(())
    }

    /// Runs one page of `request`. `Err(Invalid)` names the request field
    /// that is wrong; nothing is searched then.
    ///
    /// `scope` is what the caller may read: it becomes clauses of the query
    /// that nothing in `request` can widen.
    pub fn search(
        &self,
        request: &SearchRequest,
        scope: &ReadScope,
    ) -> Result<SearchResponse, SearchError> {
        let started = std::time::Instant::now();
        let limit = self.limit_of(request);
        let count_up_to = self.count_up_to(request);
        let page = self.page(
            &filter_of(request),
            scope,
            &PageRequest {
                limit,
                ascending: request.ascending,
                token: &request.page_token,
                token_field: "page_token",
                count_up_to,
            },
        )?;
        let events = self.events(&page, 0..page.len())?;
        let next_page_token = match (page.more, events.last()) {
            (true, Some(last)) => page.token_after(last),
            _ => String::new(),
        };
        metrics::histogram!(crate::metrics::SEARCH_SECONDS).record(started.elapsed().as_secs_f64());
        // Past `count_up_to` the count is the bound itself, so that every
        // page of the search says the same.
        Ok(SearchResponse {
            total_hits: page.total.min(count_up_to),
            total_hits_is_lower_bound: page.total >= count_up_to,
            events,
            next_page_token,
        })
    }

    /// One page of `request`'s events from an explicit place, for a
    /// search merged over several partitions of a cluster
    /// (`cluster::fanout`), whose page token holds every partition's
    /// place: `at.after` is the last (time, seq) already had, in the
    /// request's order, and `at.snapshot` the snapshot the first page saw
    /// (`None`: the first page, which takes the current one). The
    /// request's own `page_token` is not read.
    pub fn search_at(
        &self,
        request: &SearchRequest,
        scope: &ReadScope,
        at: PageAt,
    ) -> Result<SnapshotPage, SearchError> {
        let limit = self.limit_of(request);
        let count_up_to = self.count_up_to(request);
        let filter = filter_of(request);
        let page = self.page_at(&filter, scope, limit, request.ascending, at, count_up_to)?;
        Ok(SnapshotPage {
            events: self.events(&page, 0..page.len())?,
            more: page.more,
            counted: page.total.min(count_up_to),
            snapshot: page.snapshot,
        })
    }

    /// Waits until the index holds `snapshot` (a page's, from another
    /// node's index of the same partition), at most `within`; `None` (a
    /// first page) holds at once. A page past the index would leave out
    /// events the first page counted.
    pub async fn reach(&self, snapshot: Option<u64>, within: Duration) -> Result<(), SearchError> {
        let Some(snapshot) = snapshot else {
            return Ok(());
        };
        let mut searchable = self.searchable.clone();
        let reached = tokio::time::timeout(within, searchable.wait_for(|s| *s >= snapshot)).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            _ => Err(SearchError::Behind {
                snapshot,
                searchable: *self.searchable.borrow(),
            }),
        }
    }

    /// A page's size: the request's limit, the default for none, the
    /// maximum at most.
    pub fn limit_of(&self, request: &SearchRequest) -> usize {
        let limit = match request.limit {
            0 => self.limits.default_search_limit,
            n => n.min(self.limits.max_search_limit),
        };
        limit as usize
    }

    /// How far matches are counted: all of them for `exact_total`, else
    /// up to `limits.exact_total_hits`.
    pub fn count_up_to(&self, request: &SearchRequest) -> u64 {
        match request.exact_total {
            true => u64::MAX,
            false => u64::from(self.limits.exact_total_hits),
        }
    }

    /// One page of the events `filter` matches inside `scope`, in time
    /// order, from where `request.token` left off.
    pub(crate) fn page(
        &self,
        filter: &EventFilter,
        scope: &ReadScope,
        request: &PageRequest,
    ) -> Result<HitPage, SearchError> {
        let cursor = Cursor::of_page(request.token, request.token_field, request.ascending)?;
        let at = PageAt {
            after: cursor.map(|c| (c.time, c.seq)),
            snapshot: cursor.map(|c| c.snapshot),
        };
        self.page_at(
            filter,
            scope,
            request.limit,
            request.ascending,
            at,
            request.count_up_to,
        )
    }

    fn page_at(
        &self,
        filter: &EventFilter,
        scope: &ReadScope,
        limit: usize,
        ascending: bool,
        at: PageAt,
        count_up_to: u64,
    ) -> Result<HitPage, SearchError> {
        let Matching { query, from, to } = self.matching(filter, scope)?;
        // Events whose record starts below the indexed position are all
        // visible; later ones are left out of every page of this search.
        let snapshot = at.snapshot.unwrap_or_else(|| *self.searchable.borrow());
        let order = TimeOrder {
            limit,
            ascending,
            after: at.after,
            snapshot,
            count_up_to,
            times: (from, to),
        };
        let views = Self::views(&self.partitions.overlapping(from, to))?;
        let page = time_order::collect(&views, &*query, &order)?;
        Ok(HitPage {
            views,
            hits: page.hits,
            more: page.more,
            total: page.total,
            snapshot,
            ascending,
        })
    }

    /// The events of `page`'s hits in `range`, in page order.
    pub(crate) fn events(
        &self,
        page: &HitPage,
        range: std::ops::Range<usize>,
    ) -> Result<Vec<AuditEvent>, SearchError> {
        self.fetch(&page.views, &page.hits[range])
    }

    /// Every stored event of `subject` (the trail included), as (day, seq).
    pub(crate) fn subject_seqs(&self, subject: &str) -> Result<Vec<(Day, u64)>, SearchError> {
        self.seqs_matching(&*term(self.schema.subject, subject))
    }

    /// Every stored event `filter` matches, as (day, seq).
    pub(crate) fn filter_seqs(&self, filter: &EventFilter) -> Result<Vec<(Day, u64)>, SearchError> {
        let matching = self.matching(filter, &ReadScope::All)?;
        self.seqs_matching(&*matching.query)
    }

    fn seqs_matching(&self, query: &dyn Query) -> Result<Vec<(Day, u64)>, SearchError> {
        let mut out = Vec::new();
        for partition in self.partitions.overlapping(None, None) {
            let view = partition.view()?;
            let docs = view
                .searcher
                .search(query, &tantivy::collector::DocSetCollector)?;
            for address in docs {
                let column = &view.columns[address.segment_ord as usize].seq;
                out.extend(column.first(address.doc_id).map(|seq| (partition.day, seq)));
            }
        }
        Ok(out)
    }

    /// The same with each event's salt: what its receipt is made from.
    pub(crate) fn stored_events(
        &self,
        page: &HitPage,
        range: std::ops::Range<usize>,
    ) -> Result<Vec<(AuditEvent, Option<Opening>)>, SearchError> {
        page.hits[range]
            .par_iter()
            .with_min_len(FETCH_RUN_HITS)
            .map(|hit| self.fetch_stored(&page.views, hit))
            .collect()
    }

    /// Exact counts over what `request.filter` matches inside `scope`
    /// (`aggregate`).
    pub fn aggregate(
        &self,
        request: &AggregateRequest,
        scope: &ReadScope,
    ) -> Result<AggregateResponse, SearchError> {
        let counting = self.counting(request, scope)?;
        let (total_hits, results) = aggregate::aggregate(
            &self.schema,
            &counting.searchers,
            &*counting.query,
            &counting.planned.plans,
            counting.planned.from,
            counting.planned.to,
        )?;
        Ok(AggregateResponse {
            total_hits,
            results: results.into_iter().collect(),
        })
    }

    /// The first pass of `request` over this index, as one part of an
    /// aggregate merged over partitions (`cluster::fanout`).
    pub fn aggregate_first(
        &self,
        request: &AggregateRequest,
        scope: &ReadScope,
    ) -> Result<aggregate::FirstPass, SearchError> {
        let c = self.counting(request, scope)?;
        aggregate::first_pass(&self.schema, &c.searchers, &*c.query, &c.planned.plans)
    }

    /// The second pass of `request` over this index, inside the buckets
    /// the merged first pass selected.
    pub fn aggregate_second(
        &self,
        request: &AggregateRequest,
        scope: &ReadScope,
        selections: &aggregate::Selections,
    ) -> Result<aggregate::SecondPass, SearchError> {
        let c = self.counting(request, scope)?;
        let plans = &c.planned.plans;
        if selections.len() != plans.len() {
            return Err(invalid("aggregations", "selections of another request"));
        }
        aggregate::second_pass(&self.schema, &c.searchers, &*c.query, plans, selections)
    }

    /// What both passes read: the checked plans, the query and the
    /// partitions' searchers.
    fn counting(
        &self,
        request: &AggregateRequest,
        scope: &ReadScope,
    ) -> Result<Counting, SearchError> {
        let planned = aggregate::Planned::of(&self.schema, request)?;
        let filter = request.filter.clone().unwrap_or_default();
        let Matching { query, from, to } = self.matching(&filter, scope)?;
        let searchers = Self::views(&self.partitions.overlapping(from, to))?
            .iter()
            .map(|view| view.searcher.clone())
            .collect();
        Ok(Counting {
            planned,
            query,
            searchers,
        })
    }

    /// The events `filter` matches inside `scope` whose seq lies in
    /// `[from, to)`, in seq order (Tail). An empty range checks the
    /// filter and reads nothing.
    pub fn in_log_order(
        &self,
        filter: &EventFilter,
        scope: &ReadScope,
        from: u64,
        to: u64,
    ) -> Result<Vec<AuditEvent>, SearchError> {
        let Matching {
            query,
            from: since,
            to: until,
        } = self.matching(filter, scope)?;
        let views = Self::views(&self.partitions.overlapping(since, until))?;
        let hits = log_order::collect(&views, &*query, from, to)?;
        self.fetch(&views, &hits)
    }

    /// The seq below which every event is searchable, as it moves.
    pub fn searchable(&self) -> watch::Receiver<u64> {
        self.searchable.clone()
    }

    /// The events `filter` matches among the indexer's live entries
    /// (`recent.rs`) from seq `from` on, at most `max` seqs of them, with
    /// the seq after the last one considered; `None` if the live run does
    /// not hold `from` (then the index has it, or will after a commit).
    /// An entry that does not decode is left to the index as well, whose
    /// read names the document.
    pub fn live_in_log_order(
        &self,
        filter: &live::LiveFilter,
        from: u64,
        max: usize,
    ) -> Option<(Vec<AuditEvent>, u64)> {
        let entries = self.recent.live_from(from, max)?;
        let to = entries.last().map_or(from, |last| last.seq + 1);
        let mut events = Vec::new();
        for stored in &entries {
            let event = stored.shared()?;
            if filter.matches(event, stored.time) {
                events.push(event.clone());
            }
        }
        Some((events, to))
    }

    /// Changes whenever the indexer adds live entries.
    pub fn live_added(&self) -> watch::Receiver<u64> {
        self.recent.added()
    }

    /// The newest event with this id inside `scope`, if any: an event
    /// outside it is exactly as absent as one that does not exist.
    ///
    /// The index holds `id_key(id)`, which another id may share: the
    /// newest `GET_CANDIDATES` events under the key are fetched and the
    /// first whose stored id is `id` wins.
    pub fn get(&self, id: &str, scope: &ReadScope) -> Result<Option<AuditEvent>, SearchError> {
        let by = EventRef::Id(id.to_owned());
        Ok(self.stored_event(&by, scope)?.map(|(event, _)| event))
    }

    /// Where the batch `batch_id` went, looked for in the partitions of
    /// `days`: its ids in request order and its first seq, with its
    /// `received` time (microseconds).
    pub fn find_batch(
        &self,
        batch_id: &str,
        days: &[i64],
    ) -> Result<Option<(Stored, i64)>, SearchError> {
        let term = Term::from_field_text(self.schema.batch_id, batch_id);
        let query = TermQuery::new(term, IndexRecordOption::Basic);
        let partitions: Vec<_> = days
            .iter()
            .filter_map(|d| self.partitions.get(*d))
            .collect();
        let order = TimeOrder {
            limit: crate::messages::MAX_EVENTS_PER_RECORD,
            ascending: true,
            after: None,
            snapshot: u64::MAX,
            count_up_to: 0,
            times: (None, None),
        };
        let views = Self::views(&partitions)?;
        let mut page = time_order::collect(&views, &query, &order)?;
        if page.hits.is_empty() {
            return Ok(None);
        }
        page.hits.sort_by_key(|h| h.seq);
        let first_seq = page.hits[0].seq;
        let events = self.fetch(&views, &page.hits)?;
        let received = events
            .first()
            .map_or(0, |e| timestamp_micros(e.received.as_ref()));
        let ids = events.into_iter().map(|e| e.id).collect();
        Ok(Some((Stored { ids, first_seq }, received)))
    }

    /// One view per partition: the hits' addresses point into them, so
    /// the same views must fetch the events.
    fn views(partitions: &[Arc<Partition>]) -> tantivy::Result<Vec<Arc<View>>> {
        partitions.iter().map(|p| p.view()).collect()
    }

    /// The events of `hits`, in their order, each body decoded and its
    /// times put back from the columns (`schema::restore_times`).
    ///
    /// A sparse page's events lie in as many doc-store blocks, each one
    /// decompressed whole: most of a sparse search's time
    /// (BENCHMARKS.md, issue 17). So they are read on every core, in
    /// runs of neighbouring hits (which share blocks). An event a recent
    /// commit made searchable is taken from memory instead
    /// (`recent.rs`): what Tail reads, right after each commit.
    ///
    /// All in memory (a follower right behind the commits): decoded on
    /// this thread, since a body decodes in about the time handing it to
    /// another thread takes.
    fn fetch(&self, views: &[Arc<View>], hits: &[Hit]) -> Result<Vec<AuditEvent>, SearchError> {
        let recent = self.recent.lookup(hits.iter().map(|hit| hit.seq));
        let decode = |hit: &Hit, stored: &StoredEvent| {
            stored.event().map_err(|e| SearchError::Corrupt {
                address: hit.address,
                reason: e.to_string(),
            })
        };
        if recent.iter().all(Option::is_some) {
            return hits
                .iter()
                .zip(recent.iter().flatten())
                .map(|(hit, stored)| decode(hit, stored))
                .collect();
        }
        hits.par_iter()
            .zip(recent)
            .with_min_len(FETCH_RUN_HITS)
            .map(|(hit, recent)| match recent {
                Some(stored) => decode(hit, &stored),
                None => self.fetch_one(views, hit),
            })
            .collect()
    }

    fn fetch_one(&self, views: &[Arc<View>], hit: &Hit) -> Result<AuditEvent, SearchError> {
        self.fetch_hit(views, hit, None).map(|(event, _)| event)
    }

    /// A hit's event and its salt (`None` in a document without one).
    fn fetch_stored(
        &self,
        views: &[Arc<View>],
        hit: &Hit,
    ) -> Result<(AuditEvent, Option<Opening>), SearchError> {
        let seeded = |seq| self.seeds.as_deref()?.salt(seq);
        self.fetch_hit(views, hit, Some(&seeded))
    }

    /// A hit's event, and its salt when `seeded` is given: the salt of an
    /// event of a seeded batch is `seeded(seq)`. A search, an export or a
    /// tail does not ask (one seeded salt alone costs 16 SHA-256 blocks).
    fn fetch_hit(
        &self,
        views: &[Arc<View>],
        hit: &Hit,
        seeded: Option<&dyn Fn(u64) -> Option<Salt>>,
    ) -> Result<(AuditEvent, Option<Opening>), SearchError> {
        let view = &views[hit.partition];
        let corrupt = |reason: String| SearchError::Corrupt {
            address: hit.address,
            reason,
        };
        let stored = view.stored(hit.address, &self.schema)?;
        let salt =
            seeded.and_then(|seeded| Opening::stored(stored.salt.as_deref(), || seeded(hit.seq)));
        if stored.body.is_empty() {
            return Err(corrupt("no body".into()));
        }
        let body = stored.body.as_slice();
        let received = view.columns[hit.address.segment_ord as usize]
            .received
            .first(hit.address.doc_id)
            .ok_or_else(|| corrupt("no received time".into()))?;
        let event =
            decode_stored(body, hit.time, received, hit.seq).map_err(|e| corrupt(e.to_string()))?;
        Ok((event, salt))
    }

    /// The stored event `by` names inside `scope`, with its salt: what its
    /// leaf in the Merkle tree is made from. By id: the newest event with
    /// that id, as [`Searcher::get`]; by seq: the one event of that seq
    /// (the first, should a forged document share it).
    pub fn stored_event(
        &self,
        by: &EventRef,
        scope: &ReadScope,
    ) -> Result<Option<(AuditEvent, Option<Opening>)>, SearchError> {
        let views = Self::views(&self.partitions.overlapping(None, None))?;
        let mut must: Vec<Box<dyn Query>> = Vec::new();
        self.add_scope(scope, &mut must);
        let hits = match by {
            EventRef::Seq(seq) => {
                let scope = (!must.is_empty()).then(|| BooleanQuery::intersection(must));
                log_order::in_seqs(
                    &views,
                    scope.as_ref().map(|q| q as &dyn Query),
                    *seq..seq.saturating_add(1),
                )?
            }
            EventRef::Id(id) => {
                must.push(term(self.schema.id, &id_key(id)));
                let query = BooleanQuery::intersection(must);
                let order = TimeOrder {
                    limit: GET_CANDIDATES,
                    ascending: false,
                    after: None,
                    snapshot: u64::MAX,
                    count_up_to: 0,
                    times: (None, None),
                };
                time_order::collect(&views, &query, &order)?.hits
            }
        };
        for hit in &hits {
            let (event, salt) = self.fetch_stored(&views, hit)?;
            if matches!(by, EventRef::Id(id) if *id != event.id) {
                continue;
            }
            return Ok(Some((event, salt)));
        }
        Ok(None)
    }

    /// The seq and day of every stored document whose seq lies in
    /// `[from, to)`, in seq order: what tile compaction checks before it
    /// lets the index stand in for a tile (`integrity::compact`).
    pub fn seq_days(&self, from: u64, to: u64) -> Result<Vec<(u64, Day)>, SearchError> {
        let partitions = self.partitions.overlapping(None, None);
        let views = Self::views(&partitions)?;
        Ok(log_order::in_seqs(&views, None, from..to)?
            .into_iter()
            .map(|hit| (hit.seq, partitions[hit.partition].day))
            .collect())
    }

    /// Every stored event whose seq lies in `[from, to)`, in seq order,
    /// each with its salt: what the full audit recomputes the leaves from.
    /// Every document counts, a forged one sharing a seq included.
    pub fn stored_range(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Vec<(AuditEvent, Option<Opening>)>, SearchError> {
        self.map_stored_range(from, to, FETCH_RUN_HITS, |event, opening| (event, opening))
    }

    /// [`Searcher::stored_range`], each event passed through `each` on the
    /// thread that fetched it, in runs of at least `run` neighbouring
    /// events a thread.
    pub fn map_stored_range<T: Send>(
        &self,
        from: u64,
        to: u64,
        run: usize,
        each: impl Fn(AuditEvent, Option<Opening>) -> T + Sync + Send,
    ) -> Result<Vec<T>, SearchError> {
        let views = Self::views(&self.partitions.overlapping(None, None))?;
        let hits = log_order::in_seqs(&views, None, from..to)?;
        // The seeded salts of the range, made in one walk a batch.
        let salts = self.seeds.as_deref().map(|seeds| seeds.salts(from, to));
        let seeded = |seq| salts.as_ref()?.get(seq);
        hits.par_iter()
            .with_min_len(run.max(1))
            .map(|hit| {
                let (event, opening) = self.fetch_hit(&views, hit, Some(&seeded))?;
                Ok(each(event, opening))
            })
            .collect()
    }

    fn add_scope(&self, scope: &ReadScope, must: &mut Vec<Box<dyn Query>>) {
        for term in self.scope_terms(scope) {
            must.push(term_query(term));
        }
    }

    /// The terms every event `scope` may read holds.
    fn scope_terms(&self, scope: &ReadScope) -> Vec<Term> {
        let s = &self.schema;
        match scope {
            ReadScope::All => Vec::new(),
            ReadScope::Subject(subject) => vec![Term::from_field_text(s.subject, subject)],
            ReadScope::SubjectAndAccess { subject, access_id } => vec![
                Term::from_field_text(s.subject, subject),
                Term::from_field_text(s.access_id, access_id),
            ],
        }
    }

    /// The query for `filter` inside `scope`, and the time range it
    /// covers. `Err(Invalid)` names the filter field that is wrong.
    pub(crate) fn matching(
        &self,
        filter: &EventFilter,
        scope: &ReadScope,
    ) -> Result<Matching, SearchError> {
        let (from, to) = time_range(filter)?;
        let query = self.build_query(filter, from, to, scope)?;
        Ok(Matching { query, from, to })
    }

    fn build_query(
        &self,
        r: &EventFilter,
        from: Option<i64>,
        to: Option<i64>,
        scope: &ReadScope,
    ) -> Result<Box<dyn Query>, SearchError> {
        let s = &self.schema;
        // The caller's scope comes first and is AND-ed with everything
        // else: the request's own filters can only narrow it. Single terms
        // go apart from the other filters, for `AllOf` to join.
        let mut terms = self.scope_terms(scope);
        let mut statuses = Vec::new();
        let mut must: Vec<Box<dyn Query>> = Vec::new();
        if from.is_some() || to.is_some() {
            must.push(Box::new(time_range::TimeRange::new(from, to)));
        }
        match r.actions.as_slice() {
            [] => {}
            [action] if !action.ends_with('*') => {
                terms.push(Term::from_field_text(s.action, action));
            }
            actions => {
                must.push(actions_query(s, actions).map_err(|e| invalid("actions", e))?);
            }
        }
        for (field, values) in [
            (s.access_id, &r.access_ids),
            (s.subject, &r.subjects),
            (s.type_, &r.types),
            (s.source_name, &r.source_names),
        ] {
            match values.as_slice() {
                [] => {}
                [value] => terms.push(Term::from_field_text(field, value)),
                values => must.push(one_of(values.iter().map(|v| term(field, v)).collect())),
            }
        }
        if !r.ips.is_empty() {
            let mut any: Vec<Box<dyn Query>> = Vec::new();
            for ip in &r.ips {
                let (lo, hi) = parse_ip_filter(ip)?;
                if lo == hi {
                    any.push(Box::new(TermQuery::new(
                        Term::from_field_ip_addr(s.ip, lo),
                        IndexRecordOption::Basic,
                    )));
                } else {
                    // Through the term dictionary (`ip` has no fast
                    // column): a CIDR block holds few of the addresses
                    // seen, and reading their postings beat scanning every
                    // event's address (docs/benchmarks-history.md, CIDR).
                    any.push(Box::new(InvertedIndexRangeQuery::new(
                        Bound::Included(Term::from_field_ip_addr(s.ip, lo)),
                        Bound::Included(Term::from_field_ip_addr(s.ip, hi)),
                    )));
                }
            }
            must.push(one_of(any));
        }
        if let Some((lo, hi)) = status_range(r)? {
            statuses.push(term_union::StatusRangeQuery::new(s.status, lo, hi));
        }
        if !r.text.is_empty() {
            let words = self.words(&r.text);
            if words.is_empty() {
                return Err(invalid("text", "no searchable words (letters or digits)"));
            }
            terms.extend(words.iter().map(|word| Term::from_field_text(s.text, word)));
        }
        if !r.query.trim().is_empty() {
            if let Some(filters) = query_string::as_filters(&r.query, s, |t| self.words(t)) {
                terms.extend(filters.terms);
                statuses.extend(filters.statuses);
            } else {
                must.push(self.parse_query(&r.query)?);
            }
        }
        // The trail of reads (`audit-log/auditd`) would otherwise grow with
        // every search; it shows only when asked for by type.
        let wants_trail = wants_trail(r);
        let query: Box<dyn Query> = match (terms.is_empty() && statuses.is_empty(), must.len()) {
            (true, 0) => Box::new(AllQuery),
            (true, 1) => must.remove(0),
            _ => Box::new(dense::AllOf::new(terms, statuses, must, self.dense.clone())),
        };
        Ok(match wants_trail {
            true => query,
            false => Box::new(exclude::ExcludeTerm::new(
                query,
                Term::from_field_text(s.type_, TRAIL_TYPE),
            )),
        })
    }

    /// `query` read by Tantivy's `QueryParser`, free text going to `text`.
    fn parse_query(&self, query: &str) -> Result<Box<dyn Query>, SearchError> {
        let s = &self.schema;
        let parser = QueryParser::for_index(&self.parsing, vec![s.text]);
        let parsed = parser
            .parse_query(query)
            .map_err(|e| invalid("query", e.to_string()))?;
        // Some queries parse but name what the schema lacks (`x:*` is an
        // exists-query on field `x`): building the weight finds those now,
        // rather than as an index error mid-search.
        parsed
            .weight(EnableScoring::disabled_from_schema(&s.schema))
            .map_err(|e| invalid("query", e.to_string()))?;
        Ok(parsed)
    }

    /// `text` split the way the index splits it.
    fn words(&self, text: &str) -> Vec<String> {
        let mut analyzer = self.text_analyzer.clone();
        let mut stream = analyzer.token_stream(text);
        let mut words = Vec::new();
        while let Some(token) = stream.next() {
            if !words.contains(&token.text) {
                words.push(token.text.clone());
            }
        }
        words
    }
}

/// Whether `r` asks for the trail of reads (`audit-log/auditd`), which
/// every other filter leaves out.
pub(crate) fn wants_trail(r: &EventFilter) -> bool {
    r.types.iter().any(|t| t == TRAIL_TYPE) || r.query.contains(TRAIL_TYPE)
}

/// Events whose action is one of `actions` (`auth.*` is a prefix).
pub(crate) fn actions_query(s: &AuditSchema, actions: &[String]) -> Result<Box<dyn Query>, String> {
    let mut any: Vec<Box<dyn Query>> = Vec::new();
    for action in actions {
        match action.strip_suffix('*') {
            Some(prefix) => any.push(prefix_query(s.action, prefix)?),
            None => any.push(term(s.action, action)),
        }
    }
    Ok(one_of(any))
}

/// Terms of `field` that start with `prefix`.
pub(crate) fn prefix_query(
    field: tantivy::schema::Field,
    prefix: &str,
) -> Result<Box<dyn Query>, String> {
    Ok(Box::new(
        term_union::PrefixQuery::new(field, prefix).map_err(|e| e.to_string())?,
    ))
}

pub(crate) fn term(field: tantivy::schema::Field, value: &str) -> Box<dyn Query> {
    term_query(Term::from_field_text(field, value))
}

/// The events that hold `term`.
pub(crate) fn term_query(term: Term) -> Box<dyn Query> {
    Box::new(TermQuery::new(term, IndexRecordOption::Basic))
}

fn one_of(mut queries: Vec<Box<dyn Query>>) -> Box<dyn Query> {
    if queries.len() == 1 {
        return queries.pop().expect("one");
    }
    Box::new(BooleanQuery::new(
        queries.into_iter().map(|q| (Occur::Should, q)).collect(),
    ))
}

/// What a filter matches: its query (the caller's scope included) and its
/// time range `[from, to)` in microseconds.
pub(crate) struct Matching {
    pub query: Box<dyn Query>,
    pub from: Option<i64>,
    pub to: Option<i64>,
}

/// The filter part of a search request: the same fields, the same meaning.
pub fn filter_of(r: &SearchRequest) -> EventFilter {
    EventFilter {
        from_time: r.from_time,
        to_time: r.to_time,
        actions: r.actions.clone(),
        access_ids: r.access_ids.clone(),
        subjects: r.subjects.clone(),
        ips: r.ips.clone(),
        status_min: r.status_min,
        status_max: r.status_max,
        outcome: r.outcome,
        types: r.types.clone(),
        source_names: r.source_names.clone(),
        text: r.text.clone(),
        query: r.query.clone(),
    }
}

/// A search request for `filter`, with every other field at its default.
pub fn request_of(filter: EventFilter) -> SearchRequest {
    SearchRequest {
        from_time: filter.from_time,
        to_time: filter.to_time,
        actions: filter.actions,
        access_ids: filter.access_ids,
        subjects: filter.subjects,
        ips: filter.ips,
        status_min: filter.status_min,
        status_max: filter.status_max,
        outcome: filter.outcome,
        types: filter.types,
        source_names: filter.source_names,
        text: filter.text,
        query: filter.query,
        ..SearchRequest::default()
    }
}

/// `[from, to)` in microseconds, checked.
fn time_range(r: &EventFilter) -> Result<(Option<i64>, Option<i64>), SearchError> {
    // Checked before any arithmetic: the values come straight off the wire.
    let micros = |field: &'static str,
                  ts: &Option<prost_types::Timestamp>|
     -> Result<Option<i64>, SearchError> {
        let Some(ts) = ts else { return Ok(None) };
        if !(0..1_000_000_000).contains(&ts.nanos) {
            return Err(invalid(field, "nanos out of range 0..1e9"));
        }
        ts.seconds
            .checked_mul(1_000_000)
            .and_then(|s| s.checked_add(i64::from(ts.nanos) / 1000))
            .map(Some)
            .ok_or_else(|| invalid(field, "out of range"))
    };
    let from = micros("from_time", &r.from_time)?;
    let to = micros("to_time", &r.to_time)?;
    if let (Some(f), Some(t)) = (from, to) {
        if f >= t {
            return Err(invalid("to_time", "must be after from_time"));
        }
    }
    Ok((from, to))
}

/// The inclusive status range the request asks for, if any. Either bound,
/// and either outcome, leaves out events without a status (0).
fn status_range(r: &EventFilter) -> Result<Option<(i64, i64)>, SearchError> {
    let outcome = Outcome::try_from(r.outcome)
        .map_err(|_| invalid("outcome", format!("unknown value {}", r.outcome)))?;
    let (mut lo, mut hi) = match outcome {
        Outcome::Any => (i64::MIN, i64::MAX),
        Outcome::Success => (1, 399),
        Outcome::Failure => (400, i64::MAX),
    };
    if outcome == Outcome::Any && r.status_min.is_none() && r.status_max.is_none() {
        return Ok(None);
    }
    lo = lo.max(1);
    if let Some(min) = r.status_min {
        lo = lo.max(i64::from(min));
    }
    if let Some(max) = r.status_max {
        hi = hi.min(i64::from(max));
    }
    if let (Some(min), Some(max)) = (r.status_min, r.status_max) {
        if min > max {
            return Err(invalid("status_max", "must be at least status_min"));
        }
    }
    Ok(Some((lo, hi)))
}

/// An address gives `(ip, ip)`; a CIDR block its first and last address.
/// IPv4 comes out IPv4-mapped, as the index holds it.
pub fn parse_ip_filter(
    value: &str,
) -> Result<(std::net::Ipv6Addr, std::net::Ipv6Addr), SearchError> {
    if value.contains('/') {
        let net: ipnet::IpNet = value.parse().map_err(|_| {
            invalid(
                "ips",
                format!("{value:?} is not an address or a CIDR block"),
            )
        })?;
        if net.addr() != net.network() {
            return Err(invalid(
                "ips",
                format!("{value:?} has host bits set; did you mean {}?", net.trunc()),
            ));
        }
        Ok((to_v6(net.network()), to_v6(net.broadcast())))
    } else {
        let ip: IpAddr = value.parse().map_err(|_| {
            invalid(
                "ips",
                format!("{value:?} is not an address or a CIDR block"),
            )
        })?;
        Ok((to_v6(ip), to_v6(ip)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_garbage_is_refused() {
        let c = Cursor {
            time: 1_700_000_000_123_456,
            seq: 4_207,
            snapshot: 9_900,
            ascending: true,
        };
        assert_eq!(Cursor::decode(&c.encode(), "page_token").unwrap(), c);
        for bad in ["", "x", "cDE6MQ", &URL_SAFE_NO_PAD.encode("p1:1:2:3:4")] {
            assert!(
                matches!(
                    Cursor::decode(bad, "page_token"),
                    Err(SearchError::Invalid {
                        field: "page_token",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn ip_filters() {
        let (lo, hi) = parse_ip_filter("10.1.0.0/16").unwrap();
        assert_eq!(
            lo,
            "10.1.0.0"
                .parse::<std::net::Ipv4Addr>()
                .unwrap()
                .to_ipv6_mapped()
        );
        assert_eq!(
            hi,
            "10.1.255.255"
                .parse::<std::net::Ipv4Addr>()
                .unwrap()
                .to_ipv6_mapped()
        );
        let (lo, hi) = parse_ip_filter("::ffff:10.0.0.1").unwrap();
        assert_eq!(lo, hi);
        assert_eq!(
            lo,
            "10.0.0.1"
                .parse::<std::net::Ipv4Addr>()
                .unwrap()
                .to_ipv6_mapped()
        );
        for bad in ["10.0.0.0/33", "nope", "10.0.0.1/8", "2001:db8::/129"] {
            assert!(parse_ip_filter(bad).is_err(), "{bad}");
        }
    }
}
