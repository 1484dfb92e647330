//! The Merkle log end to end: receipts that verify offline, scope on
//! proofs, consistency between checkpoints, and the full audit naming the
//! right seq and kind for each tampering an attacker with disk access can
//! do to a stopped daemon's data directory (done here through Tantivy's
//! API and raw bytes, as such an attacker would).

mod common;

use std::collections::HashMap;
use std::path::Path;

use auditd::client::IntegrityClient;
use auditd::integrity::merkle::{verify_consistency, Hash};
use auditd::integrity::note;
use auditd::integrity::opening::SEEDED_V3_FORM;
use auditd::integrity::receipt::{verify_receipt, Receipt};
use auditd::partition::{parse_day, Partition};
use auditd::proto::{
    AuditEvent, AuditLogRequest, Checkpoint, GetCheckpointRequest, GetConsistencyProofRequest,
    GetInclusionProofRequest, InclusionProof, LeafProblem, TokenKind, WaitFor,
};
use auditd::schema::{id_key, restore_times, AuditSchema};
use common::*;
use tantivy::Term;
use tonic::Code;

async fn integrity(server: &TestServer, token: &str) -> IntegrityClient {
    integrity_client(&server.url(), token).await
}

fn verifier_key(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("integrity.pub"))
        .unwrap()
        .trim()
        .to_owned()
}

fn root_of(checkpoint: &Checkpoint) -> Hash {
    checkpoint.root_hash.clone().try_into().unwrap()
}

