//! Queries over a run of a field's terms, read as a union of the
//! segment's matching terms: every term that starts with a prefix
//! (`events.*`, [`PrefixQuery`]), and every status in a range
//! ([`StatusRangeQuery`]).
//!
//! Tantivy's `RegexQuery` and its range query over the term dictionary
//! build, for each scorer, a bit set of every match in the segment, and
//! its range query over a fast column reads the column doc by doc. A
//! search reading a big segment from its newest end builds a scorer per
//! chunk, and each paid for the whole segment (an action prefix went from
//! 2.0 to 5.3 ms at the median on 10 M events when compaction made
//! segments of 2 M events: docs/benchmarks-history.md, "2026-12-03: 100 M
//! within 20 ms"); and counting the matches of a rare status class read
//! the column over millions of events. A union of term scorers reads only
//! as far as it is asked. A run of more than `MAX_UNION_TERMS` terms in a
//! segment falls back to the query it stands for, which then costs less
//! than a union that wide, and so does a dense status run (`DENSE_SHARE`).

use std::ops::Bound;

use tantivy::query::{
    BooleanQuery, EmptyQuery, EnableScoring, Explanation, Occur, Query, RangeQuery, RegexQuery,
    Scorer, TermQuery, Weight,
};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::{DocId, Score, SegmentReader, Term};

/// Past this many terms in one segment, the query the union stands for.
const MAX_UNION_TERMS: usize = 64;

/// A status union matching more than one event in this many of a segment
/// is read from the fast column instead. A union joined with a sparse
/// filter is sought doc by doc, and each seek refills a window of
/// thousands of documents from every dense term: with `success` (200 and
/// 201, 92 % of `gen_events.py`) an action + subject + day search went
/// from 7.7 to 14.2 ms at p99 on 10 M events, where the column answers a
/// seek with one value. A rare class (5xx, 0.3 %) is what the union is
/// for: counting its matches read the column over millions of events.
const DENSE_SHARE: u64 = 32;

/// A run of one field's terms, in the order of the term dictionary.
trait TermRun: Clone + Send + Sync + 'static {
    fn field(&self) -> Field;
    /// The first key the run may hold.
    fn start(&self) -> Vec<u8>;
    /// The term of `key`, `Ok(None)` to skip it, `Err(())` past the run.
    fn term(&self, key: &[u8]) -> Result<Option<Term>, ()>;
    /// What stands in for a union too wide (or too dense).
    fn fallback(&self) -> tantivy::Result<Box<dyn Query>>;
    /// Whether the fallback also stands in for a union matching more than
    /// one event in `DENSE_SHARE` of the segment.
    const FALLBACK_WHEN_DENSE: bool;
}

/// The terms of `field` that start with `prefix`.
#[derive(Debug, Clone)]
pub struct PrefixQuery {
    field: Field,
    prefix: String,
}

impl PrefixQuery {
    /// `Err` if no regex can say it (checked now, so that a bad prefix
    /// fails before any segment is read).
    pub fn new(field: Field, prefix: &str) -> tantivy::Result<PrefixQuery> {
        let query = PrefixQuery {
            field,
            prefix: prefix.to_owned(),
        };
        query.regex()?;
        Ok(query)
    }

    fn regex(&self) -> tantivy::Result<RegexQuery> {
        let pattern = format!("{}.*", regex_syntax::escape(&self.prefix));
        RegexQuery::from_pattern(&pattern, self.field)
    }
}

impl TermRun for PrefixQuery {
    fn field(&self) -> Field {
        self.field
    }

    fn start(&self) -> Vec<u8> {
        self.prefix.as_bytes().to_vec()
    }

    fn term(&self, key: &[u8]) -> Result<Option<Term>, ()> {
        if !key.starts_with(self.prefix.as_bytes()) {
            return Err(());
        }
        // A key that is not text is nothing a prefix of text names.
        Ok(std::str::from_utf8(key)
            .ok()
            .map(|text| Term::from_field_text(self.field, text)))
    }

    fn fallback(&self) -> tantivy::Result<Box<dyn Query>> {
        Ok(Box::new(self.regex()?))
    }

    // The regex's fallback is a bit set of every match: dense is where it
    // costs most.
    const FALLBACK_WHEN_DENSE: bool = false;
}

