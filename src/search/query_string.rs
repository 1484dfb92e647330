//! A query string that only ANDs filters the structured request also
//! has, read as those filters.
//!
//! Tantivy's `QueryParser` turns `action:auth.login AND status:[400 TO
//! 499]` into a boolean query of a term and a range over the status fast
//! column. The same filters given as request fields join in `AllOf` (the
//! dense path) and read the status terms (`StatusRangeQuery`). The
//! query-string shape was the slowest filtered shape of the 10 M search
//! benchmark (docs/benchmarks-history.md, "2026-12-05 (5)").
//!
//! So the string is first read with Tantivy's own grammar. When every
//! clause is required and each is one of these, it becomes the structured
//! filters:
//! - `field:value` on a keyword field (indexed whole, by the `raw`
//!   tokenizer): that term;
//! - one word of free text (`word`, or `text:word`): that word's term;
//! - `status:[lo TO hi]` (either bound may be `*` or exclusive), or
//!   `status:404`: the status terms of that range.
//!
//! Quoting does not matter (`QueryParser` ignores it too), and `*` inside
//! a keyword is a character, not a wildcard, for both. Anything else
//! (`OR`, `NOT`, phrases, phrase prefixes, other ranges, boosts, sets) goes to `QueryParser` whole, which also gives the errors. The
//! matches are the same either way: the tests compare the two.

use tantivy::query_grammar::{
    self, Occur, UserInputAst, UserInputBound, UserInputLeaf, UserInputLiteral,
};
use tantivy::schema::{FieldType, Term};

use super::term_union::StatusRangeQuery;
use crate::schema::{names, AuditSchema};

/// The structured filters a query string stands for.
#[derive(Default)]
pub(crate) struct Filters {
    /// Single terms, for `AllOf` to join.
    pub terms: Vec<Term>,
    /// Status ranges.
    pub statuses: Vec<StatusRangeQuery>,
}

/// `query` as structured filters, or `None` if it says more than they can.
/// `words` splits free text the way the index does.
pub(crate) fn as_filters(
    query: &str,
    schema: &AuditSchema,
    words: impl Fn(&str) -> Vec<String>,
) -> Option<Filters> {
    let ast = query_grammar::parse_query(query).ok()?;
    let mut filters = Filters::default();
    let reader = Reader { schema, words };
    reader.required(&ast, &mut filters)?;
    (!filters.terms.is_empty() || !filters.statuses.is_empty()).then_some(filters)
}

struct Reader<'a, W> {
    schema: &'a AuditSchema,
    words: W,
}

impl<W: Fn(&str) -> Vec<String>> Reader<'_, W> {
    /// Adds `ast` to `filters` as something every match must satisfy.
    fn required(&self, ast: &UserInputAst, filters: &mut Filters) -> Option<()> {
        match ast {
            UserInputAst::Leaf(leaf) => self.leaf(leaf, filters),
            // One clause alone must match, whatever its occur says, unless
            // it is negated.
            UserInputAst::Clause(clauses) if clauses.len() == 1 => match &clauses[0] {
                (None | Some(Occur::Must) | Some(Occur::Should), ast) => {
                    self.required(ast, filters)
                }
                (Some(Occur::MustNot), _) => None,
            },
            UserInputAst::Clause(clauses) if !clauses.is_empty() => {
                clauses.iter().try_for_each(|(occur, ast)| match occur {
                    Some(Occur::Must) => self.required(ast, filters),
                    _ => None,
                })
            }
            UserInputAst::Clause(_) | UserInputAst::Boost(..) => None,
        }
    }

    fn leaf(&self, leaf: &UserInputLeaf, filters: &mut Filters) -> Option<()> {
        match leaf {
            UserInputLeaf::Literal(literal)
                if literal.field_name.as_deref() == Some(names::STATUS) =>
            {
                let status = literal.phrase.parse().ok()?;
                let range = StatusRangeQuery::new(self.schema.status, status, status);
                filters.statuses.push(range);
                Some(())
            }
            UserInputLeaf::Literal(literal) => {
                let term = self.literal(literal)?;
                if !filters.terms.contains(&term) {
                    filters.terms.push(term);
                }
                Some(())
            }
            UserInputLeaf::Range {
                field: Some(field),
                lower,
                upper,
            } if field == names::STATUS => {
                let lo = bound(lower, i64::MIN, 1)?;
                let hi = bound(upper, i64::MAX, -1)?;
                let range = StatusRangeQuery::new(self.schema.status, lo, hi);
                filters.statuses.push(range);
                Some(())
            }
            _ => None,
        }
    }

    /// The one term a plain literal stands for.
    fn literal(&self, literal: &UserInputLiteral) -> Option<Term> {
        if literal.slop != 0 || literal.prefix {
            return None;
        }
        let s = self.schema;
        let field = match &literal.field_name {
            None => s.text,
            Some(name) => s.schema.get_field(name).ok()?,
        };
        if field == s.text {
            return match (self.words)(&literal.phrase).as_slice() {
                [word] => Some(Term::from_field_text(field, word)),
                _ => None,
            };
        }
        let FieldType::Str(options) = s.schema.get_field_entry(field).field_type() else {
            return None;
        };
        let keyword = options.get_indexing_options()?.tokenizer() == "raw";
        keyword.then(|| Term::from_field_text(field, &literal.phrase))
    }
}

