//! Tail: every acknowledged matching event arrives once, in seq order,
//! while several clients ingest; a cut stream resumes without a gap or a
//! repeat; a reader that stops reading is ended with its resume token;
//! subscribers are bounded.

use std::collections::HashSet;
use std::time::Duration;

use auditd::config::Config;
use auditd::proto::{
    AuditEvent, EventFilter, GetEventRequest, TailRequest, TailResponse, TokenKind, WaitFor,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio_stream::StreamExt;
use tonic::Streaming;

use crate::common::oracle::{matches, random_filter};
use crate::common::*;

async fn tail(
    client: &mut Client,
    filter: EventFilter,
    resume_token: &str,
) -> Streaming<TailResponse> {
    client
        .tail(TailRequest {
            filter: Some(filter),
            resume_token: resume_token.into(),
        })
        .await
        .expect("tail")
        .into_inner()
}

/// Reads `stream` until `want` holds no id it lacks, checking each event
/// arrives once and in seq order; returns the events and the last token.
async fn read_until(
    stream: &mut Streaming<TailResponse>,
    want: &HashSet<String>,
    got: &mut Vec<AuditEvent>,
    token: &mut String,
) {
    let mut missing: HashSet<&String> = want.iter().collect();
    for e in got.iter() {
        missing.remove(&e.id);
    }
    let read = async {
        while !missing.is_empty() {
            let response = stream.message().await.expect("tail stream").expect("open");
            for e in &response.events {
                missing.remove(&e.id);
            }
            got.extend(response.events);
            *token = response.resume_token;
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("every acknowledged event should arrive");
}

fn assert_once_in_seq_order(events: &[AuditEvent]) {
    for pair in events.windows(2) {
        assert!(
            pair[0].seq < pair[1].seq,
            "seq order: {} then {}",
            pair[0].seq,
            pair[1].seq
        );
    }
    let ids: HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), events.len(), "an event arrived twice");
}

/// Three clients ingest 20 batches each while one subscriber follows
/// them; halfway the subscriber's stream is cut and resumed. The events
/// come from the last commits' copy in memory (`index.recent_events_bytes`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_arrives_once_in_order_across_a_resume() {
    follow_and_resume(Config::default().index.recent_events_bytes).await;
}

/// The same with room in memory for a handful of events: nearly all
/// are read from the index, some from memory, within one stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_memory_budget_the_tail_reads_the_index_and_loses_nothing() {
    follow_and_resume(4_096).await;
}

async fn follow_and_resume(recent_events_bytes: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.index.recent_events_bytes = recent_events_bytes;
    let server = TestServer::start(config).await;
    let mut reader = server.client().await;
    // Everything but one source name: the filter is applied too.
    let filter = EventFilter {
        source_names: vec!["http".into()],
        ..Default::default()
    };
    let mut stream = tail(&mut reader, filter.clone(), "").await;

    let events = generated(3_000, 31, 3_000);
    let producers: Vec<_> = events
        .chunks(1_000)
        .map(|part| {
            let part = part.to_vec();
            let url = server.url();
            let token = server.admin_token();
            tokio::spawn(async move {
                let mut client = connect(&url, &token).await;
                for batch in part.chunks(50) {
                    ingest(&mut client, batch.to_vec(), WaitFor::Durable).await;
                }
            })
        })
        .collect();

    let wanted = |events: &[AuditEvent]| -> HashSet<String> {
        events
            .iter()
            .filter(|e| e.source.as_ref().is_some_and(|s| s.name == "http"))
            .map(|e| e.id.clone())
            .collect()
    };
    let mut got = Vec::new();
    let mut token = String::new();
    // The first third, then the stream is dropped mid-way.
    read_until(&mut stream, &wanted(&events[..300]), &mut got, &mut token).await;
    drop(stream);
    for p in producers {
        p.await.unwrap();
    }
    let mut resumed = tail(&mut reader, filter, &token).await;
    read_until(&mut resumed, &wanted(&events), &mut got, &mut token).await;

    assert_once_in_seq_order(&got);
    assert!(got
        .iter()
        .all(|e| e.source.as_ref().unwrap().name == "http"));
    assert_eq!(
        got.len(),
        wanted(&events).len(),
        "only what the filter matches"
    );
    // Each as the index stores it (GetEvent reads the doc store). A
    // follower gets an event as the indexer adds it, before the commit
    // that makes it searchable: one more batch, waited for until
    // searchable, puts every event of a lower seq in the index too.
    ingest(&mut reader, generated(1, 32, 1), WaitFor::Searchable).await;
    for delivered in got.iter().step_by(25) {
        let stored = reader
            .get_event(GetEventRequest {
                id: delivered.id.clone(),
            })
            .await
            .expect("get")
            .into_inner();
        assert_eq!(delivered, &stored);
    }
    server.stop().await.unwrap();
}