/// The events whose `field` (an indexed i64 field: `status`) is in
/// `lo..=hi`. A status class holds a handful of distinct values, so the
/// union is narrow; a wider run falls back to the fast column.
#[derive(Debug, Clone)]
pub struct StatusRangeQuery {
    field: Field,
    lo: i64,
    hi: i64,
}

impl StatusRangeQuery {
    pub fn new(field: Field, lo: i64, hi: i64) -> StatusRangeQuery {
        StatusRangeQuery { field, lo, hi }
    }

    /// The statuses of the range that the segment holds, as terms; `None`
    /// past `MAX_UNION_TERMS` of them.
    pub fn segment_terms(&self, reader: &SegmentReader) -> tantivy::Result<Option<Vec<Term>>> {
        Ok(segment_terms(self, reader)?.map(|terms| terms.into_iter().map(|(t, _)| t).collect()))
    }

    fn key(&self, value: i64) -> Vec<u8> {
        Term::from_field_i64(self.field, value)
            .serialized_value_bytes()
            .to_vec()
    }
}

impl TermRun for StatusRangeQuery {
    fn field(&self) -> Field {
        self.field
    }

    fn start(&self) -> Vec<u8> {
        self.key(self.lo)
    }

    fn term(&self, key: &[u8]) -> Result<Option<Term>, ()> {
        let value = <[u8; 8]>::try_from(key)
            .map(|bytes| tantivy::u64_to_i64(u64::from_be_bytes(bytes)))
            .map_err(|_| ())?;
        match value <= self.hi {
            true => Ok(Some(Term::from_field_i64(self.field, value))),
            false => Err(()),
        }
    }

    fn fallback(&self) -> tantivy::Result<Box<dyn Query>> {
        Ok(Box::new(RangeQuery::new(
            Bound::Included(Term::from_field_i64(self.field, self.lo)),
            Bound::Included(Term::from_field_i64(self.field, self.hi)),
        )))
    }

    const FALLBACK_WHEN_DENSE: bool = true;
}

impl Query for PrefixQuery {
    fn weight(&self, _scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(UnionWeight { run: self.clone() }))
    }
}

impl Query for StatusRangeQuery {
    fn weight(&self, _scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(UnionWeight { run: self.clone() }))
    }
}

struct UnionWeight<R> {
    run: R,
}

impl<R: TermRun> UnionWeight<R> {
    /// The weight that reads `reader`: a union of its matching terms, or
    /// the fallback when they are too many.
    fn segment_weight(&self, reader: &SegmentReader) -> tantivy::Result<Box<dyn Weight>> {
        let scoring = EnableScoring::disabled_from_schema(reader.schema());
        let Some(terms) = segment_terms(&self.run, reader)? else {
            return self.run.fallback()?.weight(scoring);
        };
        let matches: u64 = terms.iter().map(|(_, docs)| u64::from(*docs)).sum();
        if R::FALLBACK_WHEN_DENSE && matches * DENSE_SHARE > u64::from(reader.max_doc()) {
            return self.run.fallback()?.weight(scoring);
        }
        let clauses: Vec<(Occur, Box<dyn Query>)> = terms
            .into_iter()
            .map(|(term, _)| {
                let query: Box<dyn Query> =
                    Box::new(TermQuery::new(term, IndexRecordOption::Basic));
                (Occur::Should, query)
            })
            .collect();
        match clauses.is_empty() {
            true => EmptyQuery.weight(scoring),
            false => BooleanQuery::new(clauses).weight(scoring),
        }
    }
}

/// The run's terms in the segment, each with the documents that hold it;
/// `None` past `MAX_UNION_TERMS` of them.
fn segment_terms<R: TermRun>(
    run: &R,
    reader: &SegmentReader,
) -> tantivy::Result<Option<Vec<(Term, u32)>>> {
    let index = reader.inverted_index(run.field())?;
    let mut keys = index.terms().range().ge(run.start()).into_stream()?;
    let mut terms = Vec::new();
    while keys.advance() {
        let Ok(term) = run.term(keys.key()) else {
            break;
        };
        let Some(term) = term else {
            continue;
        };
        if terms.len() == MAX_UNION_TERMS {
            return Ok(None);
        }
        terms.push((term, keys.value().doc_freq));
    }
    Ok(Some(terms))
}