/// An integer bound: `unbounded` for `*`; an exclusive bound moved by
/// `step` onto the first value it lets in.
fn bound(bound: &UserInputBound, unbounded: i64, step: i64) -> Option<i64> {
    match bound {
        UserInputBound::Unbounded => Some(unbounded),
        UserInputBound::Inclusive(v) => v.parse().ok(),
        UserInputBound::Exclusive(v) => v.parse::<i64>().ok()?.checked_add(step),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use tantivy::collector::DocSetCollector;
    use tantivy::query::{BooleanQuery, Occur, Query, QueryParser, TermQuery};
    use tantivy::schema::IndexRecordOption;
    use tantivy::{DocAddress, Index, Searcher};

    use super::*;
    use crate::client::gen::{self, GenOptions};
    use crate::json::JsonEvent;
    use crate::schema::register_tokenizers;

    struct Fixture {
        schema: AuditSchema,
        index: Index,
        searcher: Searcher,
        events: Vec<gen::GenEvent>,
    }

    fn fixture() -> Fixture {
        let schema = AuditSchema::new();
        let index = Index::create_in_ram(schema.schema.clone());
        register_tokenizers(&index);
        let mut writer: tantivy::IndexWriter = index.writer_with_num_threads(1, 15 << 20).unwrap();
        let opts = GenOptions {
            count: 3_000,
            accesses: 40,
            subjects: 30,
            ..GenOptions::default()
        };
        let events: Vec<_> = gen::events(&opts).collect();
        let mut body = Vec::new();
        for (seq, e) in events.iter().enumerate() {
            let mut event = JsonEvent::parse(&e.to_json_line())
                .unwrap()
                .into_proto()
                .unwrap();
            let doc = schema.document(&mut event, seq as u64, "", None, &mut body);
            writer.add_document(doc).unwrap();
        }
        writer.commit().unwrap();
        let searcher = index.reader().unwrap().searcher();
        Fixture {
            schema,
            index,
            searcher,
            events,
        }
    }

    impl Fixture {
        fn words(&self, text: &str) -> Vec<String> {
            let mut analyzer = self.index.tokenizer_for_field(self.schema.text).unwrap();
            let mut stream = analyzer.token_stream(text);
            let mut words = Vec::new();
            while let Some(token) = stream.next() {
                words.push(token.text.clone());
            }
            words
        }

        fn filters(&self, query: &str) -> Option<Filters> {
            as_filters(query, &self.schema, |t| self.words(t))
        }

        fn matches(&self, query: &dyn Query) -> HashSet<DocAddress> {
            self.searcher.search(query, &DocSetCollector).unwrap()
        }

        /// What `QueryParser` finds for `query`, and what its filters find.
        fn both(&self, query: &str) -> (HashSet<DocAddress>, HashSet<DocAddress>) {
            let parser = QueryParser::for_index(&self.index, vec![self.schema.text]);
            let parsed = parser.parse_query(query).unwrap();
            let filters = self
                .filters(query)
                .unwrap_or_else(|| panic!("{query:?} should read as filters"));
            let terms = filters.terms.into_iter().map(|term| {
                let query: Box<dyn Query> =
                    Box::new(TermQuery::new(term, IndexRecordOption::Basic));
                (Occur::Must, query)
            });
            let must = filters.statuses.into_iter().map(|q| {
                let query: Box<dyn Query> = Box::new(q);
                (Occur::Must, query)
            });
            let joined = BooleanQuery::new(terms.chain(must).collect());
            (self.matches(&*parsed), self.matches(&joined))
        }
    }

    #[test]
    fn conjunctions_of_filters_match_what_the_parser_matches() {
        let f = fixture();
        let failed = f.events.iter().find(|e| e.status >= 400).unwrap();
        let e = &f.events[17];
        let word = f.words(&e.resource).pop().expect("a resource word");
        let queries = [
            format!("action:{} AND status:[400 TO 499]", failed.action),
            format!("action:{:?} AND subject:{}", e.action, e.subject),
            format!("access_id:{}", e.access_id),
            format!("+action:{} +status:{{200 TO *]", failed.action),
            format!("status:[* TO 201}} AND subject:{}", e.subject),
            format!(
                "(action:{} AND subject:{}) AND status:[200 TO 200]",
                e.action, e.subject
            ),
            format!(
                "source_name:{:?} AND type:\"audit-log/pryv-api\"",
                e.source_name
            ),
            word.clone(),
            format!("text:{word} AND access_id:{}", e.access_id),
            format!("status:[400 TO 599] AND {word}"),
            format!("status:{} AND action:'{}'", failed.status, failed.action),
            "action:events.* AND status:[200 TO 299]".to_owned(),
            "action:no.such.action AND status:[200 TO 299]".to_owned(),
        ];
        let mut nonempty = 0;
        for query in &queries {
            let (parsed, filtered) = f.both(query);
            assert_eq!(parsed, filtered, "{query}");
            nonempty += usize::from(!parsed.is_empty());
        }
        assert_eq!(
            nonempty,
            queries.len() - 2,
            "all but the last two find events"
        );
    }

    #[test]
    fn anything_more_goes_to_the_parser() {
        let f = fixture();
        for query in [
            "action:events.get OR status:[400 TO 499]",
            "action:events.get subject:leo0100",
            "NOT action:events.get",
            "action:events.get AND -subject:leo0100",
            "\"two words\"*",
            "action:\"events.get\"~1",
            "\"two words\"",
            "error_message:timeout",
            "time:[1 TO 2]",
            "status:[a TO b]",
            "ip:127.0.0.1",
            "action:events.get^2",
            "action: IN [events.get streams.get]",
            "*",
            "",
            "action:",
        ] {
            assert!(f.filters(query).is_none(), "{query:?}");
        }
    }
}
