//! Terms that a large share of a segment's events hold, read from a bit
//! set of the segment's documents instead of their postings, and the
//! filters of a search joined with them ([`AllOf`]).
//!
//! A search's words and filters must all match. Tantivy joins them by
//! leapfrog: each match of the rarest is sought in the postings of the
//! others. When every one of them is frequent (the most frequent subject
//! and two action words: `chloe0001 accesses create`), that is a seek a
//! posting of the rarest, hundreds of thousands over 10 M events, and the
//! exact count up to `limits.exact_total_hits` has to go through all of
//! them: most of free text's slowest queries was that count
//! (docs/benchmarks-history.md, "2026-12-05 (3)"). Here a term held by at
//! least one event in [`DENSE_SHARE`] of a big segment is read from a bit
//! set, the bit sets of a search's dense terms are joined a 64-bit word at
//! a time, and the rest of the search seeks in the result, or, where the
//! rest's cheapest scorer is the sparser, has each of that scorer's
//! matches looked up in it ([`Filtered`]).
//!
//! A status range (`outcome`, `status_min`/`max`, `status:[400 TO 499]`)
//! is a union of a few status terms; when they are dense together, the
//! union's bit set joins the others. Otherwise each seek into the status
//! fast column refilled a window of thousands of documents, and counting
//! the matches of `action + 4xx` went through the column over millions of
//! events (docs/benchmarks-history.md, "2026-12-05 (5)").
//!
//! The bit sets are made off the search's path, on a thread of their own
//! at the lowest CPU priority, the first time a search meets a dense term
//! in a segment (until then it reads the postings), and kept under a byte
//! budget (`index.dense_terms_bytes`), the least recently used going
//! first. Which terms they were is saved when the daemon stops and their
//! sets made again at the next start ([`remembered`]).
//! Postings hold deleted documents too, and so do the bit sets: deletes
//! are the caller's to skip, as with any scorer.

mod remembered;

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use lru::LruCache;
use tantivy::index::SegmentId;
use tantivy::query::{
    intersect_scorers, BooleanQuery, EnableScoring, Explanation, Occur, Query, Scorer, Weight,
};
use tantivy::schema::{IndexRecordOption, Schema};
use tantivy::{DocId, DocSet, Score, SegmentReader, Term, TERMINATED};

use super::term_query;
use super::term_union::StatusRangeQuery;
use crate::metrics as m;

/// A term is dense in a segment when at least one of this many of the
/// segment's documents holds it: its bit set then takes at most 64 bits
/// a posting.
pub const DENSE_SHARE: u32 = 64;

/// Segments smaller than this are read from their postings: a small
/// segment's postings are read quickly enough, and there are many of
/// them.
pub const MIN_SEGMENT_DOCS: u32 = 1 << 16;

/// Bit sets waiting to be made, at most; a search that meets a dense term
/// with the queue full reads its postings, and a later one asks again.
pub const BUILD_QUEUE: usize = 64;

/// The documents of one segment that hold one term.
pub struct Bits {
    words: Box<[u64]>,
    /// Documents in the set.
    len: u32,
}

impl Bits {
    /// The documents of the postings of any of `terms` in the segment.
    fn of_terms(reader: &SegmentReader, terms: &[Term]) -> tantivy::Result<Bits> {
        let mut words = vec![0u64; (reader.max_doc() as usize).div_ceil(64)].into_boxed_slice();
        for term in terms {
            let index = reader.inverted_index(term.field())?;
            if let Some(mut postings) = index.read_block_postings(term, IndexRecordOption::Basic)? {
                while !postings.docs().is_empty() {
                    for &doc in postings.docs() {
                        words[(doc / 64) as usize] |= 1 << (doc % 64);
                    }
                    postings.advance();
                }
            }
        }
        let len = words.iter().map(|word| word.count_ones()).sum();
        Ok(Bits { words, len })
    }

    fn bytes(&self) -> u64 {
        self.words.len() as u64 * 8
    }
}

/// What the cache holds: a segment's bit set of a term, or of a union of
/// terms (the statuses of a range).
type Key = (SegmentId, Box<[Term]>);

struct Build {
    key: Key,
    reader: SegmentReader,
}

struct Cache {
    sets: LruCache<Key, Arc<Bits>>,
    bytes: u64,
    /// Asked for and not yet made.
    pending: HashSet<Key>,
}

struct Shared {
    cache: Mutex<Cache>,
    /// Notified each time the pending set shrinks.
    built: Condvar,
    budget: u64,
}

/// The bit sets of dense terms, shared by every search of a daemon.
pub struct DenseTerms {
    shared: Arc<Shared>,
    min_docs: u32,
    queue: usize,
    /// The builder's queue, its thread started on the first request.
    builds: OnceLock<crossbeam_channel::Sender<Build>>,
    /// Where the terms of the sets kept are saved, and what was saved.
    remembered: Option<remembered::Remembered>,
}

impl std::fmt::Debug for DenseTerms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DenseTerms")
            .field("budget", &self.shared.budget)
            .finish_non_exhaustive()
    }
}

