//! The partitioned stream of the cluster (issue 21), against a real
//! `nats-server`: ingest nodes racing on the same partitions get dense
//! seqs with no gap and no repeat, a batch retried on another node (whole
//! or after a partial failure) is stored once, and a stream of another
//! layout is refused. Then the partition leases: spread over the nodes,
//! moved when an owner dies (never two owners at once, counting the dead
//! one's own view), handed over at once when a node leaves. Last, three
//! daemons as nodes of a one-partition cluster (`[cluster] enabled`):
//! each ingests, each indexes what all of them wrote, and all three
//! answer alike, with the tokens they share; two nodes on a three-server
//! NATS that loses its stream leader under ingest lose and repeat
//! nothing; and `scripts/cluster.sh` starts two `all` nodes and a
//! `query` node that answers as one daemon would (the search oracle).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use auditd::cluster::follow::{Follower, Resume};
use auditd::cluster::lease::{LeaseSettings, Leases};
use auditd::cluster::publish::{Placed, Publisher, SEQ_END_HEADER};
use auditd::cluster::{partition_of, ClusterError, Layout};
use auditd::messages::WalBatch;
use auditd::proto::AuditEvent;
use auditd::proto::{EventFilter, IngestRequest, SearchRequest, WaitFor};
use auditd::record::{self, LogRecord};
use auditd::wal::jetstream::JetStreamConfig;
use auditd::wal::{LogPosition, Record};
use common::nats::{
    ingest_retrying, on_cluster, on_partitions, stream_leader, wait_for_jetstream, NatsServer,
};
use common::oracle;
use common::*;

const PARTITIONS: u32 = 4;

fn layout(nats: &NatsServer, stream: &str, partitions: u32) -> Layout {
    Layout {
        jetstream: JetStreamConfig {
            servers: vec![nats.url.clone()],
            stream: stream.into(),
            subject: format!("{}.events", stream.to_lowercase()),
            timeout_ms: 2_000,
            ..Default::default()
        },
        partitions,
        duplicate_window: Duration::from_secs(120),
        signer: None,
    }
}

/// A salted batch of `events` whose ids are `<batch id>-<i>`.
fn batch(batch_id: &str, events: &[AuditEvent]) -> WalBatch {
    let events = events
        .iter()
        .enumerate()
        .map(|(i, e)| AuditEvent {
            id: format!("{batch_id}-{i}"),
            ..e.clone()
        })
        .collect();
    WalBatch::salted(batch_id.into(), events)
}

/// What one partition's messages hold, in stream order.
struct Stored {
    /// Per message: its first seq, its `Auditd-Seq-End`, and its events.
    messages: Vec<(u64, u64, Vec<AuditEvent>)>,
}

/// Every message of the stream, by partition.
async fn read_stream(nats: &NatsServer, layout: &Layout) -> BTreeMap<u32, Stored> {
    let client = async_nats::connect(nats.url.as_str()).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let mut stream = jetstream
        .get_stream(layout.jetstream.stream.as_str())
        .await
        .unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut out: BTreeMap<u32, Stored> = BTreeMap::new();
    for seq in 1..=last {
        let message = stream.direct_get(seq).await.unwrap();
        let partition: u32 = message.subject.rsplit('.').next().unwrap().parse().unwrap();
        let seq_end: u64 = message
            .headers
            .get(SEQ_END_HEADER)
            .unwrap()
            .as_str()
            .parse()
            .unwrap();
        let decoded = record::decode(Record {
            start: LogPosition::new(seq - 1),
            end: LogPosition::new(seq),
            payload: &message.payload,
            path: Path::new("stream"),
            offset: seq,
        })
        .unwrap();
        let LogRecord::Batch(batch) = decoded else {
            panic!("a batch at {seq}")
        };
        out.entry(partition)
            .or_insert(Stored {
                messages: Vec::new(),
            })
            .messages
            .push((batch.first_seq, seq_end, batch.batch.events));
    }
    out
}

/// Checks that every partition's seqs run 0, 1, 2, … with no gap and no
/// repeat, that each event sits in the partition its subject hashes to,
/// and returns every stored event as `(partition, seq) → id`.
fn dense(stored: &BTreeMap<u32, Stored>) -> BTreeMap<(u32, u64), String> {
    let mut out = BTreeMap::new();
    for (&partition, stored) in stored {
        let mut next = 0;
        for (first, end, events) in &stored.messages {
            assert_eq!(*first, next, "partition {partition}: a gap or a repeat");
            assert_eq!(*end, first + events.len() as u64, "partition {partition}");
            for (event, seq) in events.iter().zip(*first..) {
                assert_eq!(partition_of(&event.subject, PARTITIONS), partition);
                out.insert((partition, seq), event.id.clone());
            }
            next = *end;
        }
    }
    out
}

