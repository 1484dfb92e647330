//! Integrity on a cluster of several partitions (issue 21, "Integrity in a
//! cluster"; docs/cluster.md), against a real `nats-server`: one tree a
//! partition, every checkpoint signed with the cluster's one key, the
//! combined checkpoint listing every partition's head, receipts of events
//! asked through a node that holds no index and checked offline, and the
//! trees rebuilt by a new owner after a hand-over still extending what was
//! signed before (`auditctl verify --since` across it), a subject's
//! access package, a partition's `tlog-tiles` paths, and the full audit
//! of every partition at its owner.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use auditd::client::IntegrityClient;
use auditd::cluster::partition_of;
use auditd::config::Role;
use auditd::integrity::combined::{parse_combined, partition_origin};
use auditd::integrity::merkle::{
    inclusion_proof, leaf_hash, verify_consistency, verify_inclusion, Hash,
};
use auditd::integrity::note::{parse_checkpoint, verify};
use auditd::integrity::receipt::{verify_receipt, Receipt};
use auditd::proto::{
    AuditEvent, AuditLogRequest, Checkpoint, GetCheckpointRequest, GetConsistencyProofRequest,
    GetEventRequest, GetInclusionProofRequest,
};
use common::nats::{ingest_searchable, on_partitions, NatsServer};
use common::*;

const PARTITIONS: u32 = 4;