impl DenseTerms {
    /// Bit sets of up to `budget` bytes in all; 0 keeps none, and every
    /// term is read from its postings.
    pub fn new(budget: u64) -> DenseTerms {
        DenseTerms::with_limits(budget, MIN_SEGMENT_DOCS, BUILD_QUEUE)
    }

    fn with_limits(budget: u64, min_docs: u32, queue: usize) -> DenseTerms {
        DenseTerms {
            shared: Arc::new(Shared {
                cache: Mutex::new(Cache {
                    sets: LruCache::unbounded(),
                    bytes: 0,
                    pending: HashSet::new(),
                }),
                built: Condvar::new(),
                budget,
            }),
            min_docs,
            queue,
            builds: OnceLock::new(),
            remembered: None,
        }
    }

    /// The same, saving which terms' sets it keeps at `path` when asked
    /// ([`DenseTerms::save`]), and knowing which the last run saved there
    /// ([`DenseTerms::make_remembered`]).
    pub fn remembering(mut self, path: &Path, schema: Schema) -> DenseTerms {
        self.remembered = Some(remembered::Remembered::load(path, schema));
        self
    }

    /// Saves the terms of every set kept, the most recently used first
    /// (nothing when not remembering).
    pub fn save(&self) -> std::io::Result<()> {
        let Some(remembered) = &self.remembered else {
            return Ok(());
        };
        let sets: Vec<Box<[Term]>> = {
            let cache = self.shared.cache.lock().expect("the dense term cache");
            let mut seen = HashSet::new();
            cache
                .sets
                .iter()
                .filter(|((_, terms), _)| seen.insert(terms.clone()))
                .map(|((_, terms), _)| terms.clone())
                .collect()
        };
        remembered.save(sets.iter().map(|set| &set[..]))
    }

    /// Makes, on the caller's thread, the sets of the terms the last run
    /// saved in the segments of `searcher` where they are dense and not
    /// made yet, the most recently used first, until the budget is full:
    /// how many it made. What it would evict, it does not make.
    pub fn make_remembered(&self, searcher: &tantivy::Searcher) -> usize {
        let Some(remembered) = &self.remembered else {
            return 0;
        };
        let mut made = 0;
        for terms in remembered.previous() {
            for reader in searcher.segment_readers() {
                let Ok(Some((key, bytes))) = self.dense_key(reader, &terms) else {
                    continue;
                };
                {
                    let cache = self.shared.cache.lock().expect("the dense term cache");
                    if cache.bytes + bytes > self.shared.budget {
                        return made;
                    }
                    if cache.sets.contains(&key) || cache.pending.contains(&key) {
                        continue;
                    }
                }
                keep(&self.shared, key, Bits::of_terms(reader, &terms));
                made += 1;
            }
        }
        made
    }

    /// Drops every set one of whose terms is among `names`, kept or saved
    /// by the last run, and rewrites the saved file now: erasing a
    /// subject leaves no copy of its name here (`app/subject.rs`).
    pub fn forget(&self, names: &[Term]) -> std::io::Result<()> {
        let named = |set: &[Term]| set.iter().any(|term| names.contains(term));
        {
            let mut cache = self.shared.cache.lock().expect("the dense term cache");
            let gone: Vec<Key> = cache
                .sets
                .iter()
                .filter(|((_, terms), _)| named(terms))
                .map(|(key, _)| key.clone())
                .collect();
            for key in gone {
                if let Some(bits) = cache.sets.pop(&key) {
                    cache.bytes -= bits.bytes();
                }
            }
            metrics::gauge!(m::DENSE_TERM_BYTES).set(cache.bytes as f64);
        }
        match &self.remembered {
            Some(remembered) => {
                remembered.forget(named);
                self.save()
            }
            None => Ok(()),
        }
    }

    /// The cache's key of `terms` in the segment and the bytes of their
    /// set, if they are dense there together and the budget could hold
    /// the set.
    fn dense_key(
        &self,
        reader: &SegmentReader,
        terms: &[Term],
    ) -> tantivy::Result<Option<(Key, u64)>> {
        // A set the budget cannot hold is not asked for: it would be made
        // and thrown away at every search.
        let set_bytes = (u64::from(reader.max_doc())).div_ceil(64) * 8;
        if set_bytes > self.shared.budget || reader.max_doc() < self.min_docs {
            return Ok(None);
        }
        let mut doc_freq = 0u64;
        for term in terms {
            doc_freq += u64::from(reader.inverted_index(term.field())?.doc_freq(term)?);
        }
        if doc_freq * u64::from(DENSE_SHARE) < u64::from(reader.max_doc()) {
            return Ok(None);
        }
        Ok(Some(((reader.segment_id(), Box::from(terms)), set_bytes)))
    }

    /// The bit set of the documents holding any of `terms` in the segment,
    /// if they are dense there together and the set is made; their first
    /// look asks for it.
    fn bits(&self, reader: &SegmentReader, terms: &[Term]) -> tantivy::Result<Option<Arc<Bits>>> {
        let Some((key, _)) = self.dense_key(reader, terms)? else {
            return Ok(None);
        };
        let mut cache = self.shared.cache.lock().expect("the dense term cache");
        if let Some(bits) = cache.sets.get(&key) {
            return Ok(Some(bits.clone()));
        }
        if cache.pending.insert(key.clone()) {
            let sent = self.builder().try_send(Build {
                key: key.clone(),
                reader: reader.clone(),
            });
            if sent.is_err() {
                cache.pending.remove(&key);
                metrics::counter!(m::DENSE_TERM_BUILDS_DROPPED).increment(1);
            }
        }
        Ok(None)
    }

