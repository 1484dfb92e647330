//! The aggregate oracle the analysis and cluster tests share: brute-force
//! counts of one aggregation over the matching events, written from the
//! API's contract, and random aggregations.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use auditd::proto::aggregation::Kind;
use auditd::proto::{
    Aggregation, AggregationResult, AuditEvent, CardinalityAggregation, DateHistogramAggregation,
    TermsAggregation,
};
use auditd::schema::{micros_to_timestamp, timestamp_micros};
use rand::rngs::StdRng;
use rand::Rng;

use super::oracle::canonical;

pub const FIELDS: &[&str] = &[
    "action",
    "access_id",
    "subject",
    "ip",
    "source_name",
    "type",
    "status",
    "error_id",
    "resource",
    "query.streams",
    "query.limit",
    "attributes.region",
];

/// An event's value for an aggregation field, as a bucket key shows it.
pub fn value(e: &AuditEvent, field: &str) -> Option<String> {
    let text = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let source = e.source.clone().unwrap_or_default();
    match field {
        "action" => text(&e.action),
        "access_id" => text(&e.access_id),
        "subject" => text(&e.subject),
        "source_name" => text(&source.name),
        "type" => text(&e.r#type),
        "error_id" => text(&e.error_id),
        "resource" => text(&e.resource),
        "status" => (e.status != 0).then(|| e.status.to_string()),
        "ip" => source
            .ip
            .parse::<IpAddr>()
            .ok()
            .map(|ip| canonical(ip).to_string()),
        _ => {
            let (map, key) = match field.split_once('.') {
                Some(("query", key)) => (&e.query, key),
                Some(("attributes", key)) => (&e.attributes, key),
                _ => panic!("unknown field {field}"),
            };
            map.get(key).cloned()
        }
    }
}

/// The oracle's answer for one aggregation over `events` (the matches),
/// with `range` the filter's [from, to) in microseconds.
pub fn brute_force(
    a: &Aggregation,
    events: &[&AuditEvent],
    range: (Option<i64>, Option<i64>),
) -> AggregationResult {
    let subs = |bucket: &[&AuditEvent]| {
        a.sub_aggregations
            .iter()
            .map(|s| (s.name.clone(), brute_force(s, bucket, range)))
            .collect::<BTreeMap<_, _>>()
    };
    match a.kind.as_ref().unwrap() {
        Kind::Terms(t) => {
            let mut groups: HashMap<String, Vec<&AuditEvent>> = HashMap::new();
            for e in events {
                if let Some(v) = value(e, &t.field) {
                    groups.entry(v).or_default().push(e);
                }
            }
            let mut keys: Vec<(String, Vec<&AuditEvent>)> = groups.into_iter().collect();
            keys.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
            let size = if t.size == 0 { 10 } else { t.size as usize };
            let other = keys.iter().skip(size).map(|(_, g)| g.len() as u64).sum();
            keys.truncate(size);
            AggregationResult {
                buckets: keys
                    .into_iter()
                    .map(|(key, group)| auditd::proto::Bucket {
                        key,
                        count: group.len() as u64,
                        sub: subs(&group),
                        ..Default::default()
                    })
                    .collect(),
                other_count: other,
                ..Default::default()
            }
        }
        Kind::DateHistogram(h) => {
            let interval = h.interval.unwrap().seconds * 1_000_000;
            let bucket = |t: i64| t.div_euclid(interval);
            let times: Vec<i64> = events
                .iter()
                .map(|e| timestamp_micros(e.time.as_ref()))
                .collect();
            let first = range
                .0
                .map(bucket)
                .or(times.iter().map(|t| bucket(*t)).min());
            let last = range
                .1
                .map(|t| bucket(t - 1))
                .or(times.iter().map(|t| bucket(*t)).max());
            let (Some(first), Some(last)) = (first, last) else {
                return AggregationResult::default();
            };
            AggregationResult {
                buckets: (first..=last)
                    .map(|b| {
                        let group: Vec<&AuditEvent> = events
                            .iter()
                            .zip(&times)
                            .filter(|(_, t)| bucket(**t) == b)
                            .map(|(e, _)| *e)
                            .collect();
                        auditd::proto::Bucket {
                            start: Some(micros_to_timestamp(b * interval)),
                            count: group.len() as u64,
                            sub: subs(&group),
                            ..Default::default()
                        }
                    })
                    .collect(),
                ..Default::default()
            }
        }
        Kind::Cardinality(c) => AggregationResult {
            value: events
                .iter()
                .filter_map(|e| value(e, &c.field))
                .collect::<HashSet<_>>()
                .len() as u64,
            ..Default::default()
        },
    }
}

pub fn terms(name: &str, field: &str, size: u32) -> Aggregation {
    Aggregation {
        name: name.into(),
        kind: Some(Kind::Terms(TermsAggregation {
            field: field.into(),
            size,
        })),
        sub_aggregations: vec![],
    }
}

pub fn histogram(name: &str, seconds: i64) -> Aggregation {
    Aggregation {
        name: name.into(),
        kind: Some(Kind::DateHistogram(DateHistogramAggregation {
            interval: Some(prost_types::Duration { seconds, nanos: 0 }),
        })),
        sub_aggregations: vec![],
    }
}

pub fn cardinality(name: &str, field: &str) -> Aggregation {
    Aggregation {
        name: name.into(),
        kind: Some(Kind::Cardinality(CardinalityAggregation {
            field: field.into(),
        })),
        sub_aggregations: vec![],
    }
}

pub fn random_aggregation(rng: &mut StdRng, name: &str, depth: usize) -> Aggregation {
    let field = FIELDS[rng.random_range(0..FIELDS.len())];
    let mut a = match rng.random_range(0..5) {
        0 | 1 => terms(name, field, [0, 1, 3, 20, 10_000][rng.random_range(0..5)]),
        2 | 3 => histogram(name, [3_600, 21_600, 86_400][rng.random_range(0..3)]),
        _ => cardinality(name, field),
    };
    if depth == 0 && !matches!(a.kind, Some(Kind::Cardinality(_))) && rng.random_bool(0.5) {
        a.sub_aggregations = (0..rng.random_range(1..=2))
            .map(|i| random_aggregation(rng, &format!("sub{i}"), 1))
            .collect();
    }
    a
}
