//! Who may read what: every token kind against every RPC, on data of
//! several subjects and accesses, with widening attempts.

mod common;

use auditd::app::trail::TRAIL_TYPE;
use auditd::proto::{
    AuditEvent, CreateTokenRequest, GetEventRequest, IngestRequest, ListTokensRequest,
    RevokeTokenRequest, SearchRequest, Source, TokenKind, WaitFor,
};
use common::*;
use tonic::Code;

const SUBJECTS: [&str; 2] = ["emma", "liam"];
const ACCESSES: [&str; 3] = ["acc-1", "acc-2", "acc-3"];

/// 5 events for every (subject, access) pair.
fn dataset() -> Vec<AuditEvent> {
    let mut events = Vec::new();
    for (s, subject) in SUBJECTS.iter().enumerate() {
        for (a, access) in ACCESSES.iter().enumerate() {
            for n in 0..5 {
                events.push(AuditEvent {
                    id: format!("{subject}-{access}-{n}"),
                    time: Some(prost_types::Timestamp {
                        seconds: 1_700_000_000 + (s * 100 + a * 10 + n) as i64,
                        nanos: 0,
                    }),
                    r#type: "audit-log/pryv-api".into(),
                    action: "events.get".into(),
                    access_id: (*access).into(),
                    subject: (*subject).into(),
                    source: Some(Source {
                        name: "http".into(),
                        ip: "10.0.0.1".into(),
                    }),
                    status: 200,
                    ..Default::default()
                });
            }
        }
    }
    events
}

fn ids(events: &[AuditEvent]) -> Vec<String> {
    let mut ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    ids.sort();
    ids
}

fn expected(filter: impl Fn(&AuditEvent) -> bool) -> Vec<String> {
    ids(&dataset()
        .into_iter()
        .filter(|e| filter(e))
        .collect::<Vec<_>>())
}

/// One event of the dataset with the id left to the server.
fn one_fresh_event() -> Vec<AuditEvent> {
    let mut event = dataset().swap_remove(0);
    event.id.clear();
    vec![event]
}