    fn builder(&self) -> &crossbeam_channel::Sender<Build> {
        self.builds.get_or_init(|| {
            let (sender, receiver) = crossbeam_channel::bounded(self.queue);
            let shared = self.shared.clone();
            let started = std::thread::Builder::new()
                .name("auditd-dense".into())
                .spawn(move || {
                    crate::priority::lower_this_threads_priority("the dense term builder");
                    build_all(&shared, &receiver)
                });
            if let Err(error) = started {
                // The receiver is gone with the closure: every request is
                // then dropped, and searches read postings.
                tracing::error!(%error, "the dense term builder could not start");
            }
            sender
        })
    }

    /// Waits until every bit set asked for is made (or dropped).
    #[cfg(test)]
    fn wait_for_builds(&self) {
        let cache = self.shared.cache.lock().expect("the dense term cache");
        let _idle = self
            .shared
            .built
            .wait_while(cache, |cache| !cache.pending.is_empty())
            .expect("the dense term cache");
    }

    /// Bytes of the bit sets kept.
    #[cfg(test)]
    fn bytes(&self) -> u64 {
        self.shared
            .cache
            .lock()
            .expect("the dense term cache")
            .bytes
    }

    /// Bit sets kept.
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.shared.cache.lock().unwrap().sets.len()
    }

    /// One whose builder is not started: its queue is the caller's.
    #[cfg(test)]
    fn unstarted(
        budget: u64,
        min_docs: u32,
        queue: usize,
    ) -> (DenseTerms, crossbeam_channel::Receiver<Build>) {
        let dense = DenseTerms::with_limits(budget, min_docs, queue);
        let (sender, receiver) = crossbeam_channel::bounded(queue);
        dense.builds.set(sender).expect("not started");
        (dense, receiver)
    }
}

/// The builder's loop: until the last `DenseTerms` is dropped.
fn build_all(shared: &Shared, receiver: &crossbeam_channel::Receiver<Build>) {
    for Build { key, reader } in receiver {
        let made = Bits::of_terms(&reader, &key.1);
        drop(reader);
        keep(shared, key, made);
    }
}

/// Keeps a set made (no longer pending), the least recently used going
/// while the budget is passed.
fn keep(shared: &Shared, key: Key, made: tantivy::Result<Bits>) {
    let mut cache = shared.cache.lock().expect("the dense term cache");
    cache.pending.remove(&key);
    match made {
        Ok(bits) if bits.bytes() <= shared.budget => {
            metrics::counter!(m::DENSE_TERM_BUILDS).increment(1);
            cache.bytes += bits.bytes();
            if let Some(old) = cache.sets.put(key, Arc::new(bits)) {
                cache.bytes -= old.bytes();
            }
            while cache.bytes > shared.budget {
                let Some((_, evicted)) = cache.sets.pop_lru() else {
                    break;
                };
                cache.bytes -= evicted.bytes();
            }
            metrics::gauge!(m::DENSE_TERM_BYTES).set(cache.bytes as f64);
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "a dense term's bit set could not be made"),
    }
    shared.built.notify_all();
}

/// Every one of `terms`, `statuses` and `others` must match.
#[derive(Debug)]
pub struct AllOf {
    terms: Vec<Term>,
    /// Status ranges: where a range's statuses are dense together in a
    /// segment, their union's bit set joins the dense terms'.
    statuses: Vec<StatusRangeQuery>,
    others: Vec<Box<dyn Query>>,
    dense: Arc<DenseTerms>,
}

impl Clone for AllOf {
    fn clone(&self) -> Self {
        AllOf {
            terms: self.terms.clone(),
            statuses: self.statuses.clone(),
            others: self.others.iter().map(|q| q.box_clone()).collect(),
            dense: self.dense.clone(),
        }
    }
}

impl AllOf {
    /// At least one term, status range or other query.
    pub fn new(
        terms: Vec<Term>,
        statuses: Vec<StatusRangeQuery>,
        others: Vec<Box<dyn Query>>,
        dense: Arc<DenseTerms>,
    ) -> AllOf {
        let nothing = terms.is_empty() && statuses.is_empty() && others.is_empty();
        assert!(!nothing, "AllOf of nothing");
        AllOf {
            terms,
            statuses,
            others,
            dense,
        }
    }

    /// The same as one Boolean query: what explains.
    fn as_boolean(&self) -> BooleanQuery {
        let terms = self
            .terms
            .iter()
            .map(|term| (Occur::Must, term_query(term.clone())));
        let statuses = self.statuses.iter().map(|q| {
            let query: Box<dyn Query> = Box::new(q.clone());
            (Occur::Must, query)
        });
        let others = self.others.iter().map(|q| (Occur::Must, q.box_clone()));
        BooleanQuery::new(terms.chain(statuses).chain(others).collect())
    }
}

