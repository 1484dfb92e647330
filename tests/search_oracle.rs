//! Search against an oracle: a few thousand generated events over several
//! day partitions (IPv4 and IPv6), many random filter combinations, every
//! page followed, and each result list, its order and total_hits compared
//! with a brute-force filter over the same events.

mod common;

use std::net::IpAddr;

use auditd::proto::{AuditEvent, GetEventRequest, Outcome, SearchRequest, WaitFor};
use auditd::schema::{micros_to_timestamp, timestamp_micros};
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The oracle: does `e` match `r`? Written from the API's contract, not
/// from the server's code.
fn matches(r: &SearchRequest, e: &AuditEvent) -> bool {
    let time = timestamp_micros(e.time.as_ref());
    if let Some(from) = &r.from_time {
        if time < timestamp_micros(Some(from)) {
            return false;
        }
    }
    if let Some(to) = &r.to_time {
        if time >= timestamp_micros(Some(to)) {
            return false;
        }
    }
    if !r.actions.is_empty()
        && !r.actions.iter().any(|a| match a.strip_suffix('*') {
            Some(prefix) => e.action.starts_with(prefix),
            None => *a == e.action,
        })
    {
        return false;
    }
    let source = e.source.clone().unwrap_or_default();
    for (wanted, value) in [
        (&r.access_ids, &e.access_id),
        (&r.subjects, &e.subject),
        (&r.types, &e.r#type),
        (&r.source_names, &source.name),
    ] {
        if !wanted.is_empty() && !wanted.contains(value) {
            return false;
        }
    }
    if !r.ips.is_empty() {
        let Ok(ip) = source.ip.parse::<IpAddr>() else {
            return false;
        };
        let ip = canonical(ip);
        let hit = r.ips.iter().any(|f| match f.parse::<ipnet::IpNet>() {
            Ok(net) => match (net, ip) {
                (ipnet::IpNet::V4(n), IpAddr::V4(a)) => n.contains(&a),
                (ipnet::IpNet::V6(n), IpAddr::V6(a)) => n.contains(&a),
                (ipnet::IpNet::V6(n), IpAddr::V4(a)) => n.contains(&a.to_ipv6_mapped()),
                _ => false,
            },
            Err(_) => canonical(f.parse().unwrap()) == ip,
        });
        if !hit {
            return false;
        }
    }
    let status = e.status;
    let outcome = Outcome::try_from(r.outcome).unwrap();
    let status_filtered =
        outcome != Outcome::Any || r.status_min.is_some() || r.status_max.is_some();
    if status_filtered && status == 0 {
        return false;
    }
    match outcome {
        Outcome::Success if status >= 400 => return false,
        Outcome::Failure if status < 400 => return false,
        _ => {}
    }
    if r.status_min.is_some_and(|m| status < m) || r.status_max.is_some_and(|m| status > m) {
        return false;
    }
    if !r.text.is_empty() {
        let have = words_of_event(e);
        if !words(&r.text).iter().all(|w| have.contains(w)) {
            return false;
        }
    }
    true
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn words_of_event(e: &AuditEvent) -> std::collections::HashSet<String> {
    let source_name = e
        .source
        .as_ref()
        .map(|s| s.name.clone())
        .unwrap_or_default();
    let mut all = vec![
        e.id.clone(),
        e.r#type.clone(),
        e.action.clone(),
        e.access_id.clone(),
        e.subject.clone(),
        source_name,
        e.resource.clone(),
        e.error_id.clone(),
        e.error_message.clone(),
        e.before.clone(),
        e.after.clone(),
    ];
    all.extend(e.query.values().cloned());
    all.extend(e.attributes.values().cloned());
    all.iter().flat_map(|s| words(s)).collect()
}

/// A random request built from values that occur (and sometimes not).
fn random_request(rng: &mut StdRng, events: &[AuditEvent]) -> SearchRequest {
    let mut r = SearchRequest::default();
    let pick = |rng: &mut StdRng| events[rng.random_range(0..events.len())].clone();
    let filters = rng.random_range(1..=3);
    for _ in 0..filters {
        let e = pick(rng);
        let source = e.source.clone().unwrap_or_default();
        match rng.random_range(0..11) {
            0 => r.actions.push(e.action.clone()),
            1 => {
                let family = e.action.split('.').next().unwrap();
                r.actions.push(format!("{family}.*"));
            }
            2 => r.access_ids.push(e.access_id.clone()),
            3 => r.subjects.push(e.subject.clone()),
            4 => r.ips.push(source.ip.clone()),
            5 => {
                let ip: IpAddr = source.ip.parse().unwrap();
                let block = match ip {
                    IpAddr::V4(_) => ipnet::IpNet::new(ip, [8, 16][rng.random_range(0..2)])
                        .unwrap()
                        .trunc(),
                    IpAddr::V6(_) => ipnet::IpNet::new(ip, [32, 48][rng.random_range(0..2)])
                        .unwrap()
                        .trunc(),
                };
                r.ips.push(block.to_string());
            }
            6 => {
                let (a, b) = (pick(rng), pick(rng));
                let (a, b) = (
                    timestamp_micros(a.time.as_ref()),
                    timestamp_micros(b.time.as_ref()),
                );
                let (lo, hi) = (a.min(b), a.max(b) + 1);
                r.from_time = Some(micros_to_timestamp(lo));
                r.to_time = Some(micros_to_timestamp(hi));
            }
            7 => {
                let codes = [200, 201, 400, 403, 404, 500];
                let lo = codes[rng.random_range(0..codes.len())];
                r.status_min = Some(lo);
                if rng.random_bool(0.5) {
                    r.status_max = Some(lo + rng.random_range(0..150));
                }
            }
            8 => r.outcome = [Outcome::Success, Outcome::Failure][rng.random_range(0..2)] as i32,
            9 => {
                let source_words = if e.error_message.is_empty() {
                    words(&e.subject)
                } else {
                    words(&e.error_message)
                };
                let n = rng.random_range(1..=2.min(source_words.len()));
                r.text = source_words[..n].join(" ");
            }
            _ => {
                // Two values of one filter are OR-ed; one may not exist.
                r.subjects.push(e.subject.clone());
                r.subjects.push(if rng.random_bool(0.5) {
                    pick(rng).subject
                } else {
                    "nobody".into()
                });
            }
        }
    }
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
            .filter(|(_, e)| matches(&request, e))
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