/// Checks that `placed` names exactly where the stream holds each event.
fn placed_where_stored(placed: &[Placed], stored: &BTreeMap<(u32, u64), String>) {
    for p in placed {
        assert_eq!(stored.get(&(p.partition, p.seq)), Some(&p.id), "{p:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_racing_on_the_same_partitions_get_dense_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats"), 8 << 20);
    let layout = layout(&nats, "RACE", PARTITIONS);
    // Two ingest nodes: two connections, each with its own tips.
    let nodes = [
        Arc::new(Publisher::open(layout.clone()).await.unwrap()),
        Arc::new(Publisher::open(layout.clone()).await.unwrap()),
    ];
    let events = generated(40, 7, 1_000);

    // One node's tips go stale when the other publishes: its next
    // publish is refused by JetStream and goes again.
    let mut placed = Vec::new();
    for (n, node) in [0, 1, 0].into_iter().enumerate() {
        placed.extend(
            nodes[node]
                .publish(batch(&format!("seq{n}"), &events))
                .await
                .unwrap(),
        );
    }
    assert!(nodes[0].conflicts() >= 1, "the stale tip was refused");

    let mut tasks = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for t in 0..4 {
            let node = node.clone();
            let events = events.clone();
            tasks.push(tokio::spawn(async move {
                let mut placed = Vec::new();
                for b in 0..25 {
                    let batch = batch(&format!("n{n}t{t}b{b}"), &events);
                    placed.extend(node.publish(batch).await.unwrap());
                }
                placed
            }));
        }
    }
    for task in tasks {
        placed.extend(task.await.unwrap());
    }
    assert_eq!(placed.len(), (3 + 2 * 4 * 25) * 40);
    let stored = dense(&read_stream(&nats, &layout).await);
    assert_eq!(stored.len(), placed.len(), "each event stored once");
    placed_where_stored(&placed, &stored);
    let partitions: HashSet<u32> = placed.iter().map(|p| p.partition).collect();
    assert!(partitions.len() > 1, "the events spread over partitions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_retried_on_another_node_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats"), 8 << 20);
    let layout = layout(&nats, "RETRY", PARTITIONS);
    let a = Publisher::open(layout.clone()).await.unwrap();
    let b = Publisher::open(layout.clone()).await.unwrap();
    let events = generated(60, 11, 1_000);

    // Whole: the retry (new ids and salts, as another node would give
    // them) gets the first attempt's ids and seqs.
    let first = a.publish(batch("whole", &events)).await.unwrap();
    let mut retried = batch("whole", &events);
    for event in &mut retried.events {
        event.id.push_str("-again");
    }
    assert_eq!(b.publish(retried).await.unwrap(), first);

    // After a partial failure: one partition's message went out, the
    // others did not. The retry keeps that one and stores the rest.
    let lone = partition_of(&events[0].subject, PARTITIONS);
    let of_lone: Vec<AuditEvent> = events
        .iter()
        .filter(|e| partition_of(&e.subject, PARTITIONS) == lone)
        .cloned()
        .collect();
    let mut partial = batch("partial", &of_lone);
    for event in &mut partial.events {
        event.id.push_str("-first");
    }
    let stored_first = a.publish(partial).await.unwrap();
    let whole = b.publish(batch("partial", &events)).await.unwrap();
    let kept: Vec<&Placed> = whole.iter().filter(|p| p.partition == lone).collect();
    assert_eq!(kept.len(), stored_first.len());
    for (kept, first) in kept.iter().zip(&stored_first) {
        assert_eq!(*kept, first, "the lone partition's events as first stored");
    }
    assert!(whole.iter().any(|p| p.partition != lone));

    let stored = dense(&read_stream(&nats, &layout).await);
    assert_eq!(stored.len(), 2 * events.len(), "two batches, each once");
    placed_where_stored(&first, &stored);
    placed_where_stored(&whole, &stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_another_layout_is_refused_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats"), 8 << 20);
    let four = layout(&nats, "FIXED", 4);
    let node = Publisher::open(four.clone()).await.unwrap();

    let mut eight = four.clone();
    eight.partitions = 8;
    let Err(ClusterError::Config { field, reason }) = Publisher::open(eight).await else {
        panic!("another partition count must be refused")
    };
    assert_eq!(field, "cluster.partitions");
    assert!(
        reason.contains("fixed when the stream is created"),
        "{reason}"
    );

    let mut longer = four.clone();
    longer.duplicate_window = Duration::from_secs(600);
    let Err(ClusterError::Config { field, .. }) = Publisher::open(longer).await else {
        panic!("a window the stream does not keep must be refused")
    };
    assert_eq!(field, "cluster.duplicate_window");

    // A message on a partition that auditd did not publish: the next
    // batch there is refused, naming what is missing, and nothing is
    // stored over it.
    let client = async_nats::connect(nats.url.as_str()).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let events = generated(1, 3, 1_000);
    let partition = partition_of(&events[0].subject, 4);
    jetstream
        .publish(four.subject(partition), "not a record".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let error = node.publish(batch("foreign", &events)).await.unwrap_err();
    assert!(error.to_string().contains(SEQ_END_HEADER), "{error}");
}

async fn leases(nats: &NatsServer, node: &str, partitions: u32, lease: Duration) -> Leases {
    let client = async_nats::connect(nats.url.as_str()).await.unwrap();
    let context = async_nats::jetstream::new(client);
    let settings = LeaseSettings {
        bucket: "auditd-leases".into(),
        node: node.into(),
        partitions,
        lease,
        replicas: 1,
        address: String::new(),
    };
    Leases::open(&context, settings).await.unwrap()
}

/// Runs rounds of `live` (one `tick` each, a round every third of the
/// lease, as a node does) until `done` holds of what they hold. After
/// every round no partition may be held twice, counting what the `dead`
/// nodes still believe they hold. Returns the rounds taken.
async fn rounds_until(
    live: &mut [&mut Leases],
    dead: &[&Leases],
    every: Duration,
    done: impl Fn(&[BTreeSet<u32>]) -> bool,
) -> usize {
    let started = Instant::now();
    for round in 1.. {
        for node in live.iter_mut() {
            node.tick().await.unwrap();
        }
        let now = Instant::now();
        let held: Vec<BTreeSet<u32>> = live.iter().map(|n| n.held(now)).collect();
        let mut seen = BTreeSet::new();
        for set in held
            .iter()
            .chain(dead.iter().map(|d| d.held(now)).collect::<Vec<_>>().iter())
        {
            for p in set {
                assert!(seen.insert(*p), "partition {p} held twice: {held:?}");
            }
        }
        if done(&held) {
            return round;
        }
        assert!(started.elapsed() < DEADLINE, "never settled: {held:?}");
        tokio::time::sleep(every).await;
    }
    unreachable!()
}

fn all_of(held: &[BTreeSet<u32>], partitions: u32, each: usize) -> bool {
    held.iter().all(|h| h.len() == each)
        && held.iter().flatten().collect::<BTreeSet<_>>().len() == partitions as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_spread_and_a_dead_owners_partitions_move_after_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats"), 1 << 20);
    let lease = Duration::from_secs(2);
    let tick = lease / 3;
    let mut a = leases(&nats, "node-a", 6, lease).await;
    let mut b = leases(&nats, "node-b", 6, lease).await;
    let mut c = leases(&nats, "node-c", 6, lease).await;
    rounds_until(&mut [&mut a, &mut b, &mut c], &[], tick, |h| {
        all_of(h, 6, 2)
    })
    .await;
    let owners = a.owners().await.unwrap();
    let now = Instant::now();
    for node in [&a, &b, &c] {
        let named: BTreeSet<u32> = owners
            .iter()
            .filter(|(_, n)| n.as_str() == node.node())
            .map(|(p, _)| *p)
            .collect();
        assert_eq!(named, node.held(now), "{}", node.node());
    }

    // c dies: it renews no more. Its partitions move once its leases
    // expire, and c stops counting them as its own before they do.
    let died = Instant::now();
    rounds_until(&mut [&mut a, &mut b], &[&c], tick, |h| all_of(h, 6, 3)).await;
    let moved = died.elapsed();
    eprintln!("moved after {moved:?}");
    assert!(c.held(Instant::now()).is_empty());
    assert!(
        moved <= lease + 4 * tick,
        "moved after {moved:?}, lease {lease:?}"
    );

    // Refused: a bucket of another lease time, a node name that is no key.
    let client = async_nats::connect(nats.url.as_str()).await.unwrap();
    let context = async_nats::jetstream::new(client);
    let settings = |node: &str, lease| LeaseSettings {
        bucket: "auditd-leases".into(),
        node: node.into(),
        partitions: 6,
        lease,
        replicas: 1,
        address: String::new(),
    };
    for (settings, field) in [
        (
            settings("node-d", Duration::from_secs(5)),
            "cluster.lease_ms",
        ),
        (settings("node d", lease), "cluster.node"),
    ] {
        match Leases::open(&context, settings).await {
            Err(ClusterError::Config { field: got, .. }) => assert_eq!(got, field),
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("{field} must be refused"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_leaves_hands_its_partitions_over_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats"), 1 << 20);
    // A lease far longer than the test: only a release can move them.
    let lease = Duration::from_secs(300);
    let tick = Duration::from_millis(100);
    let mut a = leases(&nats, "node-a", 4, lease).await;
    let mut b = leases(&nats, "node-b", 4, lease).await;
    rounds_until(&mut [&mut a, &mut b], &[], tick, |h| all_of(h, 4, 2)).await;
    b.release_all().await.unwrap();
    assert!(b.held(Instant::now()).is_empty());
    let rounds = rounds_until(&mut [&mut a], &[], tick, |h| all_of(h, 4, 4)).await;
    assert_eq!(rounds, 1, "taken on the first round after the release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_after_the_lease_is_a_loss() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats"), 1 << 20);
    let lease = Duration::from_secs(1);
    let mut a = leases(&nats, "node-a", 2, lease).await;
    let mut b = leases(&nats, "node-b", 2, lease).await;
    let change = a.tick().await.unwrap();
    assert_eq!(change.gained.len(), 2);
    // a stalls past its lease (a long pause, a lost connection): by its
    // own clock it holds nothing, and b takes both once they expire.
    let stalled = Instant::now();
    while !a.held(Instant::now()).is_empty() {
        assert!(stalled.elapsed() < lease, "held past its lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rounds_until(&mut [&mut b], &[&a], lease / 3, |h| h[0].len() == 2).await;
    // When a comes back, its renewals are refused: it lost both.
    let change = a.tick().await.unwrap();
    assert_eq!(change.lost, vec![0, 1]);
    assert!(change.gained.is_empty());
    assert!(a.held(Instant::now()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_reads_its_partition_in_order_as_it_grows_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats"), 8 << 20);
    let layout = layout(&nats, "FOLLOW", PARTITIONS);
    let (_client, _context, stream) = layout.open().await.unwrap();
    let start = Resume {
        after: LogPosition::START,
        next_seq: 0,
    };
    let mut follower = Follower::open(&stream, &layout, 0, start).await.unwrap();

    // Two nodes publish while the follower reads.
    let events = generated(30, 5, 1_000);
    let mut tasks = Vec::new();
    for n in 0..2 {
        let node = Publisher::open(layout.clone()).await.unwrap();
        let events = events.clone();
        tasks.push(tokio::spawn(async move {
            let mut placed = Vec::new();
            for b in 0..20 {
                placed.extend(
                    node.publish(batch(&format!("f{n}b{b}"), &events))
                        .await
                        .unwrap(),
                );
            }
            placed
        }));
    }
    let mut read: Vec<(u64, u64, String)> = Vec::new(); // (span start, span end, id)
    let mut spans = Vec::new();
    let mut by_seq: BTreeMap<u64, String> = BTreeMap::new();
    let mut publishing = true;
    let mut placed: Vec<Placed> = Vec::new();
    let started = Instant::now();
    loop {
        if publishing && tasks.iter().all(|t| t.is_finished()) {
            for task in tasks.drain(..) {
                placed.extend(task.await.unwrap());
            }
            publishing = false;
        }
        let expected = placed.iter().filter(|p| p.partition == 0).count() as u64;
        if !publishing && follower.resume().next_seq == expected {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "the follower fell behind");
        if let Some(LogRecord::Batch(batch)) =
            follower.next(Duration::from_millis(100)).await.unwrap()
        {
            spans.push(batch.span);
            for (event, seq) in batch.batch.events.iter().zip(batch.first_seq..) {
                assert!(
                    by_seq.insert(seq, event.id.clone()).is_none(),
                    "seq {seq} twice"
                );
                read.push((
                    batch.span.start.get(),
                    batch.span.end.get(),
                    event.id.clone(),
                ));
            }
        }
    }
    let of_zero: BTreeMap<u64, String> = placed
        .iter()
        .filter(|p| p.partition == 0)
        .map(|p| (p.seq, p.id.clone()))
        .collect();
    assert!(!of_zero.is_empty());
    assert_eq!(
        by_seq, of_zero,
        "every event of partition 0, at its seq, once"
    );
    for pair in spans.windows(2) {
        assert_eq!(pair[0].end, pair[1].start, "spans follow each other");
    }

    // Resumed after the middle record: exactly the rest.
    let middle = spans[spans.len() / 2];
    let after_middle = read
        .iter()
        .filter(|(_, end, _)| *end <= middle.end.get())
        .count() as u64;
    let resume = Resume {
        after: middle.end,
        next_seq: after_middle,
    };
    let mut again = Follower::open(&stream, &layout, 0, resume).await.unwrap();
    let mut rest = Vec::new();
    while again.resume().next_seq < of_zero.len() as u64 {
        if let Some(LogRecord::Batch(batch)) = again.next(Duration::from_secs(5)).await.unwrap() {
            rest.extend(batch.batch.events.into_iter().map(|e| e.id));
        }
    }
    let expected_rest: Vec<String> = of_zero
        .values()
        .skip(after_middle as usize)
        .cloned()
        .collect();
    assert_eq!(rest, expected_rest);

    // A message auditd did not write stops the follower, naming it.
    let client = async_nats::connect(nats.url.as_str()).await.unwrap();
    async_nats::jetstream::new(client)
        .publish(layout.subject(0), "not a record".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let error = again.next(Duration::from_secs(5)).await.unwrap_err();
    assert!(error.to_string().contains(SEQ_END_HEADER), "{error}");

    // A record whose seqs do not follow on (a forged or misnumbered
    // one) stops the follower of its partition after the good ones.
    let of_one = placed.iter().filter(|p| p.partition == 1).count() as u64;
    let forged = batch("forged", &events[..1]);
    let mut payload = record::header(record::RecordKind::Batch, of_one + 5).to_vec();
    payload.extend(prost::Message::encode_to_vec(&forged));
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(SEQ_END_HEADER, (of_one + 6).to_string().as_str());
    let client = async_nats::connect(nats.url.as_str()).await.unwrap();
    async_nats::jetstream::new(client)
        .publish_with_headers(layout.subject(1), headers, payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut one = Follower::open(&stream, &layout, 1, start).await.unwrap();
    let error = loop {
        match one.next(Duration::from_secs(5)).await {
            Ok(_) => assert!(one.resume().next_seq <= of_one),
            Err(error) => break error,
        }
    };
    assert_eq!(one.resume().next_seq, of_one, "every good record first");
    assert!(error.to_string().contains("a gap or a repeat"), "{error}");
}

/// Ingests `events` through `client` as batch `batch_id`.
async fn ingest_batch(
    client: &mut Client,
    events: &[AuditEvent],
    batch_id: &str,
    wait_for: WaitFor,
) -> Vec<(String, u64)> {
    let stored = client
        .ingest(IngestRequest {
            events: events.to_vec(),
            batch_id: batch_id.into(),
            wait_for: wait_for as i32,
        })
        .await
        .unwrap()
        .into_inner();
    stored.ids.into_iter().zip(stored.seqs).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_one_partition_ingest_anywhere_and_answer_alike() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats"), 8 << 20);
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        let config = on_cluster(&dir.path().join(name), &nats, "NODES");
        nodes.push(TestServer::start(config).await);
    }
    // The tokens are the cluster's: one node made the first admin token,
    // and it works on every node.
    let admin = nodes[0].admin_token();
    for node in &nodes[1..] {
        assert!(!node.data_dir.join(auditd::auth::ADMIN_TOKEN_FILE).exists());
    }
    let mut clients = Vec::new();
    for node in &nodes {
        clients.push(node.client_with(&admin).await);
    }
    tokens_made_or_revoked_on_one_node_hold_on_all(&nodes, &admin).await;
    a_hold_placed_on_one_node_stands_on_all(&nodes, &admin).await;

    // Batches through a and b in turn; their seqs are the partition's,
    // dense across both nodes.
    let events = generated(1_200, 17, 400);
    let mut stored: BTreeMap<String, u64> = BTreeMap::new();
    for (i, chunk) in events.chunks(100).enumerate() {
        let placed = ingest_batch(
            &mut clients[i % 2],
            chunk,
            &format!("batch-{i}"),
            WaitFor::Durable,
        )
        .await;
        stored.extend(placed);
    }
    assert_eq!(stored.len(), events.len());

    // Batch 0 went through a; retried through b it is the same batch.
    let again = ingest_batch(&mut clients[1], &events[..100], "batch-0", WaitFor::Durable).await;
    for (id, seq) in &again {
        assert_eq!(
            stored.get(id),
            Some(seq),
            "the retry answers with the first ids and seqs"
        );
    }

    // Every node finds every event at its seq, once; its own batch with
    // `SEARCHABLE` comes after the others' in the stream, so once it is
    // searchable so are they.
    for (n, client) in clients.iter_mut().enumerate() {
        // Without an id: the server gives it a new one.
        let marker = AuditEvent {
            id: String::new(),
            ..events[0].clone()
        };
        ingest_batch(
            client,
            &[marker],
            &format!("marker-{n}"),
            WaitFor::Searchable,
        )
        .await;
        let (found, _) = search_all(
            client,
            SearchRequest {
                limit: 1_000,
                ..Default::default()
            },
        )
        .await;
        let mut seen: BTreeMap<String, u64> = BTreeMap::new();
        for event in found.iter().filter(|e| stored.contains_key(&e.id)) {
            assert!(
                seen.insert(event.id.clone(), event.seq).is_none(),
                "{} twice",
                event.id
            );
        }
        assert_eq!(seen, stored, "node {n}");
        // The trail of reads (the other nodes' searches among it) is
        // left out of a search unless asked for by type.
        let (trail, _) = search_all(
            client,
            SearchRequest {
                types: vec!["audit-log/auditd".into()],
                limit: 1_000,
                ..Default::default()
            },
        )
        .await;
        let mut seqs: Vec<u64> = found.iter().chain(&trail).map(|e| e.seq).collect();
        seqs.sort_unstable();
        // What a node has indexed is always a prefix of the partition.
        assert_eq!(
            seqs,
            (0..seqs.len() as u64).collect::<Vec<_>>(),
            "node {n}: dense seqs"
        );
    }

    another_node_answers_for_its_partition(&nats, &nodes, &events).await;

    // How far each node trails the partition is a metric.
    for node in &nodes {
        let (code, metrics) = http_get(node.http, "/metrics").await;
        assert_eq!(code, 200);
        assert!(
            metrics.contains("auditd_cluster_follow_lag_records{partition=\"0\"}"),
            "{metrics}"
        );
    }

    // Erasure would leave the events in the stream: refused, saying why.
    let channel = tonic::transport::Endpoint::from_shared(nodes[0].url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let token = auditd::client::BearerToken::new(&admin).unwrap();
    let refused = auditd::client::subjects(channel, token)
        .erase_subject(auditd::proto::EraseSubjectRequest {
            subject: events[0].subject.clone(),
            reason: "a test".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains("cluster node"), "{refused:?}");

    // A node that was down catches up from its checkpoint: exactly what
    // the others wrote meanwhile, nothing twice.
    let c = nodes.pop().unwrap();
    let c_dir = c.data_dir.clone();
    c.stop().await.unwrap();
    let later = ingest_batch(&mut clients[0], &events[..100], "batch-0", WaitFor::Durable).await;
    let fresh: Vec<AuditEvent> = events[..100]
        .iter()
        .map(|e| AuditEvent {
            id: format!("{}-later", e.id),
            ..e.clone()
        })
        .collect();
    let fresh = ingest_batch(&mut clients[1], &fresh, "fresh", WaitFor::Durable).await;
    assert_eq!(later, again, "batch ids are remembered across nodes");
    stored.extend(fresh);
    let c = TestServer::start(on_cluster(&c_dir, &nats, "NODES")).await;
    let mut client = c.client_with(&admin).await;
    let marker = AuditEvent {
        id: String::new(),
        ..events[0].clone()
    };
    ingest_batch(&mut client, &[marker], "marker-again", WaitFor::Searchable).await;
    let (found, _) = search_all(
        &mut client,
        SearchRequest {
            limit: 1_000,
            ..Default::default()
        },
    )
    .await;
    let seen: BTreeMap<String, u64> = found
        .iter()
        .filter(|e| stored.contains_key(&e.id))
        .map(|e| (e.id.clone(), e.seq))
        .collect();
    assert_eq!(seen, stored, "after the restart");
    assert_eq!(
        found.len(),
        found.iter().map(|e| &e.id).collect::<HashSet<_>>().len(),
        "nothing twice after the restart"
    );

    c.stop().await.unwrap();
    for node in nodes {
        node.stop().await.unwrap();
    }
}

/// A token made on one node works on the others, and one revoked on a
/// node is refused on the others, once each change reaches them (a
/// bounded wait: the nodes hear of it through the bucket's watch).
/// Node b's `Partitions` service (`cluster::remote`), asked with the
/// cluster's node secret through a fan-out, answers searches and
/// aggregates as node a answers its clients; without the secret, or for a
/// partition it does not hold, it answers nothing.
async fn another_node_answers_for_its_partition(
    nats: &NatsServer,
    nodes: &[TestServer],
    events: &[AuditEvent],
) {
    use auditd::auth::ReadScope;
    use auditd::cluster::fanout::{self, Bounds, FanOutError, Reader};
    use auditd::cluster::remote::RemotePartition;
    use auditd::proto::AggregateRequest;
    let client = async_nats::connect(&nats.url).await.unwrap();
    let context = async_nats::jetstream::new(client);
    let bucket = auditd::cluster::settings::bucket_name("NODES");
    let secret = auditd::cluster::settings::node_secret(&context, &bucket, 1)
        .await
        .unwrap();
    let channel = || {
        tonic::transport::Channel::from_shared(nodes[1].url())
            .unwrap()
            .connect_lazy()
    };
    let b: Reader = Arc::new(RemotePartition::new(0, channel(), &secret).unwrap());
    let readers = [Some(b)];
    let mut a = nodes[0].client().await;
    // a and b follow the partition: wait until both hold the last node's
    // marker (every event and one marker a node), so that they compare
    // equal copies.
    let everything = SearchRequest {
        exact_total: true,
        ..Default::default()
    };
    let want = (events.len() + nodes.len()) as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    let all = Bounds {
        limit: 1,
        count_up_to: u64::MAX,
    };
    loop {
        let at_a = a.search(everything.clone()).await.unwrap().into_inner();
        let at_b = fanout::search(&readers, &everything, &ReadScope::All, all)
            .await
            .unwrap();
        if (at_a.total_hits, at_b.total_hits) == (want, want) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a {} and b {} of {want}",
            at_a.total_hits,
            at_b.total_hits
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(3);
    for _ in 0..20 {
        let mut request = oracle::search_request(oracle::random_filter(&mut rng, events));
        request.limit = 70;
        request.exact_total = true;
        let bounds = Bounds {
            limit: 70,
            count_up_to: u64::MAX,
        };
        let (expected, total) = search_all(&mut a, request.clone()).await;
        let mut got = Vec::new();
        for _ in 0..=expected.len() / 70 + 1 {
            let page = fanout::search(&readers, &request, &ReadScope::All, bounds)
                .await
                .unwrap();
            assert_eq!(page.total_hits, total);
            got.extend(page.events);
            if page.next_page_token.is_empty() {
                break;
            }
            request.page_token = page.next_page_token;
        }
        assert_eq!(got, expected, "{request:?}");

        let aggregate = AggregateRequest {
            filter: Some(oracle::random_filter(&mut rng, events)),
            aggregations: vec![
                common::aggregate_oracle::random_aggregation(&mut rng, "x", 0),
                common::aggregate_oracle::random_aggregation(&mut rng, "y", 0),
            ],
        };
        let merged = fanout::aggregate(&readers, &aggregate, &ReadScope::All).await;
        match (a.aggregate(aggregate.clone()).await, merged) {
            (Ok(one), Ok(merged)) => assert_eq!(merged, one.into_inner(), "{aggregate:?}"),
            (Err(status), Err(FanOutError::Invalid { field, .. })) => {
                assert_eq!(status.code(), tonic::Code::InvalidArgument);
                assert!(field.starts_with("aggregations"), "{field}");
            }
            other => panic!("{aggregate:?}: {other:?}"),
        }
    }
    // A wrong secret, a client's token, and a partition not held here.
    let everything = SearchRequest::default();
    let bounds = Bounds {
        limit: 10,
        count_up_to: 100,
    };
    let admin = nodes[0].admin_token();
    for shown in ["not-the-secret", admin.trim()] {
        let wrong: Reader = Arc::new(RemotePartition::new(0, channel(), shown).unwrap());
        match fanout::search(&[Some(wrong)], &everything, &ReadScope::All, bounds).await {
            Err(FanOutError::Failed {
                partition: 0,
                reason,
            }) => {
                assert!(reason.contains("node secret"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(RemotePartition::new(0, channel(), "two\nlines").is_err());
    let elsewhere: Reader = Arc::new(RemotePartition::new(1, channel(), &secret).unwrap());
    let readers = [None, Some(elsewhere)];
    match fanout::search(&readers, &everything, &ReadScope::All, bounds).await {
        Err(FanOutError::Unavailable { partition: 0, .. }) => {}
        other => panic!("{other:?}"),
    }
    let readers = [Some(readers[1].clone().unwrap())];
    let one = SearchRequest::default();
    match fanout::search(&readers, &one, &ReadScope::All, bounds).await {
        Err(FanOutError::Unavailable {
            partition: 1,
            reason,
        }) => {
            assert!(reason.contains("not held by this node"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

async fn tokens_made_or_revoked_on_one_node_hold_on_all(nodes: &[TestServer], admin: &str) {
    let (id, secret) = {
        let mut tokens = tokens_client(&nodes[1], admin).await;
        let made = tokens
            .create_token(auditd::proto::CreateTokenRequest {
                kind: auditd::proto::TokenKind::Personal as i32,
                name: "made on b".into(),
                subject: "emma".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        (made.token.unwrap().id, made.secret)
    };
    let mut on_c = nodes[2].client_with(&secret).await;
    until_the_token_is(&mut on_c, true).await;
    let mut tokens = tokens_client(&nodes[2], admin).await;
    let listed = tokens
        .list_tokens(auditd::proto::ListTokensRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.tokens.iter().any(|t| t.id == id));
    tokens
        .revoke_token(auditd::proto::RevokeTokenRequest { id: id.clone() })
        .await
        .unwrap();
    // On the node that revoked it, at once.
    let status = on_c.search(SearchRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    until_the_token_is(&mut nodes[0].client_with(&secret).await, false).await;
    until_the_token_is(&mut nodes[1].client_with(&secret).await, false).await;
}

/// A legal hold is a record in the stream: placed through one node, every
/// node holds it (once it has read that far).
async fn a_hold_placed_on_one_node_stands_on_all(nodes: &[TestServer], admin: &str) {
    let retention = |node: &TestServer| {
        let channel = tonic::transport::Channel::from_shared(node.url()).unwrap();
        let token = auditd::client::BearerToken::new(admin).unwrap();
        async move { auditd::client::retention(channel.connect().await.unwrap(), token) }
    };
    let hold = retention(&nodes[0])
        .await
        .add_hold(auditd::proto::AddHoldRequest {
            subject: "emma".into(),
            reason: "litigation".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for node in &nodes[1..] {
        let mut client = retention(node).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let holds = client
                .list_holds(auditd::proto::ListHoldsRequest::default())
                .await
                .unwrap()
                .into_inner()
                .holds;
            if holds.iter().any(|h| h.id == hold.id && h.subject == "emma") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} never held {hold:?}",
                node.url()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Searches with `client` until its token is taken (`accepted`) or
/// refused, for at most ten seconds.
async fn until_the_token_is(client: &mut Client, accepted: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = client.search(SearchRequest::default()).await;
        match &answer {
            Ok(_) if accepted => return,
            Err(status) if !accepted && status.code() == tonic::Code::Unauthenticated => return,
            Err(status) if status.code() != tonic::Code::Unauthenticated => panic!("{status:?}"),
            _ if Instant::now() > deadline => panic!("still {answer:?} after 10 s"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_go_on_when_a_three_server_nats_loses_the_stream_leader() {
    let dir = tempfile::tempdir().unwrap();
    let mut servers = NatsServer::cluster(&dir.path().join("nats"), 3, 8 << 20);
    wait_for_jetstream(&servers, 3).await;
    let urls: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
    let config = |name: &str| {
        let mut config = on_cluster(&dir.path().join(name), &servers[0], "NODES_R3");
        config.log.jetstream.servers = urls.clone();
        config.log.jetstream.replicas = 3;
        config.log.jetstream.timeout_ms = 2_000;
        config
    };
    let (a, b) = (config("a"), config("b"));
    let nodes = [TestServer::start(a).await, TestServer::start(b).await];
    let admin = nodes[0].admin_token();
    let mut clients = [
        nodes[0].client_with(&admin).await,
        nodes[1].client_with(&admin).await,
    ];
    let leader = stream_leader(&servers, "NODES_R3").await;
    let events = generated(4_000, 53, 2_000);
    let mut acknowledged = HashSet::new();
    let mut refusals = 0;
    for (i, chunk) in events.chunks(100).enumerate() {
        if i == 15 {
            servers[leader].kill();
        }
        let (ids, refused) = ingest_retrying(&mut clients[i % 2], chunk, &format!("r3-{i}")).await;
        acknowledged.extend(ids);
        refusals += refused;
    }
    eprintln!("killed the stream leader n{leader}: {refusals} refusals, retried");
    for client in clients.iter_mut() {
        // Its own batch, searchable, comes after everything acknowledged.
        let marker = AuditEvent {
            id: String::new(),
            ..events[0].clone()
        };
        let (ids, _) = ingest_retrying(client, &[marker], &ulid::Ulid::new().to_string()).await;
        acknowledged.extend(ids);
        let stored = stored_once_with_all_of(client, &acknowledged).await;
        assert!(stored.len() >= 4_000, "{refusals} refusals");
        assert_dense_seqs(client).await;
    }
    for node in nodes {
        node.stop().await.unwrap();
    }
}

/// What `scripts/cluster.sh up` wrote (`target/cluster/cluster.json` by
/// default), as far as this test reads it.
#[derive(serde::Deserialize)]
struct ClusterJson {
    nats: Vec<ScriptNats>,
    auditd: Vec<ScriptNode>,
    admin_token: String,
}

#[derive(serde::Deserialize)]
struct ScriptNats {
    pid: u32,
    url: String,
}

#[derive(serde::Deserialize)]
struct ScriptNode {
    pid: u32,
    role: String,
    grpc: String,
    http: String,
    data_dir: String,
}

/// `scripts/cluster.sh` in `dir` on ports of its own; `down` when dropped,
/// so a failed test leaves no process behind.
struct ScriptCluster {
    env: Vec<(&'static str, String)>,
}

impl ScriptCluster {
    fn run(&self, command: &str) -> std::process::Output {
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_auditd")).parent().unwrap();
        std::process::Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster.sh"))
            .arg(command)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("BIN_DIR", bin_dir)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap()
    }
}

impl Drop for ScriptCluster {
    fn drop(&mut self) {
        self.run("down");
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_script_starts_nodes_that_answer_as_one_daemon_would() {
    let dir = tempfile::tempdir().unwrap();
    let ports = |_| {
        (0..3)
            .map(|_| common::nats::free_port().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let cluster = ScriptCluster {
        env: vec![
            ("CLUSTER_DIR", dir.path().display().to_string()),
            ("NATS_PORTS", ports(0)),
            ("ROUTE_PORTS", ports(1)),
            ("MONITOR_PORTS", ports(2)),
            ("GRPC_PORTS", ports(3)),
            ("HTTP_PORTS", ports(4)),
            ("WAIT_SECONDS", "60".into()),
        ],
    };
    let up = cluster.run("up");
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let json: ClusterJson =
        serde_json::from_slice(&std::fs::read(dir.path().join("cluster.json")).unwrap()).unwrap();
    assert_eq!(json.nats.len(), 3);
    assert!(json
        .nats
        .iter()
        .all(|n| n.url.starts_with("nats://127.0.0.1:")));
    let roles: Vec<&str> = json.auditd.iter().map(|n| n.role.as_str()).collect();
    assert_eq!(roles, ["all", "all", "query"]);
    for node in &json.auditd {
        assert!(Path::new(&node.data_dir).is_dir());
        let (code, _) = http_get(node.http.parse().unwrap(), "/healthz").await;
        assert_eq!(code, 200, "{} is SERVING once up returns", node.grpc);
    }
    let url = |node: &ScriptNode| format!("http://{}", node.grpc);
    let mut clients = Vec::new();
    for node in &json.auditd {
        clients.push(connect(&url(node), &json.admin_token).await);
    }

    // Through the two `all` nodes in turn; the query node takes none.
    let events = generated(1_500, 23, 500);
    for (i, chunk) in events.chunks(100).enumerate() {
        ingest(&mut clients[i % 2], chunk.to_vec(), WaitFor::Durable).await;
    }
    let refused = clients[2]
        .ingest(IngestRequest {
            events: events[..1].to_vec(),
            batch_id: String::new(),
            wait_for: WaitFor::Durable as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains("role is query"), "{refused:?}");
    wait_health(
        &url(&json.auditd[2]),
        auditd::server::INGEST_HEALTH_SERVICE,
        tonic_health::pb::health_check_response::ServingStatus::NotServing,
    )
    .await;
    wait_health(
        &url(&json.auditd[0]),
        auditd::server::INGEST_HEALTH_SERVICE,
        tonic_health::pb::health_check_response::ServingStatus::Serving,
    )
    .await;

    // The query node answers as one daemon that took every batch would:
    // the search oracle, every page.
    let deadline = Instant::now() + Duration::from_secs(30);
    while count_stored(&mut clients[2]).await < events.len() as u64 {
        assert!(Instant::now() < deadline, "the query node never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(21);
    for round in 0..40 {
        let mut request = oracle::search_request(oracle::random_filter(&mut rng, &events));
        request.limit = 200;
        request.exact_total = true;
        let mut expected: Vec<(i64, usize)> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| oracle::matches(&auditd::search::filter_of(&request), e))
            .map(|(i, e)| (auditd::schema::timestamp_micros(e.time.as_ref()), i))
            .collect();
        expected.sort();
        expected.reverse();
        let expected: Vec<&str> = expected
            .iter()
            .map(|(_, i)| events[*i].id.as_str())
            .collect();
        let (got, total) = search_all(&mut clients[2], request.clone()).await;
        let got: Vec<&str> = got.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(total as usize, expected.len(), "round {round}: {request:?}");
        assert_eq!(got, expected, "round {round}: {request:?}");
    }

    // `down` stops every process it started.
    let pids: Vec<u32> = json
        .nats
        .iter()
        .map(|n| n.pid)
        .chain(json.auditd.iter().map(|n| n.pid))
        .collect();
    let down = cluster.run("down");
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    for pid in pids {
        assert!(!alive(pid), "process {pid} outlived down");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_tokens_bucket_takes_no_token_until_it_hears_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = NatsServer::start(&dir.path().join("nats"), 8 << 20);
    let mut config = on_cluster(&dir.path().join("a"), &nats, "CUT");
    config.cluster.token_staleness_ms = 1_000;
    let node = TestServer::start(config).await;
    let mut client = node.client().await;
    client.search(SearchRequest::default()).await.unwrap();

    // With NATS gone a read fails at once (its trail event cannot be
    // stored); past the staleness limit the token itself is refused,
    // before anything is read, naming the bucket. (The case it guards is
    // narrower: a node that still reaches the events' stream leader but
    // not the bucket's, or whose watch broke.)
    nats.kill();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    loop {
        let answer = client.search(SearchRequest::default()).await;
        match &answer {
            Err(status)
                if status.code() == tonic::Code::Unavailable
                    && status.message().contains("KV_CUT-tokens") =>
            {
                break
            }
            _ => seen.push(format!("{answer:?}")),
        }
        assert!(Instant::now() < deadline, "never stale: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    nats.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(status) = client.search(SearchRequest::default()).await {
        assert!(
            Instant::now() < deadline,
            "tokens never taken again: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.stop().await.unwrap();
}

/// Starts a node that must fail to start; its error.
async fn refused_start(config: auditd::Config) -> String {
    let listeners = auditd::server::Listeners::bind(&config).await.unwrap();
    let log = auditd::LogChoice::configured(&config);
    let started = auditd::run_on(config, listeners, std::future::pending(), log);
    match tokio::time::timeout(Duration::from_secs(30), started).await {
        Ok(Err(error)) => error.to_string(),
        Ok(Ok(())) => panic!("it started and stopped"),
        Err(_) => panic!("it started"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_other_retention_rules_is_refused_until_they_are_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats"), 8 << 20);
    let a_config = on_cluster(&dir.path().join("a"), &nats, "RULES");
    let a = TestServer::start(a_config.clone()).await;

    // b keeps events 400 days; a (and so the cluster) forever.
    let mut b_config = on_cluster(&dir.path().join("b"), &nats, "RULES");
    b_config.retention.default_days = Some(400);
    let error = refused_start(b_config.clone()).await;
    assert!(
        error.starts_with("retention: this node keeps") && error.contains("adopt_settings"),
        "{error}"
    );

    // Adopted: b's rules become the cluster's, and a, restarted with the
    // old ones, is refused in turn.
    b_config.cluster.adopt_settings = true;
    let b = TestServer::start(b_config).await;
    a.stop().await.unwrap();
    let error = refused_start(a_config.clone()).await;
    assert!(error.contains("\"default_days\":400"), "{error}");
    let mut a_config = a_config;
    a_config.retention.default_days = Some(400);
    let a = TestServer::start(a_config).await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_before_its_nats_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = NatsServer::start(&dir.path().join("nats"), 8 << 20);
    nats.kill();
    // NATS's port, held by a listener that never speaks NATS: the node's
    // first try is seen to fail (without the wait, start-up would end
    // there); then NATS comes back on the same port.
    let port: u16 = nats.url.rsplit(':').next().unwrap().parse().unwrap();
    let silent = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    silent.set_nonblocking(true).unwrap();
    let node = TestServer::spawn(on_cluster(&dir.path().join("a"), &nats, "LATE")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let knocked = loop {
        match silent.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "the node never tried NATS");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    drop((knocked, silent));
    nats.restart();
    node.wait_serving().await;
    let mut client = node.client().await;
    ingest(&mut client, generated(10, 3, 10), WaitFor::Searchable).await;
    assert_eq!(count_stored(&mut client).await, 10);
    node.stop().await.unwrap();
}

/// Every page of `request` merged over `readers`: the events' ids, in
/// order, and the total.
async fn merged_ids(
    readers: &[Option<auditd::cluster::fanout::Reader>],
    mut request: SearchRequest,
) -> (Vec<String>, u64) {
    use auditd::cluster::fanout::{self, Bounds};
    let bounds = Bounds {
        limit: request.limit as usize,
        count_up_to: u64::MAX,
    };
    request.exact_total = true;
    let mut ids = Vec::new();
    loop {
        let page = fanout::search(readers, &request, &auditd::auth::ReadScope::All, bounds)
            .await
            .unwrap();
        ids.extend(page.events.into_iter().map(|e| e.id));
        if page.next_page_token.is_empty() {
            return (ids, page.total_hits);
        }
        request.page_token = page.next_page_token;
    }
}

/// Waits until `owned`'s partition has `count` events searchable.
async fn until_searchable(owned: &auditd::cluster::owned::OwnedPartition, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let everything = SearchRequest {
        exact_total: true,
        limit: 1,
        ..Default::default()
    };
    loop {
        let searcher = owned.searcher();
        let request = everything.clone();
        let found = tokio::task::spawn_blocking(move || {
            searcher
                .search(&request, &auditd::auth::ReadScope::All)
                .unwrap()
                .total_hits
        })
        .await
        .unwrap();
        if found as usize == count {
            return;
        }
        assert!(
            found as usize <= count,
            "partition {}: {found} events",
            owned.partition()
        );
        assert!(
            Instant::now() < deadline,
            "partition {}: {found} of {count} searchable",
            owned.partition()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes `events` in batches of 200 (`b<from>`, `b<from + 1>`, …) and
/// adds each, as stored (ids renamed by `batch`), to `stored` with where
/// it went: (time, partition, seq).
async fn publish_placed(
    publisher: &Publisher,
    from: usize,
    events: &[AuditEvent],
    stored: &mut Vec<(AuditEvent, (i64, u32, u64))>,
) {
    for (i, chunk) in events.chunks(200).enumerate() {
        let batch = batch(&format!("b{}", from + i), chunk);
        let renamed = batch.events.clone();
        let placed = publisher.publish(batch).await.unwrap();
        assert_eq!(placed.len(), renamed.len());
        for (event, place) in renamed.into_iter().zip(placed) {
            assert_eq!(event.id, place.id);
            let time = auditd::schema::timestamp_micros(event.time.as_ref());
            stored.push((event, (time, place.partition, place.seq)));
        }
    }
}

/// Partition pipelines (`cluster::owned`): four partitions owned by two
/// nodes, read through one fan-out, answer as the oracle. When a node
/// stops owning its two, a search needing them is refused naming one; a
/// new owner rebuilds one from the stream in an empty directory, the old
/// owner takes the other back and resumes after its checkpoint, and
/// every event published before and meanwhile is then found once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_partitions_answer_together_and_move_to_another_owner() {
    use auditd::cluster::fanout::FanOutError;
    use auditd::cluster::owned::OwnedPartition;
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats"), 8 << 20);
    let layout = layout(&nats, "OWNED", PARTITIONS);
    let publisher = Publisher::open(layout.clone()).await.unwrap();
    let tokens = token_store(dir.path());
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));

    let mut stored: Vec<(AuditEvent, (i64, u32, u64))> = Vec::new();
    let events = generated(2_400, 31, 800);
    publish_placed(&publisher, 0, &events[..2_000], &mut stored).await;

    let mut owned = Vec::new();
    for (p, node) in [(0, &a), (1, &a), (2, &b), (3, &b)] {
        let config = test_config(node);
        owned.push(Some(
            OwnedPartition::start(&config, layout.clone(), p, tokens.clone(), None)
                .await
                .unwrap(),
        ));
    }
    let readers = |owned: &[Option<OwnedPartition>]| -> Vec<_> {
        owned
            .iter()
            .map(|o| o.as_ref().map(|o| o.reader()))
            .collect()
    };
    let check = async |owned: &[Option<OwnedPartition>],
                       stored: &[(AuditEvent, (i64, u32, u64))],
                       rounds| {
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(rounds);
        let events: Vec<AuditEvent> = stored.iter().map(|(e, _)| e.clone()).collect();
        for round in 0..rounds {
            let mut request = match round {
                0 => SearchRequest::default(),
                _ => oracle::search_request(oracle::random_filter(&mut rng, &events)),
            };
            request.limit = 150;
            let filter = auditd::search::filter_of(&request);
            let mut expected: Vec<(&(i64, u32, u64), &str)> = stored
                .iter()
                .filter(|(e, _)| oracle::matches(&filter, e))
                .map(|(e, place)| (place, e.id.as_str()))
                .collect();
            expected.sort();
            expected.reverse();
            let expected: Vec<&str> = expected.into_iter().map(|(_, id)| id).collect();
            let (got, total) = merged_ids(&readers(owned), request.clone()).await;
            assert_eq!(got, expected, "round {round}: {request:?}");
            assert_eq!(total as usize, expected.len());
        }
    };
    check(&owned, &stored, 25).await;

    // Node a stops owning partitions 0 and 1: nothing answers for them.
    for p in [0, 1] {
        owned[p].take().unwrap().stop().await.unwrap();
    }
    match auditd::cluster::fanout::search(
        &readers(&owned),
        &SearchRequest::default(),
        &auditd::auth::ReadScope::All,
        auditd::cluster::fanout::Bounds {
            limit: 10,
            count_up_to: 100,
        },
    )
    .await
    {
        Err(FanOutError::Unavailable { partition: 0, .. }) => {}
        other => panic!("{other:?}"),
    }
    publish_placed(&publisher, 10, &events[2_000..], &mut stored).await;
    // b rebuilds partition 0 from the stream; a resumes partition 1.
    owned[0] = Some(
        OwnedPartition::start(&test_config(&b), layout.clone(), 0, tokens.clone(), None)
            .await
            .unwrap(),
    );
    owned[1] = Some(
        OwnedPartition::start(&test_config(&a), layout.clone(), 1, tokens.clone(), None)
            .await
            .unwrap(),
    );
    for o in owned.iter().flatten() {
        let count = stored
            .iter()
            .filter(|(_, (_, p, _))| *p == o.partition())
            .count();
        until_searchable(o, count).await;
    }
    let (all, _) = merged_ids(
        &readers(&owned),
        SearchRequest {
            limit: 250,
            ..Default::default()
        },
    )
    .await;
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(
        (all.len(), unique.len()),
        (2_400, 2_400),
        "every event once"
    );
    check(&owned, &stored, 15).await;
    for o in owned.into_iter().flatten() {
        o.stop().await.unwrap();
    }
}

/// One in-process node of `cluster::owner`: its owner and the
/// `Partitions` service other nodes read its partitions through.
/// A token store in `<dir>/tokens`, for owners made below the daemon.
fn token_store(dir: &Path) -> Arc<auditd::auth::TokenStore> {
    std::fs::create_dir(dir.join("tokens")).unwrap();
    let (tokens, _) = auditd::auth::TokenStore::open(&dir.join("tokens")).unwrap();
    Arc::new(tokens)
}

struct OwnerNode {
    owner: auditd::cluster::owner::Owner,
    server: tokio::task::JoinHandle<()>,
}

async fn owner_node(
    layout: &Layout,
    data_dir: &Path,
    name: &str,
    lease: Duration,
    tokens: Arc<auditd::auth::TokenStore>,
) -> OwnerNode {
    use auditd::cluster::owner::{Owner, OwnerSettings};
    use auditd::cluster::remote::PartitionsService;
    use auditd::proto::partitions_server::PartitionsServer;
    const SECRET: &str = "a-node-secret-of-this-test-cluster-only";
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let owner = Owner::start(OwnerSettings {
        config: test_config(data_dir),
        layout: layout.clone(),
        leases: LeaseSettings {
            bucket: "handover-leases".into(),
            node: name.into(),
            partitions: layout.partitions,
            lease,
            replicas: 1,
            address,
        },
        node_secret: SECRET.into(),
        tokens,
        trail: None,
        owns: true,
    })
    .await
    .unwrap();
    let service = PartitionsService::new(owner.held_here(), SECRET);
    let server = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(PartitionsServer::new(Arc::new(service)))
            .serve_with_incoming(incoming)
            .await;
    });
    OwnerNode { owner, server }
}

/// Waits (up to `limit`) until `done` holds; how long it took.
async fn until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what}: not after {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// Waits until a fan-out over `owner`'s routes finds as many events as
/// `stored`, then checks they are exactly those, each once.
async fn found_once(
    owner: &auditd::cluster::owner::Owner,
    stored: &[(AuditEvent, (i64, u32, u64))],
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let everything = SearchRequest {
        limit: 250,
        ..Default::default()
    };
    loop {
        let (ids, total) = merged_ids(&owner.readers(), everything.clone()).await;
        if total as usize == stored.len() {
            let unique: HashSet<&String> = ids.iter().collect();
            assert_eq!(unique.len(), ids.len(), "every event once");
            let expected: HashSet<&String> = stored.iter().map(|(e, _)| &e.id).collect();
            assert_eq!(unique, expected);
            return;
        }
        assert!(total as usize <= stored.len(), "{total} found");
        assert!(
            Instant::now() < deadline,
            "{total} of {} searchable",
            stored.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Indexer loss (issue 21): two nodes own four partitions through their
/// leases and each reads the other's through its `Partitions` service.
/// One node dies (its leases left to expire) while events are published;
/// the other takes its partitions within the lease time plus a round,
/// rebuilds them from the stream, and then every acknowledged event is
/// found through its fan-out exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_indexers_partitions_move_to_another_after_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats"), 8 << 20);
    let layout = layout(&nats, "HANDOVER", PARTITIONS);
    let tokens = token_store(dir.path());
    let lease = Duration::from_secs(2);
    let a = owner_node(&layout, &dir.path().join("a"), "a", lease, tokens.clone()).await;
    let b = owner_node(&layout, &dir.path().join("b"), "b", lease, tokens.clone()).await;
    // Two each, every partition readable from both.
    until(
        Duration::from_secs(20),
        "the partitions shared and ready",
        || {
            a.owner.ready().len() == 2
                && b.owner.ready().len() == 2
                && a.owner.readers().iter().all(Option::is_some)
                && b.owner.readers().iter().all(Option::is_some)
        },
    )
    .await;

    let publisher = Publisher::open(layout.clone()).await.unwrap();
    let events = generated(3_000, 41, 1_000);
    let mut stored = Vec::new();
    publish_placed(&publisher, 0, &events[..1_000], &mut stored).await;
    // Read through a: b's partitions come over gRPC.
    found_once(&a.owner, &stored).await;

    // a dies under ingest.
    let dying = tokio::spawn(async move {
        a.server.abort();
        a.owner.abandon().await;
    });
    publish_placed(&publisher, 10, &events[1_000..2_000], &mut stored).await;
    dying.await.unwrap();
    let died = Instant::now();
    publish_placed(&publisher, 20, &events[2_000..], &mut stored).await;
    let all: BTreeSet<u32> = (0..PARTITIONS).collect();
    until(lease * 3, "b holds every lease", || b.owner.held() == all).await;
    let moved = died.elapsed();
    eprintln!("the partitions moved {moved:?} after the node died (lease {lease:?})");
    assert!(
        moved <= lease + lease / 3 + Duration::from_secs(1),
        "the partitions moved after {moved:?}, lease {lease:?}"
    );
    until(Duration::from_secs(30), "b's pipelines ready", || {
        b.owner.ready() == all
    })
    .await;
    assert!(b.owner.readers().iter().all(Option::is_some));
    found_once(&b.owner, &stored).await;
    b.server.abort();
    b.owner.stop().await;
}

/// The lease bucket unreadable (here: deleted, so that every read fails
/// at once), for less than the lease: a node keeps routing each
/// partition where it did, so its searches are still answered by the
/// owners' indexes all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_stay_while_the_lease_bucket_cannot_be_read() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats"), 8 << 20);
    let mut layout = layout(&nats, "BLIP", PARTITIONS);
    // A failed read of the bucket takes at most this long.
    layout.jetstream.timeout_ms = 500;
    let tokens = token_store(dir.path());
    let lease = Duration::from_secs(9);
    let a = owner_node(&layout, &dir.path().join("a"), "a", lease, tokens.clone()).await;
    let b = owner_node(&layout, &dir.path().join("b"), "b", lease, tokens.clone()).await;
    // b reads two partitions itself, the others at a.
    until(
        Duration::from_secs(30),
        "b ready for two, routed to all",
        || b.owner.ready().len() == 2 && b.owner.readers().iter().all(Option::is_some),
    )
    .await;
    let publisher = Publisher::open(layout.clone()).await.unwrap();
    let mut stored = Vec::new();
    publish_placed(&publisher, 0, &generated(1_000, 45, 500), &mut stored).await;
    found_once(&b.owner, &stored).await;
    let everything = SearchRequest {
        limit: 250,
        ..Default::default()
    };
    let client = async_nats::connect(&nats.url).await.unwrap();
    let context = async_nats::jetstream::new(client);
    context.delete_key_value("handover-leases").await.unwrap();
    // At least one round (every third of the lease, 3 s; each read
    // failing after at most 500 ms) fails to read the bucket, inside the
    // lease (held until at least 9 s × 0.95 − 3 s after the deletion).
    let deleted = Instant::now();
    let mut searches = 0;
    while deleted.elapsed() < Duration::from_millis(4_500) {
        let (ids, total) = merged_ids(&b.owner.readers(), everything.clone()).await;
        assert_eq!((ids.len(), total as usize), (stored.len(), stored.len()));
        searches += 1;
    }
    assert!(searches > 5, "{searches} searches");
    for node in [a, b] {
        node.server.abort();
        node.owner.abandon().await;
    }
}

/// A node joining (issue 21): a owns all four partitions; b joins and
/// takes its share, rebuilding two from the stream while events are
/// published. a hands them over: it answers for them until b is ready,
/// so every search through either node, all along, succeeds and never
/// finds fewer events than one before it, each once; at the end each
/// node holds two and both find everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_takes_its_share_while_every_search_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats"), 8 << 20);
    let layout = layout(&nats, "HANDOVER", PARTITIONS);
    let tokens = token_store(dir.path());
    let lease = Duration::from_secs(2);
    let all: BTreeSet<u32> = (0..PARTITIONS).collect();
    let a = owner_node(&layout, &dir.path().join("a"), "a", lease, tokens.clone()).await;
    until(Duration::from_secs(20), "a ready for all", || {
        a.owner.ready() == all
    })
    .await;
    let publisher = Publisher::open(layout.clone()).await.unwrap();
    let events = generated(4_000, 43, 1_000);
    let mut stored = Vec::new();
    publish_placed(&publisher, 0, &events[..2_000], &mut stored).await;
    found_once(&a.owner, &stored).await;

    let b = owner_node(&layout, &dir.path().join("b"), "b", lease, tokens.clone()).await;
    let everything = SearchRequest {
        limit: 300,
        ..Default::default()
    };
    // Never fewer than before the join: a partition unread, or answered
    // short, misses a quarter of them. (Two nodes' answers may differ by
    // the events just published while the new owner catches up.)
    let before = stored.len();
    let (mut published, mut found) = (0, before);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if published < 4 {
            let from = 2_000 + published * 500;
            let batch = &events[from..from + 500];
            publish_placed(&publisher, 100 + 10 * published, batch, &mut stored).await;
            published += 1;
        }
        for node in [&a, &b] {
            let (ids, total) = merged_ids(&node.owner.readers(), everything.clone()).await;
            let unique: HashSet<&String> = ids.iter().collect();
            assert_eq!(unique.len(), ids.len(), "every event once");
            assert_eq!(total as usize, ids.len());
            assert!(ids.len() >= before, "{} found after {before}", ids.len());
            assert!(ids.len() <= stored.len());
            found = ids.len();
        }
        let shared = a.owner.ready().len() == 2 && b.owner.ready().len() == 2;
        if shared && published == 4 && found == stored.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a: {:?}, b: {:?}, {found} found",
            a.owner.ready(),
            b.owner.ready()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    found_once(&a.owner, &stored).await;
    found_once(&b.owner, &stored).await;
    for node in [a, b] {
        node.server.abort();
        node.owner.stop().await;
    }
}

/// The ids of an NDJSON export of `filter` through `client`, from
/// `token`; each chunk's token resumes right after it (checked by
/// resuming after the first one).
async fn exported(client: &mut Client, filter: EventFilter, token: &str) -> Vec<String> {
    let request = auditd::proto::ExportRequest {
        filter: Some(filter.clone()),
        format: auditd::proto::ExportFormat::Ndjson as i32,
        ascending: false,
        resume_token: token.into(),
    };
    let mut chunks = client.export(request).await.unwrap().into_inner();
    let mut ids = Vec::new();
    let mut first_token = None;
    while let Some(chunk) = chunks.message().await.unwrap() {
        let text = String::from_utf8(chunk.data).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len() as u64, chunk.events);
        for line in lines {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            ids.push(event["id"].as_str().unwrap().to_owned());
        }
        first_token.get_or_insert((ids.len(), chunk.resume_token));
    }
    if let Some((at, token)) = first_token.filter(|(at, _)| *at < ids.len()) {
        let rest = Box::pin(exported(client, filter, &token)).await;
        assert_eq!(rest, ids[at..], "resumed after the first chunk");
    }
    ids
}

/// Tail through a node of several partitions: every new event once,
/// each partition's in seq order, while batches go in through two
/// nodes; the stream cut halfway resumes from its token (one cursor a
/// partition) without a gap or a repeat.
async fn tail_follows_every_partition(query: &mut Client, writers: &mut [Client]) {
    use auditd::proto::{TailRequest, TailResponse};
    let open = async |client: &mut Client, token: String| {
        let request = TailRequest {
            filter: None,
            resume_token: token,
        };
        client.tail(request).await.unwrap().into_inner()
    };
    let read_until = async |stream: &mut tonic::Streaming<TailResponse>,
                            want: usize,
                            got: &mut Vec<AuditEvent>| {
        let mut token = String::new();
        let read = async {
            while got.len() < want {
                let response = stream.message().await.unwrap().expect("open");
                got.extend(
                    response
                        .events
                        .into_iter()
                        .filter(|e| e.id.starts_with("tail-")),
                );
                token = response.resume_token;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .expect("every event tailed in time");
        token
    };
    let mut fresh = generated(600, 53, 600);
    for (n, event) in fresh.iter_mut().enumerate() {
        event.id = format!("tail-{n}");
    }
    let mut stream = open(query, String::new()).await;
    let mut got = Vec::new();
    for (n, chunk) in fresh[..300].chunks(100).enumerate() {
        ingest_batch(
            &mut writers[0],
            chunk,
            &format!("tail-a-{n}"),
            WaitFor::Durable,
        )
        .await;
    }
    let token = read_until(&mut stream, 300, &mut got).await;
    drop(stream);
    for (n, chunk) in fresh[300..].chunks(100).enumerate() {
        ingest_batch(
            &mut writers[2],
            chunk,
            &format!("tail-i-{n}"),
            WaitFor::Durable,
        )
        .await;
    }
    let mut stream = open(query, token).await;
    read_until(&mut stream, 600, &mut got).await;
    let ids: HashSet<&str> = got.iter().map(|e| e.id.as_str()).collect();
    assert_eq!((ids.len(), got.len()), (600, 600), "each event once");
    for p in 0..PARTITIONS {
        let seqs: Vec<u64> = got
            .iter()
            .filter(|e| partition_of(&e.subject, PARTITIONS) == p)
            .map(|e| e.seq)
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "partition {p}: {seqs:?}"
        );
    }
    // A one-node token, or one of other partitions, names the field.
    let status = query
        .tail(TailRequest {
            filter: None,
            resume_token: "dDE6NQ".into(),
        })
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("resume_token"), "{status:?}");
}

/// Daemons on a cluster of four partitions (issue 21's first test): a
/// `query` node alone answers UNAVAILABLE naming a partition (no owner
/// yet); two `all` nodes and an `ingest` node join; batches through the
/// three are published into the partitions and indexed by the two
/// owners; the query node, which holds no index, answers random searches
/// (every page) and aggregates as the oracles do; when an owner stops its
/// partitions move to the other, and every event is still found once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_of_several_partitions_answer_through_the_owners() {
    use auditd::config::Role;
    use auditd::proto::AggregateRequest;
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats"), 8 << 20);
    let q = TestServer::start(on_partitions(
        dir.path(),
        &nats,
        PARTITIONS,
        "q",
        Role::Query,
    ))
    .await;
    let admin = q.admin_token();
    let mut query = q.client_with(&admin).await;
    let everything = SearchRequest {
        limit: 250,
        exact_total: true,
        ..Default::default()
    };
    let refused = query.search(everything.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("no node owns it"), "{refused:?}");
    assert!(refused.message().starts_with("partition "), "{refused:?}");
    // A bad filter is named before any owner is asked.
    let bad = EventFilter {
        query: "action:(".into(),
        ..Default::default()
    };
    let aggregate = AggregateRequest {
        filter: Some(bad.clone()),
        aggregations: vec![common::aggregate_oracle::random_aggregation(
            &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1),
            "x",
            0,
        )],
    };
    let export = auditd::proto::ExportRequest {
        filter: Some(bad),
        ..Default::default()
    };
    let refused = [
        query.aggregate(aggregate).await.unwrap_err(),
        query.export(export).await.map(|_| ()).unwrap_err(),
    ];
    for status in refused {
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with("query:"), "{status:?}");
    }
    // Nor can it say an event is not there.
    let get = |id: &str| auditd::proto::GetEventRequest { id: id.into() };
    let refused = query.get_event(get("no-such-id")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");

    let a = TestServer::start(on_partitions(dir.path(), &nats, PARTITIONS, "a", Role::All)).await;
    let b = TestServer::start(on_partitions(dir.path(), &nats, PARTITIONS, "b", Role::All)).await;
    let i = TestServer::start(on_partitions(
        dir.path(),
        &nats,
        PARTITIONS,
        "i",
        Role::Ingest,
    ))
    .await;
    let mut writers = [
        a.client_with(&admin).await,
        b.client_with(&admin).await,
        i.client_with(&admin).await,
    ];
    let events = generated(2_400, 51, 800);
    // Each event's place: (time, partition, seq), from the answers.
    let mut stored: Vec<(AuditEvent, (i64, u32, u64))> = Vec::new();
    for (n, chunk) in events.chunks(200).enumerate() {
        let request = IngestRequest {
            events: chunk.to_vec(),
            batch_id: format!("parts-{n}"),
            wait_for: WaitFor::Durable as i32,
        };
        let reply = writers[n % 3].ingest(request).await.unwrap().into_inner();
        assert_eq!(reply.seqs.len(), chunk.len());
        for ((event, id), seq) in chunk.iter().zip(reply.ids).zip(reply.seqs) {
            let time = auditd::schema::timestamp_micros(event.time.as_ref());
            let p = partition_of(&event.subject, PARTITIONS);
            stored.push((
                AuditEvent {
                    id,
                    ..event.clone()
                },
                (time, p, seq),
            ));
        }
    }
    // Each event has a seq of its own in its partition, rising as the
    // batches went (the trail events of reads take seqs in between).
    for p in 0..PARTITIONS {
        let seqs: Vec<u64> = stored
            .iter()
            .filter(|(_, (_, q, _))| *q == p)
            .map(|(_, (_, _, s))| *s)
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "partition {p}: {seqs:?}"
        );
    }
    // A retry through another node is the same batch.
    let again = IngestRequest {
        events: events[..200].to_vec(),
        batch_id: "parts-0".into(),
        wait_for: WaitFor::Durable as i32,
    };
    let retried = writers[1].ingest(again).await.unwrap().into_inner();
    let first: Vec<u64> = stored[..200].iter().map(|(_, (_, _, s))| *s).collect();
    assert_eq!(retried.seqs, first);
    // A batch id used again for other events is refused, naming it (a
    // partition's copy holds another count); the node goes on.
    let reused = IngestRequest {
        events: events[200..350].to_vec(),
        batch_id: "parts-1".into(),
        wait_for: WaitFor::Durable as i32,
    };
    let status = writers[2].ingest(reused).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("batch_id"), "{status:?}");
    assert!(
        status.message().contains("used for another batch"),
        "{status:?}"
    );
    let again = IngestRequest {
        events: events[200..400].to_vec(),
        batch_id: "parts-1".into(),
        wait_for: WaitFor::Durable as i32,
    };
    let retried = writers[2].ingest(again).await.unwrap().into_inner();
    let first: Vec<u64> = stored[200..400].iter().map(|(_, (_, _, s))| *s).collect();
    assert_eq!(retried.seqs, first);
    // What does not reach the owners yet is refused: never a short answer.
    let erase = auditd::proto::EraseSubjectRequest {
        subject: events[0].subject.clone(),
        ..Default::default()
    };
    let status = subjects_client(&q, &admin)
        .await
        .erase_subject(erase)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");

    let found_all = async |client: &mut Client| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match client.search(everything.clone()).await {
                Ok(page) if page.get_ref().total_hits as usize == stored.len() => break,
                Ok(page) => assert!(page.get_ref().total_hits as usize <= stored.len()),
                Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}"),
            }
            assert!(
                Instant::now() < deadline,
                "not every event searchable in time"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (found, total) = search_all(client, everything.clone()).await;
        assert_eq!(total as usize, stored.len());
        let ids: HashSet<String> = found.into_iter().map(|e| e.id).collect();
        assert_eq!(ids.len(), stored.len(), "every event once");
    };
    found_all(&mut query).await;
    let all = exported(&mut query, auditd::search::filter_of(&everything), "").await;
    assert_eq!(all.len(), stored.len());
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), stored.len());

    // GetEvent asks every partition: each event found by its id, at its
    // seq; an unknown id is NOT_FOUND; a token of one subject finds only
    // that subject's events (the others exactly as absent).
    for (event, (_, _, seq)) in stored.iter().step_by(97) {
        let got = query.get_event(get(&event.id)).await.unwrap().into_inner();
        assert_eq!((&got.id, got.seq), (&event.id, *seq));
        assert_eq!(got.subject, event.subject);
    }
    let missing = query.get_event(get("no-such-id")).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
    let subject = stored[0].0.subject.clone();
    let kind = auditd::proto::TokenKind::Personal;
    let (_, secret) = common::create(&q, kind, &subject, "").await;
    let mut scoped = q.client_with(&secret).await;
    for (event, _) in stored.iter().step_by(101) {
        let got = scoped.get_event(get(&event.id)).await;
        match event.subject == subject {
            true => assert_eq!(got.unwrap().into_inner().id, event.id),
            false => assert_eq!(got.unwrap_err().code(), tonic::Code::NotFound),
        }
    }

    let plain: Vec<AuditEvent> = stored.iter().map(|(e, _)| e.clone()).collect();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(52);
    for round in 0..25 {
        let mut request = oracle::search_request(oracle::random_filter(&mut rng, &plain));
        request.limit = 97;
        request.exact_total = true;
        let filter = auditd::search::filter_of(&request);
        let mut expected: Vec<(&(i64, u32, u64), &str)> = stored
            .iter()
            .filter(|(e, _)| oracle::matches(&filter, e))
            .map(|(e, place)| (place, e.id.as_str()))
            .collect();
        expected.sort();
        expected.reverse();
        let (got, total) = search_all(&mut query, request.clone()).await;
        let got: Vec<&str> = got.iter().map(|e| e.id.as_str()).collect();
        let expected: Vec<&str> = expected.into_iter().map(|(_, id)| id).collect();
        assert_eq!(got, expected, "round {round}: {request:?}");
        assert_eq!(total as usize, expected.len());
        // Export: the same events in the same order, every partition read.
        if round % 5 == 0 {
            let ids: Vec<String> = exported(&mut query, filter.clone(), "").await;
            assert_eq!(ids, expected, "round {round}: export of {filter:?}");
        }

        let mut filter = oracle::random_filter(&mut rng, &plain);
        filter.from_time = None;
        filter.to_time = None;
        let aggregation = common::aggregate_oracle::random_aggregation(&mut rng, "x", 0);
        let request = AggregateRequest {
            filter: Some(filter.clone()),
            aggregations: vec![aggregation.clone()],
        };
        let got = query.aggregate(request).await.unwrap().into_inner();
        let matched: Vec<&AuditEvent> = plain
            .iter()
            .filter(|e| oracle::matches(&filter, e))
            .collect();
        assert_eq!(got.total_hits as usize, matched.len(), "round {round}");
        let expected = common::aggregate_oracle::brute_force(&aggregation, &matched, (None, None));
        assert_eq!(
            got.results.get("x"),
            Some(&expected),
            "round {round}: {aggregation:?}"
        );
    }

    // b stops: its partitions move to a, which rebuilds them.
    b.stop().await.unwrap();
    found_all(&mut query).await;
    // SEARCHABLE waits for the owners: once answered, each event of the
    // batch is found through the query node.
    let mut markers: Vec<AuditEvent> = events[..40].to_vec();
    markers.iter_mut().for_each(|e| e.id.clear());
    let searchable = IngestRequest {
        events: markers,
        wait_for: WaitFor::Searchable as i32,
        ..Default::default()
    };
    let reply = writers[2].ingest(searchable).await.unwrap().into_inner();
    for (id, seq) in reply.ids.iter().zip(&reply.seqs) {
        let got = query.get_event(get(id)).await.unwrap().into_inner();
        assert_eq!(got.seq, *seq);
    }
    tail_follows_every_partition(&mut query, &mut writers).await;
    for node in [q, a, i] {
        node.stop().await.unwrap();
    }
}

/// Searches until `request` finds `want` events, for at most a minute.
async fn settled(client: &mut Client, request: &SearchRequest, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found = client.search(request.clone()).await;
        let found = found.map(|r| r.into_inner().total_hits);
        if found.as_ref().is_ok_and(|n| *n as usize == want) {
            return;
        }
        assert!(Instant::now() < deadline, "still {found:?}, not {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The retention state a node answers, and the events of its drops.
async fn dropped_events(
    client: &mut auditd::client::RetentionClient,
) -> (auditd::proto::RetentionStatus, usize) {
    let request = auditd::proto::GetRetentionRequest {};
    let status = client.get_retention(request).await.unwrap().into_inner();
    let dropped: u64 = status.dropped.iter().map(|d| d.events).sum();
    (status, dropped as usize)
}

/// An event of `days_ago` days before today (noon UTC), of `subject`.
fn aged(days_ago: i64, subject: &str, n: usize) -> AuditEvent {
    const DAY: i64 = 86_400;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    AuditEvent {
        id: format!("{days_ago}d-{subject}-{n}"),
        action: "events.get".into(),
        r#type: "svc/aged".into(),
        subject: subject.into(),
        access_id: "acc-1".into(),
        time: Some(prost_types::Timestamp {
            seconds: now - now.rem_euclid(DAY) - days_ago * DAY + DAY / 2,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// Retention over several partitions: a lock, a hold and its release
/// through any node reach every partition; each owner sweeps its own
/// days (a held subject's partition keeps the day, the others drop it);
/// the state answered is every partition's merged; with a partition
/// unowned a call is UNAVAILABLE naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_reaches_every_partition_and_each_owner_sweeps_its_own() {
    use auditd::proto::{AddHoldRequest, GetRetentionRequest, ListHoldsRequest};
    use auditd::proto::{LockRetentionRequest, ReleaseHoldRequest, SweepRequest};
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats"), 8 << 20);
    let node = |name: &str, role: auditd::config::Role| {
        let mut config = on_partitions(dir.path(), &nats, PARTITIONS, name, role);
        config.retention.default_days = Some(30);
        config.retention.sweep_interval_ms = 300;
        config
    };
    let q = TestServer::start(node("q", auditd::config::Role::Query)).await;
    let admin = q.admin_token();
    let retention = |node: &TestServer| {
        let channel = tonic::transport::Channel::from_shared(node.url()).unwrap();
        let token = auditd::client::BearerToken::new(&admin).unwrap();
        async move { auditd::client::retention(channel.connect().await.unwrap(), token) }
    };
    let mut at_q = retention(&q).await;
    let refused = at_q
        .get_retention(GetRetentionRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().starts_with("partition "), "{refused:?}");

    let a = TestServer::start(node("a", auditd::config::Role::All)).await;
    let b = TestServer::start(node("b", auditd::config::Role::All)).await;
    let mut at_a = retention(&a).await;
    // Every partition owned and ready: the state answers.
    let deadline = Instant::now() + Duration::from_secs(60);
    while at_q.get_retention(GetRetentionRequest {}).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the partitions never all answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A lock through one node is the floor of every partition.
    at_a.lock(LockRetentionRequest { min_days: 20 })
        .await
        .unwrap();
    let status = at_q
        .get_retention(GetRetentionRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.floor_days, Some(20));
    let lower = at_q
        .lock(LockRetentionRequest { min_days: 10 })
        .await
        .unwrap_err();
    assert_eq!(lower.code(), tonic::Code::FailedPrecondition, "{lower:?}");
    // A hold on one subject, placed through the query node.
    let held = "emma";
    let hold = at_q
        .add_hold(AddHoldRequest {
            subject: held.into(),
            reason: "litigation".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let holds = at_a
        .list_holds(ListHoldsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .holds;
    assert_eq!(holds.iter().map(|h| &h.id).collect::<Vec<_>>(), [&hold.id]);

    // Days 40 and 45 ago, of subjects over every partition.
    let subjects: Vec<String> = (0..24)
        .map(|i| format!("user-{i}"))
        .chain([held.into()])
        .collect();
    let mut events = Vec::new();
    for (n, subject) in subjects.iter().enumerate() {
        events.push(aged(40, subject, n));
        events.push(aged(45, subject, n));
        events.push(aged(2, subject, n));
    }
    let mut client = a.client_with(&admin).await;
    let request = IngestRequest {
        events: events.clone(),
        wait_for: WaitFor::Durable as i32,
        ..Default::default()
    };
    client.ingest(request).await.unwrap();
    let mut query = q.client_with(&admin).await;
    let of_type = SearchRequest {
        types: vec!["svc/aged".into()],
        limit: 1_000,
        exact_total: true,
        ..Default::default()
    };
    // The owners' sweepers drop the old days but in the held subject's
    // partition: there every old event stays, the held and the others.
    let p_held = partition_of(held, PARTITIONS);
    let old = |e: &&AuditEvent| !e.id.starts_with("2d-");
    let kept_while_held = events
        .iter()
        .filter(old)
        .filter(|e| partition_of(&e.subject, PARTITIONS) == p_held)
        .count();
    let recent = subjects.len();
    settled(&mut query, &of_type, recent + kept_while_held).await;
    assert!(
        kept_while_held > 2,
        "the held partition holds only {kept_while_held}"
    );
    let (status, dropped) = dropped_events(&mut at_q).await;
    assert_eq!(dropped, 2 * subjects.len() - kept_while_held);
    assert_eq!(status.dropped.len(), 2, "{:?}", status.dropped);
    // Released through another node: the held partition's days go too.
    let released = at_a
        .release_hold(ReleaseHoldRequest {
            id: hold.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(released.released.is_some());
    settled(&mut query, &of_type, recent).await;
    let swept = at_q.sweep(SweepRequest {}).await.unwrap().into_inner();
    assert!(swept.dropped.is_empty(), "{swept:?}");
    let (status, dropped) = dropped_events(&mut at_q).await;
    assert_eq!(dropped, 2 * subjects.len());
    assert!(status.holds.is_empty());
    // Each drop is on the trail, once a partition and a day.
    let drops = trail_events(&mut query, "audit.retention.drop", 2).await;
    assert!(drops.len() >= 2, "{drops:?}");

    for node in [q, a, b] {
        node.stop().await.unwrap();
    }
}
