//! A search merged over partitions (`cluster::fanout`) against the
//! oracle: generated events split by the hash of their subject into four
//! partition indexes, each with its own dense seq, every page of many
//! random searches (random scopes too) followed through the merge and
//! compared with a brute-force filter in the merged order, and each total
//! with what one index holding every event answers; random aggregations
//! likewise, against the aggregate oracle and that one index.

mod common;

use std::sync::Arc;
use std::time::Duration;

use auditd::auth::ReadScope;
use auditd::cluster::fanout::{self, Bounds, FanOutError, LocalPartition};
use auditd::cluster::partition_of;
use auditd::cluster::scan::MergedScan;
use auditd::config::Limits;
use auditd::partition::{day_of, Partitions};
use auditd::proto::{
    AggregateRequest, Aggregation, AuditEvent, EventFilter, SearchRequest, SearchResponse,
};
use auditd::schema::{timestamp_micros, AuditSchema};
use auditd::search::recent::RecentEvents;
use auditd::search::Searcher;
use common::aggregate_oracle::{brute_force, random_aggregation};
use common::oracle::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PARTITIONS: u32 = 4;
/// The searchers' `limits.exact_total_hits` in this test.
const COUNT_UP_TO: u32 = 300;

/// One index and the seqs it gave out.
struct Store {
    _dir: tempfile::TempDir,
    partitions: Arc<Partitions>,
    searchable: tokio::sync::watch::Sender<u64>,
    searcher: Searcher,
    next_seq: u64,
}

impl Store {
    fn new() -> Store {
        let dir = tempfile::tempdir().unwrap();
        let partitions = Arc::new(Partitions::open(dir.path(), AuditSchema::new(), false).unwrap());
        let (searchable, seen) = tokio::sync::watch::channel(0);
        let limits = Limits {
            max_search_limit: 250,
            exact_total_hits: COUNT_UP_TO,
            ..Limits::default()
        };
        let recent = Arc::new(RecentEvents::new(0));
        let searcher = Searcher::new(partitions.clone(), limits, seen, recent);
        Store {
            _dir: dir,
            partitions,
            searchable,
            searcher,
            next_seq: 0,
        }
    }

    /// Indexes `events` at the next seqs, in order, and makes them
    /// searchable; returns their seqs.
    fn add(&mut self, events: &[AuditEvent]) -> Vec<u64> {
        let schema = self.partitions.schema().clone();
        let mut seqs = Vec::new();
        let mut days = std::collections::BTreeMap::<i64, Vec<(u64, AuditEvent)>>::new();
        for event in events {
            let day = day_of(timestamp_micros(event.time.as_ref()));
            days.entry(day)
                .or_default()
                .push((self.next_seq, event.clone()));
            seqs.push(self.next_seq);
            self.next_seq += 1;
        }
        for (day, events) in days {
            let partition = self.partitions.get_or_create(day).unwrap();
            let mut writer: tantivy::IndexWriter = partition
                .index
                .writer_with_num_threads(1, 20_000_000)
                .unwrap();
            let mut body = Vec::new();
            for (seq, mut event) in events {
                writer
                    .add_document(schema.document(&mut event, seq, "", None, &mut body))
                    .unwrap();
            }
            writer.commit().unwrap();
            partition.reader.reload().unwrap();
        }
        self.searchable.send_replace(self.next_seq);
        seqs
    }
}

/// Every event once in `whole`, and each in the partition of its subject
/// with that partition's seq; the merged order of each event.
struct Cluster {
    whole: Store,
    parts: Vec<Store>,
    /// (time, partition, seq) of `events[i]`.
    places: Vec<(i64, u32, u64)>,
    events: Vec<AuditEvent>,
}

impl Cluster {
    fn new() -> Cluster {
        let mut cluster = Cluster {
            whole: Store::new(),
            parts: (0..PARTITIONS).map(|_| Store::new()).collect(),
            places: Vec::new(),
            events: Vec::new(),
        };
        // 3,000 events over three days; times repeat, so the merged
        // order's ties between partitions are exercised.
        cluster.add(common::generated(3_000, 21, 1_000));
        cluster
    }

