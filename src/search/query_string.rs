//! A `query` string, parsed by Tantivy's parser, with each status range
//! that the whole query requires read as a `StatusRangeQuery` (a union of
//! a class's few status terms, `term_union.rs`) instead of the parser's
//! fast-column range: `action:x AND status:[400 TO 499]`, the usual way
//! to ask for one action's failures, otherwise scans the status column
//! of every document the action's postings point into.
//!
//! Only a required range of the top-level clause is taken out (`+r`, or
//! every clause joined by `AND`), and only when what is left still holds
//! a required clause, so that the meaning stays the parser's: the rest is
//! built by the parser from its own syntax tree, and the ranges are
//! joined to it as further required clauses. Anything else (a range
//! under `OR`, boosted, nested, or with bounds that are not integers, or
//! a rest the parser refuses alone) is left to the parser as written.

use std::ops::Bound;

use tantivy::query::{BooleanQuery, Occur, Query, QueryParser, QueryParserError};
use tantivy::query_grammar::{self, UserInputAst, UserInputBound, UserInputLeaf};
use tantivy::schema::Field;

use super::term_union::StatusRangeQuery;
use crate::schema::names::STATUS;

/// `text` as `parser` reads it, its required status ranges on `status`
/// as union queries.
pub(super) fn parse(
    parser: &QueryParser,
    text: &str,
    status: Field,
) -> Result<Box<dyn Query>, QueryParserError> {
    let Ok(ast) = query_grammar::parse_query(text) else {
        // The parser's own error.
        return parser.parse_query(text);
    };
    let clauses = match ast {
        UserInputAst::Clause(clauses) => clauses,
        leaf => vec![(Some(Occur::Must), leaf)],
    };
    let mut ranges = Vec::new();
    let mut rest = Vec::new();
    for (occur, clause) in clauses {
        match (occur, status_range(&clause)) {
            (Some(Occur::Must), Some((lo, hi))) => ranges.push((lo, hi)),
            _ => rest.push((occur, clause)),
        }
    }
    let rest_required = rest.iter().any(|(occur, _)| *occur == Some(Occur::Must));
    if ranges.is_empty() || !(rest.is_empty() || rest_required) {
        return parser.parse_query(text);
    }
    let mut must: Vec<(Occur, Box<dyn Query>)> = ranges
        .into_iter()
        .map(|(lo, hi)| {
            let range: Box<dyn Query> = Box::new(StatusRangeQuery::new(status, lo, hi));
            (Occur::Must, range)
        })
        .collect();
    if !rest.is_empty() {
        // What the parser refuses alone (`a AND NOT b` leaves `NOT b`, all
        // negative) it may take whole.
        match parser.build_query_from_user_input_ast(UserInputAst::Clause(rest)) {
            Ok(rest) => must.push((Occur::Must, rest)),
            Err(_) => return parser.parse_query(text),
        }
    }
    Ok(match must.len() {
        1 => must.remove(0).1,
        _ => Box::new(BooleanQuery::new(must)),
    })
}

