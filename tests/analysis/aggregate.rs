//! Aggregate against an oracle: random filters × every terms field,
//! histograms, cardinalities and one level of sub-aggregations, compared
//! with brute-force counts over thousands of generated events in several
//! day partitions, under an admin token and under scoped tokens.

use auditd::proto::{AggregateRequest, Aggregation, AuditEvent, EventFilter, TokenKind, WaitFor};
use auditd::schema::timestamp_micros;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::aggregate_oracle::*;
use crate::common::oracle::{matches, random_filter};
use crate::common::*;

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