/// The combined checkpoint once each partition's head holds at least
/// `want[p]` leaves, checked against `key`; for at most a minute.
async fn combined_covering(
    proofs: &mut IntegrityClient,
    key: &str,
    want: &BTreeMap<u32, u64>,
) -> (Checkpoint, Vec<(u64, Hash)>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match proofs.get_checkpoint(GetCheckpointRequest::default()).await {
            Ok(reply) => {
                let checkpoint = reply.into_inner();
                let body = verify(&checkpoint.note, key).expect("signed with the cluster's key");
                let heads = parse_combined(body).unwrap().heads;
                assert_eq!(heads.len(), PARTITIONS as usize);
                assert_eq!(checkpoint.size, heads.iter().map(|(s, _)| s).sum::<u64>());
                if want.iter().all(|(p, n)| heads[*p as usize].0 >= *n) {
                    return (checkpoint, heads);
                }
            }
            // A partition between owners.
            Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "no combined checkpoint covers {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A full audit of every partition (or of `partition`): its last
/// (checked, total), once it says it is done and found no problem.
async fn audited(
    proofs: &mut IntegrityClient,
    partition: Option<u32>,
) -> Result<(u64, u64), tonic::Status> {
    let request = AuditLogRequest {
        partition,
        ..Default::default()
    };
    let mut progress = proofs.audit_log(request).await?.into_inner();
    let mut last = None;
    while let Some(next) = progress.message().await? {
        assert!(next.problems.is_empty(), "{:?}", next.problems);
        assert!(last.is_none_or(|(checked, _)| checked <= next.checked));
        last = Some((next.checked, next.total));
        if next.done {
            return Ok((next.checked, next.total));
        }
    }
    panic!("the audit ended unfinished after {last:?}");
}

/// Ingests `events` through `client` (searchable), and returns each
/// event as stored (id and seq) with its partition.
async fn ingested(
    client: &mut Client,
    events: &[AuditEvent],
    name: &str,
) -> Vec<(u32, AuditEvent)> {
    let mut stored = Vec::new();
    for (n, chunk) in events.chunks(100).enumerate() {
        let reply = ingest_searchable(client, chunk, &format!("{name}-{n}")).await;
        for ((event, id), seq) in chunk.iter().zip(reply.ids).zip(reply.seqs) {
            let p = partition_of(&event.subject, PARTITIONS);
            stored.push((
                p,
                AuditEvent {
                    id,
                    seq,
                    ..event.clone()
                },
            ));
        }
    }
    stored
}

/// The leaves each partition must hold for `stored` to be in it.
fn needed(stored: &[(u32, AuditEvent)]) -> BTreeMap<u32, u64> {
    let mut want = BTreeMap::new();
    for (p, event) in stored {
        let n = want.entry(*p).or_insert(0);
        *n = (*n).max(event.seq + 1);
    }
    want
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_trees_are_signed_by_one_key_combined_and_proven_through_any_node() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats"), 8 << 20);
    let node = |name, role| on_partitions(dir.path(), &nats, PARTITIONS, name, role);
    let q = TestServer::start(node("q", Role::Query)).await;
    let a = TestServer::start(node("a", Role::All)).await;
    let b = TestServer::start(node("b", Role::All)).await;
    // One key for the cluster: every node writes the same verifier key.
    let key_of = |server: &TestServer| {
        std::fs::read_to_string(server.data_dir.join("integrity.pub")).unwrap()
    };
    let key = key_of(&q);
    assert_eq!(key_of(&a), key);
    assert_eq!(key_of(&b), key);
    let name = key.split('+').next().unwrap().to_owned();

    let admin = q.admin_token();
    let mut writer = a.client_with(&admin).await;
    let stored = ingested(&mut writer, &generated(400, 61, 200), "first").await;
    let mut proofs = integrity_client(&q.url(), &admin).await;
    let (first, heads) = combined_covering(&mut proofs, &key, &needed(&stored)).await;
    assert!(
        first.root_hash.is_empty(),
        "one root a partition, in the note"
    );

    // Receipts through the query node, each checked offline against the
    // key and the event it names, and of its partition's tree.
    let mut query = q.client_with(&admin).await;
    for (p, event) in stored.iter().step_by(23) {
        let request = GetInclusionProofRequest {
            id: event.id.clone(),
            ..Default::default()
        };
        let proof = proofs
            .get_inclusion_proof(request)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(proof.leaf_index, event.seq);
        let got = GetEventRequest {
            id: event.id.clone(),
        };
        let got = query.get_event(got).await.unwrap().into_inner();
        let receipt = Receipt::parse(&proof.tlog_proof).unwrap();
        let verified = verify_receipt(&receipt, &key, Some(&got)).unwrap();
        assert_eq!(verified.origin, partition_origin(&name, *p));
        // Another event of the partition does not pass for it.
        let other = stored.iter().find(|(q, e)| q == p && e.id != event.id);
        if let Some((_, other)) = other {
            let other = query
                .get_event(GetEventRequest {
                    id: other.id.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            assert!(verify_receipt(&receipt, &key, Some(&other)).is_err());
        }
    }
    // A partition's own checkpoint, and a kept one by size.
    let latest = GetCheckpointRequest {
        partition: Some(2),
        ..Default::default()
    };
    let own = proofs.get_checkpoint(latest).await.unwrap().into_inner();
    assert!(own
        .note
        .starts_with(&format!("{}\n", partition_origin(&name, 2))));
    verify(&own.note, &key).unwrap();
    let kept = GetCheckpointRequest {
        size: own.size,
        partition: Some(2),
    };
    let again = proofs.get_checkpoint(kept).await.unwrap().into_inner();
    assert_eq!(again.note, own.note);

    // What a cluster's trees cannot answer is refused, naming the field.
    let invalid = |status: tonic::Status, field: &str| {
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(field), "{status:?}");
    };
    let by_seq = GetInclusionProofRequest {
        seq: Some(1),
        ..Default::default()
    };
    invalid(proofs.get_inclusion_proof(by_seq).await.unwrap_err(), "seq");
    let unnamed = GetConsistencyProofRequest {
        first: 1,
        second: 2,
        partition: None,
    };
    invalid(
        proofs.get_consistency_proof(unnamed).await.unwrap_err(),
        "partition",
    );
    let sized = GetCheckpointRequest {
        size: 3,
        partition: None,
    };
    invalid(proofs.get_checkpoint(sized).await.unwrap_err(), "partition");
    let past = GetCheckpointRequest {
        size: 0,
        partition: Some(PARTITIONS),
    };
    invalid(proofs.get_checkpoint(past).await.unwrap_err(), "partition");
    let past = AuditLogRequest {
        partition: Some(PARTITIONS),
        ..Default::default()
    };
    let audit = proofs.audit_log(past).await.map(|_| ());
    invalid(audit.unwrap_err(), "partition");
    // Proofs follow read scope: a token of one subject gets its events'
    // receipts, and another's event is not there for it.
    let subject = stored[0].1.subject.clone();
    let kind = auditd::proto::TokenKind::Personal;
    let (_, secret) = common::create(&q, kind, &subject, "").await;
    let mut scoped = integrity_client(&q.url(), &secret).await;
    for (_, event) in stored.iter().take(40) {
        let request = GetInclusionProofRequest {
            id: event.id.clone(),
            ..Default::default()
        };
        let got = scoped.get_inclusion_proof(request).await;
        match event.subject == subject {
            true => assert_eq!(got.unwrap().into_inner().leaf_index, event.seq),
            false => assert_eq!(got.unwrap_err().code(), tonic::Code::NotFound),
        }
    }

    // The subject's access package through the query node: its
    // partition's checkpoint, every event of the subject with a receipt
    // made by the owner, and a report naming the read that named it.
    let p = partition_of(&subject, PARTITIONS);
    let named = auditd::proto::SearchRequest {
        subjects: vec![subject.clone()],
        ..Default::default()
    };
    query.search(named).await.unwrap();
    // Its trail event is in some partition: searchable there soon.
    let trail = auditd::proto::SearchRequest {
        types: vec![auditd::app::trail::TRAIL_TYPE.into()],
        query: format!("query.subjects:\"{subject}\""),
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while query
        .search(trail.clone())
        .await
        .unwrap()
        .get_ref()
        .total_hits
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the search's trail event is not searchable"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let request = auditd::proto::ExportSubjectRequest {
        subject: subject.clone(),
        format: auditd::proto::ExportFormat::Ndjson as i32,
    };
    let mut package = subjects_client(&q, &admin).await;
    let mut chunks = package.export_subject(request).await.unwrap().into_inner();
    let first = chunks.message().await.unwrap().unwrap();
    let checkpoint = first.checkpoint.expect("the partition's checkpoint").note;
    assert!(checkpoint.starts_with(&format!("{}\n", partition_origin(&name, p))));
    verify(&checkpoint, &key).unwrap();
    let (mut sent, mut report) = (Vec::new(), String::new());
    while let Some(chunk) = chunks.message().await.unwrap() {
        assert_eq!(chunk.proofs.len() as u64, chunk.events);
        sent.extend(chunk.proofs);
        report.push_str(&chunk.report_html);
    }
    let mut expected: Vec<&str> = stored
        .iter()
        .filter(|(_, e)| e.subject == subject)
        .map(|(_, e)| e.id.as_str())
        .collect();
    let mut got: Vec<&str> = sent.iter().map(|proof| proof.id.as_str()).collect();
    expected.sort_unstable();
    got.sort_unstable();
    assert_eq!(got, expected);
    for proof in &sent {
        let receipt = Receipt::parse(&proof.tlog_proof).unwrap();
        assert_eq!(receipt.checkpoint, checkpoint, "one checkpoint for all");
        let event = GetEventRequest {
            id: proof.id.clone(),
        };
        let event = query.get_event(event).await.unwrap().into_inner();
        verify_receipt(&receipt, &key, Some(&event)).unwrap();
    }
    let count = format!("{} event(s) whose subject is", expected.len());
    assert!(report.contains(&count), "{report}");
    assert!(
        report.contains("audit.search"),
        "the read is listed: {report}"
    );

    // The tlog-tiles paths of the subject's partition, through the query
    // node: a tlog client proves the first receipt's event from them
    // alone; the paths of one tree are refused.
    let http = reqwest::Client::new();
    let get = |path: String| {
        let (http, url) = (http.clone(), format!("http://{}{path}", q.http));
        let token = admin.trim().to_owned();
        async move {
            let response = http.get(url).bearer_auth(token).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.bytes().await.unwrap().to_vec())
        }
    };
    let (status, note) = get(format!("/tlog/partition/{p}/checkpoint")).await;
    assert_eq!(status, 200);
    let note = String::from_utf8(note).unwrap();
    let (origin, size, root) = parse_checkpoint(verify(&note, &key).unwrap()).unwrap();
    assert_eq!(origin, partition_origin(&name, p));
    let fetched = fetch_tiles(size, |path| get(format!("/tlog/partition/{p}/{path}"))).await;
    let nodes = tile_nodes(size, &fetched);
    let receipt = Receipt::parse(&sent[0].tlog_proof).unwrap();
    let path = inclusion_proof(&nodes, receipt.index, size).unwrap();
    verify_inclusion(&leaf_hash(&receipt.leaf), receipt.index, size, &path, &root).unwrap();
    for one_tree in ["/tlog/checkpoint", "/tlog/tile/0/000.p/1"] {
        let (status, _) = get(one_tree.into()).await;
        assert_eq!(status, 409, "{one_tree}");
    }

    // auditctl saves the combined checkpoint through the query node.
    let saved = dir.path().join("saved.checkpoint");
    let key_file = q.data_dir.join("integrity.pub");
    let verify_since = [
        "verify",
        "--since",
        saved.to_str().unwrap(),
        "--key",
        key_file.to_str().unwrap(),
    ];
    let out = run_ok(auditctl(&q, &verify_since)).await;
    assert!(out.contains("first use"), "{out}");

    // b stops: a rebuilds its partitions from the stream and signs them
    // with the same key; every tree extends what was signed before.
    b.stop().await.unwrap();
    let more = ingested(&mut writer, &generated(200, 62, 200), "more").await;
    let (_, later) = combined_covering(&mut proofs, &key, &needed(&more)).await;
    for p in 0..PARTITIONS {
        let ((old_size, old_root), (size, root)) = (heads[p as usize], later[p as usize]);
        assert!(size > old_size, "partition {p} grew");
        if old_size == 0 {
            continue;
        }
        let request = GetConsistencyProofRequest {
            first: old_size,
            second: size,
            partition: Some(p),
        };
        let proof = proofs.get_consistency_proof(request).await.unwrap();
        let hashes: Vec<Hash> = proof
            .into_inner()
            .hashes
            .iter()
            .map(|h| h.as_slice().try_into().unwrap())
            .collect();
        verify_consistency(old_size, size, &old_root, &root, &hashes)
            .unwrap_or_else(|e| panic!("partition {p}: {e:?}"));
    }
    let out = run_ok(auditctl(&q, &verify_since)).await;
    assert!(out.contains("consistent"), "{out}");

    // The full audit through the query node: every partition's tree at
    // its owner, each leaf recomputed from its stored event; then one
    // partition alone.
    // (An audit reads what is searchable: the trees may be ahead of it
    // for a moment.)
    let signed: u64 = later.iter().map(|(size, _)| size).sum();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (checked, total) = audited(&mut proofs, None).await.unwrap();
        assert_eq!(checked, total);
        if checked >= signed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{checked} checked, {signed} signed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (checked, _) = audited(&mut proofs, Some(1)).await.unwrap();
    assert!(checked >= later[1].0 && checked < signed, "{checked}");
    let out = run_ok(auditctl(&q, &["verify", "--full"])).await;
    assert!(out.contains("every leaf matches"), "{out}");
    for node in [q, a] {
        node.stop().await.unwrap();
    }
}
