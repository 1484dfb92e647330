//! Hostile input, property-based (proptest): whatever bytes or values
//! arrive, the request decoder, the validator, the JSON form, the CIDR
//! parser and the search parsers (query strings, page tokens, time and
//! status ranges) answer with a value or a precise error — never a panic —
//! and what validation lets through can always be indexed.
//!
//! `FUZZ_CASES` sets the cases per property. CI's default, 120,000, runs
//! about a minute on 2 cores; a long run:
//! `FUZZ_CASES=1000000 cargo test --test fuzz`.

mod common;

use std::sync::Arc;

use auditd::auth::ReadScope;
use auditd::config::Limits;
use auditd::json::JsonEvent;
use auditd::partition::{day_of, Partitions};
use auditd::proto::{AuditEvent, IngestRequest, SearchRequest, Source};
use auditd::schema::{timestamp_micros, AuditSchema};
use auditd::search::{parse_ip_filter, SearchError, Searcher};
use auditd::validate::validate_batch;
use proptest::prelude::*;
use prost::Message;

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120_000)
}

const NOW: i64 = 1_800_000_000_000_000;

/// Strings that mix the plain with what breaks parsers: control
/// characters, NUL, quotes, operators, long runs, non-ASCII.
fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,40}",
        "[a-z0-9.:/*_-]{0,30}",
        "[\\x00-\\x1f\"'\\\\()\\[\\]{}:+\\-!~^*?]{0,20}",
        Just("x".repeat(5_000)),
        Just("événement 東京 🙂".to_owned()),
    ]
}

fn any_timestamp() -> impl Strategy<Value = Option<prost_types::Timestamp>> {
    prop_oneof![
        Just(None),
        (any::<i64>(), any::<i32>())
            .prop_map(|(seconds, nanos)| Some(prost_types::Timestamp { seconds, nanos })),
        (0i64..4_000_000_000, 0i32..1_000_000_000)
            .prop_map(|(seconds, nanos)| Some(prost_types::Timestamp { seconds, nanos })),
    ]
}

