//! The data subject's rights, end to end. Access (GDPR Art. 15): the
//! subject export holds exactly the subject's events (a brute-force filter
//! of what was ingested), each with a receipt that verifies offline, and a
//! report naming who read the subject's data.

mod common;

use std::collections::BTreeSet;

use auditd::integrity::receipt::{verify_receipt, Receipt};
use auditd::integrity::seeds::SaltSeeds;
use auditd::json::JsonEvent;
use auditd::proto::{
    AuditEvent, ExportFormat, ExportSubjectRequest, SearchRequest, TokenKind, WaitFor,
};
use common::*;

/// An investigator searches for `subject`: the read trail now names it.
async fn search_for(client: &mut Client, subject: &str) {
    let request = SearchRequest {
        subjects: vec![subject.into()],
        limit: 10,
        ..Default::default()
    };
    search_all(client, request).await;
    trail_events(client, "audit.search", 1).await;
}

#[tokio::test]
async fn a_subject_export_is_exactly_the_subjects_events_each_with_a_receipt_that_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let mut client = server.client().await;
    let events = generated(600, 11, 200);
    let stored = ingest(&mut client, events.clone(), WaitFor::Searchable).await;
    // The subject with the most events, and the brute-force answer.
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for e in &events {
        *counts.entry(e.subject.as_str()).or_default() += 1;
    }
    let subject = counts
        .iter()
        .max_by_key(|(_, n)| **n)
        .unwrap()
        .0
        .to_string();
    let expected: BTreeSet<String> = events
        .iter()
        .zip(&stored.ids)
        .filter(|(e, _)| e.subject == subject)
        .map(|(_, id)| id.clone())
        .collect();
    assert!(expected.len() > 10);
    // An investigator reads the subject's data: the report must say so.
    search_for(&mut client, &subject).await;

    // Through auditctl, every receipt checked offline as it comes.
    let out = dir.path().join("package");
    let key = dir.path().join("integrity.pub");
    let printed = run_ok(auditctl(
        &server,
        &[
            "subject",
            "export",
            "--subject",
            &subject,
            "--out",
            out.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    ))
    .await;
    assert!(
        printed.contains(&format!("{} receipt(s) verified", expected.len())),
        "{printed}"
    );
    let lines = std::fs::read_to_string(out.join("events.ndjson")).unwrap();
    let exported: Vec<_> = lines
        .lines()
        .map(|l| JsonEvent::parse(l).unwrap().into_stored().unwrap())
        .collect();
    let ids: BTreeSet<String> = exported.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids, expected);
    assert_eq!(exported.len(), expected.len());
    let times: Vec<_> = exported
        .iter()
        .map(|e| (e.time.unwrap().seconds, e.seq))
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "oldest first");

    // Each receipt, read back from the package, verifies on its own with
    // the key and the event, and fails for a changed event.
    let key_text = std::fs::read_to_string(&key).unwrap();
    let proofs = std::fs::read_to_string(out.join("proofs.ndjson")).unwrap();
    let checkpoint = std::fs::read_to_string(out.join("checkpoint.txt")).unwrap();
    for (line, event) in proofs.lines().zip(&exported) {
        let proof: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(proof["id"], event.id.as_str());
        let receipt = Receipt::parse(proof["proof"].as_str().unwrap()).unwrap();
        assert_eq!(receipt.checkpoint, checkpoint, "one checkpoint for all");
        let verified = verify_receipt(&receipt, key_text.trim(), Some(event)).unwrap();
        assert!(verified.event_matched);
        let mut changed = event.clone();
        changed.action.push('x');
        assert!(verify_receipt(&receipt, key_text.trim(), Some(&changed)).is_err());
    }
    let report = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        report.contains(&format!("{} event(s) whose subject is", expected.len())),
        "{report}"
    );
    assert!(
        report.contains("audit.search"),
        "the reader is listed: {report}"
    );
    trail_events(&mut client, "audit.subject.export", 1).await;

    // The subject's own personal token may export; another's may not.
    let (_, own) = create(&server, TokenKind::Personal, &subject, "").await;
    let (_, other) = create(&server, TokenKind::Personal, "someone-else", "").await;
    let mut mine = subjects_client(&server, &own).await;
    let mut stream = mine
        .export_subject(ExportSubjectRequest {
            subject: subject.clone(),
            format: ExportFormat::Ocsf as i32,
        })
        .await
        .unwrap()
        .into_inner();
    let mut sent = 0;
    while let Some(chunk) = stream.message().await.unwrap() {
        assert_eq!(chunk.proofs.len() as u64, chunk.events);
        sent += chunk.events;
    }
    assert_eq!(sent, expected.len() as u64);
    let refused = subjects_client(&server, &other)
        .await
        .export_subject(ExportSubjectRequest {
            subject: subject.clone(),
            format: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let empty = subjects_client(&server, &server.admin_token())
        .await
        .export_subject(ExportSubjectRequest::default())
        .await
        .unwrap_err();
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);
    assert!(empty.message().contains("subject"), "{empty:?}");
    server.stop().await.unwrap();
}

