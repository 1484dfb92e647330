//! Retention and legal hold, end to end: days past their rule are dropped
//! whole, a mixed day waits for its longest rule, a hold keeps a day until
//! it is released, the compliance floor refuses lowering from every
//! direction, and every kept event's proof still verifies.

mod common;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use auditd::client::RetentionClient;
use auditd::config::{Config, RetentionConfig, RetentionRule};
use auditd::integrity::receipt::{verify_receipt, Receipt};
use auditd::proto::{
    AddHoldRequest, AuditEvent, GetEventRequest, GetInclusionProofRequest, GetRetentionRequest,
    IngestRequest, ListHoldsRequest, LockRetentionRequest, ReleaseHoldRequest, SearchRequest,
    SweepRequest, WaitFor,
};
use common::*;

const DAY_SECS: i64 = 86_400;

/// An event of `days_ago` days before today's UTC midnight (noon that
/// day), of type `type_`.
fn event(days_ago: i64, type_: &str, subject: &str) -> AuditEvent {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let midnight = now - now.rem_euclid(DAY_SECS);
    AuditEvent {
        action: "events.get".into(),
        r#type: type_.into(),
        subject: subject.into(),
        access_id: "acc-1".into(),
        time: Some(prost_types::Timestamp {
            seconds: midnight - days_ago * DAY_SECS + DAY_SECS / 2,
            nanos: 0,
        }),
        ..Default::default()
    }
}

fn day_of(days_ago: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    auditd::partition::format_day(now.div_euclid(DAY_SECS) - days_ago)
}

fn config(dir: &Path, retention: RetentionConfig) -> Config {
    let mut config = test_config(dir);
    config.retention = retention;
    config
}

fn thirty_days_and_hipaa() -> RetentionConfig {
    RetentionConfig {
        default_days: Some(30),
        rules: vec![RetentionRule {
            type_prefix: "hipaa/".into(),
            actions: Vec::new(),
            days: 2190,
        }],
        ..Default::default()
    }
}

/// Ingests an event of 40 days ago, which must be refused.
async fn late_for_day_40(client: &mut Client) -> tonic::Status {
    let request = IngestRequest {
        events: vec![event(40, "svc/a", "s1")],
        ..Default::default()
    };
    client.ingest(request).await.unwrap_err()
}

async fn retention_client(server: &TestServer) -> RetentionClient {
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let bearer = auditd::client::BearerToken::new(&server.admin_token()).unwrap();
    auditd::client::retention(channel, bearer)
}

async fn of_day(client: &mut Client, days_ago: i64) -> Vec<AuditEvent> {
    let day = day_of(days_ago);
    let from = auditd::partition::parse_day(&day).unwrap() * DAY_SECS;
    let request = SearchRequest {
        from_time: Some(prost_types::Timestamp {
            seconds: from,
            nanos: 0,
        }),
        to_time: Some(prost_types::Timestamp {
            seconds: from + DAY_SECS,
            nanos: 0,
        }),
        limit: 1000,
        ..Default::default()
    };
    search_all(client, request).await.0
}

