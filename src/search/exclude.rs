//! A query without the events of one term (the trail of reads, left out
//! of every search that does not ask for it), counted by subtraction.
//!
//! As a `MustNot` clause the term made every count walk the query's
//! matches one by one, seeking the excluded term at each: an exact total
//! of one access id over 10 M events took up to 10 ms at p99. Here the
//! count is the query's own count, which a single term answers from its
//! dictionary entry, less the count of the query joined with the term,
//! which the term's few postings lead. The matches are the query's own,
//! less those the term's postings hold; their scorer tells the query's
//! own cost (`DocSet::cost`), which Tantivy's `MustNot` clause hid behind
//! the estimate of its matches (`time_order` decides by it how to read a
//! segment).

use std::sync::OnceLock;

use tantivy::query::{
    BooleanQuery, EmptyScorer, EnableScoring, Exclude, Explanation, Occur, Query, Scorer, Weight,
};
use tantivy::schema::IndexRecordOption;
use tantivy::{DocId, DocSet, Score, SegmentReader, Term, TERMINATED};

/// `inner` without the events that hold `term`.
#[derive(Debug)]
pub struct ExcludeTerm {
    inner: Box<dyn Query>,
    term: Term,
}

impl Clone for ExcludeTerm {
    fn clone(&self) -> Self {
        ExcludeTerm {
            inner: self.inner.box_clone(),
            term: self.term.clone(),
        }
    }
}

impl ExcludeTerm {
    pub fn new(inner: Box<dyn Query>, term: Term) -> ExcludeTerm {
        ExcludeTerm { inner, term }
    }

    fn term_query(&self) -> tantivy::query::TermQuery {
        tantivy::query::TermQuery::new(self.term.clone(), IndexRecordOption::Basic)
    }

    fn joined(&self, occur: Occur) -> BooleanQuery {
        BooleanQuery::new(vec![
            (Occur::Must, self.inner.box_clone()),
            (occur, Box::new(self.term_query())),
        ])
    }
}

impl Query for ExcludeTerm {
    fn weight(&self, scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(ExcludeTermWeight {
            inner: self.inner.weight(scoring)?,
            excluded: self
                .term_query()
                .weight(EnableScoring::disabled_from_schema(scoring.schema()))?,
            without: OnceLock::new(),
            query: self.clone(),
            counting: OnceLock::new(),
        }))
    }

    fn query_terms<'a>(&'a self, visitor: &mut dyn FnMut(&'a Term, bool)) {
        self.inner.query_terms(visitor);
    }
}

struct ExcludeTermWeight {
    /// inner, and term: what the matches are made of.
    inner: Box<dyn Weight>,
    excluded: Box<dyn Weight>,
    /// inner AND NOT term: what explains, made when first asked.
    without: OnceLock<Box<dyn Weight>>,
    query: ExcludeTerm,
    /// inner, and inner AND term: what counts, made at the first count
    /// (most searches never count this way).
    counting: OnceLock<CountingWeights>,
}

/// The weights of inner, and of inner AND term.
type CountingWeights = (Box<dyn Weight>, Box<dyn Weight>);

impl ExcludeTermWeight {
    fn counting(&self, reader: &SegmentReader) -> tantivy::Result<&CountingWeights> {
        if let Some(weights) = self.counting.get() {
            return Ok(weights);
        }
        // Counts do not score.
        let scoring = EnableScoring::disabled_from_schema(reader.schema());
        let weights = (
            self.query.inner.weight(scoring)?,
            self.query.joined(Occur::Must).weight(scoring)?,
        );
        Ok(self.counting.get_or_init(|| weights))
    }

    fn without(&self, reader: &SegmentReader) -> tantivy::Result<&dyn Weight> {
        if let Some(weight) = self.without.get() {
            return Ok(weight.as_ref());
        }
        let scoring = EnableScoring::disabled_from_schema(reader.schema());
        let weight = self.query.joined(Occur::MustNot).weight(scoring)?;
        Ok(self.without.get_or_init(|| weight).as_ref())
    }

    /// Whether every document of the segment holds the term: a segment
    /// of the trail alone, which a commit in a spell of reads makes.
    /// Reading it would go through every match of the inner query in it
    /// (all of the trail, for a filter its events share, such as
    /// `success`) to find none.
    fn all_excluded(&self, reader: &SegmentReader) -> tantivy::Result<bool> {
        let term = &self.query.term;
        let doc_freq = reader.inverted_index(term.field())?.doc_freq(term)?;
        Ok(doc_freq >= reader.max_doc())
    }
}

impl Weight for ExcludeTermWeight {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        if self.all_excluded(reader)? {
            return Ok(Box::new(EmptyScorer));
        }
        let inner = self.inner.scorer(reader, boost)?;
        let excluded = self.excluded.scorer(reader, 1.0)?;
        if excluded.doc() == TERMINATED {
            return Ok(inner);
        }
        let cost = inner.cost();
        Ok(Box::new(Costed {
            scorer: Exclude::new(inner, excluded),
            cost,
        }))
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        self.without(reader)?.explain(reader, doc)
    }

    fn count(&self, reader: &SegmentReader) -> tantivy::Result<u32> {
        if self.all_excluded(reader)? {
            return Ok(0);
        }
        let (inner, with) = self.counting(reader)?;
        let all = inner.count(reader)?;
        let excluded = with.count(reader)?;
        match all.checked_sub(excluded) {
            Some(count) => Ok(count),
            // Never, as both count the same live documents; if it were,
            // the walk is still right.
            None => self.without(reader)?.count(reader),
        }
    }
}

/// A scorer that tells `cost`: Tantivy's `Exclude` tells the estimate of
/// its matches instead of what reading them costs.
struct Costed<S> {
    scorer: S,
    cost: u64,
}