impl<R: TermRun> Weight for UnionWeight<R> {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        self.segment_weight(reader)?.scorer(reader, boost)
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        self.segment_weight(reader)?.explain(reader, doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tantivy::collector::DocSetCollector;
    use tantivy::schema::{NumericOptions, Schema, STRING};
    use tantivy::{doc, Index};

    /// Against the regex it stands for: a narrow prefix (a union), one
    /// wider than `MAX_UNION_TERMS` (the bit set), one that matches
    /// nothing, over several segments.
    #[test]
    fn matches_what_the_regex_matches() {
        let mut schema = Schema::builder();
        let action = schema.add_text_field("action", STRING);
        let index = Index::create_in_ram(schema.build());
        let mut writer = index.writer_with_num_threads(1, 15_000_000).unwrap();
        for segment in 0..3 {
            // 100 `wide.` terms a segment: past `MAX_UNION_TERMS`.
            for i in 0..400 {
                let value = match i % 4 {
                    0 => format!("events.{}", i % 7),
                    1 => format!("wide.{}", i + segment * 400),
                    2 => "eventsx".to_owned(),
                    _ => "streams.get".to_owned(),
                };
                writer.add_document(doc!(action => value)).unwrap();
            }
            writer.commit().unwrap();
        }
        let searcher = index.reader().unwrap().searcher();
        assert_eq!(searcher.segment_readers().len(), 3);
        for prefix in ["events.", "events", "wide.", "nothing", "", "str"] {
            let ours = PrefixQuery::new(action, prefix).unwrap();
            let theirs = ours.regex().unwrap();
            let got = searcher.search(&ours, &DocSetCollector).unwrap();
            let want = searcher.search(&theirs, &DocSetCollector).unwrap();
            assert_eq!(got, want, "{prefix}");
            assert_eq!(want.is_empty(), prefix == "nothing", "{prefix}");
            let count = searcher.search(&ours, &tantivy::collector::Count).unwrap();
            assert_eq!(count, want.len(), "{prefix}");
        }
    }

    /// Against the fast-column range it stands for: a rare class (a
    /// union), dense classes and a range wider than `MAX_UNION_TERMS`
    /// distinct statuses (the fallback), negative and extreme bounds, and
    /// ranges that match nothing, over several segments.
    #[test]
    fn status_ranges_match_the_fast_column_range() {
        let mut schema = Schema::builder();
        let status =
            schema.add_i64_field("status", NumericOptions::default().set_indexed().set_fast());
        let index = Index::create_in_ram(schema.build());
        let mut writer = index.writer_with_num_threads(1, 15_000_000).unwrap();
        for segment in 0..3i64 {
            for i in 0..1_000i64 {
                let value = match (i % 5, i % 100) {
                    // 2 % of a segment: a union of two terms.
                    (_, 4) => 503,
                    (_, 9) => 502,
                    // 20 % each: dense, the fast column.
                    (0, _) => 200,
                    (1, _) => 201,
                    (2, _) => 403 + segment,
                    (3, _) => 1_000 + i + segment * 1_000, // 200 distinct: wide
                    _ => -7,
                };
                writer.add_document(doc!(status => value)).unwrap();
            }
            writer.commit().unwrap();
        }
        let searcher = index.reader().unwrap().searcher();
        assert_eq!(searcher.segment_readers().len(), 3);
        let ranges = [
            (200, 299),
            (400, 499),
            (404, 404),
            (1, 399),
            (400, i64::MAX),
            (i64::MIN, i64::MAX),
            (-7, -7),
            (300, 399),
            (500, 599),
            (503, 503),
            (2_000_000, 3_000_000),
        ];
        for (lo, hi) in ranges {
            let ours = StatusRangeQuery::new(status, lo, hi);
            let theirs = ours.fallback().unwrap();
            let got = searcher.search(&ours, &DocSetCollector).unwrap();
            let want = searcher.search(&theirs, &DocSetCollector).unwrap();
            assert_eq!(got, want, "{lo}..={hi}");
            assert_eq!(
                want.is_empty(),
                lo >= 300 && hi < 400 || lo >= 2_000_000,
                "{lo}..={hi}"
            );
            let count = searcher.search(&ours, &tantivy::collector::Count).unwrap();
            assert_eq!(count, want.len(), "{lo}..={hi}");
        }
    }
}