impl Query for AllOf {
    fn weight(&self, scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        let terms = self
            .terms
            .iter()
            .map(|term| Ok((term.clone(), term_query(term.clone()).weight(scoring)?)))
            .collect::<tantivy::Result<_>>()?;
        let statuses = self
            .statuses
            .iter()
            .map(|q| q.weight(scoring))
            .collect::<tantivy::Result<_>>()?;
        let others = self
            .others
            .iter()
            .map(|q| q.weight(scoring))
            .collect::<tantivy::Result<_>>()?;
        Ok(Box::new(AllOfWeight {
            query: self.clone(),
            terms,
            statuses,
            others,
        }))
    }

    fn query_terms<'a>(&'a self, visitor: &mut dyn FnMut(&'a Term, bool)) {
        for term in &self.terms {
            visitor(term, false);
        }
        for query in &self.others {
            query.query_terms(visitor);
        }
    }
}

struct AllOfWeight {
    query: AllOf,
    terms: Vec<(Term, Box<dyn Weight>)>,
    /// One for each of the query's `statuses`, in order.
    statuses: Vec<Box<dyn Weight>>,
    others: Vec<Box<dyn Weight>>,
}

impl Weight for AllOfWeight {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        let mut scorers: Vec<Box<dyn Scorer>> = Vec::new();
        let mut dense = Vec::new();
        for (term, weight) in &self.terms {
            match self.query.dense.bits(reader, std::slice::from_ref(term))? {
                Some(bits) => dense.push(bits),
                None => scorers.push(weight.scorer(reader, boost)?),
            }
        }
        for (range, weight) in self.query.statuses.iter().zip(&self.statuses) {
            let bits = match range.segment_terms(reader)? {
                Some(terms) if !terms.is_empty() => self.query.dense.bits(reader, &terms)?,
                _ => None,
            };
            match bits {
                Some(bits) => dense.push(bits),
                None => scorers.push(weight.scorer(reader, boost)?),
            }
        }
        for weight in &self.others {
            scorers.push(weight.scorer(reader, boost)?);
        }
        if dense.is_empty() {
            return Ok(intersect_scorers(scorers, reader.max_doc()));
        }
        let joined = Joined::new(dense);
        // Tantivy's intersection leads with the cheapest scorer and
        // leapfrogs it with the next. Where the join would be that next
        // one, it filters the lead instead. Further back, as with a lead
        // and a second sparse term, it is left to check what those two
        // agree on: the two terms keep Tantivy's intersection of term
        // scorers, and a join of `success` alone would pass nearly every
        // document of the lead to them (100 M events, BENCHMARKS.md).
        scorers.sort_by_key(|scorer| scorer.cost());
        let size = u64::from(joined.size_hint());
        let filters_the_lead = match scorers.as_slice() {
            [lead] => lead.cost() < size,
            [lead, next, ..] => lead.cost() < size && size <= next.cost(),
            [] => false,
        };
        if filters_the_lead {
            let lead = scorers.remove(0);
            scorers.insert(0, Box::new(Filtered::new(lead, joined)));
        } else {
            scorers.push(Box::new(joined));
        }
        Ok(intersect_scorers(scorers, reader.max_doc()))
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        let scoring = EnableScoring::disabled_from_schema(reader.schema());
        self.query
            .as_boolean()
            .weight(scoring)?
            .explain(reader, doc)
    }

    fn count(&self, reader: &SegmentReader) -> tantivy::Result<u32> {
        let alone = self.statuses.is_empty() && self.others.is_empty();
        if let ([(_, term)], true) = (self.terms.as_slice(), alone) {
            // One term: its dictionary entry, without deletes.
            return term.count(reader);
        }
        let mut scorer = self.scorer(reader, 1.0)?;
        Ok(match reader.alive_bitset() {
            Some(alive) => scorer.count(alive),
            None => scorer.count_including_deleted(),
        })
    }
}

/// The documents in every one of some bit sets of a segment, in order:
/// their words joined as they are read, so that a search that needs only
/// the newest end of a segment reads no more of it than that.
struct Joined {
    sets: Vec<Arc<Bits>>,
    doc: DocId,
    /// Words in each set.
    words: usize,
}

impl Joined {
    fn new(sets: Vec<Arc<Bits>>) -> Joined {
        let words = sets.first().map_or(0, |set| set.words.len());
        debug_assert!(sets.iter().all(|set| set.words.len() == words));
        let mut joined = Joined {
            sets,
            doc: 0,
            words,
        };
        joined.doc = joined.first_at_or_after(0);
        joined
    }

    /// Word `i` of the join.
    #[inline]
    fn word(&self, i: usize) -> u64 {
        self.sets
            .iter()
            .fold(u64::MAX, |word, set| word & set.words[i])
    }

    /// Whether every set holds `doc`.
    #[inline]
    fn holds(&self, doc: DocId) -> bool {
        let i = (doc / 64) as usize;
        i < self.words && self.word(i) & 1 << (doc % 64) != 0
    }

