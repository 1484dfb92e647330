//! Events by their place in the log: the matches whose seq lies in
//! `[from, to)`, in seq order. What Tail reads after each commit.
//!
//! A segment holds the seqs of one stretch of the log (merges join
//! neighbours), so the bounds of its `seq` column rule out nearly every
//! segment but the newest from its header alone.

use std::sync::Arc;

use tantivy::query::{EnableScoring, Query};
use tantivy::{DocAddress, DocSet, SegmentOrdinal};

use super::time_order::Hit;
use super::view::View;

/// The hits of `query` with a seq in `[from, to)`, in seq order, over the
/// segments of `views` (one per partition).
pub(super) fn collect(
    views: &[Arc<View>],
    query: &dyn Query,
    from: u64,
    to: u64,
) -> tantivy::Result<Vec<Hit>> {
    let mut hits = Vec::new();
    if from >= to {
        return Ok(hits);
    }
    for (partition, view) in views.iter().enumerate() {
        let searcher = &view.searcher;
        let mut weight = None;
        for (ord, reader) in searcher.segment_readers().iter().enumerate() {
            let (seq, time) = (&view.columns[ord].seq, view.columns[ord].time());
            if seq.max_value() < from || seq.min_value() >= to {
                continue;
            }
            let weight = match &mut weight {
                Some(weight) => weight,
                None => {
                    weight.insert(query.weight(EnableScoring::disabled_from_searcher(searcher))?)
                }
            };
            let alive = reader.alive_bitset();
            weight.for_each_no_score(reader, &mut |docs| {
                for &doc in docs {
                    if alive.is_some_and(|a| !a.is_alive(doc)) {
                        continue;
                    }
                    let Some(s) = seq.first(doc).filter(|s| (from..to).contains(s)) else {
                        continue;
                    };
                    hits.push(Hit {
                        time: time.first(doc).unwrap_or(0),
                        seq: s,
                        address: DocAddress::new(ord as SegmentOrdinal, doc),
                        partition,
                    });
                }
            })?;
        }
    }
    hits.sort_unstable_by_key(|h| h.seq);
    Ok(hits)
}

/// The live documents whose seq lies in `seqs` that `scope` matches
/// (`None`: every document), in seq order, found through the seq column
/// rather than by running a query over whole segments: what a look-up by
/// seq (an inclusion proof) and a tile's recomputation read. More than
/// one a seq only where a document was forged.
pub(super) fn in_seqs(
    views: &[Arc<View>],
    scope: Option<&dyn Query>,
    seqs: std::ops::Range<u64>,
) -> tantivy::Result<Vec<Hit>> {
    let mut hits = Vec::new();
    let Some(last) = seqs.end.checked_sub(1).filter(|last| seqs.start <= *last) else {
        return Ok(hits);
    };
    let first = seqs.start;
    for (partition, view) in views.iter().enumerate() {
        let searcher = &view.searcher;
        let weight = scope
            .map(|scope| scope.weight(EnableScoring::disabled_from_searcher(searcher)))
            .transpose()?;
        for (ord, reader) in searcher.segment_readers().iter().enumerate() {
            let columns = &view.columns[ord];
            if columns.seq.max_value() < first || columns.seq.min_value() > last {
                continue;
            }
            let alive = reader.alive_bitset();
            for doc in columns.docs_in_seqs(first..=last) {
                if alive.is_some_and(|a| !a.is_alive(doc)) {
                    continue;
                }
                if let Some(weight) = &weight {
                    // A fresh scorer per document: docs of different
                    // stretches need not come in doc id order.
                    let mut scorer = weight.scorer(reader, 1.0)?;
                    if scorer.doc() > doc || scorer.seek(doc) != doc {
                        continue;
                    }
                }
                hits.push(Hit {
                    time: columns.time().first(doc).unwrap_or(0),
                    seq: columns.seq.first(doc).unwrap_or(first),
                    address: DocAddress::new(ord as SegmentOrdinal, doc),
                    partition,
                });
            }
        }
    }
    hits.sort_by_key(|h| h.seq);
    Ok(hits)
}