#[tokio::test]
async fn days_past_their_rule_drop_whole_and_every_kept_proof_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path(), thirty_days_and_hipaa())).await;
    let mut client = server.client().await;
    let mut retention = retention_client(&server).await;

    // 40 days ago: only events under the 30-day default. 45 days ago: the
    // same, and one under the HIPAA rule. 5 days ago: recent.
    let mut events: Vec<AuditEvent> = (0..5).map(|_| event(40, "svc/a", "s1")).collect();
    events.extend((0..3).map(|_| event(45, "svc/b", "s2")));
    events.push(event(45, "hipaa/record", "s3"));
    events.extend((0..3).map(|_| event(5, "svc/c", "s4")));
    let stored = ingest(&mut client, events, WaitFor::Searchable).await;
    let dropped_seqs = &stored.seqs[..5];

    let swept = retention.sweep(SweepRequest {}).await.unwrap().into_inner();
    assert_eq!(swept.dropped.len(), 1, "{swept:?}");
    let dropped = &swept.dropped[0];
    assert_eq!(dropped.day, day_of(40));
    assert_eq!(dropped.events, 5);
    assert_eq!(dropped.rule, "retention.default_days");
    assert!(dropped.bytes > 0);
    let mixed = swept.kept.iter().find(|k| k.day == day_of(45)).unwrap();
    assert!(mixed.reason.contains("retention.rules[0]"), "{mixed:?}");
    assert!(!dir.path().join("index").join(day_of(40)).exists());

    assert!(of_day(&mut client, 40).await.is_empty());
    assert_eq!(of_day(&mut client, 45).await.len(), 4);
    assert_eq!(of_day(&mut client, 5).await.len(), 3);

    // A late event for the dropped day is refused, naming the field.
    let late = late_for_day_40(&mut client).await;
    assert_eq!(late.code(), tonic::Code::InvalidArgument);
    assert!(
        late.message().contains("events[0].time"),
        "{}",
        late.message()
    );
    assert!(
        late.message()
            .contains("older than the retention of 30 days"),
        "{}",
        late.message()
    );

    // The drop is on the trail, and counted.
    let trail = trail_events(&mut client, "audit.retention.drop", 1).await;
    assert_eq!(trail[0].query["day"], day_of(40));
    assert_eq!(trail[0].query["events"], "5");
    // (The recorder is the process's: other tests here drop days too.)
    let (_, metrics) = http_get(server.http, "/metrics").await;
    let dropped_total: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("auditd_retention_dropped_events_total "))
        .expect("the counter is exported")
        .parse()
        .unwrap();
    assert!(dropped_total >= 5, "{metrics}");

    // A kept event's receipt verifies; the audit names the dropped seqs
    // as expired, and finds nothing else.
    let mut proofs = integrity_client(&server.url(), &server.admin_token()).await;
    let kept_id = stored.ids[9].clone();
    let all = stored.seqs.iter().max().unwrap() + 1;
    checkpoint_of_at_least(&mut proofs, all).await;
    let proof = proofs
        .get_inclusion_proof(GetInclusionProofRequest {
            id: kept_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let kept = client
        .get_event(GetEventRequest { id: kept_id })
        .await
        .unwrap()
        .into_inner();
    let key = std::fs::read_to_string(dir.path().join("integrity.pub")).unwrap();
    let receipt = Receipt::parse(&proof.tlog_proof).unwrap();
    assert!(
        verify_receipt(&receipt, key.trim(), Some(&kept))
            .unwrap()
            .event_matched
    );
    let expect_expired = |problems: &[auditd::proto::LeafProblem]| {
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].kind, "expired");
        assert_eq!(problems[0].seq, dropped_seqs[0]);
        assert!(problems[0].detail.starts_with("5 event(s)"), "{problems:?}");
        assert!(problems[0].detail.contains(&day_of(40)), "{problems:?}");
    };
    expect_expired(&full_audit(&mut proofs).await);

    // After a restart: still gone, still refused, still expired.
    server.stop().await.unwrap();
    let server = TestServer::start(config(dir.path(), thirty_days_and_hipaa())).await;
    let mut client = server.client().await;
    assert!(of_day(&mut client, 40).await.is_empty());
    let late = late_for_day_40(&mut client).await;
    assert_eq!(late.code(), tonic::Code::InvalidArgument);
    let mut proofs = integrity_client(&server.url(), &server.admin_token()).await;
    expect_expired(&full_audit(&mut proofs).await);
    let status = retention_client(&server)
        .await
        .get_retention(GetRetentionRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.dropped.len(), 1);
    assert_eq!(status.oldest_day, day_of(45));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_hold_keeps_a_day_until_it_is_released() {
    let dir = tempfile::tempdir().unwrap();
    let retention_config = RetentionConfig {
        default_days: Some(30),
        ..Default::default()
    };
    let server = TestServer::start(config(dir.path(), retention_config)).await;
    let mut client = server.client().await;
    let mut retention = retention_client(&server).await;
    let mut events: Vec<AuditEvent> = (0..4).map(|_| event(60, "svc/a", "s1")).collect();
    events.push(event(60, "svc/a", "litigant"));
    ingest(&mut client, events, WaitFor::Searchable).await;

    // Bad holds are refused, naming the field.
    let refused = |request: AddHoldRequest| {
        let mut retention = retention.clone();
        async move { retention.add_hold(request).await.unwrap_err() }
    };
    let no_reason = refused(AddHoldRequest {
        subject: "litigant".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(no_reason.code(), tonic::Code::InvalidArgument);
    assert!(no_reason.message().contains("reason"), "{no_reason:?}");
    let bad_query = refused(AddHoldRequest {
        query: "action:(".into(),
        reason: "case 7".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(bad_query.code(), tonic::Code::InvalidArgument);
    assert!(bad_query.message().contains("query"), "{bad_query:?}");

    let hold = retention
        .add_hold(AddHoldRequest {
            subject: "litigant".into(),
            reason: "case 7, Smith v. Acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let swept = retention.sweep(SweepRequest {}).await.unwrap().into_inner();
    assert!(swept.dropped.is_empty(), "{swept:?}");
    assert!(swept.kept[0].reason.contains(&hold.id), "{swept:?}");
    assert_eq!(of_day(&mut client, 60).await.len(), 5);

    // A hold on nobody in that day does not keep it; releasing the one
    // that did lets it go.
    retention
        .add_hold(AddHoldRequest {
            query: "subject:someone-else".into(),
            reason: "another case".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let missing = retention
        .release_hold(ReleaseHoldRequest { id: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let released = retention
        .release_hold(ReleaseHoldRequest {
            id: hold.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(released.released.is_some());
    let in_force = retention
        .list_holds(ListHoldsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .holds;
    assert_eq!(in_force.len(), 1);
    let swept = retention.sweep(SweepRequest {}).await.unwrap().into_inner();
    assert_eq!(swept.dropped.len(), 1, "{swept:?}");
    assert!(of_day(&mut client, 60).await.is_empty());
    trail_events(&mut client, "audit.hold.add", 2).await;
    trail_events(&mut client, "audit.hold.release", 1).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_floor_refuses_lowering_through_the_api_a_config_file_and_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let forever = RetentionConfig::default();
    let server = TestServer::start(config(dir.path(), forever.clone())).await;
    let mut retention = retention_client(&server).await;
    let lock = |days| LockRetentionRequest { min_days: days };
    let status = retention.lock(lock(365)).await.unwrap().into_inner();
    assert_eq!(status.floor_days, Some(365));
    let lower = retention.lock(lock(100)).await.unwrap_err();
    assert_eq!(lower.code(), tonic::Code::FailedPrecondition);
    assert!(lower.message().contains("can only be raised"), "{lower:?}");
    let status = retention.lock(lock(400)).await.unwrap().into_inner();
    assert_eq!(status.floor_days, Some(400));
    let mut client = server.client().await;
    trail_events(&mut client, "audit.retention.lock", 3).await;

    // The same over HTTP: the floor, a lowering refused (409, the gRPC
    // code's name), a hold without a reason (400 naming it).
    let http = reqwest::Client::new();
    let url = |path: &str| format!("http://{}{path}", server.http);
    let token = server.admin_token().trim().to_owned();
    let status: serde_json::Value = http
        .get(url("/v1/retention"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["floorDays"], 400);
    let lower = http
        .post(url("/v1/retention/lock"))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "minDays": 10 }))
        .send()
        .await
        .unwrap();
    assert_eq!(lower.status(), 409);
    let problem: serde_json::Value = lower.json().await.unwrap();
    assert_eq!(problem["code"], "FailedPrecondition", "{problem}");
    let no_reason = http
        .post(url("/v1/holds"))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "subject": "user-42" }))
        .send()
        .await
        .unwrap();
    assert_eq!(no_reason.status(), 400);
    let problem: serde_json::Value = no_reason.json().await.unwrap();
    assert_eq!(problem["violations"][0]["field"], "reason", "{problem}");
    server.stop().await.unwrap();

    // A config file below the floor does not start.
    let short = RetentionConfig {
        default_days: Some(30),
        ..Default::default()
    };
    let refused = TestServer::spawn(config(dir.path(), short))
        .await
        .outcome()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("compliance floor of 400 days"),
        "{refused}"
    );
    assert!(
        refused.contains("retention.default_days keeps 30 days"),
        "{refused}"
    );

    // Nor does an environment variable below it (the real binary, which
    // reads AUDITD_*); one at the floor does.
    let (code, stderr) =
        run_daemon_until_exit(dir.path(), &[("AUDITD_RETENTION__DEFAULT_DAYS", "30")]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("compliance floor of 400 days"), "{stderr}");
    let daemon = Daemon::start_with(dir.path(), &[("AUDITD_RETENTION__DEFAULT_DAYS", "400")]);
    daemon.wait_serving().await;
    let mut child = daemon.child;
    child.kill().unwrap();
    child.wait().unwrap();

    // A running daemon whose rules are shorter refuses a floor above them.
    let server = TestServer::start(config(dir.path(), thirty_days_and_hipaa_floor_ok())).await;
    let mut retention = retention_client(&server).await;
    let above = retention.lock(lock(3000)).await.unwrap_err();
    assert_eq!(above.code(), tonic::Code::FailedPrecondition);
    assert!(
        above
            .message()
            .contains("retention.rules[0] keeps 2190 days"),
        "{above:?}"
    );
    server.stop().await.unwrap();
}

/// Rules all at or above a floor of 400 days.
fn thirty_days_and_hipaa_floor_ok() -> RetentionConfig {
    RetentionConfig {
        default_days: Some(400),
        ..thirty_days_and_hipaa()
    }
}

/// Runs the daemon on `data_dir` with `env` until it exits (60 s at most:
/// then it is killed and the test fails); its exit code and stderr.
fn run_daemon_until_exit(data_dir: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_auditd"))
        .args(["--data-dir", data_dir.to_str().unwrap()])
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > DEADLINE {
            child.kill().unwrap();
            panic!("auditd did not refuse to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
