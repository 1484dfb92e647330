//! The HTTP/JSON API against its gRPC twin on the same data: the same
//! events, counts, errors (with the same field names), scope and trail.

mod common;

use std::time::Duration;

use auditd::json::JsonEvent;
use auditd::proto::{
    aggregation, AggregateRequest, Aggregation, EventFilter, ExportRequest, GetEventRequest,
    Outcome, SearchRequest, TermsAggregation, TokenKind, WaitFor,
};
use common::*;
use futures::StreamExt;
use serde_json::{json, Value};

/// The events of the generated workload: one type, so that filters on it
/// leave the read trail out.
const TYPE: &str = "audit-log/pryv-api";

struct Http {
    base: String,
    token: String,
    client: reqwest::Client,
}

struct Answer {
    status: u16,
    content_type: String,
    body: Value,
}

impl Http {
    fn new(server: &TestServer, token: &str) -> Http {
        Http {
            base: format!("http://{}", server.http),
            token: token.trim().to_owned(),
            client: reqwest::Client::new(),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.bearer_auth(&self.token).send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer {
            status,
            content_type,
            body,
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(self.client.get(format!("{}{path}", self.base)))
            .await
    }

    async fn post(&self, path: &str, body: &Value) -> Answer {
        self.send(self.client.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    async fn text(&self, path: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }
}

/// The events as the HTTP API writes them.
fn as_json(events: Vec<auditd::proto::AuditEvent>) -> Vec<Value> {
    events
        .into_iter()
        .map(|e| serde_json::to_value(JsonEvent::from_proto(e)).unwrap())
        .collect()
}

/// Every page of an HTTP search, following `nextPageToken`.
async fn http_search_all(http: &Http, query: &str) -> (Vec<Value>, u64) {
    let mut events = Vec::new();
    let mut token = String::new();
    loop {
        let mut path = format!("/v1/events?{query}");
        if !token.is_empty() {
            path.push_str(&format!("&pageToken={token}"));
        }
        let answer = http.get(&path).await;
        assert_eq!(answer.status, 200, "{path}: {:?}", answer.body);
        events.extend(answer.body["events"].as_array().unwrap().iter().cloned());
        token = answer.body["nextPageToken"].as_str().unwrap().to_owned();
        if token.is_empty() {
            return (events, answer.body["totalHits"].as_u64().unwrap());
        }
    }
}

/// The problem's single violation's field, checking the problem's shape.
fn problem_field(answer: &Answer) -> String {
    assert_eq!(
        answer.content_type, "application/problem+json",
        "{:?}",
        answer.body
    );
    assert_eq!(
        answer.body["status"].as_u64().unwrap() as u16,
        answer.status
    );
    answer.body["violations"][0]["field"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn start() -> (tempfile::TempDir, TestServer) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    (dir, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_as_its_grpc_twin() {
    let (_dir, server) = start().await;
    let http = Http::new(&server, &server.admin_token());
    let mut grpc = server.client().await;

    // Ingest: JSON with a batch id (a retry is answered with the same
    // ids), then NDJSON.
    let events = generated(600, 7, 200);
    let body = json!({
        "events": as_json(events[..400].to_vec()),
        "batchId": "b-1",
        "waitFor": "searchable",
    });
    let first = http.post("/v1/events", &body).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(first.body["accepted"], 400);
    let retry = http.post("/v1/events", &body).await;
    assert_eq!(retry.body["ids"], first.body["ids"]);
    let ndjson: String = events[400..]
        .iter()
        .map(|e| serde_json::to_string(&JsonEvent::from_proto(e.clone())).unwrap() + "\n")
        .collect();
    let response = http
        .client
        .post(format!("{}/v1/events?waitFor=searchable", http.base))
        .bearer_auth(&http.token)
        .header("content-type", "application/x-ndjson")
        .body(ndjson)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply["accepted"], 200);

    // Search: the same events, page by page, for each kind of filter.
    let sample = &events[17];
    let ip: std::net::Ipv4Addr = sample.source.as_ref().unwrap().ip.parse().unwrap();
    let [a, b, _, _] = ip.octets();
    let block = format!("{a}.{b}.0.0/16");
    let cases: Vec<(String, SearchRequest)> = vec![
        (format!("type={TYPE}"), SearchRequest::default()),
        (
            format!("type={TYPE}&action={}", sample.action),
            SearchRequest {
                actions: vec![sample.action.clone()],
                ..Default::default()
            },
        ),
        (
            format!("type={TYPE}&accessId={}&ascending=true", sample.access_id),
            SearchRequest {
                access_ids: vec![sample.access_id.clone()],
                ascending: true,
                ..Default::default()
            },
        ),
        (
            format!("type={TYPE}&subject={}&outcome=success", sample.subject),
            SearchRequest {
                subjects: vec![sample.subject.clone()],
                outcome: Outcome::Success as i32,
                ..Default::default()
            },
        ),
        (
            format!("type={TYPE}&ip={block}&statusMin=200&statusMax=299"),
            SearchRequest {
                ips: vec![block.clone()],
                status_min: Some(200),
                status_max: Some(299),
                ..Default::default()
            },
        ),
        (
            format!("type={TYPE}&query=status%3A403&fromTime=0&toTime=4102444800"),
            SearchRequest {
                query: "status:403".into(),
                from_time: Some(prost_types::Timestamp::default()),
                to_time: Some(prost_types::Timestamp {
                    seconds: 4_102_444_800,
                    nanos: 0,
                }),
                ..Default::default()
            },
        ),
    ];
    for (query, request) in cases {
        let request = SearchRequest {
            types: vec![TYPE.into()],
            limit: 70,
            ..request
        };
        let (want, want_total) = search_all(&mut grpc, request).await;
        let (got, total) = http_search_all(&http, &format!("{query}&limit=70")).await;
        assert!(!want.is_empty(), "{query} matches something");
        assert_eq!(got, as_json(want), "{query}");
        assert_eq!(total, want_total, "{query}");
    }
    let exact = http
        .get(&format!("/v1/events?type={TYPE}&limit=1&exactTotal"))
        .await;
    assert_eq!(exact.body["totalHits"], 600);
    assert_eq!(exact.body["totalHitsIsLowerBound"], false);

    // GetEvent.
    let id = first.body["ids"][3].as_str().unwrap();
    let got = http.get(&format!("/v1/events/{id}")).await;
    let want = grpc
        .get_event(GetEventRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.body, as_json(vec![want])[0]);
    let missing = http.get("/v1/events/no-such-event").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body["code"], "NotFound");

    // Aggregate.
    let got = http
        .post(
            "/v1/aggregate",
            &json!({
                "filter": {"types": [TYPE]},
                "aggregations": [
                    {"name": "actions", "terms": {"field": "action", "size": 5},
                     "subAggregations": [{"name": "daily", "dateHistogram": {"interval": "1d"}}]},
                    {"name": "subjects", "cardinality": {"field": "subject"}},
                ],
            }),
        )
        .await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    let want = grpc
        .aggregate(AggregateRequest {
            filter: Some(EventFilter {
                types: vec![TYPE.into()],
                ..Default::default()
            }),
            aggregations: vec![
                Aggregation {
                    name: "actions".into(),
                    kind: Some(aggregation::Kind::Terms(TermsAggregation {
                        field: "action".into(),
                        size: 5,
                    })),
                    sub_aggregations: vec![Aggregation {
                        name: "daily".into(),
                        kind: Some(aggregation::Kind::DateHistogram(
                            auditd::proto::DateHistogramAggregation {
                                interval: Some(prost_types::Duration {
                                    seconds: 86_400,
                                    nanos: 0,
                                }),
                            },
                        )),
                        sub_aggregations: vec![],
                    }],
                },
                Aggregation {
                    name: "subjects".into(),
                    kind: Some(aggregation::Kind::Cardinality(
                        auditd::proto::CardinalityAggregation {
                            field: "subject".into(),
                        },
                    )),
                    sub_aggregations: vec![],
                },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.body["totalHits"], want.total_hits);
    let terms = &want.results["actions"];
    let buckets = got.body["results"]["actions"]["buckets"]
        .as_array()
        .unwrap();
    assert_eq!(buckets.len(), terms.buckets.len());
    for (got, want) in buckets.iter().zip(&terms.buckets) {
        assert_eq!(got["key"], want.key.as_str());
        assert_eq!(got["count"], want.count);
        let days = got["sub"]["daily"]["buckets"].as_array().unwrap();
        let want_days = &want.sub["daily"].buckets;
        assert_eq!(days.len(), want_days.len());
        for (d, w) in days.iter().zip(want_days) {
            assert_eq!(d["count"], w.count);
            assert_eq!(d["start"], w.start.unwrap().seconds as f64);
        }
    }
    assert_eq!(
        got.body["results"]["actions"]["otherCount"],
        terms.other_count
    );
    assert_eq!(
        got.body["results"]["subjects"]["value"],
        want.results["subjects"].value
    );

    // Export: the same bytes as gRPC's, in every format.
    for format in auditd::formats::Format::ALL {
        let (status, got) = http
            .text(&format!(
                "/v1/export?format={}&type={TYPE}&ascending=true",
                format.name()
            ))
            .await;
        assert_eq!(status, 200, "{}", format.name());
        let mut chunks = grpc
            .export(ExportRequest {
                filter: Some(EventFilter {
                    types: vec![TYPE.into()],
                    ..Default::default()
                }),
                format: format.to_proto() as i32,
                ascending: true,
                resume_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let mut want = Vec::new();
        while let Some(chunk) = chunks.message().await.unwrap() {
            want.extend(chunk.data);
        }
        assert_eq!(got, String::from_utf8(want).unwrap(), "{}", format.name());
    }
    let head = http
        .client
        .get(format!("{}/v1/export?format=csv", http.base))
        .bearer_auth(&http.token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.headers()["content-disposition"],
        "attachment; filename=\"auditd-export.csv\""
    );
    assert!(head.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));

    // Tokens: create, list, use, revoke.
    let created = http
        .post(
            "/v1/tokens",
            &json!({"kind": "app", "subject": sample.subject, "accessId": sample.access_id, "name": "t"}),
        )
        .await;
    assert_eq!(created.status, 200, "{:?}", created.body);
    assert_eq!(created.body["token"]["kind"], "app");
    let token_id = created.body["token"]["id"].as_str().unwrap().to_owned();
    let listed = http.get("/v1/tokens").await;
    assert!(listed.body["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["id"] == token_id.as_str()));
    let app = Http::new(&server, created.body["secret"].as_str().unwrap());
    let (scoped, _) = http_search_all(&app, &format!("type={TYPE}&limit=1000")).await;
    assert!(!scoped.is_empty());
    assert!(scoped
        .iter()
        .all(|e| e["subject"] == sample.subject.as_str()
            && e["accessId"] == sample.access_id.as_str()));
    let revoke = http
        .send(
            http.client
                .delete(format!("{}/v1/tokens/{token_id}", http.base)),
        )
        .await;
    assert_eq!(revoke.status, 200);
    assert_eq!(revoke.body["revoked"], true);
    assert_eq!(app.get("/v1/events").await.status, 401);

    // The trail: HTTP reads are audited like gRPC's, with `http` as the
    // source name (searchable a commit after the answer).
    let request = SearchRequest {
        types: vec![auditd::app::trail::TRAIL_TYPE.into()],
        source_names: vec!["http".into()],
        limit: 1_000,
        ..Default::default()
    };
    let actions = [
        "audit.search",
        "audit.get_event",
        "audit.aggregate",
        "audit.export",
        "audit.token.create",
    ];
    let audited = async {
        loop {
            let (trail, _) = search_all(&mut grpc, request.clone()).await;
            if actions.iter().all(|a| trail.iter().any(|e| e.action == *a)) {
                return trail;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let trail = tokio::time::timeout(DEADLINE, audited)
        .await
        .expect("every HTTP read left its trail");
    assert!(trail
        .iter()
        .all(|e| e.source.as_ref().unwrap().name == "http"));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_problems_naming_the_same_fields_as_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.max_message_bytes = 64 * 1024;
    let server = TestServer::start(config).await;
    let http = Http::new(&server, &server.admin_token());
    let mut grpc = server.client().await;

    // Search fields the search itself rejects: the same field names.
    let cases: Vec<(&str, SearchRequest)> = vec![
        (
            "statusMin=500&statusMax=400",
            SearchRequest {
                status_min: Some(500),
                status_max: Some(400),
                ..Default::default()
            },
        ),
        (
            "query=status%3A(",
            SearchRequest {
                query: "status:(".into(),
                ..Default::default()
            },
        ),
        (
            "ip=10.0.0.0%2F99",
            SearchRequest {
                ips: vec!["10.0.0.0/99".into()],
                ..Default::default()
            },
        ),
        (
            "text=%2B%2B%2B",
            SearchRequest {
                text: "+++".into(),
                ..Default::default()
            },
        ),
        (
            "pageToken=nonsense",
            SearchRequest {
                page_token: "nonsense".into(),
                ..Default::default()
            },
        ),
        (
            "fromTime=1800000000&toTime=1700000000",
            SearchRequest {
                from_time: Some(prost_types::Timestamp {
                    seconds: 1_800_000_000,
                    nanos: 0,
                }),
                to_time: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 0,
                }),
                ..Default::default()
            },
        ),
    ];
    for (query, request) in cases {
        let answer = http.get(&format!("/v1/events?{query}")).await;
        assert_eq!(answer.status, 400, "{query}: {:?}", answer.body);
        let status = grpc.search(request).await.unwrap_err();
        let details = tonic_types::StatusExt::get_details_bad_request(&status).unwrap();
        assert_eq!(
            problem_field(&answer),
            details.field_violations[0].field,
            "{query}"
        );
        assert_eq!(answer.body["code"], "InvalidArgument");
    }
    // What only HTTP can get wrong names the field gRPC would.
    for (query, field) in [
        ("fromTime=yesterday", "from_time"),
        ("limit=many", "limit"),
        ("outcome=maybe", "outcome"),
        ("acessId=typo", "acessId"),
    ] {
        let answer = http.get(&format!("/v1/events?{query}")).await;
        assert_eq!(answer.status, 400, "{query}");
        assert_eq!(problem_field(&answer), field, "{query}");
    }

    // Ingest: a bad event is named by its place; nothing is stored.
    let bad = http
        .post(
            "/v1/events",
            &json!({"events": [{"action": "a"}, {"action": "b", "acessId": "typo"}]}),
        )
        .await;
    assert_eq!(bad.status, 400);
    assert!(
        problem_field(&bad).starts_with("events[1]"),
        "{:?}",
        bad.body
    );
    let invalid = http
        .post(
            "/v1/events",
            &json!({"events": [{"action": "a"}, {"action": "", "subject": "s"}]}),
        )
        .await;
    assert_eq!(invalid.status, 400);
    assert_eq!(problem_field(&invalid), "events[1].action");
    assert_eq!(count_stored(&mut grpc).await, 0);
    let wrong_type = http
        .send(
            http.client
                .post(format!("{}/v1/events", http.base))
                .header("content-type", "text/plain")
                .body("x"),
        )
        .await;
    assert_eq!(wrong_type.status, 400);
    assert_eq!(problem_field(&wrong_type), "content-type");
    let huge = json!({"events": [{"action": "a", "errorMessage": "x".repeat(100_000)}]});
    let too_large = http.post("/v1/events", &huge).await;
    assert_eq!(too_large.status, 413, "{:?}", too_large.body);
    assert_eq!(too_large.content_type, "application/problem+json");

    // One answer for every bad token, and for none.
    let mut bodies = Vec::new();
    for token in ["", "adt.bogus.token", "not even a token"] {
        let anonymous = Http::new(&server, token);
        let request = if token.is_empty() {
            anonymous
                .client
                .get(format!("{}/v1/events", anonymous.base))
        } else {
            anonymous
                .client
                .get(format!("{}/v1/events", anonymous.base))
                .bearer_auth(token)
        };
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{token:?}");
        bodies.push(response.text().await.unwrap());
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");

    // Permission: an ingest token reads nothing; a reader manages no
    // tokens.
    let (_, writer) = create(&server, TokenKind::Ingest, "", "").await;
    let writer = Http::new(&server, &writer);
    let denied = writer.get("/v1/events").await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.body["code"], "PermissionDenied");
    let (_, reader) = create(&server, TokenKind::Personal, "emma", "").await;
    let reader = Http::new(&server, &reader);
    assert_eq!(reader.get("/v1/tokens").await.status, 403);
    assert_eq!(
        reader
            .post("/v1/events", &json!({"events": [{"action": "a"}]}))
            .await
            .status,
        403
    );

    // Unknown routes, and the headers every answer carries.
    let nowhere = http.get("/v1/nowhere").await;
    assert_eq!(nowhere.status, 404);
    assert_eq!(nowhere.content_type, "application/problem+json");
    let response = reqwest::get(format!("{}/healthz", http.base))
        .await
        .unwrap();
    for header in [
        "content-security-policy",
        "x-content-type-options",
        "referrer-policy",
        "x-frame-options",
    ] {
        assert!(response.headers().contains_key(header), "{header}");
    }
    server.stop().await.unwrap();
}

/// The events of one SSE stream, as (id, data) pairs, until `want` data
/// events came.
async fn sse_events(response: reqwest::Response, want: usize) -> Vec<(String, Value)> {
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    let read = async {
        while events.len() < want {
            let chunk = body.next().await.expect("the stream ended").unwrap();
            buffer.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let (mut id, mut data) = (String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ").or(line.strip_prefix("id:")) {
                        id = v.to_owned();
                    } else if let Some(v) =
                        line.strip_prefix("data: ").or(line.strip_prefix("data:"))
                    {
                        data.push_str(v);
                    }
                }
                if !data.is_empty() {
                    events.push((id, serde_json::from_str(&data).unwrap()));
                }
            }
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("the tail delivered in time");
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_is_server_sent_events_and_resumes_from_last_event_id() {
    let (_dir, server) = start().await;
    let http = Http::new(&server, &server.admin_token());
    let mut grpc = server.client().await;
    let tail = |last_event_id: Option<String>| {
        let mut request = http
            .client
            .get(format!("{}/v1/tail?type={TYPE}", http.base))
            .bearer_auth(&http.token);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        request.send()
    };
    let response = tail(None).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = generated(50, 3, 50);
    let ids = ingest(&mut grpc, events, WaitFor::Durable).await.ids;
    let got = sse_events(response, 50).await;
    let got_ids: Vec<&str> = got.iter().map(|(_, e)| e["id"].as_str().unwrap()).collect();
    assert_eq!(got_ids, ids, "every event once, in the log's order");
    let seqs: Vec<u64> = got
        .iter()
        .map(|(_, e)| e["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));

    // Resume after the 20th event: exactly the rest.
    let resumed = tail(Some(got[19].0.clone())).await.unwrap();
    let rest = sse_events(resumed, 30).await;
    let rest_ids: Vec<&str> = rest
        .iter()
        .map(|(_, e)| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(rest_ids, ids[20..]);

    // A bad resume token is a problem before the stream starts.
    let bad = tail(Some("nonsense".into())).await.unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["violations"][0]["field"], "resume_token");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connections_past_the_limit_are_closed_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.max_http_connections = 2;
    let server = TestServer::start(config).await;
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(server.http).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "a slot serves");
        held.push(stream);
    }
    let mut extra = tokio::net::TcpStream::connect(server.http).await.unwrap();
    let _ = extra.write_all(request).await;
    let mut buf = [0u8; 512];
    let read = tokio::time::timeout(DEADLINE, extra.read(&mut buf))
        .await
        .expect("closed at once");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the third is closed unanswered"
    );
    // A slot comes back when a held connection closes.
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (code, _) = tokio::time::timeout(Duration::from_secs(5), async {
            let mut stream = tokio::net::TcpStream::connect(server.http).await.unwrap();
            stream.write_all(request).await.unwrap();
            let mut buf = [0u8; 512];
            let n = stream.read(&mut buf).await.unwrap_or(0);
            (buf[..n].starts_with(b"HTTP/1.1 200"), ())
        })
        .await
        .unwrap_or((false, ()));
        if code {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the slot came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await.unwrap();
}

/// Every token kind against every route: the status each gets (2xx is
/// written 200), as the gRPC matrix in tests/auth.rs has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_token_kind_gets_what_it_may_on_every_route() {
    let (_dir, server) = start().await;
    let mut grpc = server.client().await;
    let ids = ingest(&mut grpc, generated(20, 9, 20), WaitFor::Searchable)
        .await
        .ids;
    let sample = generated(20, 9, 20).swap_remove(0);
    let (_, personal) = create(&server, TokenKind::Personal, &sample.subject, "").await;
    let (_, app) = create(&server, TokenKind::App, &sample.subject, &sample.access_id).await;
    let (_, shared) = create(
        &server,
        TokenKind::Shared,
        &sample.subject,
        &sample.access_id,
    )
    .await;
    let (_, writer) = create(&server, TokenKind::Ingest, "", "").await;
    let admin = server.admin_token();
    let event = json!({"events": [{"action": "a", "type": TYPE, "source": {"name": "http", "ip": "10.0.0.1"}}]});
    let aggregate = json!({"aggregations": [{"name": "a", "terms": {"field": "action"}}]});
    let new_token = json!({"kind": "personal", "subject": "x"});
    let id = &ids[0];
    // (route, admin, personal, app, shared, ingest, no token)
    let matrix: Vec<(&str, &str, [u16; 6])> = vec![
        ("POST", "/v1/events", [200, 403, 403, 403, 200, 401]),
        ("GET", "/v1/events", [200, 200, 200, 200, 403, 401]),
        ("GET", "/v1/events/{id}", [200, 200, 200, 200, 403, 401]),
        ("POST", "/v1/aggregate", [200, 200, 200, 200, 403, 401]),
        (
            "GET",
            "/v1/export?format=csv",
            [200, 200, 200, 200, 403, 401],
        ),
        ("GET", "/v1/tail", [200, 200, 200, 200, 403, 401]),
        ("POST", "/v1/tokens", [200, 403, 403, 403, 403, 401]),
        ("GET", "/v1/tokens", [200, 403, 403, 403, 403, 401]),
        ("DELETE", "/v1/tokens/nope", [404, 403, 403, 403, 403, 401]),
        ("GET", "/v1/openapi.json", [200, 200, 200, 200, 200, 200]),
    ];
    let tokens = [
        admin.as_str(),
        personal.as_str(),
        app.as_str(),
        shared.as_str(),
        writer.as_str(),
        "",
    ];
    for (method, route, want) in matrix {
        let path = route.replace("{id}", id);
        for (token, want) in tokens.iter().zip(want) {
            let http = Http::new(&server, token);
            let url = format!("{}{path}", http.base);
            let mut request = match method {
                "POST" => http.client.post(&url).json(match route {
                    "/v1/events" => &event,
                    "/v1/aggregate" => &aggregate,
                    _ => &new_token,
                }),
                "DELETE" => http.client.delete(&url),
                _ => http.client.get(&url),
            };
            if !token.is_empty() {
                request = request.bearer_auth(token.trim());
            }
            // Headers only: a tail's body never ends.
            let got = request.send().await.unwrap().status().as_u16();
            let got = if (200..300).contains(&got) { 200 } else { got };
            assert_eq!(
                got,
                want,
                "{method} {route} with token #{}",
                tokens.iter().position(|t| t == token).unwrap()
            );
        }
    }
    server.stop().await.unwrap();
}
