//! The data subject's rights, end to end. Access (GDPR Art. 15): the
//! subject export holds exactly the subject's events (a brute-force filter
//! of what was ingested), each with a receipt that verifies offline, and a
//! report naming who read the subject's data.

mod common;

use std::collections::BTreeSet;

use auditd::integrity::receipt::{verify_receipt, Receipt};
use auditd::json::JsonEvent;
use auditd::proto::{ExportFormat, ExportSubjectRequest, SearchRequest, TokenKind, WaitFor};
use common::*;

async fn subjects_client(server: &TestServer, token: &str) -> auditd::client::SubjectsClient {
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    auditd::client::subjects(channel, auditd::client::BearerToken::new(token).unwrap())
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
    search_all(
        &mut client,
        SearchRequest {
            subjects: vec![subject.clone()],
            limit: 100,
            ..Default::default()
        },
    )
    .await;
    trail_events(&mut client, "audit.search", 1).await;

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
