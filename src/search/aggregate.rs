//! Aggregate: exact counts over the matches of a filter — terms, date
//! histograms and cardinalities, with one level of sub-aggregations.
//!
//! No fast columns: each field's values are read back from the inverted
//! index ("uninverted", as Lucene does for fields without doc values),
//! one segment at a time, for the matching documents only. That keeps the
//! schema, the disk and the ingest path as they were (BENCHMARKS.md,
//! Aggregate), at the cost of reading a field's postings once per
//! aggregation over it. `time` and `status` are read from their columns.
//!
//! Counts are exact: every segment's counts are merged in full, keyed by
//! the value's text, before the top `size` are picked. With
//! sub-aggregations a second pass counts inside the buckets the first
//! pass kept.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv6Addr;

use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::Column;
use tantivy::query::Query;
use tantivy::schema::{Field, IndexRecordOption, Term};
use tantivy::{DocId, Score, SegmentOrdinal, SegmentReader};

use super::{invalid, SearchError};
use crate::proto::aggregation::Kind as ProtoKind;
use crate::proto::{AggregationResult, Bucket};
use crate::schema::{micros_to_timestamp, names, AuditSchema};

/// Aggregations in one request.
pub const MAX_AGGREGATIONS: usize = 10;
/// Buckets of a terms aggregation when its `size` is 0.
pub const DEFAULT_TERMS_SIZE: u32 = 10;
pub const MAX_TERMS_SIZE: u32 = 10_000;
/// Buckets of one date histogram, empty ones included.
pub const MAX_HISTOGRAM_BUCKETS: i64 = 10_000;
/// Buckets in one answer, sub-aggregations' included: what keeps an
/// answer (10,000 terms × a 10,000-bucket histogram) from being huge.
pub const MAX_BUCKETS: u64 = 100_000;
/// Distinct values one aggregation may count (per parent bucket, summed).
/// Counting is exact, so each distinct value is held while counting;
/// beyond this the call ends with RESOURCE_EXHAUSTED rather than growing.
pub const MAX_DISTINCT: usize = 1_000_000;

const MICROS_PER_SECOND: i64 = 1_000_000;
/// A document without a value for the field.
const NONE: u32 = u32::MAX;

/// A field terms and cardinality aggregations read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ValueField {
    /// A `raw`-tokenized text field: one term per value.
    Keyword(Field),
    Ip(Field),
    /// The status column; 0 (not given) is no value.
    Status,
    /// One key of the `query` or `attributes` map.
    MapKey {
        field: Field,
        key: String,
    },
}

/// What one aggregation computes.
#[derive(Debug, Clone)]
enum Kind {
    Terms { field: ValueField, size: usize },
    Histogram { interval: i64 },
    Cardinality(ValueField),
}

/// One checked aggregation.
#[derive(Debug, Clone)]
pub struct Plan {
    name: String,
    kind: Kind,
    subs: Vec<Plan>,
}

/// Checks the request's aggregations: the fields, sizes and intervals
/// they name, and their depth.
pub fn plan(
    schema: &AuditSchema,
    aggregations: &[crate::proto::Aggregation],
) -> Result<Vec<Plan>, SearchError> {
    if aggregations.is_empty() || aggregations.len() > MAX_AGGREGATIONS {
        return Err(invalid(
            "aggregations",
            format!("between 1 and {MAX_AGGREGATIONS} are needed"),
        ));
    }
    plan_level(schema, aggregations, true)
}

