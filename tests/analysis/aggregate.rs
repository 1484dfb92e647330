//! Aggregate against an oracle: random filters × every terms field,
//! histograms, cardinalities and one level of sub-aggregations, compared
//! with brute-force counts over thousands of generated events in several
//! day partitions, under an admin token and under scoped tokens.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use auditd::proto::aggregation::Kind;
use auditd::proto::{
    AggregateRequest, Aggregation, AggregationResult, AuditEvent, CardinalityAggregation,
    DateHistogramAggregation, EventFilter, TermsAggregation, TokenKind, WaitFor,
};
use auditd::schema::{micros_to_timestamp, timestamp_micros};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::oracle::{canonical, matches, random_filter};
use crate::common::*;

const FIELDS: &[&str] = &[
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
fn value(e: &AuditEvent, field: &str) -> Option<String> {
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
fn brute_force(
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

fn terms(name: &str, field: &str, size: u32) -> Aggregation {
    Aggregation {
        name: name.into(),
        kind: Some(Kind::Terms(TermsAggregation {
            field: field.into(),
            size,
        })),
        sub_aggregations: vec![],
    }
}

fn histogram(name: &str, seconds: i64) -> Aggregation {
    Aggregation {
        name: name.into(),
        kind: Some(Kind::DateHistogram(DateHistogramAggregation {
            interval: Some(prost_types::Duration { seconds, nanos: 0 }),
        })),
        sub_aggregations: vec![],
    }
}

fn cardinality(name: &str, field: &str) -> Aggregation {
    Aggregation {
        name: name.into(),
        kind: Some(Kind::Cardinality(CardinalityAggregation {
            field: field.into(),
        })),
        sub_aggregations: vec![],
    }
}

fn random_aggregation(rng: &mut StdRng, name: &str, depth: usize) -> Aggregation {
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

/// Every event in scope of a token kind: the oracle's idea of the scope.
type Scope = Box<dyn Fn(&AuditEvent) -> bool>;

async fn compare(
    client: &mut Client,
    events: &[AuditEvent],
    scope: &Scope,
    rng: &mut StdRng,
    rounds: usize,
) -> usize {
    let mut compared = 0;
    for round in 0..rounds {
        let mut filter = random_filter(rng, events);
        if rng.random_bool(0.3) {
            // Histograms without a time range span the matches only.
            filter.from_time = None;
            filter.to_time = None;
        }
        let aggregations: Vec<Aggregation> = (0..rng.random_range(1..=3))
            .map(|i| random_aggregation(rng, &format!("a{i}"), 0))
            .collect();
        let request = AggregateRequest {
            filter: Some(filter.clone()),
            aggregations: aggregations.clone(),
        };
        let matched: Vec<&AuditEvent> = events
            .iter()
            .filter(|e| scope(e) && matches(&filter, e))
            .collect();
        let range = (
            filter.from_time.as_ref().map(|t| timestamp_micros(Some(t))),
            filter.to_time.as_ref().map(|t| timestamp_micros(Some(t))),
        );
        let got = client.aggregate(request.clone()).await;
        let got = match got {
            Ok(reply) => reply.into_inner(),
            Err(status) => {
                // Only the bucket limit may refuse a random request.
                assert_eq!(
                    status.code(),
                    tonic::Code::InvalidArgument,
                    "round {round}: {status:?} for {request:?}"
                );
                assert!(
                    status.message().contains("buckets") || status.message().contains("intervals"),
                    "{status:?}"
                );
                continue;
            }
        };
        assert_eq!(
            got.total_hits,
            matched.len() as u64,
            "round {round}: total_hits for {filter:?}"
        );
        for a in &aggregations {
            let expected = brute_force(a, &matched, range);
            assert_eq!(
                got.results.get(&a.name),
                Some(&expected),
                "round {round}: {a:?} over {filter:?}"
            );
        }
        compared += matched.len();
    }
    compared
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_aggregations_match_brute_force_counts() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let mut admin = server.client().await;

    // 3,000 events over three days, some with attributes; each batch its
    // own segment until merged.
    let mut events = generated(3_000, 17, 1_000);
    for (i, e) in events.iter_mut().enumerate() {
        if i % 3 == 0 {
            let region = ["eu-west", "us-east", "ap-south", "=1+1"][i % 4];
            e.attributes.insert("region".into(), region.into());
        }
    }
    for chunk in events.chunks(300) {
        ingest(&mut admin, chunk.to_vec(), WaitFor::Searchable).await;
    }
    // Events are stored in order; their stored ids are the ones sent.
    let mut rng = StdRng::seed_from_u64(23);
    let all: Scope = Box::new(|_| true);
    let compared = compare(&mut admin, &events, &all, &mut rng, 120).await;
    assert!(
        compared > 10_000,
        "the random filters should match plenty: {compared}"
    );

    // Scoped tokens see their scope only, in every bucket.
    let e = events[7].clone();
    for (kind, access) in [
        (TokenKind::Personal, ""),
        (TokenKind::App, e.access_id.as_str()),
    ] {
        let (_, token) = create(&server, kind, &e.subject, access).await;
        let mut client = server.client_with(&token).await;
        let (subject, access) = (e.subject.clone(), access.to_owned());
        let scope: Scope = Box::new(move |ev: &AuditEvent| {
            ev.subject == subject && (access.is_empty() || ev.access_id == access)
        });
        compare(&mut client, &events, &scope, &mut rng, 25).await;
    }
    server.stop().await.unwrap();
}

/// Bad aggregations are refused naming the field; an ingest token may not
/// aggregate; every call, refused or not, leaves its trail event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_name_the_field_and_every_call_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let mut admin = server.client().await;
    ingest(&mut admin, generated(200, 1, 200), WaitFor::Searchable).await;
    let day = |from: i64, to: i64| EventFilter {
        from_time: Some(prost_types::Timestamp {
            seconds: from,
            nanos: 0,
        }),
        to_time: Some(prost_types::Timestamp {
            seconds: to,
            nanos: 0,
        }),
        ..Default::default()
    };
    let mut nested = terms("a", "action", 3);
    let mut inner = terms("b", "status", 3);
    inner.sub_aggregations = vec![terms("c", "ip", 3)];
    nested.sub_aggregations = vec![inner];
    let mut under_cardinality = cardinality("a", "ip");
    under_cardinality.sub_aggregations = vec![terms("b", "action", 3)];
    let cases: Vec<(&str, EventFilter, Vec<Aggregation>)> = vec![
        ("aggregations", EventFilter::default(), vec![]),
        (
            "aggregations",
            EventFilter::default(),
            (0..11)
                .map(|i| terms(&format!("t{i}"), "action", 1))
                .collect(),
        ),
        (
            "aggregations.name",
            EventFilter::default(),
            vec![terms("", "action", 1)],
        ),
        (
            "aggregations.name",
            EventFilter::default(),
            vec![terms("x", "action", 1), terms("x", "ip", 1)],
        ),
        (
            "aggregations.kind",
            EventFilter::default(),
            vec![Aggregation {
                name: "x".into(),
                ..Default::default()
            }],
        ),
        (
            "aggregations.terms.field",
            EventFilter::default(),
            vec![terms("x", "time", 1)],
        ),
        (
            "aggregations.terms.field",
            EventFilter::default(),
            vec![terms("x", "query.", 1)],
        ),
        (
            "aggregations.terms.size",
            EventFilter::default(),
            vec![terms("x", "ip", 10_001)],
        ),
        (
            "aggregations.cardinality.field",
            EventFilter::default(),
            vec![cardinality("x", "nope")],
        ),
        (
            "aggregations.date_histogram.interval",
            EventFilter::default(),
            vec![histogram("x", 0)],
        ),
        // 10,001 one-second buckets.
        (
            "aggregations.date_histogram.interval",
            day(0, 10_001),
            vec![histogram("x", 1)],
        ),
        (
            "aggregations.sub_aggregations",
            EventFilter::default(),
            vec![nested],
        ),
        (
            "aggregations.sub_aggregations",
            EventFilter::default(),
            vec![under_cardinality],
        ),
        (
            "status_max",
            EventFilter {
                status_min: Some(500),
                status_max: Some(400),
                ..Default::default()
            },
            vec![terms("x", "ip", 1)],
        ),
    ];
    let refused = cases.len();
    for (field, filter, aggregations) in cases {
        let status = admin
            .aggregate(AggregateRequest {
                filter: Some(filter),
                aggregations: aggregations.clone(),
            })
            .await
            .expect_err(field);
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{field}: {status:?}"
        );
        assert!(
            status.message().starts_with(&format!("{field}:")),
            "{field}: {status:?}"
        );
    }
    // Exactly 10,000 buckets is fine.
    let ok = admin
        .aggregate(AggregateRequest {
            filter: Some(day(0, 10_000)),
            aggregations: vec![histogram("x", 1)],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.results["x"].buckets.len(), 10_000);

    let (_, secret) = create(&server, TokenKind::Ingest, "", "").await;
    let denied = server
        .client_with(&secret)
        .await
        .aggregate(AggregateRequest {
            aggregations: vec![terms("x", "ip", 1)],
            ..Default::default()
        })
        .await
        .expect_err("an ingest token cannot read");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);

    let trail = trail_events(&mut admin, "audit.aggregate", refused + 2).await;
    assert_eq!(trail.len(), refused + 2);
    assert!(trail.iter().any(|e| e
        .query
        .get("aggregations")
        .is_some_and(|a| a == "x=date_histogram(1s)")));
    server.stop().await.unwrap();
}