    /// The first document at or after `target`, or `TERMINATED`.
    #[inline]
    fn first_at_or_after(&self, target: DocId) -> DocId {
        let mut i = (target / 64) as usize;
        if i >= self.words {
            return TERMINATED;
        }
        let mut word = self.word(i) & (u64::MAX << (target % 64));
        loop {
            if word != 0 {
                return i as u32 * 64 + word.trailing_zeros();
            }
            i += 1;
            if i >= self.words {
                return TERMINATED;
            }
            word = self.word(i);
        }
    }
}

impl DocSet for Joined {
    fn advance(&mut self) -> DocId {
        if self.doc != TERMINATED {
            self.doc = self.first_at_or_after(self.doc + 1);
        }
        self.doc
    }

    fn seek(&mut self, target: DocId) -> DocId {
        if target > self.doc {
            self.doc = self.first_at_or_after(target);
        }
        self.doc
    }

    fn doc(&self) -> DocId {
        self.doc
    }

    /// The smallest set's size: what the join holds at most.
    fn size_hint(&self) -> u32 {
        self.sets.iter().map(|set| set.len).min().unwrap_or(0)
    }

    fn count_including_deleted(&mut self) -> u32 {
        if self.doc == TERMINATED {
            return 0;
        }
        let i = (self.doc / 64) as usize;
        let first = (self.word(i) & (u64::MAX << (self.doc % 64))).count_ones();
        let rest: u32 = (i + 1..self.words).map(|j| self.word(j).count_ones()).sum();
        self.doc = TERMINATED;
        first + rest
    }
}

impl Scorer for Joined {
    fn score(&mut self) -> Score {
        1.0
    }
}

/// The matches of a search's cheapest scorer (`lead`) that are also in a
/// join of bit sets, for when that scorer reads fewer postings than the
/// join holds (a sparse subject with a dense action): each of its matches
/// is looked up in the join, one word read, as it advances. Tantivy's
/// intersection would leapfrog: seek the join to its next document, then
/// the scorer's postings to that one, two seeks a step where this does
/// one advance (about half the CPU of an action with a subject of some
/// 150,000 events, counted in full: BENCHMARKS.md, issue 17). The other
/// scorers then seek to what passes, as in any intersection.
struct Filtered {
    lead: Box<dyn Scorer>,
    join: Joined,
}

impl Filtered {
    fn new(lead: Box<dyn Scorer>, join: Joined) -> Filtered {
        let mut filtered = Filtered { lead, join };
        filtered.skip_to_a_match();
        filtered
    }

    /// Moves the lead on until the join holds its document.
    fn skip_to_a_match(&mut self) -> DocId {
        let mut doc = self.lead.doc();
        while doc != TERMINATED && !self.join.holds(doc) {
            doc = self.lead.advance();
        }
        doc
    }
}

impl DocSet for Filtered {
    fn advance(&mut self) -> DocId {
        self.lead.advance();
        self.skip_to_a_match()
    }

    fn seek(&mut self, target: DocId) -> DocId {
        self.lead.seek(target);
        self.skip_to_a_match()
    }

    fn doc(&self) -> DocId {
        self.lead.doc()
    }

    fn size_hint(&self) -> u32 {
        self.lead.size_hint().min(self.join.size_hint())
    }

    /// The lead's: what reading it all takes.
    fn cost(&self) -> u64 {
        self.lead.cost()
    }
}

impl Scorer for Filtered {
    fn score(&mut self) -> Score {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tantivy::collector::{Count, DocSetCollector};
    use tantivy::query::RangeQuery;
    use tantivy::schema::{Field, Schema, FAST, INDEXED, STRING};
    use tantivy::{doc, Index, IndexWriter};

    /// Segments of 3,000 documents (dense from 1,000 up in these tests):
    /// `a` in half of them, `b` in a third, `c` in a fifth, `rare` in
    /// one in 100, `n` their number; the third segment has deletes.
    struct Fixture {
        index: Index,
        a: Field,
        b: Field,
        c: Field,
        n: Field,
        /// 200 (70 %), 404, 500 and 503 (10 % each), and 401 (1 in 300).
        s: Field,
    }

    fn fixture() -> Fixture {
        let mut schema = Schema::builder();
        let a = schema.add_text_field("a", STRING);
        let b = schema.add_text_field("b", STRING);
        let c = schema.add_text_field("c", STRING);
        let n = schema.add_u64_field("n", INDEXED | FAST);
        let s = schema.add_i64_field("s", INDEXED | FAST);
        let index = Index::create_in_ram(schema.build());
        let mut writer: IndexWriter = index.writer_with_num_threads(1, 15_000_000).unwrap();
        for segment in 0..3u64 {
            for i in 0..3000u64 {
                let number = segment * 3000 + i;
                let value = |every: u64| if number % every == 0 { "x" } else { "-" };
                let rare = if number % 100 == 7 { "rare" } else { value(5) };
                let status: i64 = match (number % 300, number % 10) {
                    (1, _) => 401,
                    (_, 0..=6) => 200,
                    (_, 7) => 404,
                    (_, 8) => 500,
                    _ => 503,
                };
                let doc = doc!(a => value(2), b => value(3), c => rare, n => number, s => status);
                writer.add_document(doc).unwrap();
            }
            writer.commit().unwrap();
        }
        writer.delete_term(Term::from_field_u64(n, 6030));
        writer.delete_term(Term::from_field_u64(n, 6060));
        writer.commit().unwrap();
        Fixture {
            index,
            a,
            b,
            c,
            n,
            s,
        }
    }

    fn x(field: Field) -> Term {
        Term::from_field_text(field, "x")
    }

    fn no() -> Vec<StatusRangeQuery> {
        Vec::new()
    }

    fn status_of(f: &Fixture) -> impl Fn(i64, i64) -> Vec<StatusRangeQuery> + '_ {
        |lo, hi| vec![StatusRangeQuery::new(f.s, lo, hi)]
    }