    fn add(&mut self, events: Vec<AuditEvent>) {
        self.whole.add(&events);
        for p in 0..PARTITIONS {
            let (mine, places): (Vec<AuditEvent>, Vec<usize>) = events
                .iter()
                .enumerate()
                .filter(|(_, e)| partition_of(&e.subject, PARTITIONS) == p)
                .map(|(i, e)| (e.clone(), i))
                .unzip();
            let seqs = self.parts[p as usize].add(&mine);
            for (i, seq) in places.into_iter().zip(seqs) {
                let time = timestamp_micros(events[i].time.as_ref());
                self.place(self.events.len() + i, (time, p, seq));
            }
        }
        self.events.extend(events);
    }

    fn place(&mut self, at: usize, place: (i64, u32, u64)) {
        if self.places.len() <= at {
            self.places.resize(at + 1, (0, 0, 0));
        }
        self.places[at] = place;
    }

    fn readers(&self) -> Vec<Option<fanout::Reader>> {
        self.parts
            .iter()
            .enumerate()
            .map(|(p, store)| {
                let reader: fanout::Reader = Arc::new(LocalPartition {
                    partition: p as u32,
                    searcher: store.searcher.clone(),
                    retention: None,
                    integrity: None,
                });
                Some(reader)
            })
            .collect()
    }

    fn bounds(&self, request: &SearchRequest) -> Bounds {
        Bounds {
            limit: self.whole.searcher.limit_of(request),
            count_up_to: self.whole.searcher.count_up_to(request),
        }
    }

    /// The ids `request` must find inside `scope`, in the merged order.
    fn expected(&self, request: &SearchRequest, scope: &ReadScope) -> Vec<String> {
        let filter = auditd::search::filter_of(request);
        let mut hits: Vec<((i64, u32, u64), &str)> = self
            .events
            .iter()
            .zip(&self.places)
            .filter(|(e, _)| matches(&filter, e) && in_scope(scope, e))
            .map(|(e, place)| (*place, e.id.as_str()))
            .collect();
        hits.sort();
        if !request.ascending {
            hits.reverse();
        }
        hits.into_iter().map(|(_, id)| id.to_owned()).collect()
    }
}

fn in_scope(scope: &ReadScope, e: &AuditEvent) -> bool {
    match scope {
        ReadScope::All => true,
        ReadScope::Subject(s) => e.subject == *s,
        ReadScope::SubjectAndAccess { subject, access_id } => {
            e.subject == *subject && e.access_id == *access_id
        }
    }
}

/// Every page of `request` through the merge: the events, and the total
/// of the first page (asserted the same on every page).
async fn merged_all(
    cluster: &Cluster,
    mut request: SearchRequest,
    scope: &ReadScope,
) -> (Vec<String>, (u64, bool)) {
    let readers = cluster.readers();
    let bounds = cluster.bounds(&request);
    let mut ids = Vec::new();
    let mut total = None;
    loop {
        let page: SearchResponse = fanout::search(&readers, &request, scope, bounds)
            .await
            .unwrap();
        assert!(page.events.len() <= bounds.limit);
        let count = (page.total_hits, page.total_hits_is_lower_bound);
        assert_eq!(
            *total.get_or_insert(count),
            count,
            "total changed between pages"
        );
        ids.extend(page.events.into_iter().map(|e| e.id));
        if page.next_page_token.is_empty() {
            return (ids, count);
        }
        request.page_token = page.next_page_token;
    }
}