/// The inclusive bounds of a range on `status` with integer bounds, as
/// the parser would read them (`i64`).
fn status_range(ast: &UserInputAst) -> Option<(i64, i64)> {
    let UserInputAst::Leaf(leaf) = ast else {
        return None;
    };
    let UserInputLeaf::Range {
        field: Some(field),
        lower,
        upper,
    } = &**leaf
    else {
        return None;
    };
    if field != STATUS {
        return None;
    }
    let bound = |b: &UserInputBound| -> Option<Bound<i64>> {
        Some(match b {
            UserInputBound::Inclusive(v) => Bound::Included(v.parse().ok()?),
            UserInputBound::Exclusive(v) => Bound::Excluded(v.parse().ok()?),
            UserInputBound::Unbounded => Bound::Unbounded,
        })
    };
    let lo = match bound(lower)? {
        Bound::Included(v) => v,
        Bound::Excluded(v) => v.checked_add(1)?,
        Bound::Unbounded => i64::MIN,
    };
    let hi = match bound(upper)? {
        Bound::Included(v) => v,
        Bound::Excluded(v) => v.checked_sub(1)?,
        Bound::Unbounded => i64::MAX,
    };
    Some((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::AuditSchema;
    use tantivy::collector::DocSetCollector;
    use tantivy::{doc, Index, IndexWriter};

    /// 600 events, status 0 or 100..=599 by turns, actions `a`/`b`/`c`.
    fn index() -> (Index, AuditSchema) {
        let schema = AuditSchema::new();
        let index = Index::create_in_ram(schema.schema.clone());
        crate::schema::register_tokenizers(&index);
        let mut writer: IndexWriter = index.writer_with_num_threads(1, 15_000_000).unwrap();
        for i in 0..600i64 {
            let status = if i % 7 == 0 { 0 } else { 100 + i % 500 };
            let action = ["a", "b", "c"][i as usize % 3];
            writer
                .add_document(doc!(schema.status => status, schema.action => action))
                .unwrap();
        }
        writer.commit().unwrap();
        (index, schema)
    }

    #[test]
    fn required_status_ranges_match_what_the_parser_matches() {
        let (index, schema) = index();
        let parser = QueryParser::for_index(&index, vec![schema.text]);
        let searcher = index.reader().unwrap().searcher();
        let run = |q: &dyn Query| searcher.search(q, &DocSetCollector).unwrap();
        let mut matched = 0;
        for text in [
            "status:[400 TO 499]",
            "action:a AND status:[400 TO 499]",
            "+action:b +status:{400 TO 500}",
            "status:>=500 AND NOT action:c",
            "status:<200 AND action:a",
            "status:[400 TO 499] AND status:[450 TO *]",
            "action:a OR status:[400 TO 499]",
            "action:a status:[400 TO 499]",
            "-action:a +status:[400 TO 499]",
            "(action:a AND status:[100 TO 150]) OR action:b",
            "status:[500 TO 400]",
            "status:[-5 TO 3] AND action:a",
            "status:[400 TO 499] AND action:a AND NOT action:c",
            "NOT action:a AND status:[400 TO 499]",
            "+action:a status:[400 TO 499]",
            "status:{400 TO 500] AND action:a",
        ] {
            let ours = parse(&parser, text, schema.status).unwrap();
            let theirs = parser
                .parse_query(text)
                .unwrap_or_else(|e| panic!("{text}: {e:?}"));
            assert_eq!(run(&*ours), run(&*theirs), "{text}");
            matched += usize::from(!run(&*theirs).is_empty());
        }
        assert!(matched >= 10, "only {matched} queries match anything");
        // Errors stay the parser's.
        for text in ["status:[x TO 5]", "action:("] {
            let ours = parse(&parser, text, schema.status).map(|_| ());
            let theirs = parser.parse_query(text).map(|_| ());
            assert_eq!(format!("{ours:?}"), format!("{theirs:?}"), "{text}");
            assert!(ours.is_err(), "{text}");
        }
    }

    #[test]
    fn only_required_ranges_become_unions() {
        let (index, schema) = index();
        let parser = QueryParser::for_index(&index, vec![schema.text]);
        let is_union = |text: &str| {
            let query = parse(&parser, text, schema.status).unwrap();
            let union = |q: &dyn Query| q.downcast_ref::<StatusRangeQuery>().is_some();
            union(&*query)
                || query
                    .downcast_ref::<BooleanQuery>()
                    .is_some_and(|b| b.clauses().iter().any(|(_, q)| union(&**q)))
        };
        assert!(is_union("status:[400 TO 499]"));
        assert!(is_union("action:a AND status:[400 TO 499]"));
        assert!(!is_union("action:a OR status:[400 TO 499]"));
        assert!(!is_union("-action:a +status:[400 TO 499]"));
        assert!(!is_union("status:[400 TO 499]^2 AND action:a"));
    }
}