fn plan_level(
    schema: &AuditSchema,
    aggregations: &[crate::proto::Aggregation],
    top: bool,
) -> Result<Vec<Plan>, SearchError> {
    let mut names = HashSet::new();
    let mut plans = Vec::with_capacity(aggregations.len());
    for a in aggregations {
        if a.name.is_empty() {
            return Err(invalid("aggregations.name", "required"));
        }
        if !names.insert(a.name.as_str()) {
            return Err(invalid(
                "aggregations.name",
                format!("{:?} is used twice at one level", a.name),
            ));
        }
        let named = |reason: String| format!("aggregation {:?}: {reason}", a.name);
        let kind = match &a.kind {
            None => {
                return Err(invalid(
                    "aggregations.kind",
                    named("one of terms, date_histogram or cardinality is required".into()),
                ))
            }
            Some(ProtoKind::Terms(t)) => {
                let field = value_field(schema, &t.field)
                    .map_err(|reason| invalid("aggregations.terms.field", named(reason)))?;
                let size = match t.size {
                    0 => DEFAULT_TERMS_SIZE,
                    n if n > MAX_TERMS_SIZE => {
                        return Err(invalid(
                            "aggregations.terms.size",
                            named(format!("{n} is over the maximum of {MAX_TERMS_SIZE}")),
                        ))
                    }
                    n => n,
                };
                Kind::Terms {
                    field,
                    size: size as usize,
                }
            }
            Some(ProtoKind::DateHistogram(h)) => {
                let interval = h
                    .interval
                    .as_ref()
                    .and_then(|d| {
                        (d.nanos >= 0 && d.nanos < 1_000_000_000).then_some(d.seconds)?;
                        d.seconds
                            .checked_mul(MICROS_PER_SECOND)?
                            .checked_add(i64::from(d.nanos) / 1000)
                    })
                    .filter(|micros| *micros >= MICROS_PER_SECOND)
                    .ok_or_else(|| {
                        invalid(
                            "aggregations.date_histogram.interval",
                            named("a duration of at least 1 s is required".into()),
                        )
                    })?;
                Kind::Histogram { interval }
            }
            Some(ProtoKind::Cardinality(c)) => Kind::Cardinality(
                value_field(schema, &c.field)
                    .map_err(|reason| invalid("aggregations.cardinality.field", named(reason)))?,
            ),
        };
        if !a.sub_aggregations.is_empty() {
            if !top {
                return Err(invalid(
                    "aggregations.sub_aggregations",
                    named("sub-aggregations go one level deep".into()),
                ));
            }
            if matches!(kind, Kind::Cardinality(_)) {
                return Err(invalid(
                    "aggregations.sub_aggregations",
                    named("a cardinality has no buckets to aggregate inside".into()),
                ));
            }
        }
        let subs = plan_level(schema, &a.sub_aggregations, false)?;
        plans.push(Plan {
            name: a.name.clone(),
            kind,
            subs,
        });
    }
    Ok(plans)
}

/// The field a terms or cardinality aggregation names.
fn value_field(schema: &AuditSchema, name: &str) -> Result<ValueField, String> {
    let map_key = |prefix: &str| {
        name.strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('.'))
    };
    let field = match name {
        names::ACTION => ValueField::Keyword(schema.action),
        names::ACCESS_ID => ValueField::Keyword(schema.access_id),
        names::SUBJECT => ValueField::Keyword(schema.subject),
        names::SOURCE_NAME => ValueField::Keyword(schema.source_name),
        names::TYPE => ValueField::Keyword(schema.type_),
        names::ERROR_ID => ValueField::Keyword(schema.error_id),
        names::RESOURCE => ValueField::Keyword(schema.resource),
        names::IP => ValueField::Ip(schema.ip),
        names::STATUS => ValueField::Status,
        _ => match (map_key(names::QUERY), map_key(names::ATTRIBUTES)) {
            (Some(key), _) if !key.is_empty() => ValueField::MapKey {
                field: schema.query,
                key: key.to_owned(),
            },
            (_, Some(key)) if !key.is_empty() => ValueField::MapKey {
                field: schema.attributes,
                key: key.to_owned(),
            },
            _ => {
                return Err(format!(
                    "{name:?} is not one of action, access_id, subject, ip, source_name, \
                     type, status, error_id, resource, query.<key>, attributes.<key>"
                ))
            }
        },
    };
    Ok(field)
}

/// A request's aggregations, checked, and its filter's time range (which
/// bounds the histograms' buckets): what merging the parts' counts needs.
#[derive(Debug, Clone)]
pub struct Planned {
    pub plans: Vec<Plan>,
    pub from: Option<i64>,
    pub to: Option<i64>,
}