fn all() -> SearchRequest {
    SearchRequest {
        limit: 1_000,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_token_kind_reads_and_writes_exactly_what_it_may() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let mut admin = server.client().await;
    ingest(&mut admin, dataset(), WaitFor::Searchable).await;

    let (_, personal) = create(&server, TokenKind::Personal, "emma", "").await;
    let (_, app) = create(&server, TokenKind::App, "emma", "acc-1").await;
    let (_, shared) = create(&server, TokenKind::Shared, "emma", "acc-2").await;
    let (_, other_app) = create(&server, TokenKind::App, "liam", "acc-1").await;
    let (_, ingest_only) = {
        let mut admin_tokens = tokens_client(&server, &server.admin_token()).await;
        let reply = admin_tokens
            .create_token(CreateTokenRequest {
                kind: TokenKind::Ingest as i32,
                sources: vec!["http".into()],
                type_prefix: "audit-log/".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        (reply.token.unwrap().id, reply.secret)
    };

    // Search: each sees its scope, paging and total_hits included.
    let cases: Vec<(&str, &String, Vec<String>)> = vec![
        ("personal", &personal, expected(|e| e.subject == "emma")),
        (
            "app",
            &app,
            expected(|e| e.subject == "emma" && e.access_id == "acc-1"),
        ),
        (
            "shared",
            &shared,
            expected(|e| e.subject == "emma" && e.access_id == "acc-2"),
        ),
        (
            "other app",
            &other_app,
            expected(|e| e.subject == "liam" && e.access_id == "acc-1"),
        ),
    ];
    for (name, token, want) in &cases {
        let mut client = server.client_with(token).await;
        let (found, total) = search_all(&mut client, SearchRequest { limit: 2, ..all() }).await;
        assert_eq!(ids(&found), *want, "{name}");
        assert_eq!(
            total as usize,
            want.len(),
            "{name}: total_hits is the scoped count"
        );
    }
    let (found, _) = search_all(&mut admin, all()).await;
    assert_eq!(found.len(), 30, "admin sees everything");

    // Widening attempts by the app token return nothing outside its scope.
    let mut app_client = server.client_with(&app).await;
    let own = expected(|e| e.subject == "emma" && e.access_id == "acc-1");
    let widen = [
        SearchRequest {
            subjects: vec!["liam".into()],
            ..all()
        },
        SearchRequest {
            access_ids: vec!["acc-2".into()],
            ..all()
        },
        SearchRequest {
            query: "access_id:acc-2".into(),
            ..all()
        },
        SearchRequest {
            query: "subject:liam OR access_id:acc-3".into(),
            ..all()
        },
    ];
    for request in widen {
        let (found, total) = search_all(&mut app_client, request.clone()).await;
        assert!(
            found.is_empty() && total == 0,
            "{request:?} leaked {:?}",
            ids(&found)
        );
    }
    let (found, _) = search_all(
        &mut app_client,
        SearchRequest {
            query: "subject:liam OR subject:emma".into(),
            ..all()
        },
    )
    .await;
    assert_eq!(
        ids(&found),
        own,
        "an OR inside the query cannot leave the scope"
    );
    // A page token minted by the admin continues inside the app's scope.
    let page = admin
        .search(SearchRequest { limit: 3, ..all() })
        .await
        .unwrap()
        .into_inner();
    let (found, total) = search_all(
        &mut app_client,
        SearchRequest {
            page_token: page.next_page_token,
            ..all()
        },
    )
    .await;
    assert!(found
        .iter()
        .all(|e| e.subject == "emma" && e.access_id == "acc-1"));
    assert!(total as usize <= own.len());

    // GetEvent: outside the scope is exactly as absent as nonexistent.
    let inside = app_client
        .get_event(GetEventRequest {
            id: "emma-acc-1-0".into(),
        })
        .await;
    assert!(inside.is_ok());
    for id in ["liam-acc-1-0", "emma-acc-2-0", "no-such-event"] {
        let status = app_client
            .get_event(GetEventRequest { id: id.into() })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{id}");
        assert_eq!(status.message(), format!("no event with id {id:?}"));
    }

    // Writes: readers may not; the ingest token only within its binding.
    let one = one_fresh_event;
    for (name, token) in [("personal", &personal), ("app", &app), ("shared", &shared)] {
        let mut client = server.client_with(token).await;
        let status = client
            .ingest(IngestRequest {
                events: one(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{name}");
        let stream = client
            .ingest_stream(tokio_stream::iter(vec![IngestRequest {
                events: one(),
                ..Default::default()
            }]))
            .await;
        let status = match stream {
            Err(status) => status,
            Ok(mut replies) => replies.get_mut().message().await.unwrap_err(),
        };
        assert_eq!(status.code(), Code::PermissionDenied, "{name} stream");
    }
    let mut writer = server.client_with(&ingest_only).await;
    writer
        .ingest(IngestRequest {
            events: one(),
            ..Default::default()
        })
        .await
        .expect("inside the binding");
    let mut wrong_source = one();
    wrong_source[0].source.as_mut().unwrap().name = "grpc".into();
    let status = writer
        .ingest(IngestRequest {
            events: wrong_source,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("events[0].source.name"),
        "{}",
        status.message()
    );
    let mut wrong_type = one();
    wrong_type[0].r#type = "other".into();
    let status = writer
        .ingest(IngestRequest {
            events: wrong_type,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        status.message().contains("events[0].type"),
        "{}",
        status.message()
    );
    let status = writer.search(all()).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "an ingest token reads nothing"
    );
    let status = writer
        .get_event(GetEventRequest {
            id: "emma-acc-1-0".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // Token management is the admin's alone.
    for token in [&personal, &app, &ingest_only] {
        let mut tokens = tokens_client(&server, token).await;
        assert_eq!(
            tokens
                .list_tokens(ListTokensRequest {})
                .await
                .unwrap_err()
                .code(),
            Code::PermissionDenied
        );
        let create = tokens
            .create_token(CreateTokenRequest {
                kind: TokenKind::Admin as i32,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(create.code(), Code::PermissionDenied);
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_one_answer_everywhere_and_revocation_is_immediate() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let (id, app) = create(&server, TokenKind::App, "emma", "acc-1").await;
    let mut app_client = server.client_with(&app).await;
    app_client
        .search(all())
        .await
        .expect("valid before revocation");

    let mut admin_tokens = tokens_client(&server, &server.admin_token()).await;
    let listed = admin_tokens
        .list_tokens(ListTokensRequest {})
        .await
        .unwrap()
        .into_inner()
        .tokens;
    assert_eq!(listed.len(), 2);
    admin_tokens
        .revoke_token(RevokeTokenRequest { id: id.clone() })
        .await
        .unwrap();
    let unknown = admin_tokens
        .revoke_token(RevokeTokenRequest { id: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    let wrong_secret = format!("{}A", &app[..app.len() - 1]);
    let mut answers = Vec::new();
    for token in [
        app.as_str(),
        "",
        "garbage",
        "adt.unknown.secret",
        wrong_secret.as_str(),
    ] {
        let mut client = server.client_with(token).await;
        let search = client.search(all()).await.unwrap_err();
        let get = client
            .get_event(GetEventRequest { id: "x".into() })
            .await
            .unwrap_err();
        let write = client.ingest(IngestRequest::default()).await.unwrap_err();
        let mut tokens = tokens_client(&server, token).await;
        let manage = tokens.list_tokens(ListTokensRequest {}).await.unwrap_err();
        for status in [search, get, write, manage] {
            assert_eq!(status.code(), Code::Unauthenticated, "{token:?}");
            answers.push(status.message().to_owned());
        }
    }
    answers.dedup();
    assert_eq!(
        answers.len(),
        1,
        "one answer whatever was wrong: {answers:?}"
    );
    // No header at all.
    let channel = tonic::transport::Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut bare = auditd::proto::audit_log_client::AuditLogClient::new(channel);
    assert_eq!(
        bare.search(all()).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_is_audited_once_and_visible_to_admin_and_to_the_searcher() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let mut admin = server.client().await;
    ingest(&mut admin, dataset(), WaitFor::Searchable).await;
    let (token_id, app) = create(&server, TokenKind::App, "emma", "acc-1").await;
    let mut app_client = server.client_with(&app).await;

    let trail = |action: &str| SearchRequest {
        types: vec![TRAIL_TYPE.into()],
        actions: vec![action.into()],
        access_ids: vec!["acc-1".into()],
        limit: 1_000,
        ..Default::default()
    };
    app_client
        .search(SearchRequest {
            subjects: vec!["emma".into()],
            text: "events".into(),
            ..all()
        })
        .await
        .unwrap();
    // The trail event is durable before the reply; make it searchable.
    ingest(&mut admin, one_fresh_event(), WaitFor::Searchable).await;

    let (seen_by_admin, _) = search_all(&mut admin, trail("audit.search")).await;
    assert_eq!(
        seen_by_admin.len(),
        1,
        "exactly one audit.search by the app token"
    );
    let event = &seen_by_admin[0];
    assert_eq!(event.subject, "emma");
    assert_eq!(event.attributes["token_id"], token_id);
    assert_eq!(event.query["subjects"], "emma");
    assert_eq!(event.query["text"], "events");
    assert_eq!(event.source.as_ref().unwrap().ip, "127.0.0.1");
    assert_eq!(event.status, 200);
    // The token's own scope sees its trail (its own second search adds one).
    let (seen_by_app, _) = search_all(&mut app_client, trail("audit.search")).await;
    assert!(seen_by_app.iter().any(|e| e.id == event.id));
    // A search without `types` leaves the trail out.
    let (plain, _) = search_all(&mut admin, all()).await;
    assert!(plain.iter().all(|e| e.r#type != TRAIL_TYPE));
    // A refused read is audited with its outcome.
    let _ = app_client
        .search(SearchRequest {
            ips: vec!["bad".into()],
            ..all()
        })
        .await
        .unwrap_err();
    ingest(&mut admin, one_fresh_event(), WaitFor::Searchable).await;
    let (seen, _) = search_all(
        &mut admin,
        SearchRequest {
            status_min: Some(400),
            ..trail("audit.search")
        },
    )
    .await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].error_id, "InvalidArgument");
    server.stop().await.unwrap();
}

/// A read-only spell commits the trail of reads only every
/// `index.trail_commit_interval_ms`, not at each commit tick; any other
/// event brings the waiting trail along at the usual pace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trail_of_a_read_only_spell_waits_for_the_next_other_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.index.trail_commit_interval_ms = 3_600_000;
    let server = TestServer::start(config).await;
    let mut admin = server.client().await;
    ingest(&mut admin, dataset(), WaitFor::Searchable).await;
    let trail = SearchRequest {
        types: vec![TRAIL_TYPE.into()],
        limit: 1_000,
        ..Default::default()
    };
    admin.search(all()).await.unwrap();
    // Ten commit ticks (100 ms each): none commits a trail alone that is
    // younger than an hour.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    // (A wait, not a poll: what is checked is that nothing happens.)
    let (seen, _) = search_all(&mut admin, trail).await;
    assert!(seen.is_empty(), "the trail alone waited: {seen:?}");

    // An event that waits only for durability is committed at the next
    // tick, and the trail with it.
    ingest(&mut admin, one_fresh_event(), WaitFor::Durable).await;
    // Polls until the trail event is searchable (panics past DEADLINE).
    trail_events(&mut admin, auditd::app::trail::SEARCH, 1).await;
    server.stop().await.unwrap();
}
