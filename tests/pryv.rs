//! The Pryv-compatible audit routes, case by case from Pryv's documented
//! behaviour (its audit-logs guide, the `events.get` and `streams.get`
//! reference, and open-pryv.io's audit tests): stream queries, defaults,
//! error ids, personal versus app tokens.

mod common;

use auditd::proto::{AuditEvent, Source, TokenKind, WaitFor};
use common::*;
use serde_json::Value;

const SUBJECT: &str = "emma";

/// 30 events of emma (three accesses × two actions × five), the newest
/// last, and 5 of liam.
fn dataset() -> Vec<AuditEvent> {
    let mut events = Vec::new();
    for n in 0..35i64 {
        let (subject, access, action) = if n < 30 {
            (
                SUBJECT,
                format!("acc-{}", n % 3),
                ["events.get", "streams.update"][(n / 3 % 2) as usize],
            )
        } else {
            ("liam", "acc-9".to_owned(), "events.get")
        };
        events.push(AuditEvent {
            id: format!("ev-{n:02}"),
            time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000 + n * 60,
                nanos: 0,
            }),
            r#type: "audit-log/pryv-api".into(),
            action: action.into(),
            access_id: access,
            subject: subject.into(),
            source: Some(Source {
                name: "http".into(),
                ip: "85.5.225.68".into(),
            }),
            query: [("limit".to_owned(), "100".to_owned())].into(),
            status: if n % 5 == 0 { 403 } else { 200 },
            error_id: if n % 5 == 0 {
                "forbidden".into()
            } else {
                String::new()
            },
            error_message: if n % 5 == 0 {
                "Access session has expired.".into()
            } else {
                String::new()
            },
            ..Default::default()
        });
    }
    events
}

struct Pryv {
    base: String,
    client: reqwest::Client,
}

impl Pryv {
    /// `GET path` with Pryv's plain `Authorization: <token>` header.
    async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .header("authorization", token.trim())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }
}

fn enc(json: &str) -> String {
    form_urlencoded::byte_serialize(json.as_bytes()).collect()
}

fn ids(body: &Value) -> Vec<String> {
    body["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events in {body}"))
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