fn any_event() -> impl Strategy<Value = AuditEvent> {
    (
        (
            nasty_string(),
            any_timestamp(),
            nasty_string(),
            nasty_string(),
            nasty_string(),
        ),
        (
            nasty_string(),
            nasty_string(),
            nasty_string(),
            any::<i32>(),
            nasty_string(),
        ),
        (
            prop::collection::btree_map(nasty_string(), nasty_string(), 0..4),
            nasty_string(),
        ),
    )
        .prop_map(
            |(
                (id, time, action, subject, ip),
                (access_id, before, forwarded_for, status, error_message),
                (query, type_),
            )| AuditEvent {
                id,
                time,
                action,
                subject,
                access_id,
                source: Some(Source {
                    name: "http".into(),
                    ip,
                }),
                before,
                forwarded_for,
                status,
                error_message,
                query,
                r#type: type_,
                ..Default::default()
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder_or_the_validator(bytes in prop::collection::vec(any::<u8>(), 0..2_000)) {
        if let Ok(request) = IngestRequest::decode(bytes.as_slice()) {
            let _ = validate_batch(&request.events, &Limits::default(), NOW);
        }
    }

    #[test]
    fn what_validation_admits_can_be_indexed(events in prop::collection::vec(any_event(), 1..6)) {
        let schema = AuditSchema::new();
        match validate_batch(&events, &Limits::default(), NOW) {
            Ok(()) => {
                let mut body = Vec::new();
                let mut events = events;
                for (i, event) in events.iter_mut().enumerate() {
                    prop_assert!(!event.action.is_empty());
                    // Time within what the day partitions can name.
                    let micros = timestamp_micros(event.time.as_ref());
                    prop_assert!(micros >= 0);
                    let _ = day_of(micros);
                    schema.document(event, i as u64, "batch", None, &mut body);
                }
            }
            Err(invalid) => {
                prop_assert!(invalid.total > 0 && !invalid.violations.is_empty());
                for v in &invalid.violations {
                    prop_assert!(v.path().starts_with("events"), "{}", v.path());
                }
            }
        }
    }

    #[test]
    fn json_lines_parse_or_fail_cleanly(line in prop_oneof![
        ".{0,200}",
        nasty_string().prop_map(|s| format!("{{\"action\":{s:?},\"time\":1e308}}")),
        (any::<f64>(), nasty_string()).prop_map(|(t, a)| format!("{{\"action\":{a:?},\"time\":{t}}}")),
    ]) {
        if let Ok(event) = JsonEvent::parse(&line) {
            let _ = event.into_proto();
        }
    }

    #[test]
    fn ip_filters_parse_or_fail_with_the_field(value in prop_oneof![
        nasty_string(),
        (any::<[u8; 4]>(), 0u8..40).prop_map(|(a, p)| format!("{}.{}.{}.{}/{p}", a[0], a[1], a[2], a[3])),
        (any::<u128>(), 0u16..140).prop_map(|(a, p)| format!("{}/{p}", std::net::Ipv6Addr::from(a))),
    ]) {
        match parse_ip_filter(&value) {
            Ok((lo, hi)) => prop_assert!(lo <= hi),
            Err(SearchError::Invalid { field, .. }) => prop_assert_eq!(field, "ips"),
            Err(other) => prop_assert!(false, "{other}"),
        }
    }
}

/// A searcher over one small partition, so parsed queries really run.
fn searcher(dir: &std::path::Path) -> Searcher {
    let partitions = Arc::new(Partitions::open(dir, AuditSchema::new(), false).unwrap());
    let events = common::generated(200, 5, 200);
    let partition = partitions
        .get_or_create(day_of(timestamp_micros(events[0].time.as_ref())))
        .unwrap();
    let schema = partitions.schema().clone();
    let mut writer: tantivy::IndexWriter = partition
        .index
        .writer_with_num_threads(1, 20_000_000)
        .unwrap();
    let mut body = Vec::new();
    for (i, event) in events.clone().iter_mut().enumerate() {
        writer
            .add_document(schema.document(event, 1 + i as u64, "", None, &mut body))
            .unwrap();
    }
    writer.commit().unwrap();
    partition.reader.reload().unwrap();
    // Everything is visible: the snapshot covers any sequence number.
    let (_, searchable) = tokio::sync::watch::channel(u64::MAX);
    let recent = std::sync::Arc::new(auditd::search::recent::RecentEvents::new(0));
    Searcher::new(partitions, Limits::default(), searchable, recent)
}

#[test]
fn searches_answer_or_name_the_bad_field() {
    let dir = tempfile::tempdir().unwrap();
    let searcher = searcher(dir.path());
    let strategy = (
        prop_oneof![
            2 => Just(String::new()),
            2 => nasty_string(),
            1 => Just("action:events.get AND status:[400 TO 499]".to_owned()),
            1 => Just("query.streams:diary OR -ip:10.0.0.1".to_owned()),
        ],
        // Mostly valid or empty, so most requests run against the index.
        prop_oneof![3 => Just(String::new()), 1 => nasty_string()],
        prop_oneof![3 => Just(None), 1 => nasty_string().prop_map(Some), 1 => Just(Some("10.0.0.0/8".to_owned()))],
        prop_oneof![6 => Just(String::new()), 1 => nasty_string(), 1 => ".{0,60}".prop_map(|s| base64_url(&s))],
        any_timestamp(),
        prop_oneof![3 => Just(None), 1 => any_timestamp()],
        any::<Option<i32>>(),
        -1i32..4,
        any::<u32>(),
    );
    let ran = std::cell::Cell::new(0u32);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(
            &strategy,
            |(query, text, ip, page_token, from_time, to_time, status_min, outcome, limit)| {
                let request = SearchRequest {
                    query,
                    text,
                    ips: ip.into_iter().collect(),
                    page_token,
                    from_time,
                    to_time,
                    status_min,
                    outcome,
                    limit,
                    ..Default::default()
                };
                match searcher.search(&request, &ReadScope::All) {
                    Ok(page) => {
                        prop_assert!(page.events.len() as u64 <= page.total_hits);
                        ran.set(ran.get() + 1);
                    }
                    Err(SearchError::Invalid { field, .. }) => prop_assert!(
                        [
                            "query",
                            "text",
                            "ips",
                            "page_token",
                            "from_time",
                            "to_time",
                            "status_max",
                            "outcome",
                            "actions"
                        ]
                        .contains(&field),
                        "{field}"
                    ),
                    Err(other) => prop_assert!(false, "{other} for {request:?}"),
                }
                Ok(())
            },
        )
        .unwrap();
    eprintln!("searches: {} of {} ran to a page", ran.get(), cases());
    // Worth something only if many searches really ran.
    assert!(
        ran.get() >= cases() / 10,
        "only {} of {} searches ran",
        ran.get(),
        cases()
    );
}

fn base64_url(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("p1:{s}"))
}