fn random_scope(rng: &mut StdRng, events: &[AuditEvent]) -> ReadScope {
    let someone = &events[rng.random_range(0..events.len())];
    match rng.random_range(0..10) {
        0 | 1 => ReadScope::Subject(someone.subject.clone()),
        2 => ReadScope::SubjectAndAccess {
            subject: someone.subject.clone(),
            access_id: someone.access_id.clone(),
        },
        _ => ReadScope::All,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_aggregates_match_the_oracle_and_one_index() {
    let cluster = Cluster::new();
    let readers = cluster.readers();
    let mut rng = StdRng::seed_from_u64(9);
    let (mut compared, mut refused) = (0, 0);
    for round in 0..100 {
        let mut filter = random_filter(&mut rng, &cluster.events);
        if rng.random_bool(0.3) {
            filter.from_time = None;
            filter.to_time = None;
        }
        let aggregations: Vec<Aggregation> = (0..rng.random_range(1..=3))
            .map(|i| random_aggregation(&mut rng, &format!("a{i}"), 0))
            .collect();
        let request = AggregateRequest {
            filter: Some(filter.clone()),
            aggregations: aggregations.clone(),
        };
        let scope = random_scope(&mut rng, &cluster.events);
        let one = cluster.whole.searcher.aggregate(&request, &scope);
        let merged = fanout::aggregate(&readers, &request, &scope).await;
        let (one, merged) = match (one, merged) {
            (Ok(one), Ok(merged)) => (one, merged),
            // Refused alike: only the bucket limit refuses a random request.
            (
                Err(auditd::search::SearchError::Invalid { field, .. }),
                Err(FanOutError::Invalid { field: also, .. }),
            ) => {
                assert_eq!((field, also), ("aggregations", "aggregations"));
                refused += 1;
                continue;
            }
            other => panic!("round {round}: {other:?}"),
        };
        assert_eq!(merged, one, "round {round}: {request:?} in {scope:?}");
        let matched: Vec<&AuditEvent> = cluster
            .events
            .iter()
            .filter(|e| matches(&filter, e) && in_scope(&scope, e))
            .collect();
        let range = (
            filter.from_time.as_ref().map(|t| timestamp_micros(Some(t))),
            filter.to_time.as_ref().map(|t| timestamp_micros(Some(t))),
        );
        assert_eq!(merged.total_hits, matched.len() as u64, "round {round}");
        for a in &aggregations {
            assert_eq!(
                merged.results.get(&a.name),
                Some(&brute_force(a, &matched, range)),
                "round {round}: {a:?}"
            );
        }
        compared += matched.len();
    }
    assert!(compared > 10_000, "too little matched: {compared}");
    assert!(refused < 30, "too many refused: {refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_searches_match_the_oracle_and_one_index() {
    let cluster = Cluster::new();
    let mut rng = StdRng::seed_from_u64(8);
    let mut checked = 0;
    for round in 0..150 {
        let mut request = search_request(random_filter(&mut rng, &cluster.events));
        request.limit = rng.random_range(10..=250);
        request.ascending = rng.random_bool(0.3);
        request.exact_total = rng.random_bool(0.3);
        let scope = random_scope(&mut rng, &cluster.events);
        let expected = cluster.expected(&request, &scope);
        let (got, total) = merged_all(&cluster, request.clone(), &scope).await;
        assert_eq!(got, expected, "round {round}: {request:?} in {scope:?}");
        // The total, and whether it is a bound, as one index answers.
        let one = cluster.whole.searcher.search(&request, &scope).unwrap();
        assert_eq!(
            total,
            (one.total_hits, one.total_hits_is_lower_bound),
            "round {round}: total for {request:?} in {scope:?}"
        );
        let bounded = !request.exact_total && expected.len() >= COUNT_UP_TO as usize;
        assert_eq!(total.1, bounded, "round {round}");
        checked += got.len();
    }
    assert!(checked > 20_000, "the searches found too little: {checked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_pages_see_the_first_pages_snapshot_on_every_partition() {
    let mut cluster = Cluster::new();
    let request = SearchRequest {
        limit: 100,
        ..Default::default()
    };
    let readers = cluster.readers();
    let bounds = cluster.bounds(&request);
    let first = fanout::search(&readers, &request, &ReadScope::All, bounds)
        .await
        .unwrap();
    let before = cluster.expected(&request, &ReadScope::All);
    // New events, newest and oldest alike, into every partition.
    let mut newer = common::generated(400, 22, 200);
    for (i, e) in newer.iter_mut().enumerate() {
        e.id = format!("later-{i}");
    }
    cluster.add(newer);
    let mut rest = request.clone();
    rest.page_token = first.next_page_token.clone();
    let (tail, total) = merged_all(&cluster, rest, &ReadScope::All).await;
    let mut got: Vec<String> = first.events.into_iter().map(|e| e.id).collect();
    got.extend(tail);
    assert_eq!(got, before, "pages after the first see what the first saw");
    assert_eq!(total.0, first.total_hits);
    // A new search sees everything.
    let (now, _) = merged_all(&cluster, request.clone(), &ReadScope::All).await;
    assert_eq!(now, cluster.expected(&request, &ReadScope::All));
    assert_eq!(now.len(), 3_400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_without_owner_fails_the_search_naming_it_unless_not_needed() {
    let cluster = Cluster::new();
    let mut readers = cluster.readers();
    readers[2] = None;
    let everything = SearchRequest::default();
    let bounds = cluster.bounds(&everything);
    match fanout::search(&readers, &everything, &ReadScope::All, bounds).await {
        Err(FanOutError::Unavailable {
            partition: 2,
            reason,
        }) => {
            assert!(reason.contains("no node owns it"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // A subject of another partition needs only that one.
    let elsewhere = cluster
        .events
        .iter()
        .find(|e| partition_of(&e.subject, PARTITIONS) != 2)
        .unwrap();
    let scope = ReadScope::Subject(elsewhere.subject.clone());
    let request = SearchRequest {
        limit: 250,
        exact_total: true,
        ..Default::default()
    };
    let page = fanout::search(&readers, &request, &scope, cluster.bounds(&request))
        .await
        .unwrap();
    let expected = cluster.expected(&request, &scope);
    assert_eq!(page.total_hits as usize, expected.len());
    assert!(page.total_hits > 0);
    // And a bad page token names the field, asking no partition.
    let mut bad = everything.clone();
    bad.page_token = "garbage".into();
    match fanout::search(&readers, &bad, &ReadScope::All, bounds).await {
        Err(FanOutError::Invalid {
            field: "page_token",
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

/// A partition that moved to a node still catching up (issue 21): a
/// later page whose snapshot is past that index waits for it, and is
/// refused UNAVAILABLE naming the partition when it does not come within
/// `SNAPSHOT_WAIT`, never answered short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_past_a_partitions_index_waits_for_it_then_is_refused_naming_it() {
    let cluster = Cluster::new();
    let request = SearchRequest {
        limit: 100,
        ..Default::default()
    };
    let readers = cluster.readers();
    let bounds = cluster.bounds(&request);
    let first = fanout::search(&readers, &request, &ReadScope::All, bounds)
        .await
        .unwrap();
    let mut rest = request.clone();
    rest.page_token = first.next_page_token.clone();
    // Partition 1's index falls behind the first page's snapshot.
    let held = *cluster.parts[1].searchable.borrow();
    cluster.parts[1].searchable.send_replace(held / 2);
    let page = fanout::search(&readers, &rest, &ReadScope::All, bounds);
    let mut page = std::pin::pin!(page);
    let waiting = tokio::time::timeout(Duration::from_millis(200), &mut page).await;
    assert!(waiting.is_err(), "answered while behind");
    // It catches up: the page answers, as if it had never been behind.
    cluster.parts[1].searchable.send_replace(held);
    let second = page.await.unwrap();
    let expected = cluster.expected(&request, &ReadScope::All);
    let ids: Vec<String> = second.events.into_iter().map(|e| e.id).collect();
    assert_eq!(ids, expected[100..200]);
    // It does not: refused, naming the partition, after the wait.
    cluster.parts[1].searchable.send_replace(held / 2);
    let asked = std::time::Instant::now();
    match fanout::search(&readers, &rest, &ReadScope::All, bounds).await {
        Err(FanOutError::Unavailable {
            partition: 1,
            reason,
        }) => assert!(reason.contains("snapshot"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(asked.elapsed() >= fanout::SNAPSHOT_WAIT);
}

/// GetEvent over partitions: every event found by its id at its place,
/// inside a scope only its subject's; an unknown id is `None` only when
/// every partition answered: one without owner makes it an error naming
/// the partition, while an event elsewhere is still found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_got_by_id_from_whichever_partition_holds_it() {
    let cluster = Cluster::new();
    let mut readers = cluster.readers();
    for (event, place) in cluster.events.iter().zip(&cluster.places).step_by(53) {
        let got = fanout::get(&readers, &event.id, &ReadScope::All).await;
        let got = got.unwrap().expect("found");
        assert_eq!((got.id.as_str(), got.seq), (event.id.as_str(), place.2));
        let own = ReadScope::Subject(event.subject.clone());
        assert!(fanout::get(&readers, &event.id, &own)
            .await
            .unwrap()
            .is_some());
        let other = ReadScope::Subject(format!("not-{}", event.subject));
        assert!(fanout::get(&readers, &event.id, &other)
            .await
            .unwrap()
            .is_none());
    }
    assert!(fanout::get(&readers, "no-such-id", &ReadScope::All)
        .await
        .unwrap()
        .is_none());
    readers[2] = None;
    match fanout::get(&readers, "no-such-id", &ReadScope::All).await {
        Err(FanOutError::Unavailable { partition: 2, .. }) => {}
        other => panic!("{other:?}"),
    }
    let elsewhere = cluster
        .events
        .iter()
        .find(|e| partition_of(&e.subject, PARTITIONS) != 2)
        .unwrap();
    let got = fanout::get(&readers, &elsewhere.id, &ReadScope::All).await;
    assert_eq!(got.unwrap().unwrap().id, elsewhere.id);
}

/// Every event of `filter` through a merged scan, from `token`, `max` at
/// a time: the ids, and the token after each.
async fn scanned(
    readers: &[Option<fanout::Reader>],
    filter: &EventFilter,
    ascending: bool,
    scope: &ReadScope,
    token: &str,
    max: usize,
) -> Vec<(String, String)> {
    let (filter, scope) = (filter.clone(), scope.clone());
    let mut scan =
        MergedScan::new(filter, ascending, scope, PARTITIONS, token, "resume_token").unwrap();
    let mut out = Vec::new();
    loop {
        let slice = scan.next(readers, max).await.unwrap();
        assert!(slice.events.len() <= max);
        if slice.events.is_empty() {
            return out;
        }
        for (i, event) in slice.events.iter().enumerate() {
            out.push((event.id.clone(), slice.token_after(i)));
        }
    }
}

/// Export over partitions (`cluster::scan`): every match once, in the
/// merged order of a search, whatever the slice size; resumed from the
/// token after any event, the rest follows exactly, in the first slice's
/// snapshot even after new events came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merged_scan_reads_every_match_once_in_order_and_resumes_anywhere() {
    let mut cluster = Cluster::new();
    let readers = cluster.readers();
    let mut rng = StdRng::seed_from_u64(10);
    let mut resumes = Vec::new();
    let mut checked = 0;
    for round in 0..40 {
        let mut filter = random_filter(&mut rng, &cluster.events);
        if round % 4 == 0 {
            filter = EventFilter::default();
        }
        let ascending = rng.random_bool(0.5);
        let scope = random_scope(&mut rng, &cluster.events);
        let request = SearchRequest {
            ascending,
            ..search_request(filter.clone())
        };
        let expected = cluster.expected(&request, &scope);
        let max = rng.random_range(1..=700);
        let got = scanned(&readers, &filter, ascending, &scope, "", max).await;
        let ids: Vec<&String> = got.iter().map(|(id, _)| id).collect();
        assert_eq!(ids, expected.iter().collect::<Vec<_>>(), "round {round}");
        if !got.is_empty() {
            let cut = rng.random_range(0..got.len());
            resumes.push((
                filter,
                ascending,
                scope,
                got[cut].1.clone(),
                expected[cut + 1..].to_vec(),
            ));
        }
        checked += got.len();
    }
    assert!(checked > 10_000, "the scans found too little: {checked}");
    // New events everywhere: a resumed scan still sees its first snapshot.
    let mut newer = common::generated(300, 23, 200);
    for (i, e) in newer.iter_mut().enumerate() {
        e.id = format!("later-{i}");
    }
    cluster.add(newer);
    for (filter, ascending, scope, token, rest) in resumes {
        let got = scanned(&readers, &filter, ascending, &scope, &token, 97).await;
        let ids: Vec<String> = got.into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, rest, "resumed {filter:?} in {scope:?}");
    }
    // A token of another order or another scan names the field; a
    // partition without owner fails the scan naming it.
    let token = scanned(
        &readers,
        &EventFilter::default(),
        true,
        &ReadScope::All,
        "",
        10,
    )
    .await[3]
        .1
        .clone();
    for (ascending, subjects) in [
        (false, vec![]),
        (true, vec![cluster.events[0].subject.clone()]),
    ] {
        let filter = EventFilter {
            subjects,
            ..Default::default()
        };
        let scan = MergedScan::new(
            filter,
            ascending,
            ReadScope::All,
            PARTITIONS,
            &token,
            "resume_token",
        );
        match scan.map(|_| ()) {
            Err(FanOutError::Invalid {
                field: "resume_token",
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }
    let mut readers = readers;
    readers[3] = None;
    let mut scan = MergedScan::new(
        EventFilter::default(),
        true,
        ReadScope::All,
        PARTITIONS,
        "",
        "resume_token",
    )
    .unwrap();
    match scan.next(&readers, 10).await.map(|_| ()) {
        Err(FanOutError::Unavailable { partition: 3, .. }) => {}
        other => panic!("{other:?}"),
    }
}