fn error_id(body: &Value) -> &str {
    body["error"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_get_over_the_audit_store_answers_as_pryv() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let mut grpc = server.client().await;
    ingest(&mut grpc, dataset(), WaitFor::Searchable).await;
    let (_, personal) = create(&server, TokenKind::Personal, SUBJECT, "").await;
    let (_, app) = create(&server, TokenKind::App, SUBJECT, "acc-1").await;
    let pryv = Pryv {
        base: format!("http://{}", server.http),
        client: reqwest::Client::new(),
    };
    let all = enc(r#"[":_audit:"]"#);

    // The shape of one audit event, newest first, Pryv's meta beside.
    let (status, body) = pryv
        .get(
            &format!("/{SUBJECT}/events?streams={all}&limit=1"),
            &personal,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let event = &body["events"][0];
    assert_eq!(event["id"], ":_audit:ev-29");
    assert_eq!(
        event["streamIds"],
        serde_json::json!([":_audit:access-acc-2", ":_audit:action-streams.update"])
    );
    assert_eq!(event["type"], "audit-log/pryv-api");
    assert_eq!(event["time"], 1_700_001_740.0);
    assert_eq!(event["content"]["source"]["ip"], "85.5.225.68");
    assert_eq!(event["content"]["action"], "streams.update");
    assert_eq!(event["content"]["query"]["limit"], "100");
    assert_eq!(event["content"]["status"], 200);
    assert!(body["meta"]["apiVersion"].is_string());
    let (_, failed) = pryv
        .get(
            &format!("/{SUBJECT}/events?streams={all}&limit=1&toTime=1700001501"),
            &personal,
        )
        .await;
    assert_eq!(failed["events"][0]["content"]["error"]["id"], "forbidden");
    assert_eq!(
        failed["events"][0]["content"]["error"]["message"],
        "Access session has expired."
    );

    // Defaults: with no time range and no limit, the 20 newest.
    let (_, body) = pryv
        .get(&format!("/{SUBJECT}/events?streams={all}"), &personal)
        .await;
    let newest: Vec<String> = (10..30)
        .rev()
        .map(|n| format!(":_audit:ev-{n:02}"))
        .collect();
    assert_eq!(ids(&body), newest);
    // With a range, everything in it; sortAscending; skip.
    let (_, body) = pryv
        .get(
            &format!("/{SUBJECT}/events?streams={all}&fromTime=1700000000&toTime=1700000300&sortAscending=true"),
            &personal,
        )
        .await;
    assert_eq!(
        ids(&body),
        [
            ":_audit:ev-00",
            ":_audit:ev-01",
            ":_audit:ev-02",
            ":_audit:ev-03",
            ":_audit:ev-04"
        ]
    );
    let (_, body) = pryv
        .get(
            &format!("/{SUBJECT}/events?streams={all}&limit=3&skip=2"),
            &personal,
        )
        .await;
    assert_eq!(
        ids(&body),
        [":_audit:ev-27", ":_audit:ev-26", ":_audit:ev-25"]
    );
    // toTime alone looks back one day.
    let (_, body) = pryv
        .get(
            &format!("/{SUBJECT}/events?streams={all}&toTime=1700086700"),
            &personal,
        )
        .await;
    assert_eq!(
        ids(&body).len(),
        25,
        "only the events of the day before toTime"
    );
    // No streams: Pryv's `*`, which never holds audit events.
    let (status, body) = pryv.get(&format!("/{SUBJECT}/events"), &personal).await;
    assert_eq!((status, ids(&body).len()), (200, 0));

    // Stream ids and stream queries.
    let (_, body) = pryv
        .get(
            &format!(
                "/{SUBJECT}/events?streams={}&limit=100",
                enc(r#"[":_audit:access-acc-0"]"#)
            ),
            &personal,
        )
        .await;
    assert_eq!(ids(&body).len(), 10);
    let query = enc(
        r#"{"any":[":_audit:access-acc-0",":_audit:access-acc-1"],"all":[":_audit:action-events.get"]}"#,
    );
    let (_, body) = pryv
        .get(
            &format!("/{SUBJECT}/events?streams={query}&limit=100"),
            &personal,
        )
        .await;
    let want: Vec<String> = (0..30)
        .rev()
        .filter(|n| n % 3 != 2 && n / 3 % 2 == 0)
        .map(|n| format!(":_audit:ev-{n:02}"))
        .collect();
    assert_eq!(ids(&body), want);
    let not = enc(r#"[{"any":[":_audit:"],"not":[":_audit:action-events.get"]}]"#);
    let (_, body) = pryv
        .get(
            &format!("/{SUBJECT}/events?streams={not}&limit=100"),
            &personal,
        )
        .await;
    assert_eq!(ids(&body).len(), 15);
    let (_, body) = pryv
        .get(
            &format!("/{SUBJECT}/events?streams[]=:_audit:action-events.get&limit=100"),
            &personal,
        )
        .await;
    assert_eq!(
        ids(&body).len(),
        15,
        "streams[] as Pryv's HTTP form sends an array"
    );

    // Errors, with Pryv's ids.
    for (path, status, id) in [
        (
            format!("/{SUBJECT}/events?streams={}", enc(r#"["diary"]"#)),
            400,
            "invalid-request-structure",
        ),
        (
            format!(
                "/{SUBJECT}/events?streams={}",
                enc(r#"{"all":[":_audit:"]}"#)
            ),
            400,
            "invalid-request-structure",
        ),
        (
            format!("/{SUBJECT}/events?streams={}", enc("[not json")),
            400,
            "invalid-request-structure",
        ),
        (
            format!(
                "/{SUBJECT}/events?streams={}",
                enc(r#"[":_audit:elsewhere"]"#)
            ),
            400,
            "unknown-referenced-resource",
        ),
        (
            format!("/{SUBJECT}/events?streams={all}&fromTime=yesterday"),
            400,
            "invalid-parameters-format",
        ),
        (
            format!("/{SUBJECT}/events?streams={all}&colour=blue"),
            400,
            "invalid-parameters-format",
        ),
        (
            format!("/liam/events?streams={all}"),
            403,
            "invalid-access-token",
        ),
    ] {
        let (got, body) = pryv.get(&path, &personal).await;
        assert_eq!((got, error_id(&body)), (status, id), "{path}: {body}");
        assert!(body["meta"].is_object());
    }
    let (status, body) = pryv
        .get(&format!("/{SUBJECT}/events?streams={all}"), "")
        .await;
    assert_eq!((status, error_id(&body)), (401, "invalid-access-token"));
    let (status, body) = pryv
        .get(&format!("/{SUBJECT}/events?streams={all}"), "adt.nope.nope")
        .await;
    assert_eq!((status, error_id(&body)), (403, "invalid-access-token"));

    // An app token sees only its own access's events, even under
    // `:_audit:`, and may not name another access's stream.
    let (_, body) = pryv
        .get(&format!("/{SUBJECT}/events?streams={all}&limit=100"), &app)
        .await;
    assert_eq!(ids(&body).len(), 10);
    assert!(body["events"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["streamIds"][0] == ":_audit:access-acc-1"));
    let (status, body) = pryv
        .get(
            &format!(
                "/{SUBJECT}/events?streams={}",
                enc(r#"[":_audit:access-acc-2"]"#)
            ),
            &app,
        )
        .await;
    assert_eq!((status, error_id(&body)), (403, "forbidden"));
    // The token may also come as `auth`, as Pryv allows.
    let (status, body) = pryv
        .get(
            &format!("/{SUBJECT}/events?streams={all}&auth={}", app.trim()),
            "",
        )
        .await;
    assert_eq!((status, ids(&body).len()), (200, 10));

    // streams.get: the distinct accesses and actions, not for app tokens.
    let (status, body) = pryv
        .get(
            &format!("/{SUBJECT}/streams?parentId=:_audit:accesses"),
            &personal,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let streams: Vec<&str> = body["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        streams,
        [
            ":_audit:access-acc-0",
            ":_audit:access-acc-1",
            ":_audit:access-acc-2"
        ]
    );
    assert_eq!(body["streams"][0]["name"], "access-acc-0");
    assert_eq!(body["streams"][0]["parentId"], ":_audit:accesses");
    let (_, body) = pryv
        .get(
            &format!("/{SUBJECT}/streams?parentId=:_audit:actions"),
            &personal,
        )
        .await;
    assert_eq!(body["streams"].as_array().unwrap().len(), 2);
    let (status, body) = pryv
        .get(
            &format!("/{SUBJECT}/streams?parentId=:_audit:accesses"),
            &app,
        )
        .await;
    assert_eq!((status, error_id(&body)), (403, "forbidden"));

    // Each read went through the trail, as every other read does.
    let trail = trail_events(&mut grpc, "audit.search", 10).await;
    assert!(trail
        .iter()
        .any(|e| e.source.as_ref().unwrap().name == "http"));
    server.stop().await.unwrap();
}