impl<S: Scorer> DocSet for Costed<S> {
    fn advance(&mut self) -> DocId {
        self.scorer.advance()
    }

    fn seek(&mut self, target: DocId) -> DocId {
        self.scorer.seek(target)
    }

    fn doc(&self) -> DocId {
        self.scorer.doc()
    }

    fn size_hint(&self) -> u32 {
        self.scorer.size_hint()
    }

    fn cost(&self) -> u64 {
        self.cost
    }
}

impl<S: Scorer> Scorer for Costed<S> {
    fn score(&mut self) -> Score {
        self.scorer.score()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tantivy::collector::{Count, DocSetCollector};
    use tantivy::query::{AllQuery, TermQuery};
    use tantivy::schema::{Schema, STRING};
    use tantivy::{doc, Index};

    /// Counts and matches equal the `MustNot` form's, over segments with
    /// and without the excluded term, of it alone, and with deleted
    /// documents.
    #[test]
    fn counts_and_matches_equal_the_must_not_form() {
        let mut schema = Schema::builder();
        let kind = schema.add_text_field("kind", STRING);
        let who = schema.add_text_field("who", STRING);
        let index = Index::create_in_ram(schema.build());
        let mut writer = index.writer_with_num_threads(1, 15_000_000).unwrap();
        for segment in 0..4 {
            for i in 0..300 {
                let trail = segment == 3 || (segment != 1 && i % 7 == 0);
                let kind_value = if trail { "trail" } else { "event" };
                let who_value = ["ann", "bob", "cy"][i % 3];
                writer
                    .add_document(doc!(kind => kind_value, who => who_value))
                    .unwrap();
            }
            writer.commit().unwrap();
        }
        writer.delete_term(Term::from_field_text(who, "cy"));
        writer.commit().unwrap();
        let searcher = index.reader().unwrap().searcher();
        let trail = Term::from_field_text(kind, "trail");
        let inners: Vec<Box<dyn Query>> = vec![
            Box::new(AllQuery),
            Box::new(TermQuery::new(
                Term::from_field_text(who, "ann"),
                IndexRecordOption::Basic,
            )),
            Box::new(TermQuery::new(
                Term::from_field_text(who, "cy"),
                IndexRecordOption::Basic,
            )),
        ];
        for inner in inners {
            let ours = ExcludeTerm::new(inner.box_clone(), trail.clone());
            let theirs = ours.joined(Occur::MustNot);
            let want = searcher.search(&theirs, &DocSetCollector).unwrap();
            assert_eq!(searcher.search(&ours, &DocSetCollector).unwrap(), want);
            assert_eq!(searcher.search(&ours, &Count).unwrap(), want.len());
        }
        // ann: 100 a segment; 15 of them trail events in segments 0 and 2,
        // all of them in segment 3.
        let ann = ExcludeTerm::new(
            Box::new(TermQuery::new(
                Term::from_field_text(who, "ann"),
                IndexRecordOption::Basic,
            )),
            trail,
        );
        assert_eq!(searcher.search(&ann, &Count).unwrap(), 300 - 2 * 15);
        // The segment of the trail alone is not read at all.
        let weight = ann
            .weight(EnableScoring::disabled_from_searcher(&searcher))
            .unwrap();
        let mut alone = 0;
        for reader in searcher.segment_readers() {
            let index = reader.inverted_index(kind).unwrap();
            let trail_only = index.doc_freq(&ann.term).unwrap() == reader.max_doc();
            let scorer = weight.scorer(reader, 1.0).unwrap();
            assert_eq!(scorer.cost() == 0, trail_only, "{:?}", reader.segment_id());
            alone += usize::from(trail_only);
        }
        assert_eq!(alone, 1);
    }

    /// The scorer tells what reading the query's matches costs (for two
    /// terms that must match, the rarer term's postings), not the smaller
    /// estimate of its matches, in a segment with trail events as in one
    /// without.
    #[test]
    fn the_scorer_tells_the_querys_own_cost() {
        let mut schema = Schema::builder();
        let kind = schema.add_text_field("kind", STRING);
        let a = schema.add_text_field("a", STRING);
        let b = schema.add_text_field("b", STRING);
        let index = Index::create_in_ram(schema.build());
        let mut writer = index.writer_with_num_threads(1, 15_000_000).unwrap();
        for segment in 0..2 {
            for i in 0..600 {
                let kind_value = if segment == 0 && i % 5 == 0 {
                    "trail"
                } else {
                    "event"
                };
                let a_value = if i % 2 == 0 { "x" } else { "-" };
                let b_value = if i % 3 == 0 { "y" } else { "-" };
                writer
                    .add_document(doc!(kind => kind_value, a => a_value, b => b_value))
                    .unwrap();
            }
            writer.commit().unwrap();
        }
        let searcher = index.reader().unwrap().searcher();
        let term = |field, value| -> Box<dyn Query> {
            Box::new(TermQuery::new(
                Term::from_field_text(field, value),
                IndexRecordOption::Basic,
            ))
        };
        let both = BooleanQuery::new(vec![
            (Occur::Must, term(a, "x")),
            (Occur::Must, term(b, "y")),
        ]);
        let ours = ExcludeTerm::new(Box::new(both), Term::from_field_text(kind, "trail"));
        let weight = ours
            .weight(EnableScoring::disabled_from_searcher(&searcher))
            .unwrap();
        assert_eq!(searcher.segment_readers().len(), 2);
        for reader in searcher.segment_readers() {
            let scorer = weight.scorer(reader, 1.0).unwrap();
            // y is in 200 of the 600 documents, x in 300.
            assert_eq!(scorer.cost(), 200);
            assert!(
                u64::from(scorer.size_hint()) < 200,
                "{}",
                scorer.size_hint()
            );
        }
    }
}