/// An event of `subject` `days_ago` days back whose personal fields all
/// hold `marker`.
fn marked(subject: &str, marker: &str, days_ago: i64, type_: &str) -> AuditEvent {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    AuditEvent {
        action: "events.get".into(),
        r#type: type_.into(),
        subject: subject.into(),
        access_id: format!("access{marker}"),
        resource: format!("/records/{marker}"),
        error_message: format!("no such record {marker}"),
        forwarded_for: "203.0.113.77".into(),
        before: format!("{{\"note\":\"{marker}\"}}"),
        query: [("q".to_owned(), format!("query{marker}"))].into(),
        attributes: [("email".to_owned(), format!("{marker}@example.com"))].into(),
        source: Some(auditd::proto::Source {
            name: "http".into(),
            ip: "198.51.100.23".into(),
        }),
        time: Some(prost_types::Timestamp {
            seconds: now - days_ago * 86_400,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// Every file under `dir` that holds one of `markers` (as written, or
/// lower-cased as the index's words are), with the marker.
fn files_holding(dir: &std::path::Path, markers: &[String]) -> Vec<(std::path::PathBuf, String)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let bytes = std::fs::read(&path).unwrap_or_default();
        for marker in markers {
            for form in [marker.clone(), marker.to_lowercase()] {
                if bytes.windows(form.len()).any(|w| w == form.as_bytes()) {
                    found.push((path.clone(), form));
                }
            }
        }
    }
    found
}

async fn get(client: &mut Client, id: &str) -> AuditEvent {
    client
        .get_event(auditd::proto::GetEventRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn erasure_leaves_no_marker_under_the_data_directory_and_every_proof_still_holds() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.erasure.keep_type_prefixes = vec!["hipaa/".into()];
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    let subject = "QxSubjectMarker7Zv";
    let markers: Vec<String> = (0..5).map(|i| format!("Qx{i}Mk9Vw")).collect();
    let mut events: Vec<AuditEvent> = markers
        .iter()
        .enumerate()
        .map(|(i, m)| marked(subject, m, 1 + i as i64 % 2, "audit-log/pryv-api"))
        .collect();
    // A record the law says to keep, and someone else's events.
    events.push(marked(subject, "HipaaKeepMk", 1, "hipaa/record"));
    events.extend(generated(40, 5, 20));
    let stored = ingest(&mut client, events, WaitFor::Searchable).await;
    // An investigator searched for the subject: the trail names it.
    search_for(&mut client, subject).await;
    let mut all_markers = markers.clone();
    all_markers.push(subject.into());
    assert!(
        !files_holding(dir.path(), &all_markers).is_empty(),
        "the markers are on disk before"
    );

    let printed = run_ok(auditctl(
        &server,
        &[
            "subject",
            "erase",
            "--subject",
            subject,
            "--mode",
            "erase",
            "--reason",
            "Art. 17 request 12",
        ],
    ))
    .await;
    assert!(printed.contains("5 event(s) erased"), "{printed}");
    assert!(
        printed.contains("kept: 1 event(s) of type hipaa/*"),
        "{printed}"
    );

    // Nothing of the erased values is left in any file: the index, the
    // log, anything. (The kept HIPAA event still names the subject, so the
    // subject itself is checked through search below.)
    let left = files_holding(dir.path(), &markers);
    assert!(left.is_empty(), "erased values left on disk: {left:?}");
    // Nor in memory: a search of everything (which reads the last
    // commits' events from memory, `index.recent_events_bytes`) shows
    // none of them.
    let (everything, _) = search_all(&mut client, SearchRequest::default()).await;
    assert!(
        everything
            .iter()
            .filter(|e| stored.ids[..5].contains(&e.id))
            .count()
            == 5
    );
    for event in everything
        .iter()
        .filter(|e| stored.ids[..5].contains(&e.id))
    {
        let shown = format!("{event:?}");
        assert!(
            markers.iter().all(|m| !shown.contains(m.as_str())) && !shown.contains(subject),
            "an erased value is still served: {shown}"
        );
    }

    // The erased events keep their core, lose their personal fields, and
    // each still proves its place; the kept one is whole.
    let mut proofs = integrity_client(&server.url(), &server.admin_token()).await;
    let all = stored.seqs.iter().max().unwrap() + 1;
    checkpoint_of_at_least(&mut proofs, all).await;
    let key = std::fs::read_to_string(dir.path().join("integrity.pub")).unwrap();
    for id in &stored.ids[..5] {
        let event = get(&mut client, id).await;
        assert!(
            event.subject.is_empty() && event.access_id.is_empty(),
            "{event:?}"
        );
        assert!(event.query.is_empty() && event.attributes.is_empty() && event.before.is_empty());
        assert!(event.source.as_ref().unwrap().ip.is_empty());
        assert_eq!(event.action, "events.get");
        let proof = proofs
            .get_inclusion_proof(auditd::proto::GetInclusionProofRequest {
                id: id.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let receipt = Receipt::parse(&proof.tlog_proof).unwrap();
        assert!(
            verify_receipt(&receipt, key.trim(), Some(&event))
                .unwrap()
                .event_matched
        );
        let mut changed = event.clone();
        changed.status += 1;
        assert!(verify_receipt(&receipt, key.trim(), Some(&changed)).is_err());
    }
    let kept = get(&mut client, &stored.ids[5]).await;
    assert_eq!(kept.subject, subject);
    // Search no longer finds the subject but in the kept event.
    let (found, _) = search_all(
        &mut client,
        SearchRequest {
            subjects: vec![subject.into()],
            limit: 10,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(found.len(), 1);

    // The full audit: the erased events are `erased`, naming the
    // request, and nothing else is reported.
    let problems = full_audit(&mut proofs).await;
    assert!(problems.iter().all(|p| p.kind == "erased"), "{problems:?}");
    let erased: u64 = problems
        .iter()
        .map(|p| p.detail.split(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(
        erased >= 6,
        "5 events and the search's trail event: {problems:?}"
    );
    let trail = trail_events(&mut client, "audit.subject.erase", 1).await;
    assert_eq!(trail[0].query["erased"], "5");
    assert!(!trail[0].query.values().any(|v| v.contains(subject)));
    server.stop().await.unwrap();

    // The batch's salts came from one seed the tree keeps; erasure cut it,
    // so no kept byte makes an erased event's salt again, and the others'
    // still come.
    let salts = seeded_salts(dir.path(), &stored.seqs);
    assert_eq!(salts[..5], [false; 5]);
    assert!(salts[5..].iter().all(|s| *s), "{salts:?}");
}

/// Whether the tree's seeds (`integrity::seeds`) of a stopped daemon's
/// data directory still give each of `seqs` its salt.
fn seeded_salts(data_dir: &std::path::Path, seqs: &[u64]) -> Vec<bool> {
    let seeds = SaltSeeds::open(&data_dir.join("tlog"), u64::MAX).unwrap();
    seqs.iter().map(|seq| seeds.salt(*seq).is_some()).collect()
}

#[tokio::test]
async fn pseudonymising_keeps_the_counts_and_links_by_pseudonym() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let mut client = server.client().await;
    let mut events = Vec::new();
    for (access, n) in [("acc-1", 3), ("acc-2", 2)] {
        for _ in 0..n {
            let mut e = marked("emma", "PsMk", 1, "audit-log/pryv-api");
            e.access_id = access.into();
            events.push(e);
        }
    }
    // Someone else, from another address: pseudonyms are per value, so a
    // shared address would split.
    let mut other = marked("noah", "Other", 1, "audit-log/pryv-api");
    other.source.as_mut().unwrap().ip = "192.0.2.1".into();
    events.push(other);
    ingest(&mut client, events, WaitFor::Searchable).await;
    let counts = |field: &str| auditd::proto::AggregateRequest {
        filter: Some(auditd::proto::EventFilter::default()),
        aggregations: vec![auditd::proto::Aggregation {
            name: "n".into(),
            kind: Some(auditd::proto::aggregation::Kind::Terms(
                auditd::proto::TermsAggregation {
                    field: field.into(),
                    size: 10,
                },
            )),
            sub_aggregations: Vec::new(),
        }],
    };
    let buckets = |reply: auditd::proto::AggregateResponse| -> Vec<u64> {
        let mut counts: Vec<u64> = reply.results["n"].buckets.iter().map(|b| b.count).collect();
        counts.sort_unstable();
        counts
    };
    let before_access = buckets(
        client
            .aggregate(counts("access_id"))
            .await
            .unwrap()
            .into_inner(),
    );
    let before_subject = buckets(
        client
            .aggregate(counts("subject"))
            .await
            .unwrap()
            .into_inner(),
    );
    let before_ip = buckets(client.aggregate(counts("ip")).await.unwrap().into_inner());
    let done = subjects_client(&server, &server.admin_token())
        .await
        .erase_subject(auditd::proto::EraseSubjectRequest {
            subject: "emma".into(),
            mode: auditd::proto::ErasureMode::Pseudonymise as i32,
            reason: "request 13".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.erased, 5);
    let after = client
        .aggregate(counts("subject"))
        .await
        .unwrap()
        .into_inner();
    assert!(after.results["n"].buckets.iter().all(|b| b.key != "emma"));
    assert!(after.results["n"]
        .buckets
        .iter()
        .any(|b| b.key.starts_with("ps-") && b.count == 5));
    assert_eq!(buckets(after), before_subject);
    assert_eq!(
        buckets(
            client
                .aggregate(counts("access_id"))
                .await
                .unwrap()
                .into_inner()
        ),
        before_access
    );
    assert_eq!(
        buckets(client.aggregate(counts("ip")).await.unwrap().into_inner()),
        before_ip
    );
    let problems =
        full_audit(&mut integrity_client(&server.url(), &server.admin_token()).await).await;
    assert!(problems.iter().all(|p| p.kind == "erased"), "{problems:?}");
    server.stop().await.unwrap();
}

/// A daemon killed (abort, as kill -9) in the middle of an erasure, after
/// the first of two days was rewritten: the next start replays the
/// erasure's log record and finishes it.
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn an_erasure_cut_short_by_a_crash_is_finished_by_replay() {
    let dir = tempfile::tempdir().unwrap();
    let fast = ("AUDITD_INDEX__COMMIT_INTERVAL_MS", "100");
    let daemon = Daemon::start_with(
        dir.path(),
        &[fast, ("FAILPOINTS", "erasure::partition_done=return")],
    );
    daemon.wait_serving().await;
    let mut client = daemon.client(dir.path()).await;
    let mut events: Vec<AuditEvent> = (0..6)
        .map(|i| {
            marked(
                "CrashSubj",
                &format!("Cr{i}Mk"),
                1 + i % 2,
                "audit-log/pryv-api",
            )
        })
        .collect();
    // Enough others for a seeded batch (`integrity::seeds::MIN_EVENTS`).
    events.extend(generated(40, 5, 20));
    let stored = ingest(&mut client, events, WaitFor::Searchable).await;
    let token = admin_token(dir.path());
    let channel = tonic::transport::Endpoint::from_shared(daemon.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut subjects =
        auditd::client::subjects(channel, auditd::client::BearerToken::new(&token).unwrap());
    let cut = subjects
        .erase_subject(auditd::proto::EraseSubjectRequest {
            subject: "CrashSubj".into(),
            mode: 0,
            reason: String::new(),
        })
        .await;
    assert!(cut.is_err(), "the daemon died mid-erasure");
    let mut child = daemon.child;
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(!status.success());

    // Half done on disk: one day rewritten, the other not. Replay
    // finishes it.
    let daemon = Daemon::start_with(dir.path(), &[fast]);
    daemon.wait_serving().await;
    let mut client = daemon.client(dir.path()).await;
    for id in &stored.ids[..6] {
        let event = get(&mut client, id).await;
        assert!(event.subject.is_empty(), "{event:?}");
        assert!(event.attributes.is_empty(), "{event:?}");
    }
    let mut proofs = integrity_client(&daemon.url, &token).await;
    checkpoint_of_at_least(&mut proofs, stored.seqs.iter().max().unwrap() + 1).await;
    let problems = full_audit(&mut proofs).await;
    assert!(problems.iter().all(|p| p.kind == "erased"), "{problems:?}");
    let mut child = daemon.child;
    child.kill().unwrap();
    child.wait().unwrap();
    // The replay cut the seed for the events of both days.
    let salts = seeded_salts(dir.path(), &stored.seqs);
    assert_eq!(salts[..6], [false; 6]);
    assert!(salts[6..].iter().all(|s| *s), "{salts:?}");
}

/// The same over HTTP: the subject in the body, errors naming the field.
#[tokio::test]
async fn the_subject_routes_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let mut client = server.client().await;
    let events: Vec<AuditEvent> = (0..3)
        .map(|i| marked("http-subject", &format!("H{i}"), 1, "audit-log/pryv-api"))
        .collect();
    let stored = ingest(&mut client, events, WaitFor::Searchable).await;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("http://{}{path}", server.http);
    let token = server.admin_token().trim().to_owned();
    let post = |path: &str, body: serde_json::Value| {
        http.post(url(path)).bearer_auth(&token).json(&body).send()
    };
    let bad = post(
        "/v1/subjects/erase",
        serde_json::json!({ "subject": "x", "mode": "shred" }),
    )
    .await
    .unwrap();
    assert_eq!(bad.status(), 400);
    let problem: serde_json::Value = bad.json().await.unwrap();
    assert_eq!(problem["violations"][0]["field"], "mode", "{problem}");

    let export = post(
        "/v1/subjects/export",
        serde_json::json!({ "subject": "http-subject", "format": "ocsf" }),
    )
    .await
    .unwrap();
    assert_eq!(export.status(), 200);
    let text = export.text().await.unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines[0]["checkpoint"].as_str().unwrap().contains("auditd/"));
    let proofs: usize = lines
        .iter()
        .map(|l| l["proofs"].as_array().unwrap().len())
        .sum();
    assert_eq!(proofs, 3);
    assert!(lines.last().unwrap()["reportHtml"]
        .as_str()
        .unwrap()
        .contains("3 event(s)"));

    // A hold whose query covers the subject's events refuses the erasure
    // until it is released.
    let hold: serde_json::Value = post(
        "/v1/holds",
        serde_json::json!({ "query": "resource:\"/records/H1\"", "reason": "case 9" }),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let held = post(
        "/v1/subjects/erase",
        serde_json::json!({ "subject": "http-subject", "mode": "pseudonymise" }),
    )
    .await
    .unwrap();
    assert_eq!(held.status(), 409);
    let problem: serde_json::Value = held.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("legal hold"),
        "{problem}"
    );
    let hold_id = hold["id"].as_str().unwrap();
    let released = http
        .delete(url(&format!("/v1/holds/{hold_id}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(released.status(), 200);
    let erased = post(
        "/v1/subjects/erase",
        serde_json::json!({ "subject": "http-subject", "mode": "pseudonymise" }),
    )
    .await
    .unwrap();
    assert_eq!(erased.status(), 200);
    let erased: serde_json::Value = erased.json().await.unwrap();
    assert_eq!(erased["erased"], 3, "{erased}");
    let event = get(&mut client, &stored.ids[0]).await;
    assert!(event.subject.starts_with("ps-"), "{event:?}");
    server.stop().await.unwrap();
}

/// The dense terms a former run saved (`<data_dir>/dense-terms.json`) may
/// name the subject, hex-encoded: erasure rewrites the file without it.
#[tokio::test]
async fn erasure_leaves_the_subjects_name_in_no_saved_dense_term() {
    let dir = tempfile::tempdir().unwrap();
    let subject = "DenseSubjectQz4";
    let term = |field: &str, value: &str| serde_json::json!([{"field": field, "type": "s", "value": hex::encode(value)}]);
    let path = dir.path().join("dense-terms.json");
    let saved = serde_json::json!({"version": 1, "sets": [
        term("subject", subject),
        term("text", &subject.to_lowercase()),
        term("action", "events.get"),
    ]});
    std::fs::write(&path, saved.to_string()).unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let mut client = server.client().await;
    let events = vec![marked(subject, "DenseMk", 1, "audit-log/pryv-api")];
    ingest(&mut client, events, WaitFor::Searchable).await;
    subjects_client(&server, &server.admin_token())
        .await
        .erase_subject(auditd::proto::EraseSubjectRequest {
            subject: subject.into(),
            mode: auditd::proto::ErasureMode::Erase as i32,
            reason: "request 14".into(),
        })
        .await
        .unwrap();
    let names = |json: &str| {
        [subject.to_owned(), subject.to_lowercase()]
            .iter()
            .any(|name| json.contains(&hex::encode(name)))
    };
    let after = std::fs::read_to_string(&path).unwrap();
    assert!(!names(&after), "{after}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&after).unwrap()["version"],
        1
    );
    server.stop().await.unwrap();
    assert!(!names(&std::fs::read_to_string(&path).unwrap()));
}