/// The consistency proof from `first` to `second` leaves.
async fn consistency(client: &mut IntegrityClient, first: u64, second: u64) -> Vec<Hash> {
    client
        .get_consistency_proof(GetConsistencyProofRequest {
            first,
            second,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .hashes
        .iter()
        .map(|h| h.clone().try_into().unwrap())
        .collect()
}

/// The inclusion proof of the event `id` in the latest checkpoint.
async fn proof_by_id(client: &mut IntegrityClient, id: &str) -> InclusionProof {
    client
        .get_inclusion_proof(GetInclusionProofRequest {
            id: id.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

fn kinds(problems: &[LeafProblem]) -> Vec<(u64, &str)> {
    problems.iter().map(|p| (p.seq, p.kind.as_str())).collect()
}

async fn ingest_many(client: &mut Client, count: u64, seed: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    for chunk in generated(count, seed, count).chunks(1000) {
        seqs.extend(
            ingest(client, chunk.to_vec(), WaitFor::Searchable)
                .await
                .seqs,
        );
    }
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_verifies_offline_and_still_after_ten_thousand_more_events() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let mut client = server.client().await;
    let mut proofs = integrity(&server, &server.admin_token()).await;
    let key = verifier_key(dir.path());

    let reply = ingest(&mut client, generated(50, 3, 50), WaitFor::Searchable).await;
    assert_eq!(reply.seqs.len(), 50);
    let (id, seq) = (reply.ids[7].clone(), reply.seqs[7]);
    let first = checkpoint_of_at_least(&mut proofs, seq + 1).await;
    let proof = proof_by_id(&mut proofs, &id).await;
    assert_eq!(proof.leaf_index, seq);
    let receipt = Receipt::parse(&proof.tlog_proof).unwrap();
    assert_eq!(receipt.leaf, proof.leaf);
    let event = client
        .get_event(auditd::proto::GetEventRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    let verified = verify_receipt(&receipt, &key, Some(&event)).unwrap();
    assert!(verified.event_matched);
    let mut changed = event.clone();
    changed.status += 1;
    assert!(verify_receipt(&receipt, &key, Some(&changed)).is_err());
    // By seq, the same leaf.
    let by_seq = proofs
        .get_inclusion_proof(GetInclusionProofRequest {
            seq: Some(seq),
            tree_size: proof.tree_size,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_seq.leaf, proof.leaf);
    assert_eq!(by_seq.hashes, proof.hashes);

    // 10,000 more events: the old receipt still holds, through a
    // consistency proof from its checkpoint to the newer one.
    ingest_many(&mut client, 10_000, 4).await;
    let newer = checkpoint_of_at_least(&mut proofs, proof.tree_size + 10_000).await;
    note::verify(&newer.note, &key).unwrap();
    let hashes = consistency(&mut proofs, proof.tree_size, newer.size).await;
    verify_consistency(
        proof.tree_size,
        newer.size,
        &verified.root,
        &root_of(&newer),
        &hashes,
    )
    .unwrap();
    assert_eq!(verified.root, root_of(&first));
    // The checkpoint of the receipt's size is still kept.
    let kept = proofs
        .get_checkpoint(GetCheckpointRequest {
            size: proof.tree_size,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.note, first.note);
    server.stop().await.unwrap();

    // After a restart the tree and the checkpoints are as they were.
    let server = TestServer::start(test_config(dir.path())).await;
    let mut proofs = integrity(&server, &server.admin_token()).await;
    let again = proofs
        .get_inclusion_proof(GetInclusionProofRequest {
            id,
            tree_size: proof.tree_size,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.hashes, proof.hashes);
    assert!(full_audit(&mut proofs).await.is_empty());
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_follow_read_scope_and_bad_requests_name_their_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let mut client = server.client().await;
    let events = generated(40, 5, 40);
    let subject = events[0].subject.clone();
    let other = events
        .iter()
        .find(|e| e.subject != subject)
        .unwrap()
        .id
        .clone();
    let own = events[0].id.clone();
    let reply = ingest(&mut client, events, WaitFor::Searchable).await;
    let mut admin = integrity(&server, &server.admin_token()).await;
    checkpoint_of_at_least(&mut admin, reply.seqs.iter().max().unwrap() + 1).await;

    let (_, personal) = create(&server, TokenKind::Personal, &subject, "").await;
    let mut mine = integrity(&server, &personal).await;
    let ask = |id: &str| GetInclusionProofRequest {
        id: id.to_owned(),
        ..Default::default()
    };
    mine.get_inclusion_proof(ask(&own)).await.unwrap();
    let outside = mine.get_inclusion_proof(ask(&other)).await.unwrap_err();
    assert_eq!(outside.code(), Code::NotFound, "{outside}");
    // Checkpoints and consistency proofs are open to every read token.
    mine.get_checkpoint(GetCheckpointRequest {
        size: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    mine.get_consistency_proof(GetConsistencyProofRequest {
        first: 1,
        second: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    let audit = mine
        .audit_log(AuditLogRequest::default())
        .await
        .unwrap_err();
    assert_eq!(audit.code(), Code::PermissionDenied);

    let (_, writer) = create(&server, TokenKind::Ingest, "", "").await;
    let mut ingest_only = integrity(&server, &writer).await;
    let refused = ingest_only
        .get_checkpoint(GetCheckpointRequest {
            size: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);

    let none = admin
        .get_inclusion_proof(GetInclusionProofRequest::default())
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::InvalidArgument);
    assert!(none.message().contains("id"), "{none}");
    let bad = admin
        .get_consistency_proof(GetConsistencyProofRequest {
            first: 0,
            second: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("first"), "{bad}");
    let absent = admin
        .get_checkpoint(GetCheckpointRequest {
            size: 1 << 40,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(absent.code(), Code::NotFound);
    // Every call is on the trail.
    let trail = trail_events(&mut client, "audit.integrity.inclusion_proof", 3).await;
    assert!(trail.iter().any(|e| e.status == 404));
    server.stop().await.unwrap();
}

/// The partition in `day`, opened as the daemon opens it.
fn open_day(day: &Path) -> Partition {
    let name = day.file_name().unwrap().to_str().unwrap();
    auditd::partition::open_existing(day, parse_day(name).unwrap(), &AuditSchema::new()).unwrap()
}

/// One day partition's documents, by seq: event, and its salt as stored
/// (the opening bytes of `integrity::opening`).
fn stored_by_seq(day: &Path) -> HashMap<u64, (AuditEvent, Vec<u8>)> {
    let schema = AuditSchema::new();
    let view = open_day(day).view().unwrap();
    let mut out = HashMap::new();
    let segments = view.searcher.segment_readers().iter().zip(&view.columns);
    for (ord, (segment, columns)) in segments.enumerate() {
        for doc in segment.doc_ids_alive() {
            let stored = view
                .stored(tantivy::DocAddress::new(ord as u32, doc), &schema)
                .unwrap();
            let mut event = <AuditEvent as prost::Message>::decode(stored.body.as_slice()).unwrap();
            restore_times(
                &mut event,
                columns.time().first(doc).unwrap(),
                columns.received.first(doc).unwrap(),
            );
            out.insert(
                columns.seq.first(doc).unwrap(),
                (event, stored.salt.unwrap()),
            );
        }
    }
    out
}

/// What an attacker does to the partition of `day`: delete the events of
/// `remove` (by seq) and add `add` (event, seq, salt), then commit with
/// the partition's own payload, so nothing else looks touched.
fn rewrite(day: &Path, remove: &[&AuditEvent], add: Vec<(AuditEvent, u64, Vec<u8>)>) {
    let index = open_day(day).index;
    let schema = AuditSchema::new();
    let payload = index.load_metas().unwrap().payload;
    let mut writer: tantivy::IndexWriter = index.writer_with_num_threads(1, 20_000_000).unwrap();
    for event in remove {
        writer.delete_term(Term::from_field_text(schema.id, &id_key(&event.id)));
    }
    let mut body = Vec::new();
    for (mut event, seq, salt) in add {
        writer
            .add_document(schema.document(&mut event, seq, "", Some(&salt), &mut body))
            .unwrap();
    }
    let mut commit = writer.prepare_commit().unwrap();
    if let Some(payload) = payload {
        commit.set_payload(&payload);
    }
    commit.commit().unwrap();
    writer.wait_merging_threads().unwrap();
}

/// The one partition of the generated events' day.
fn event_day(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("index").join("2023-11-14")
}

/// What an attacker with disk access does to a stopped daemon's events
/// (`seqs`, the generated ones): changes one, deletes one, forges a second
/// event beside one, and swaps two. Returns what the full audit must
/// report for them, and the changed seq.
fn tamper_with_events(data_dir: &Path, seqs: &[u64]) -> (Vec<(u64, &'static str)>, u64) {
    let day = event_day(data_dir);
    assert!(day.exists(), "the generated events' partition");
    let stored = stored_by_seq(&day);
    // A seeded batch's events keep no salt of their own in the index: the
    // tree keeps their batch's seed (`integrity::seeds`).
    assert_eq!(stored[&seqs[40]].1, [SEEDED_V3_FORM]);
    let (changed, deleted, forged_at, swap_a, swap_b) =
        (seqs[10], seqs[20], seqs[30], seqs[40], seqs[41]);
    let mut modified = stored[&changed].0.clone();
    modified.status = 599;
    let mut forged = stored[&forged_at].0.clone();
    forged.id = "forged-0001".into();
    forged.action = "events.delete".into();
    rewrite(
        &day,
        &[
            &stored[&changed].0,
            &stored[&deleted].0,
            &stored[&swap_a].0,
            &stored[&swap_b].0,
        ],
        vec![
            (modified, changed, stored[&changed].1.clone()),
            (forged, forged_at, stored[&forged_at].1.clone()),
            (stored[&swap_a].0.clone(), swap_b, stored[&swap_a].1.clone()),
            (stored[&swap_b].0.clone(), swap_a, stored[&swap_b].1.clone()),
        ],
    );
    let want = vec![
        (changed, "modified"),
        (deleted, "missing"),
        (forged_at, "unexpected"),
        (swap_a, "reordered"),
        (swap_b, "reordered"),
    ];
    (want, changed)
}

/// Flips a bit of byte `at` of the file at `path`, as an attacker would.
fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

/// Starts the daemon on the tampered data directory and checks that the
/// full audit reports `want` and, at `tile.0`, a changed hash tile whose
/// path `tile.1` the detail names.
async fn audit_finds(
    config: auditd::config::Config,
    mut want: Vec<(u64, &'static str)>,
    tile: (u64, &str),
) -> (TestServer, IntegrityClient) {
    let server = TestServer::start(config).await;
    let mut admin = integrity(&server, &server.admin_token()).await;
    let problems = full_audit(&mut admin).await;
    want.push((tile.0, "modified"));
    want.sort();
    assert_eq!(kinds(&problems), want, "{problems:#?}");
    let tile_problem = problems.iter().find(|p| p.seq == tile.0).unwrap();
    assert!(tile_problem.detail.contains(tile.1), "{tile_problem:?}");
    (server, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_audit_names_the_seq_and_kind_of_each_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let server = TestServer::start(config.clone()).await;
    let mut client = server.client().await;
    let seqs = ingest_many(&mut client, 600, 9).await;
    let mut admin = integrity(&server, &server.admin_token()).await;
    checkpoint_of_at_least(&mut admin, seqs.iter().max().unwrap() + 1).await;
    // Untouched, nothing to report.
    assert_eq!(kinds(&full_audit(&mut admin).await), vec![]);
    server.stop().await.unwrap();

    let (want, changed) = tamper_with_events(dir.path(), &seqs);
    // A flipped byte in the leaf hash of seq 100 in the first tile.
    flip(&dir.path().join("tlog/leaves/0"), 100 * 32 + 3);
    let (server, mut admin) = audit_finds(config, want, (100, "tile/0/000")).await;
    // A receipt for a changed event is refused, not made.
    let refused = admin
        .get_inclusion_proof(GetInclusionProofRequest {
            seq: Some(changed),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::DataLoss, "{refused}");
    server.stop().await.unwrap();
}

/// Waits until the first block's level-0 tiles gave way to the index
/// (`compacted.json` is written once a block's tiles are removed).
async fn first_block_compacted(data_dir: &Path) {
    let done = data_dir.join("tlog/compacted.json");
    let started = std::time::Instant::now();
    while !done.exists() {
        assert!(
            started.elapsed() < DEADLINE,
            "the first block was not compacted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_tiles_still_give_receipts_and_the_audit_still_names_each_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let server = TestServer::start(config.clone()).await;
    let mut client = server.client().await;
    let key = verifier_key(dir.path());
    let block = auditd::integrity::compact::BLOCK_LEAVES;
    let seqs = ingest_many(&mut client, block + 500, 12).await;
    let mut admin = integrity(&server, &server.admin_token()).await;
    checkpoint_of_at_least(&mut admin, seqs.iter().max().unwrap() + 1).await;
    first_block_compacted(dir.path()).await;
    // 12 bits a leaf (docs/integrity.md §4).
    let prints = std::fs::metadata(dir.path().join("tlog/fingerprints/0")).unwrap();
    assert_eq!(prints.len(), 4 + block * 3 / 2);
    let tlog = dir.path().join("tlog/tile/0");
    let level0 = walk_files(&tlog);
    assert!(level0 < 10, "{level0} level-0 tile files are left");

    // A receipt read through the index verifies offline, and the audit
    // finds nothing.
    let proof = admin
        .get_inclusion_proof(GetInclusionProofRequest {
            seq: Some(seqs[77]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let receipt = Receipt::parse(&proof.tlog_proof).unwrap();
    verify_receipt(&receipt, &key, None).unwrap();
    assert_eq!(kinds(&full_audit(&mut admin).await), vec![]);
    server.stop().await.unwrap();

    let (want, changed) = tamper_with_events(dir.path(), &seqs);
    // A flipped byte in the node above the fourth level-0 tile.
    flip(&dir.path().join("tlog/tile/1/000"), 3 * 32 + 5);
    let (server, mut admin) = audit_finds(config, want, (3 * 256, "tile/1/000")).await;
    // The changed event's tile no longer reads back: its receipt, and
    // its neighbour's, are refused as evidence of a change.
    for seq in [changed, changed + 1] {
        let refused = admin
            .get_inclusion_proof(GetInclusionProofRequest {
                seq: Some(seq),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::DataLoss, "{refused}");
    }
    server.stop().await.unwrap();
}

fn walk_files(path: &Path) -> usize {
    std::fs::read_dir(path)
        .unwrap()
        .flatten()
        .map(|e| match e.file_type().unwrap().is_dir() {
            true => walk_files(&e.path()),
            false => 1,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_data_directory_fails_the_consistency_check() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let server = TestServer::start(config.clone()).await;
    let mut client = server.client().await;
    let seqs = ingest_many(&mut client, 200, 11).await;
    let mut admin = integrity(&server, &server.admin_token()).await;
    checkpoint_of_at_least(&mut admin, seqs.iter().max().unwrap() + 1).await;
    server.stop().await.unwrap();
    let backup = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), backup.path());

    // The honest history goes on; a verifier saves its checkpoint.
    let server = TestServer::start(config.clone()).await;
    let mut client = server.client().await;
    let more = ingest_many(&mut client, 200, 12).await;
    let mut admin = integrity(&server, &server.admin_token()).await;
    let saved = checkpoint_of_at_least(&mut admin, more.iter().max().unwrap() + 1).await;
    server.stop().await.unwrap();

    // The attacker puts the old copy back and writes new events over it.
    std::fs::remove_dir_all(dir.path()).unwrap();
    copy_dir(backup.path(), dir.path());
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    let forged = ingest_many(&mut client, 400, 13).await;
    let mut admin = integrity(&server, &server.admin_token()).await;
    let latest = checkpoint_of_at_least(&mut admin, forged.iter().max().unwrap() + 1).await;
    assert!(latest.size > saved.size);
    // Signed by the same key: only consistency tells.
    let key = verifier_key(dir.path());
    note::verify(&latest.note, &key).unwrap();
    let hashes = consistency(&mut admin, saved.size, latest.size).await;
    assert!(verify_consistency(
        saved.size,
        latest.size,
        &root_of(&saved),
        &root_of(&latest),
        &hashes,
    )
    .is_err());
    server.stop().await.unwrap();
}

/// What fails, with its output.
async fn run_failing(command: std::process::Command) -> String {
    let mut command = command;
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(!out.status.success(), "should have failed");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The README's tour: receipt, verify-receipt, verify --since, verify --full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auditctl_tour_receipt_verify_receipt_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let server = TestServer::start(config.clone()).await;
    let mut client = server.client().await;
    let reply = ingest(&mut client, generated(30, 21, 30), WaitFor::Searchable).await;
    let id = reply.ids[3].clone();
    let work = tempfile::tempdir().unwrap();
    let (proof, event, saved) = (
        work.path().join("e.proof"),
        work.path().join("e.json"),
        work.path().join("saved.checkpoint"),
    );
    // Waits by itself for the event's checkpoint.
    let receipt = run_ok(auditctl(&server, &["receipt", &id])).await;
    assert!(receipt.starts_with("c2sp.org/tlog-proof@v1\n"), "{receipt}");
    std::fs::write(&proof, &receipt).unwrap();
    let json = run_ok(auditctl(&server, &["get", &id])).await;
    std::fs::write(&event, &json).unwrap();
    let key = dir.path().join("integrity.pub");
    let (proof_arg, key_arg, event_arg) = (
        proof.to_str().unwrap(),
        key.to_str().unwrap(),
        event.to_str().unwrap(),
    );
    let verify_receipt = [
        "verify-receipt",
        proof_arg,
        "--key",
        key_arg,
        "--event",
        event_arg,
    ];
    let ok = run_ok(auditctl(&server, &verify_receipt)).await;
    assert!(ok.contains("and it is this event"), "{ok}");
    // The same receipt against another event fails.
    let other = run_ok(auditctl(&server, &["get", &reply.ids[4]])).await;
    std::fs::write(&event, &other).unwrap();
    let refused = run_failing(auditctl(&server, &verify_receipt)).await;
    assert!(refused.contains("does not match"), "{refused}");

    let saved_arg = saved.to_str().unwrap();
    let first = run_ok(auditctl(&server, &["verify", "--since", saved_arg])).await;
    assert!(first.contains("first use"), "{first}");
    ingest(&mut client, generated(30, 22, 30), WaitFor::Searchable).await;
    let mut proofs = integrity(&server, &server.admin_token()).await;
    let before = proofs
        .get_checkpoint(GetCheckpointRequest {
            size: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .size;
    checkpoint_of_at_least(&mut proofs, before + 1).await;
    let again = run_ok(auditctl(
        &server,
        &["verify", "--since", saved_arg, "--full"],
    ))
    .await;
    assert!(again.contains("consistent"), "{again}");
    assert!(again.contains("every leaf matches"), "{again}");
    server.stop().await.unwrap();

    // A changed event: verify --full names it and fails.
    let day = event_day(dir.path());
    let stored = stored_by_seq(&day);
    let seq = reply.seqs[5];
    let mut changed = stored[&seq].0.clone();
    changed.subject = "mallory".into();
    rewrite(
        &day,
        &[&stored[&seq].0],
        vec![(changed, seq, stored[&seq].1.clone())],
    );
    let server = TestServer::start(config).await;
    let failed = run_failing(auditctl(&server, &["verify", "--full"])).await;
    assert!(failed.contains(&format!("seq {seq}: modified")), "{failed}");
    server.stop().await.unwrap();
}

/// A tlog-tiles client (this crate's `TileNodes`, fed over HTTP) proves an
/// event's inclusion from `/tlog/checkpoint` and `/tlog/tile/…` alone; the
/// receipt route serves the same proof as text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tlog_tiles_paths_serve_what_a_client_needs_for_proofs() {
    use auditd::integrity::merkle::{inclusion_proof, leaf_hash, verify_inclusion};

    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let mut client = server.client().await;
    let seqs = ingest_many(&mut client, 700, 31).await;
    let mut admin = integrity(&server, &server.admin_token()).await;
    checkpoint_of_at_least(&mut admin, seqs.iter().max().unwrap() + 1).await;
    let (_, personal) = create(&server, TokenKind::Personal, "nobody-here", "").await;
    let http = reqwest::Client::new();
    let get = |path: String| {
        let (http, url, token) = (
            http.clone(),
            format!("http://{}{path}", server.http),
            personal.clone(),
        );
        async move {
            let response = http.get(url).bearer_auth(token).send().await.unwrap();
            (
                response.status().as_u16(),
                response.bytes().await.unwrap().to_vec(),
            )
        }
    };
    let (status, key) = get("/tlog/key".into()).await;
    assert_eq!(status, 200);
    assert_eq!(
        String::from_utf8(key).unwrap().trim(),
        verifier_key(dir.path())
    );
    let (status, note) = get("/tlog/checkpoint".into()).await;
    assert_eq!(status, 200);
    let note = String::from_utf8(note).unwrap();
    let body = note::verify(&note, &verifier_key(dir.path())).unwrap();
    let (_, size, root) = note::parse_checkpoint(body).unwrap();
    // Every tile of that size, fetched over HTTP.
    let fetched = fetch_tiles(size, |path| get(format!("/tlog/{path}"))).await;
    let nodes = tile_nodes(size, &fetched);
    let seq = seqs[300];
    let proof = inclusion_proof(&nodes, seq, size).unwrap();
    let receipt = admin
        .get_inclusion_proof(GetInclusionProofRequest {
            seq: Some(seq),
            tree_size: size,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    verify_inclusion(&leaf_hash(&receipt.leaf), seq, size, &proof, &root).unwrap();
    // A tile past the tree, and a path that is no tile.
    let (status, _) = get("/tlog/tile/0/x999/999".into()).await;
    assert_eq!(status, 404);
    let (status, _) = get("/tlog/tile/0/1234".into()).await;
    assert_eq!(status, 400);
    // No token, no tiles.
    let anonymous = http
        .get(format!("http://{}/tlog/checkpoint", server.http))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    // The receipt route, inside scope: the admin gets it, a token of
    // another subject gets 404.
    let id = client
        .search(auditd::proto::SearchRequest::default())
        .await
        .unwrap()
        .into_inner()
        .events[0]
        .id
        .clone();
    let admin_get = http
        .get(format!("http://{}/v1/events/{id}/receipt", server.http))
        .bearer_auth(server.admin_token().trim())
        .send()
        .await
        .unwrap();
    assert_eq!(admin_get.status().as_u16(), 200);
    let text = admin_get.text().await.unwrap();
    Receipt::parse(&text).unwrap();
    let (status, _) = get(format!("/v1/events/{id}/receipt")).await;
    assert_eq!(status, 404);
    server.stop().await.unwrap();
}

/// The daemon's own background audit finds a changed event by itself:
/// health turns degraded, the violation is counted and written down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_self_audit_finds_a_changed_event_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.integrity.self_audit_events_per_second = 1_000_000;
    let server = TestServer::start(config.clone()).await;
    let mut client = server.client().await;
    let seqs = ingest_many(&mut client, 100, 41).await;
    let mut admin = integrity(&server, &server.admin_token()).await;
    checkpoint_of_at_least(&mut admin, seqs.iter().max().unwrap() + 1).await;
    server.stop().await.unwrap();

    let day = event_day(dir.path());
    let stored = stored_by_seq(&day);
    let seq = seqs[17];
    let mut changed = stored[&seq].0.clone();
    changed.resource = "somewhere-else".into();
    rewrite(
        &day,
        &[&stored[&seq].0],
        vec![(changed, seq, stored[&seq].1.clone())],
    );

    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    let violations = trail_events(&mut client, "integrity.violation", 1).await;
    let violation = &violations[0];
    assert_eq!(violation.query["seq"], seq.to_string());
    assert_eq!(violation.query["kind"], "modified");
    assert_eq!(violation.status, 500);
    let (status, health) = http_get(server.http, "/healthz").await;
    assert_eq!(status, 503, "{health}");
    assert!(health.contains("integrity"), "{health}");
    let (_, metrics) = http_get(server.http, "/metrics").await;
    assert!(
        metrics.contains("auditd_integrity_violations_total{kind=\"modified\"}"),
        "{metrics}"
    );
    server.stop().await.unwrap();
}

/// Every new checkpoint goes outside the daemon: appended to
/// `integrity.publish_file` and POSTed to `integrity.publish_url` (here a
/// bare HTTP/1.1 receiver on loopback).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_are_published_to_a_file_and_a_url() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver = listener.local_addr().unwrap();
    let (notes_tx, mut notes) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let notes_tx = notes_tx.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                // Headers, then exactly Content-Length bytes of body.
                loop {
                    let n = socket.read(&mut buffer).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buffer[..n]);
                    let text = String::from_utf8_lossy(&request).into_owned();
                    let Some((head, body)) = text.split_once("\r\n\r\n") else {
                        continue;
                    };
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if body.len() >= length {
                        assert!(head.starts_with("POST /checkpoints HTTP/1.1"), "{head}");
                        let _ = notes_tx.send(body[..length].to_owned());
                        socket
                            .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                            .await
                            .unwrap();
                        return;
                    }
                }
            });
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let published = tempfile::tempdir().unwrap();
    let file = published.path().join("checkpoints.ndjson");
    let mut config = test_config(dir.path());
    config.integrity.publish_file = Some(file.clone());
    config.integrity.publish_url = Some(format!("http://{receiver}/checkpoints"));
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    let reply = ingest(&mut client, generated(20, 51, 20), WaitFor::Durable).await;
    let want = reply.seqs.iter().max().unwrap() + 1;
    let key = verifier_key(dir.path());
    let posted = tokio::time::timeout(DEADLINE, async {
        loop {
            let note = notes.recv().await.expect("the receiver runs");
            let body = note::verify(&note, &key).expect("a signed note");
            if note::parse_checkpoint(body).unwrap().1 >= want {
                return note;
            }
        }
    })
    .await
    .expect("a checkpoint of every event was POSTed");
    let lines = std::fs::read_to_string(&file).unwrap();
    let last: serde_json::Value = serde_json::from_str(lines.lines().last().unwrap()).unwrap();
    assert!(last["size"].as_u64().unwrap() >= want);
    note::verify(last["note"].as_str().unwrap(), &key).unwrap();
    assert!(lines
        .lines()
        .any(|l| l.contains(&posted.replace('\n', "\\n"))));
    server.stop().await.unwrap();
}

/// A directory of data format 3, written by the auditd before version 2
/// leaves (`scripts/make_old_format_fixture.sh 3`), opens as it is: its
/// events keep their version 1 leaves, those replayed from its log
/// included, new events get version 3 ones, receipts of both verify
/// offline, and the full audit finds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_3_directory_opens_as_it_is_and_its_version_1_leaves_still_verify() {
    an_old_directory_opens_as_it_is("format-3", 1).await;
}

/// The same for data format 7 (`scripts/make_old_format_fixture.sh 7`),
/// the last before version 3 leaves: its version 2 leaves, whose salts
/// come from a seed a batch (the index's one-byte form `0x04`), still
/// rebuild, those replayed from its log included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_7_directory_opens_as_it_is_and_its_version_2_leaves_still_verify() {
    an_old_directory_opens_as_it_is("format-7", 2).await;
}

async fn an_old_directory_opens_as_it_is(fixture: &str, old_version: u8) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(fixture);
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture.join("data"), dir.path());
    let server = TestServer::start(test_config(dir.path())).await;
    assert_eq!(
        std::fs::read_to_string(dir.path().join("FORMAT")).unwrap(),
        format!("{}\n", auditd::datadir::FORMAT)
    );
    let mut client = server.client().await;
    let mut proofs = integrity(&server, &server.admin_token()).await;
    let key = verifier_key(dir.path());

    let reply = ingest(&mut client, generated(20, 9, 20), WaitFor::Searchable).await;
    checkpoint_of_at_least(&mut proofs, reply.seqs[19] + 1).await;
    let first_id = |name: &str| -> String {
        let text = std::fs::read_to_string(fixture.join(name)).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        line["id"].as_str().unwrap().to_owned()
    };
    for (id, version) in [
        (first_id("indexed.ndjson"), old_version),
        (first_id("log-only.ndjson"), old_version),
        (reply.ids[3].clone(), 3),
    ] {
        let proof = proof_by_id(&mut proofs, &id).await;
        assert_eq!(proof.leaf[0], version, "the leaf version of {id}");
        let receipt = Receipt::parse(&proof.tlog_proof).unwrap();
        let event = client
            .get_event(auditd::proto::GetEventRequest { id: id.clone() })
            .await
            .unwrap()
            .into_inner();
        let verified = verify_receipt(&receipt, &key, Some(&event)).unwrap();
        assert!(verified.event_matched, "{id}");
    }
    assert_eq!(kinds(&full_audit(&mut proofs).await), vec![]);
    server.stop().await.unwrap();
}