    /// The Boolean form of `query`: what it must equal.
    fn boolean(query: &AllOf) -> BooleanQuery {
        query.as_boolean()
    }

    fn assert_same_as_boolean(searcher: &tantivy::Searcher, query: &AllOf) {
        let want = searcher.search(&boolean(query), &DocSetCollector).unwrap();
        assert_eq!(searcher.search(query, &DocSetCollector).unwrap(), want);
        assert_eq!(searcher.search(query, &Count).unwrap(), want.len());
        // Counting segment by segment, deletes left to the caller.
        let weight = query
            .weight(EnableScoring::disabled_from_searcher(searcher))
            .unwrap();
        let theirs = boolean(query)
            .weight(EnableScoring::disabled_from_searcher(searcher))
            .unwrap();
        for reader in searcher.segment_readers() {
            assert_eq!(weight.count(reader).unwrap(), theirs.count(reader).unwrap());
            let ours = weight
                .scorer(reader, 1.0)
                .unwrap()
                .count_including_deleted();
            let want = theirs
                .scorer(reader, 1.0)
                .unwrap()
                .count_including_deleted();
            assert_eq!(ours, want);
        }
    }

    /// Matches and counts equal the Boolean form's, before the bit sets
    /// are made (postings) and after (bit sets, joined), with a sparse
    /// term, another kind of query, and deletes.
    #[test]
    fn matches_and_counts_equal_the_boolean_form() {
        let f = fixture();
        let searcher = f.index.reader().unwrap().searcher();
        let dense = Arc::new(DenseTerms::with_limits(1 << 20, 1000, BUILD_QUEUE));
        let range = || -> Box<dyn Query> {
            Box::new(RangeQuery::new(
                std::ops::Bound::Included(Term::from_field_u64(f.n, 2000)),
                std::ops::Bound::Excluded(Term::from_field_u64(f.n, 7000)),
            ))
        };
        let status = status_of(&f);
        let queries = [
            AllOf::new(vec![x(f.a)], no(), Vec::new(), dense.clone()),
            AllOf::new(vec![x(f.a), x(f.b)], no(), Vec::new(), dense.clone()),
            AllOf::new(
                vec![x(f.a), x(f.b), x(f.c)],
                no(),
                Vec::new(),
                dense.clone(),
            ),
            AllOf::new(
                vec![x(f.b), Term::from_field_text(f.c, "rare")],
                no(),
                Vec::new(),
                dense.clone(),
            ),
            AllOf::new(vec![x(f.a), x(f.c)], no(), vec![range()], dense.clone()),
            // The sparse term leads, filtered by b's set; the range seeks.
            AllOf::new(
                vec![x(f.b), Term::from_field_text(f.c, "rare")],
                no(),
                vec![range()],
                dense.clone(),
            ),
            AllOf::new(Vec::new(), no(), vec![range()], dense.clone()),
            // 4xx: 404 dense, with a rare 401.
            AllOf::new(vec![x(f.a)], status(400, 499), Vec::new(), dense.clone()),
            AllOf::new(Vec::new(), status(400, 499), Vec::new(), dense.clone()),
            AllOf::new(vec![x(f.b)], status(401, 401), Vec::new(), dense.clone()),
            AllOf::new(vec![x(f.a)], status(300, 399), Vec::new(), dense.clone()),
            AllOf::new(
                Vec::new(),
                [status(500, 599), status(503, 600)].concat(),
                vec![range()],
                dense.clone(),
            ),
        ];
        for query in &queries {
            assert_same_as_boolean(&searcher, query);
        }
        dense.wait_for_builds();
        // In each of the three segments: a, b and c; 400..=499, 500..=599
        // and 503..=600. Neither `rare` nor 401 alone is dense.
        assert_eq!(dense.kept(), 18);
        assert_eq!(dense.bytes(), 18 * 3000u64.div_ceil(64) * 8);
        for query in &queries {
            assert_same_as_boolean(&searcher, query);
        }
        let weight = queries[2]
            .weight(EnableScoring::disabled_from_searcher(&searcher))
            .unwrap();
        for reader in searcher.segment_readers() {
            // The three terms' sets joined: what it holds at most is the
            // smallest, c's fifth of the segment (Tantivy's estimate for
            // the three intersected would be a thirtieth).
            assert_eq!(weight.scorer(reader, 1.0).unwrap().size_hint(), 600);
        }
    }