impl Planned {
    pub fn of(
        schema: &AuditSchema,
        request: &crate::proto::AggregateRequest,
    ) -> Result<Planned, SearchError> {
        let plans = plan(schema, &request.aggregations)?;
        let filter = request.filter.clone().unwrap_or_default();
        let (from, to) = super::time_range(&filter)?;
        check_ranges(&plans, from, to)?;
        Ok(Planned { plans, from, to })
    }
}

/// The histogram's bucket range, when the filter's time range fixes it:
/// checked against the bucket limit before anything is read.
pub fn check_ranges(plans: &[Plan], from: Option<i64>, to: Option<i64>) -> Result<(), SearchError> {
    let (Some(from), Some(to)) = (from, to) else {
        return Ok(());
    };
    for plan in plans.iter().chain(plans.iter().flat_map(|p| &p.subs)) {
        if let Kind::Histogram { interval } = plan.kind {
            check_bucket_count(
                &plan.name,
                bucket_of(from, interval),
                bucket_of(to - 1, interval),
            )?;
        }
    }
    Ok(())
}

fn check_bucket_count(name: &str, first: i64, last: i64) -> Result<(), SearchError> {
    let count = last.saturating_sub(first).saturating_add(1);
    if count > MAX_HISTOGRAM_BUCKETS {
        return Err(invalid(
            "aggregations.date_histogram.interval",
            format!(
                "aggregation {name:?}: the time range holds {count} intervals; \
                 at most {MAX_HISTOGRAM_BUCKETS}"
            ),
        ));
    }
    Ok(())
}

/// The epoch-aligned bucket of a time.
fn bucket_of(micros: i64, interval: i64) -> i64 {
    micros.div_euclid(interval)
}

/// The merged counts of one aggregation, keyed by value text (terms,
/// cardinality) or bucket number (histogram).
#[derive(Debug, Default)]
pub struct Counts {
    by_key: HashMap<String, u64>,
    by_bucket: BTreeMap<i64, u64>,
}

impl Counts {
    /// Counts by value text and by bucket number, as another node sent
    /// them (`cluster::remote`).
    pub fn from_parts(by_key: HashMap<String, u64>, by_bucket: BTreeMap<i64, u64>) -> Counts {
        Counts { by_key, by_bucket }
    }

    pub fn into_parts(self) -> (HashMap<String, u64>, BTreeMap<i64, u64>) {
        (self.by_key, self.by_bucket)
    }

    fn add(&mut self, part: Counts) {
        for (key, n) in part.by_key {
            *self.by_key.entry(key).or_default() += n;
        }
        for (bucket, n) in part.by_bucket {
            *self.by_bucket.entry(bucket).or_default() += n;
        }
    }

    fn distinct(&self) -> usize {
        self.by_key.len() + self.by_bucket.len()
    }
}

/// The selected buckets of a parent, for the second pass: each bucket's
/// key, and its place in the parent's answer.
#[derive(Debug, Clone)]
pub enum Selected {
    Keys(HashMap<String, usize>),
    /// First bucket number, and how many.
    Buckets {
        first: i64,
        len: usize,
    },
}

impl Selected {
    /// A terms aggregation's kept keys, in bucket order.
    pub fn keys(keys: Vec<String>) -> Selected {
        Selected::Keys(keys.into_iter().enumerate().map(|(i, k)| (k, i)).collect())
    }

