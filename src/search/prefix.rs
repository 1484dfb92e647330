//! Every term of a field that starts with a prefix (`events.*`), as a
//! union of the segment's matching terms.
//!
//! Tantivy's `RegexQuery` builds, for each scorer, a bit set of every
//! match in the segment: a search reading a big segment from its newest
//! end builds a scorer per chunk, and each paid for the whole segment (an
//! action prefix went from 2.0 to 5.3 ms at the median on 10 M events
//! when compaction made segments of 2 M events: docs/benchmarks-history.md,
//! "2026-12-03: 100 M within 20 ms"). A union of term scorers reads only
//! as far as it is asked. A prefix matching more than `MAX_UNION_TERMS`
//! terms in a segment falls back to the bit set, which then costs less
//! than a union that wide.

use tantivy::query::{
    BooleanQuery, EmptyQuery, EnableScoring, Explanation, Occur, Query, RegexQuery, Scorer,
    TermQuery, Weight,
};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::{DocId, Score, SegmentReader, Term};

/// Past this many terms in one segment, the bit set of `RegexQuery`.
const MAX_UNION_TERMS: usize = 64;

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

impl Query for PrefixQuery {
    fn weight(&self, _scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(PrefixWeight {
            query: self.clone(),
        }))
    }
}

struct PrefixWeight {
    query: PrefixQuery,
}

impl PrefixWeight {
    /// The weight that reads `reader`: a union of its matching terms, or
    /// the regex's bit set when they are too many.
    fn segment_weight(&self, reader: &SegmentReader) -> tantivy::Result<Box<dyn Weight>> {
        let PrefixQuery { field, prefix } = &self.query;
        let index = reader.inverted_index(*field)?;
        let mut terms = index.terms().range().ge(prefix.as_bytes()).into_stream()?;
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        while terms.advance() && terms.key().starts_with(prefix.as_bytes()) {
            if clauses.len() == MAX_UNION_TERMS {
                let scoring = EnableScoring::disabled_from_schema(reader.schema());
                return self.query.regex()?.weight(scoring);
            }
            let Ok(text) = std::str::from_utf8(terms.key()) else {
                continue; // not a text term: nothing a prefix of text names
            };
            let term = Term::from_field_text(*field, text);
            clauses.push((
                Occur::Should,
                Box::new(TermQuery::new(term, IndexRecordOption::Basic)),
            ));
        }
        let scoring = EnableScoring::disabled_from_schema(reader.schema());
        match clauses.is_empty() {
            true => EmptyQuery.weight(scoring),
            false => BooleanQuery::new(clauses).weight(scoring),
        }
    }
}

impl Weight for PrefixWeight {
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
    use tantivy::schema::{Schema, STRING};
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
}