    /// Past the budget the least recently used set goes; a segment below
    /// the least size has none.
    #[test]
    fn the_budget_bounds_the_sets_kept() {
        let f = fixture();
        let searcher = f.index.reader().unwrap().searcher();
        let one_set = 3000u64.div_ceil(64) * 8;
        let dense = Arc::new(DenseTerms::with_limits(2 * one_set, 1000, BUILD_QUEUE));
        let reader = &searcher.segment_readers()[0];
        for field in [f.a, f.b, f.c] {
            assert!(dense.bits(reader, &[x(field)]).unwrap().is_none());
            dense.wait_for_builds();
            assert!(dense.bits(reader, &[x(field)]).unwrap().is_some());
            assert!(dense.bytes() <= 2 * one_set);
        }
        assert_eq!(dense.kept(), 2);
        // a went first.
        assert!(dense.bits(reader, &[x(f.a)]).unwrap().is_none());
        dense.wait_for_builds();
        assert_eq!(dense.kept(), 2);

        let small = Arc::new(DenseTerms::with_limits(1 << 20, 3001, BUILD_QUEUE));
        assert!(small.bits(reader, &[x(f.a)]).unwrap().is_none());
        small.wait_for_builds();
        assert_eq!(small.kept(), 0);
        // A budget of none, or of less than one set: nothing asked for.
        for budget in [0, one_set - 1] {
            let none = Arc::new(DenseTerms::with_limits(budget, 1000, BUILD_QUEUE));
            assert!(none.bits(reader, &[x(f.a)]).unwrap().is_none());
            assert!(none.shared.cache.lock().unwrap().pending.is_empty());
            assert_eq!(none.kept(), 0);
        }
    }

    /// A run over the fixture that saves its terms at `path`.
    fn remembering(f: &Fixture, path: &Path, budget: u64) -> Arc<DenseTerms> {
        Arc::new(
            DenseTerms::with_limits(budget, 1000, BUILD_QUEUE).remembering(path, f.index.schema()),
        )
    }

    /// The terms of the sets kept are saved when asked, and the next run
    /// makes their sets before any search asks, the most recently used
    /// first, within its budget and only once.
    #[test]
    fn the_sets_kept_are_made_again_at_the_next_start_from_what_was_saved() {
        let f = fixture();
        let searcher = f.index.reader().unwrap().searcher();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dense-terms.json");
        let run = |budget| remembering(&f, &path, budget);
        let first = run(1 << 20);
        let status = status_of(&f);
        for (terms, statuses) in [
            (vec![x(f.a)], no()),
            (vec![x(f.b)], no()),
            (vec![], status(400, 499)),
        ] {
            let query = AllOf::new(terms, statuses, Vec::new(), first.clone());
            searcher.search(&query, &DocSetCollector).unwrap();
            first.wait_for_builds();
        }
        assert_eq!(first.kept(), 9);
        first.save().unwrap();

        let next = run(1 << 20);
        assert_eq!(next.kept(), 0);
        assert_eq!(next.make_remembered(&searcher), 9);
        assert_eq!(next.kept(), 9);
        for reader in searcher.segment_readers() {
            assert!(next.bits(reader, &[x(f.a)]).unwrap().is_some());
        }
        assert_eq!(next.make_remembered(&searcher), 0, "made once");

        // Room for four: the status range's three, then b's first.
        let one_set = 3000u64.div_ceil(64) * 8;
        let small = run(4 * one_set);
        assert_eq!(small.make_remembered(&searcher), 4);
        let readers = searcher.segment_readers();
        let has = |reader: &SegmentReader, term: Term| {
            let key = (reader.segment_id(), Box::from([term]));
            small.shared.cache.lock().unwrap().sets.peek(&key).is_some()
        };
        assert!(has(&readers[0], x(f.b)));
        assert!(!has(&readers[1], x(f.b)));
        assert!(!has(&readers[0], x(f.a)));
        assert_eq!(small.kept(), 4, "nothing made past the budget");
        // Not remembering: none made, nothing saved.
        let forgetful = Arc::new(DenseTerms::with_limits(1 << 20, 1000, BUILD_QUEUE));
        assert_eq!(forgetful.make_remembered(&searcher), 0);
        forgetful.save().unwrap();
    }

    /// Forgetting a term drops its sets from memory and from the last
    /// run's list, and rewrites the saved file at once without it; the
    /// other sets stay.
    #[test]
    fn a_forgotten_term_leaves_no_set_and_no_saved_copy() {
        let f = fixture();
        let searcher = f.index.reader().unwrap().searcher();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dense-terms.json");
        let run = || remembering(&f, &path, 1 << 20);
        let first = run();
        for term in [x(f.a), x(f.b)] {
            let query = AllOf::new(vec![term], no(), Vec::new(), first.clone());
            searcher.search(&query, &DocSetCollector).unwrap();
            first.wait_for_builds();
        }
        assert_eq!(first.kept(), 6);
        first.save().unwrap();

        // A run that has not made the saved sets yet never makes a's.
        let next = run();
        next.forget(&[x(f.a)]).unwrap();
        assert_eq!(next.make_remembered(&searcher), 3);
        assert!(next
            .bits(&searcher.segment_readers()[0], &[x(f.b)])
            .unwrap()
            .is_some());

        // One that holds them drops them, and the file names b alone.
        first.forget(&[x(f.a)]).unwrap();
        assert_eq!(first.kept(), 3);
        let saved = run().remembered.as_ref().unwrap().previous();
        assert_eq!(saved, vec![Box::from([x(f.b)])]);
    }