    /// How many buckets.
    pub fn len(&self) -> usize {
        match self {
            Selected::Keys(keys) => keys.len(),
            Selected::Buckets { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a pass computes in one segment and merges over all of them: for
/// each aggregation of the pass, its counts inside each parent bucket
/// (one "bucket" in the first pass).
type Fruit = Vec<Vec<Counts>>;

/// One pass over the matches. The first counts every top-level
/// aggregation; the second, each top-level aggregation's subs inside
/// the buckets the first pass selected (`parent`).
struct Pass<'a> {
    schema: &'a AuditSchema,
    /// (parent, its selected buckets), or none in the first pass.
    parent: Option<(&'a Plan, &'a Selected)>,
    plans: &'a [Plan],
}

/// The whole computation over one index's `searchers`: the answer for
/// each top-level aggregation, by name, and the exact number of matches.
///
/// The two passes are also steps of their own, so that a cluster runs
/// them over its partitions (`cluster::fanout`): each part's
/// [`first_pass`] merged ([`FirstPass::merge`]) and [`select`]ed, then
/// each part's [`second_pass`] inside the selected buckets merged and
/// [`complete`]d. Merged counts are the sums of the parts' counts, so the
/// answer is the same however the events are split.
pub fn aggregate(
    schema: &AuditSchema,
    searchers: &[tantivy::Searcher],
    query: &dyn Query,
    plans: &[Plan],
    from: Option<i64>,
    to: Option<i64>,
) -> Result<(u64, HashMap<String, AggregationResult>), SearchError> {
    let first = first_pass(schema, searchers, query, plans)?;
    let total = first.hits;
    let (results, selections) = select(plans, first, from, to)?;
    let second = second_pass(schema, searchers, query, plans, &selections)?;
    Ok((total, complete(plans, results, second, from, to)?))
}

/// What the first pass counted: the matches, and each top-level
/// aggregation's counts (index = plan).
#[derive(Debug)]
pub struct FirstPass {
    pub hits: u64,
    pub counts: Vec<Counts>,
}

impl FirstPass {
    pub fn empty(plans: &[Plan]) -> FirstPass {
        FirstPass {
            hits: 0,
            counts: plans.iter().map(|_| Counts::default()).collect(),
        }
    }

    /// Adds another part's counts.
    pub fn merge(&mut self, part: FirstPass, plans: &[Plan]) -> Result<(), SearchError> {
        self.hits += part.hits;
        for ((plan, merged), part) in plans.iter().zip(&mut self.counts).zip(part.counts) {
            merge(merged, part, &plan.name)?;
        }
        Ok(())
    }
}

/// The buckets of each top-level aggregation a second pass counts its
/// sub-aggregations in (index = plan; `None` for one without subs).
pub type Selections = Vec<Option<Selected>>;

/// What the second pass counted (index = plan, then sub-aggregation, then
/// selected bucket; empty for a plan without subs).
#[derive(Debug)]
pub struct SecondPass(pub Vec<Vec<Vec<Counts>>>);

impl SecondPass {
    pub fn empty(plans: &[Plan], selections: &Selections) -> SecondPass {
        SecondPass(
            plans
                .iter()
                .zip(selections)
                .map(|(plan, selected)| match selected {
                    Some(selected) => plan
                        .subs
                        .iter()
                        .map(|_| (0..selected.len()).map(|_| Counts::default()).collect())
                        .collect(),
                    None => Vec::new(),
                })
                .collect(),
        )
    }

    /// Adds another part's counts.
    pub fn merge(&mut self, part: SecondPass, plans: &[Plan]) -> Result<(), SearchError> {
        for ((plan, merged), part) in plans.iter().zip(&mut self.0).zip(part.0) {
            for ((sub, merged), part) in plan.subs.iter().zip(merged).zip(part) {
                for (m, p) in merged.iter_mut().zip(part) {
                    merge(m, p, &sub.name)?;
                }
            }
        }
        Ok(())
    }
}

/// The first pass over one index's `searchers`.
pub fn first_pass(
    schema: &AuditSchema,
    searchers: &[tantivy::Searcher],
    query: &dyn Query,
    plans: &[Plan],
) -> Result<FirstPass, SearchError> {
    let pass = Pass {
        schema,
        parent: None,
        plans,
    };
    let mut merged = FirstPass::empty(plans);
    for searcher in searchers {
        let (hits, fruit) = searcher.search(query, &pass)?;
        let counts = fruit
            .into_iter()
            .map(|mut part| part.pop().unwrap_or_default())
            .collect();
        merged.merge(FirstPass { hits, counts }, plans)?;
    }
    Ok(merged)
}

/// The top-level answers from the merged first pass (their buckets not
/// yet holding sub-aggregations), and the buckets the second pass counts
/// in.
pub fn select(
    plans: &[Plan],
    first: FirstPass,
    from: Option<i64>,
    to: Option<i64>,
) -> Result<(Vec<AggregationResult>, Selections), SearchError> {
    let mut results = Vec::with_capacity(plans.len());
    let mut selections = Vec::with_capacity(plans.len());
    for (plan, counts) in plans.iter().zip(first.counts) {
        let (result, selected) = finish(plan, counts, from, to)?;
        results.push(result);
        selections.push(selected.filter(|_| !plan.subs.is_empty()));
    }
    Ok((results, selections))
}

/// The second pass over one index's `searchers`: each sub-aggregation's
/// counts inside the selected buckets.
pub fn second_pass(
    schema: &AuditSchema,
    searchers: &[tantivy::Searcher],
    query: &dyn Query,
    plans: &[Plan],
    selections: &Selections,
) -> Result<SecondPass, SearchError> {
    let mut merged = SecondPass::empty(plans, selections);
    for (i, (plan, selected)) in plans.iter().zip(selections).enumerate() {
        let Some(selected) = selected else { continue };
        let pass = Pass {
            schema,
            parent: Some((plan, selected)),
            plans: &plan.subs,
        };
        for searcher in searchers {
            let (_, fruit) = searcher.search(query, &pass)?;
            for ((sub, merged), part) in plan.subs.iter().zip(&mut merged.0[i]).zip(fruit) {
                for (m, p) in merged.iter_mut().zip(part) {
                    merge(m, p, &sub.name)?;
                }
            }
        }
    }
    Ok(merged)
}

/// The answer, by name: the selected answers with their buckets'
/// sub-aggregations from the merged second pass.
pub fn complete(
    plans: &[Plan],
    results: Vec<AggregationResult>,
    second: SecondPass,
    from: Option<i64>,
    to: Option<i64>,
) -> Result<HashMap<String, AggregationResult>, SearchError> {
    let mut answer = HashMap::new();
    let mut buckets_in_answer = 0u64;
    for ((plan, mut result), per_sub) in plans.iter().zip(results).zip(second.0) {
        buckets_in_answer += result.buckets.len() as u64;
        for (sub, per_bucket) in plan.subs.iter().zip(per_sub) {
            for (bucket, counts) in result.buckets.iter_mut().zip(per_bucket) {
                let (sub_result, _) = finish(sub, counts, from, to)?;
                buckets_in_answer += sub_result.buckets.len() as u64;
                bucket.sub.insert(sub.name.clone(), sub_result);
            }
        }
        if buckets_in_answer > MAX_BUCKETS {
            return Err(invalid(
                "aggregations",
                format!("the answer would hold over {MAX_BUCKETS} buckets; ask for fewer"),
            ));
        }
        answer.insert(plan.name.clone(), result);
    }
    Ok(answer)
}

fn merge(into: &mut Counts, part: Counts, name: &str) -> Result<(), SearchError> {
    into.add(part);
    if into.distinct() > MAX_DISTINCT {
        return Err(SearchError::TooLarge(format!(
            "aggregation {name:?} counts over {MAX_DISTINCT} distinct values; narrow the filter"
        )));
    }
    Ok(())
}

/// The answer for one aggregation from its merged counts, and which of
/// its buckets a second pass fills with sub-aggregations.
fn finish(
    plan: &Plan,
    counts: Counts,
    from: Option<i64>,
    to: Option<i64>,
) -> Result<(AggregationResult, Option<Selected>), SearchError> {
    match &plan.kind {
        Kind::Cardinality(_) => Ok((
            AggregationResult {
                value: counts.by_key.len() as u64,
                ..Default::default()
            },
            None,
        )),
        Kind::Terms { size, .. } => {
            let all: u64 = counts.by_key.values().sum();
            let mut terms: Vec<(String, u64)> = counts.by_key.into_iter().collect();
            terms.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            terms.truncate(*size);
            let kept: u64 = terms.iter().map(|(_, n)| n).sum();
            let selected = terms
                .iter()
                .enumerate()
                .map(|(i, (key, _))| (key.clone(), i))
                .collect();
            let buckets = terms
                .into_iter()
                .map(|(key, count)| Bucket {
                    key,
                    count,
                    ..Default::default()
                })
                .collect();
            Ok((
                AggregationResult {
                    buckets,
                    other_count: all - kept,
                    ..Default::default()
                },
                Some(Selected::Keys(selected)),
            ))
        }
        Kind::Histogram { interval } => {
            let first_match = counts.by_bucket.keys().next().copied();
            let last_match = counts.by_bucket.keys().next_back().copied();
            let first = from.map(|t| bucket_of(t, *interval)).or(first_match);
            let last = to.map(|t| bucket_of(t - 1, *interval)).or(last_match);
            let (Some(first), Some(last)) = (first, last) else {
                return Ok((
                    AggregationResult::default(),
                    Some(Selected::Buckets { first: 0, len: 0 }),
                ));
            };
            check_bucket_count(&plan.name, first, last)?;
            let buckets: Vec<Bucket> = (first..=last)
                .map(|b| Bucket {
                    start: Some(micros_to_timestamp(b.saturating_mul(*interval))),
                    count: counts.by_bucket.get(&b).copied().unwrap_or(0),
                    ..Default::default()
                })
                .collect();
            let len = buckets.len();
            Ok((
                AggregationResult {
                    buckets,
                    ..Default::default()
                },
                Some(Selected::Buckets { first, len }),
            ))
        }
    }
}

impl Collector for Pass<'_> {
    type Fruit = (u64, Fruit);
    type Child = SegmentPass;

    fn for_segment(
        &self,
        _: SegmentOrdinal,
        segment: &SegmentReader,
    ) -> tantivy::Result<SegmentPass> {
        Ok(SegmentPass {
            segment: segment.clone(),
            schema: self.schema.clone(),
            parent: self.parent.map(|(p, s)| (p.kind.clone(), s.clone())),
            kinds: self.plans.iter().map(|p| p.kind.clone()).collect(),
            docs: Vec::new(),
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(
        &self,
        fruits: Vec<tantivy::Result<(u64, Fruit)>>,
    ) -> tantivy::Result<(u64, Fruit)> {
        let mut total = 0;
        let mut merged: Option<Fruit> = None;
        for fruit in fruits {
            let (hits, fruit) = fruit?;
            total += hits;
            merged = Some(match merged {
                None => fruit,
                Some(mut into) => {
                    for (a, b) in into.iter_mut().zip(fruit) {
                        for (into, part) in a.iter_mut().zip(b) {
                            into.add(part);
                        }
                    }
                    into
                }
            });
        }
        let empty = || self.plans.iter().map(|_| vec![Counts::default()]).collect();
        Ok((total, merged.unwrap_or_else(empty)))
    }
}

/// One segment's pass: gathers the matching documents, then counts at
/// `harvest`, when it knows them all.
pub(crate) struct SegmentPass {
    segment: SegmentReader,
    schema: AuditSchema,
    parent: Option<(Kind, Selected)>,
    kinds: Vec<Kind>,
    docs: Vec<DocId>,
}

impl SegmentCollector for SegmentPass {
    type Fruit = tantivy::Result<(u64, Fruit)>;

    fn collect(&mut self, doc: DocId, _: Score) {
        self.docs.push(doc);
    }

    fn harvest(self) -> Self::Fruit {
        let docs = &self.docs;
        // The parent bucket of each matching document (one bucket in the
        // first pass).
        let (slots, parent_of): (usize, Vec<u32>) = match &self.parent {
            None => (1, vec![0; docs.len()]),
            Some((kind, selected)) => {
                let values = SegmentValues::read(&self.segment, &self.schema, kind, docs)?;
                (
                    selected.len(),
                    docs.iter()
                        .enumerate()
                        .map(|(i, _)| values.slot(i, selected))
                        .collect(),
                )
            }
        };
        let mut fruit = Vec::with_capacity(self.kinds.len());
        for kind in &self.kinds {
            let values = SegmentValues::read(&self.segment, &self.schema, kind, docs)?;
            fruit.push(values.count(&parent_of, slots));
        }
        Ok((docs.len() as u64, fruit))
    }
}

/// One field's values for the matching documents of a segment, in the
/// order of `docs`.
enum SegmentValues {
    /// An index into `keys` per document, or `NONE`.
    Terms { ords: Vec<u32>, keys: Vec<String> },
    /// A bucket number per document.
    Buckets(Vec<i64>),
}

impl SegmentValues {
    fn read(
        segment: &SegmentReader,
        schema: &AuditSchema,
        kind: &Kind,
        docs: &[DocId],
    ) -> tantivy::Result<SegmentValues> {
        match kind {
            Kind::Terms { field, .. } | Kind::Cardinality(field) => {
                uninvert(segment, schema, field, docs)
            }
            Kind::Histogram { interval } => {
                let time: Column<i64> = segment.fast_fields().i64(names::TIME)?;
                Ok(SegmentValues::Buckets(
                    docs.iter()
                        .map(|d| bucket_of(time.first(*d).unwrap_or(0), *interval))
                        .collect(),
                ))
            }
        }
    }

    /// The answer slot of document `i` among `selected`, or `NONE`.
    fn slot(&self, i: usize, selected: &Selected) -> u32 {
        match (self, selected) {
            (SegmentValues::Terms { ords, keys }, Selected::Keys(slots)) => match ords[i] {
                NONE => NONE,
                ord => slots.get(&keys[ord as usize]).map_or(NONE, |s| *s as u32),
            },
            (SegmentValues::Buckets(buckets), Selected::Buckets { first, len }) => {
                let offset = buckets[i] - first;
                if (0..*len as i64).contains(&offset) {
                    offset as u32
                } else {
                    NONE
                }
            }
            _ => NONE,
        }
    }

    /// Counts per parent slot: `parent_of[i]` is document `i`'s.
    fn count(&self, parent_of: &[u32], slots: usize) -> Vec<Counts> {
        let mut out: Vec<Counts> = (0..slots).map(|_| Counts::default()).collect();
        match self {
            SegmentValues::Terms { ords, keys } => {
                // Counted by ordinal first: a string per value, not per
                // document.
                let values = ords.iter().map(|o| (*o != NONE).then_some(u64::from(*o)));
                for ((parent, ord), n) in tally(values, parent_of, slots, keys.len() as u64) {
                    out[parent as usize]
                        .by_key
                        .insert(keys[ord as usize].clone(), n);
                }
            }
            SegmentValues::Buckets(buckets) => {
                let (Some(min), Some(max)) = (buckets.iter().min(), buckets.iter().max()) else {
                    return out;
                };
                let width = max.abs_diff(*min).saturating_add(1);
                let values = buckets.iter().map(|b| Some(b.abs_diff(*min)));
                for ((parent, offset), n) in tally(values, parent_of, slots, width) {
                    out[parent as usize]
                        .by_bucket
                        .insert(min.saturating_add_unsigned(offset), n);
                }
            }
        }
        out
    }
}

/// Cells of a (parent, value) table: a dense table holds at most this
/// many counters (8 MiB); a larger one is counted in a map.
const MAX_DENSE_CELLS: u64 = 1 << 20;

/// Counts (parent slot, value) pairs, values below `width`; documents
/// without a value or a parent are left out.
fn tally(
    values: impl Iterator<Item = Option<u64>>,
    parent_of: &[u32],
    slots: usize,
    width: u64,
) -> Vec<((u32, u64), u64)> {
    let pairs = values
        .zip(parent_of)
        .filter_map(|(v, p)| Some((*p, v?)))
        .filter(|(p, _)| *p != NONE);
    if (slots as u64).saturating_mul(width) <= MAX_DENSE_CELLS {
        let mut table = vec![0u64; slots * width as usize];
        for (parent, value) in pairs {
            table[parent as usize * width as usize + value as usize] += 1;
        }
        return table
            .into_iter()
            .enumerate()
            .filter(|(_, n)| *n > 0)
            .map(|(i, n)| (((i as u64 / width) as u32, i as u64 % width), n))
            .collect();
    }
    let mut map: HashMap<(u32, u64), u64> = HashMap::new();
    for pair in pairs {
        *map.entry(pair).or_default() += 1;
    }
    map.into_iter().collect()
}

/// Reads `field` back from the inverted index for `docs` (sorted, as a
/// collector sees them): each term's postings, kept where they meet a
/// matching document.
fn uninvert(
    segment: &SegmentReader,
    schema: &AuditSchema,
    field: &ValueField,
    docs: &[DocId],
) -> tantivy::Result<SegmentValues> {
    let mut ords = vec![NONE; docs.len()];
    let mut keys = Vec::new();
    if docs.is_empty() {
        return Ok(SegmentValues::Terms { ords, keys });
    }
    // Where each matching document sits in `docs`, by doc id.
    let mut slot_of = vec![NONE; segment.max_doc() as usize];
    for (i, doc) in docs.iter().enumerate() {
        slot_of[*doc as usize] = i as u32;
    }
    let (index_field, prefix): (Field, Vec<u8>) = match field {
        ValueField::Keyword(f) | ValueField::Ip(f) => (*f, Vec::new()),
        ValueField::Status => (schema.status, Vec::new()),
        ValueField::MapKey { field, key } => {
            let escaped = key.replace('\\', "\\\\").replace('.', "\\.");
            let mut term = Term::from_field_json_path(*field, &escaped, false);
            term.append_type_and_str("");
            (*field, term.serialized_value_bytes().to_vec())
        }
    };
    let inverted = segment.inverted_index(index_field)?;
    let mut range = inverted.terms().range();
    if !prefix.is_empty() {
        range = range.ge(&prefix);
        if let Some(end) = prefix_end(&prefix) {
            range = range.lt(end);
        }
    }
    let mut terms = range.into_stream()?;
    while terms.advance() {
        let Some(key) = decode_key(field, &terms.key()[prefix.len()..]) else {
            continue;
        };
        let mut postings =
            inverted.read_block_postings_from_terminfo(terms.value(), IndexRecordOption::Basic)?;
        let ord = keys.len() as u32;
        let mut used = false;
        while !postings.docs().is_empty() {
            for doc in postings.docs() {
                let slot = slot_of[*doc as usize];
                if slot != NONE {
                    ords[slot as usize] = ord;
                    used = true;
                }
            }
            postings.advance();
        }
        if used {
            keys.push(key);
        }
    }
    Ok(SegmentValues::Terms { ords, keys })
}

/// The smallest key above every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A term's bytes as the value text a bucket shows, or `None` for what
/// counts as no value (a status of 0).
fn decode_key(field: &ValueField, bytes: &[u8]) -> Option<String> {
    match field {
        ValueField::Keyword(_) | ValueField::MapKey { .. } => {
            Some(String::from_utf8_lossy(bytes).into_owned())
        }
        ValueField::Ip(_) => {
            let ip = Ipv6Addr::from(u128::from_be_bytes(bytes.try_into().ok()?));
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => v4.to_string(),
                None => ip.to_string(),
            })
        }
        ValueField::Status => {
            let status = tantivy::u64_to_i64(u64::from_be_bytes(bytes.try_into().ok()?));
            (status != 0).then(|| status.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_align_to_the_epoch() {
        assert_eq!(bucket_of(0, 3_600_000_000), 0);
        assert_eq!(bucket_of(3_599_999_999, 3_600_000_000), 0);
        assert_eq!(bucket_of(3_600_000_000, 3_600_000_000), 1);
        assert_eq!(bucket_of(-1, 3_600_000_000), -1);
    }

    #[test]
    fn prefix_end_is_past_every_extension() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff]), None);
    }

    #[test]
    fn fields_are_checked() {
        let schema = AuditSchema::new();
        assert!(value_field(&schema, "action").is_ok());
        assert!(value_field(&schema, "query.streamId").is_ok());
        assert!(value_field(&schema, "attributes.a.b").is_ok());
        for bad in [
            "",
            "query",
            "query.",
            "attributes",
            "time",
            "id",
            "text",
            "nope",
        ] {
            assert!(value_field(&schema, bad).is_err(), "{bad}");
        }
    }
}
