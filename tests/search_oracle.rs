//! Search against an oracle: a few thousand generated events over several
//! day partitions (IPv4 and IPv6), many random filter combinations, every
//! page followed, and each result list, its order and total_hits compared
//! with a brute-force filter over the same events.

mod common;

use auditd::proto::{AuditEvent, GetEventRequest, SearchRequest, WaitFor};
use auditd::schema::timestamp_micros;
use common::oracle::*;
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A random search: a random filter, a page size and an order.
fn random_request(rng: &mut StdRng, events: &[AuditEvent]) -> SearchRequest {
    let mut r = search_request(random_filter(rng, events));
    r.limit = rng.random_range(10..=250);
    r.ascending = rng.random_bool(0.3);
    r.exact_total = rng.random_bool(0.3);
    r
}

/// The server's `limits.exact_total_hits` in this test.
const COUNT_UP_TO: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_searches_match_a_brute_force_filter() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // Counting stops at 300 unless the request asks for an exact total;
    // pages go up to 250.
    config.limits.max_search_limit = 250;
    config.limits.exact_total_hits = COUNT_UP_TO as u32;
    let server = TestServer::start(config).await;
    let mut client = server.client().await;

    // 4,000 events over four days; 12% of the address pool is IPv6.
    let events = generated(4_000, 11, 1_000);
    assert!(events
        .iter()
        .any(|e| e.source.as_ref().unwrap().ip.contains(':')));
    // Each batch waits until searchable, so each is a segment of its own
    // (until merged): the search visits many segments of four partitions,
    // skipping those that cannot make the page.
    for chunk in events.chunks(250) {
        let reply = ingest(&mut client, chunk.to_vec(), WaitFor::Searchable).await;
        assert_eq!(reply.accepted as usize, chunk.len());
    }

    let mut rng = StdRng::seed_from_u64(5);
    let mut checked_hits = 0;
    for round in 0..150 {
        let request = random_request(&mut rng, &events);
        // Log order is list order: batches were sent one after another.
        let mut expected: Vec<(i64, usize)> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| matches(&auditd::search::filter_of(&request), e))
            .map(|(i, e)| (timestamp_micros(e.time.as_ref()), i))
            .collect();
        expected.sort();
        if !request.ascending {
            expected.reverse();
        }
        let expected: Vec<&str> = expected
            .iter()
            .map(|(_, i)| events[*i].id.as_str())
            .collect();
        let first = client.search(request.clone()).await.unwrap().into_inner();
        let (got, total) = search_all(&mut client, request.clone()).await;
        let got: Vec<&str> = got.iter().map(|e| e.id.as_str()).collect();
        let bounded = !request.exact_total && expected.len() >= COUNT_UP_TO;
        assert_eq!(
            (total as usize, first.total_hits_is_lower_bound),
            match bounded {
                true => (COUNT_UP_TO, true),
                false => (expected.len(), false),
            },
            "round {round}: total_hits for {request:?}"
        );
        assert_eq!(got, expected, "round {round}: results for {request:?}");
        checked_hits += expected.len();
    }
    assert!(
        checked_hits > 10_000,
        "the random filters should hit plenty: {checked_hits}"
    );

    // Each filter alone once more, on the full page path, and GetEvent.
    for (i, e) in events.iter().enumerate().step_by(397) {
        let got = client
            .get_event(GetEventRequest { id: e.id.clone() })
            .await
            .unwrap()
            .into_inner();
        let mut stored = got.clone();
        assert!(stored.received.take().is_some(), "the server sets received");
        // Ingested in order before any read: the seq is the index.
        assert_eq!(std::mem::take(&mut stored.seq), i as u64);
        assert_eq!(&stored, e, "GetEvent returns the event as sent");
    }
    let missing = client
        .get_event(GetEventRequest {
            id: "no-such-id".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_strings_and_ipv4_mapped_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let mut client = server.client().await;
    let events = generated(1_500, 3, 1_500);
    ingest(&mut client, events.clone(), WaitFor::Searchable).await;

    let query = |q: &str| SearchRequest {
        query: q.into(),
        limit: 10_000,
        ..Default::default()
    };
    let (got, _) = search_all(
        &mut client,
        query("action:events.get AND status:[400 TO 499]"),
    )
    .await;
    let expected = events
        .iter()
        .filter(|e| e.action == "events.get" && (400..=499).contains(&e.status))
        .count();
    assert_eq!(got.len(), expected);
    assert!(expected > 0);

    let (got, _) = search_all(&mut client, query("query.streams:diary")).await;
    let expected = events
        .iter()
        .filter(|e| e.query.get("streams").is_some_and(|s| s == "diary"))
        .count();
    assert_eq!(got.len(), expected);

    // An IPv4 address and its IPv4-mapped IPv6 form are one address.
    let v4 = events
        .iter()
        .map(|e| e.source.as_ref().unwrap().ip.clone())
        .find(|ip| !ip.contains(':'))
        .unwrap();
    let mapped = format!("::ffff:{v4}");
    let by = |ip: &str| SearchRequest {
        ips: vec![ip.into()],
        limit: 10_000,
        ..Default::default()
    };
    let (plain, _) = search_all(&mut client, by(&v4)).await;
    let (via_mapped, _) = search_all(&mut client, by(&mapped)).await;
    assert!(!plain.is_empty());
    assert_eq!(plain, via_mapped);
    let (via_block, _) = search_all(&mut client, by("::ffff:0:0/96")).await;
    let v4_count = events
        .iter()
        .filter(|e| !e.source.as_ref().unwrap().ip.contains(':'))
        .count();
    assert_eq!(via_block.len(), v4_count);

    server.stop().await.unwrap();
}

/// Pryv's actions are `VERB /path`, and a prefix may hold any character a
/// regex gives meaning to: each one matches itself and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn action_prefixes_with_regex_meta_characters_match_literally() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let mut client = server.client().await;
    let metas: Vec<char> = "\\.+*?()|[]{}^$#&-~\"@<>/ =!%,:;'`".chars().collect();
    let mut events = Vec::new();
    for (i, c) in metas.iter().enumerate() {
        for action in [
            format!("GET /records/{c}"),
            format!("GET /records/{c}x{i}"),
            format!("GET /records/{c}{c}"),
            format!("GET /records/a{c}"),
        ] {
            let mut event = generated(1, i as u64, 1).remove(0);
            event.id = String::new();
            event.action = action;
            events.push(event);
        }
    }
    let mut decoy = generated(1, 99, 1).remove(0);
    decoy.action = "GET /records/".into();
    events.push(decoy);
    let stored = ingest(&mut client, events.clone(), WaitFor::Searchable).await;
    for (event, id) in events.iter_mut().zip(stored.ids) {
        event.id = id;
    }

    for c in metas {
        let prefix = format!("GET /records/{c}");
        let (got, total) = search_all(
            &mut client,
            SearchRequest {
                actions: vec![format!("{prefix}*")],
                limit: 1_000,
                ..Default::default()
            },
        )
        .await;
        let mut got: Vec<String> = got.into_iter().map(|e| e.action).collect();
        got.sort();
        let mut expected: Vec<String> = events
            .iter()
            .filter(|e| e.action.starts_with(&prefix))
            .map(|e| e.action.clone())
            .collect();
        expected.sort();
        assert_eq!(got, expected, "prefix {prefix:?}");
        assert_eq!(total, expected.len() as u64, "prefix {prefix:?}");
    }
    server.stop().await.unwrap();
}