    /// With the builder's queue full a request is dropped (and asked
    /// again by a later search); the search reads postings meanwhile.
    #[test]
    fn a_full_queue_drops_the_request() {
        let f = fixture();
        let searcher = f.index.reader().unwrap().searcher();
        let (dense, receiver) = DenseTerms::unstarted(1 << 20, 1000, 1);
        let dense = Arc::new(dense);
        let query = AllOf::new(vec![x(f.a), x(f.b)], no(), Vec::new(), dense.clone());
        let reader = &searcher.segment_readers()[0];
        let weight = query
            .weight(EnableScoring::disabled_from_searcher(&searcher))
            .unwrap();
        let want = boolean(&query)
            .weight(EnableScoring::disabled_from_searcher(&searcher))
            .unwrap()
            .count(reader)
            .unwrap();
        assert!(want > 0);
        let count = weight.count(reader).unwrap();
        // a went in the queue, b did not fit.
        assert_eq!(receiver.len(), 1);
        assert_eq!(dense.shared.cache.lock().unwrap().pending.len(), 1);
        assert_eq!(count, want);
        let shared = dense.shared.clone();
        let builder = std::thread::spawn(move || build_all(&shared, &receiver));
        dense.wait_for_builds();
        assert_eq!(dense.kept(), 1);
        // b is asked for again.
        assert_eq!(weight.count(reader).unwrap(), want);
        dense.wait_for_builds();
        assert_eq!(dense.kept(), 2);
        drop(weight);
        drop(query);
        drop(dense);
        builder.join().unwrap();
    }

    fn bits_of(docs: &std::collections::BTreeSet<u32>, max_doc: u32) -> Arc<Bits> {
        let mut words = vec![0u64; (max_doc as usize).div_ceil(64)].into_boxed_slice();
        for &doc in docs {
            words[(doc / 64) as usize] |= 1 << (doc % 64);
        }
        Arc::new(Bits {
            words,
            len: docs.len() as u32,
        })
    }

    proptest! {
        /// A join of bit sets goes through the documents in all of them as
        /// a list of those does, by advance, seek and count.
        #[test]
        fn the_join_walks_the_documents_in_every_set(
            sets in proptest::collection::vec(
                proptest::collection::btree_set(0u32..700, 0..400),
                1..4,
            ),
            targets in proptest::collection::vec(0u32..760, 0..20),
        ) {
            let max_doc = 700;
            let bits: Vec<_> = sets.iter().map(|docs| bits_of(docs, max_doc)).collect();
            let docs: Vec<u32> = (0..max_doc)
                .filter(|doc| sets.iter().all(|set| set.contains(doc)))
                .collect();
            prop_assert_eq!(walk(&mut Joined::new(bits.clone())), docs.clone());
            let mut targets = targets;
            targets.sort_unstable();
            let mut scorer = Joined::new(bits.clone());
            for target in targets {
                let at = scorer.doc();
                prop_assert_eq!(scorer.seek(target), sought(&docs, at, target));
                let left = docs.iter().filter(|&&d| d >= scorer.doc()).count() as u32;
                let mut counting = Joined::new(bits.clone());
                counting.seek(scorer.doc());
                prop_assert_eq!(counting.count_including_deleted(), left);
            }
        }

        /// A lead filtered by a join holds the documents in both, by
        /// advance and by seek.
        #[test]
        fn a_filtered_lead_walks_the_documents_in_it_and_the_join(
            sets in proptest::collection::vec(
                proptest::collection::btree_set(0u32..700, 0..400),
                1..3,
            ),
            lead in proptest::collection::btree_set(0u32..700, 0..200),
            targets in proptest::collection::btree_set(0u32..760, 0..20),
        ) {
            let bits: Vec<_> = sets.iter().map(|docs| bits_of(docs, 700)).collect();
            let docs: Vec<u32> = lead
                .iter()
                .copied()
                .filter(|doc| sets.iter().all(|set| set.contains(doc)))
                .collect();
            // Any scorer will do for the lead: a join of one set.
            let filtered = || {
                let lead = Joined::new(vec![bits_of(&lead, 700)]);
                Filtered::new(Box::new(lead), Joined::new(bits.clone()))
            };
            prop_assert_eq!(walk(&mut filtered()), docs.clone());
            let mut scorer = filtered();
            for target in targets {
                let at = scorer.doc();
                prop_assert_eq!(scorer.seek(target.max(at)), sought(&docs, at, target));
            }
        }
    }

    /// Every document of `scorer`, by advance.
    fn walk(scorer: &mut dyn DocSet) -> Vec<DocId> {
        let mut walked = Vec::new();
        while scorer.doc() != TERMINATED {
            walked.push(scorer.doc());
            scorer.advance();
        }
        walked
    }

    /// Where a seek to `target` from `at` must land among `docs`.
    fn sought(docs: &[DocId], at: DocId, target: DocId) -> DocId {
        if at >= target {
            return at;
        }
        docs.iter()
            .copied()
            .find(|&d| d >= target)
            .unwrap_or(TERMINATED)
    }
}