/// Followers with random filters get exactly what a brute-force filter
/// matches, in seq order, though nothing becomes searchable meanwhile
/// (commits an hour apart): each event is matched in memory against the
/// indexer's live entries (`search::live`). Free text is left out of the
/// filters: a follower with words reads the index after each commit.
///
/// Each follower's expected list ends with a sentinel ingested after
/// everything else, a copy of its last match under a new id: once the
/// sentinel arrives, any event the follower wrongly took or missed
/// before it shows in the comparison.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_followers_get_exactly_what_their_filters_match() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.index.commit_interval_ms = 3_600_000;
    let server = TestServer::start(config).await;
    let mut admin = server.client().await;
    let events = generated(2_000, 17, 500);
    let mut rng = StdRng::seed_from_u64(23);
    let mut followers = Vec::new();
    while followers.len() < 24 {
        let mut filter = random_filter(&mut rng, &events);
        filter.text.clear();
        let Some(last) = events.iter().rev().find(|e| matches(&filter, e)) else {
            continue;
        };
        let mut sentinel = last.clone();
        sentinel.id = format!("sentinel-{}", followers.len());
        let stream = tail(&mut admin, filter.clone(), "").await;
        followers.push((filter, sentinel, stream));
    }
    for batch in events.chunks(100) {
        ingest(&mut admin, batch.to_vec(), WaitFor::Durable).await;
    }
    let sentinels: Vec<AuditEvent> = followers.iter().map(|f| f.1.clone()).collect();
    ingest(&mut admin, sentinels.clone(), WaitFor::Durable).await;
    let all: Vec<&AuditEvent> = events.iter().chain(&sentinels).collect();

    for (filter, sentinel, mut stream) in followers {
        let mut expected: Vec<&str> = Vec::new();
        for e in all.iter().filter(|e| matches(&filter, e)) {
            expected.push(&e.id);
            if e.id == sentinel.id {
                break;
            }
        }
        let mut got = Vec::new();
        let mut token = String::new();
        let want = HashSet::from([sentinel.id.clone()]);
        read_until(&mut stream, &want, &mut got, &mut token).await;
        assert_once_in_seq_order(&got);
        let ids: Vec<&str> = got.iter().map(|e| e.id.as_str()).collect();
        let upto = ids.iter().position(|id| *id == sentinel.id).unwrap();
        assert_eq!(ids[..=upto], expected[..], "filter {filter:?}");
    }
    server.stop().await.unwrap();
}

/// A reader that takes nothing is ended after the idle timeout with an
/// error that carries its resume token, and resuming there loses nothing.
/// Ingest goes on meanwhile: the subscriber holds no events of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_is_ended_with_its_resume_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.stream_idle_timeout_ms = 1_000;
    let server = TestServer::start(config).await;
    let mut reader = server.client().await;
    let mut stream = tail(&mut reader, EventFilter::default(), "").await;

    // 40 MB: several times what the outbox and the transport's windows
    // hold.
    let mut producer = server.client().await;
    let mut events = generated(800, 7, 800);
    for e in &mut events {
        e.error_message = "x".repeat(50_000);
    }
    for batch in events.chunks(40) {
        ingest(&mut producer, batch.to_vec(), WaitFor::Searchable).await;
    }

    let mut got = Vec::new();
    let status = loop {
        match tokio::time::timeout(DEADLINE, stream.next())
            .await
            .expect("stream ends")
        {
            Some(Ok(response)) => got.extend(response.events),
            Some(Err(status)) => break status,
            None => panic!("the stream ended without saying why"),
        }
    };
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    let token = status
        .message()
        .rsplit("resume_token ")
        .next()
        .expect("the message carries the token")
        .to_owned();
    assert!(
        got.len() < events.len(),
        "the reader was ended before the end"
    );
    let all: HashSet<String> = events.iter().map(|e| e.id.clone()).collect();
    let mut resumed = tail(&mut reader, EventFilter::default(), &token).await;
    let mut last = String::new();
    read_until(&mut resumed, &all, &mut got, &mut last).await;
    assert_once_in_seq_order(&got);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_over_the_limit_are_refused_and_a_closed_one_frees_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.max_tail_subscribers = 2;
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    let first = tail(&mut client, EventFilter::default(), "").await;
    let _second = tail(&mut client, EventFilter::default(), "").await;
    let refused = client
        .tail(TailRequest::default())
        .await
        .expect_err("a third subscriber");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(refused.message().contains("max_tail_subscribers"));

    drop(first);
    // The place comes back once the server sees the stream closed.
    let reopened = async {
        loop {
            match client.tail(TailRequest::default()).await {
                Ok(stream) => break stream,
                Err(status) => assert_eq!(status.code(), tonic::Code::ResourceExhausted),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(DEADLINE, reopened)
        .await
        .expect("a closed subscriber frees its place");
    server.stop().await.unwrap();
}

/// An app token's tail shows its own scope only; the call is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_tail_sees_only_its_scope_and_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let mut admin = server.client().await;
    let events = generated(1_000, 5, 1_000);
    let mine = events[0].clone();
    let (_, secret) = create(&server, TokenKind::App, &mine.subject, &mine.access_id).await;
    let mut app = server.client_with(&secret).await;
    let mut stream = tail(&mut app, EventFilter::default(), "").await;
    ingest(&mut admin, events.clone(), WaitFor::Searchable).await;

    let in_scope: HashSet<String> = events
        .iter()
        .filter(|e| e.subject == mine.subject && e.access_id == mine.access_id)
        .map(|e| e.id.clone())
        .collect();
    let mut got = Vec::new();
    let mut token = String::new();
    read_until(&mut stream, &in_scope, &mut got, &mut token).await;
    assert!(
        got.iter().all(|e| in_scope.contains(&e.id)),
        "outside the scope"
    );

    let (_, secret) = create(&server, TokenKind::Ingest, "", "").await;
    let refused = server
        .client_with(&secret)
        .await
        .tail(TailRequest::default())
        .await
        .expect_err("an ingest token cannot read");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let bad = admin
        .tail(TailRequest {
            resume_token: "nonsense".into(),
            ..Default::default()
        })
        .await
        .expect_err("a bad token");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().starts_with("resume_token"), "{bad:?}");

    let trail = trail_events(&mut admin, "audit.tail", 3).await;
    assert_eq!(trail.len(), 3, "one trail event per call: {trail:?}");
    server.stop().await.unwrap();
}
