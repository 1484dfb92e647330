//! Export: equals Search-all for random filters in every format (each
//! parsed back), resumes after a cut with exactly the rest, keeps one
//! snapshot while ingest goes on, writes OCSF with every attribute API
//! Activity requires and CEF a spec parser reads, stays inside a scoped
//! token's scope, and leaves one trail event per call.

use std::collections::HashMap;

use auditd::formats::{Format, OCSF_REQUIRED};
use auditd::json::JsonEvent;
use auditd::proto::{EventFilter, ExportChunk, ExportFormat, ExportRequest, TokenKind, WaitFor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_stream::StreamExt;

use crate::common::oracle::{random_filter, search_request};
use crate::common::*;

fn proto_format(format: Format) -> ExportFormat {
    match format {
        Format::Ndjson => ExportFormat::Ndjson,
        Format::Ocsf => ExportFormat::Ocsf,
        Format::Ecs => ExportFormat::Ecs,
        Format::Cef => ExportFormat::Cef,
        Format::Csv => ExportFormat::Csv,
    }
}

/// Every chunk of an export, or the first `limit` of them.
async fn export(client: &mut Client, request: ExportRequest, limit: usize) -> Vec<ExportChunk> {
    let mut stream = client.export(request).await.expect("export").into_inner();
    let mut chunks = Vec::new();
    while chunks.len() < limit {
        match stream.next().await {
            Some(chunk) => chunks.push(chunk.expect("export chunk")),
            None => break,
        }
    }
    chunks
}

/// A CEF line split as the spec says: seven header fields separated by
/// unescaped `|`, then `key=value` pairs where a value runs up to the
/// space before the next unescaped `key=`. Written from the spec
/// ("Implementing ArcSight CEF"), not from auditd's writer.
fn parse_cef(line: &str) -> (Vec<String>, HashMap<String, String>) {
    let mut header = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars();
    while header.len() < 7 {
        match chars.next().expect("seven header fields") {
            '\\' => field.push(chars.next().expect("an escaped character")),
            '|' => header.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    let rest: String = chars.collect();
    // Positions of unescaped `=`; each key is the word before it.
    let bytes = rest.as_bytes();
    let mut equals = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'=' => {
                equals.push(i);
                i += 1
            }
            _ => i += 1,
        }
    }
    let mut pairs = HashMap::new();
    for (n, &eq) in equals.iter().enumerate() {
        let key_start = rest[..eq].rfind(' ').map_or(0, |s| s + 1);
        let value_end = match equals.get(n + 1) {
            Some(&next) => rest[..next]
                .rfind(' ')
                .expect("a space before the next key"),
            None => rest.len(),
        };
        let raw = &rest[eq + 1..value_end];
        let mut value = String::new();
        let mut cs = raw.chars();
        while let Some(c) = cs.next() {
            match c {
                '\\' => match cs.next().expect("an escaped character") {
                    'n' => value.push('\n'),
                    'r' => value.push('\r'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        }
        pairs.insert(rest[key_start..eq].to_owned(), value);
    }
    (header, pairs)
}

/// The event ids of an export's bytes, in order, read back as each
/// format's own reader would.
fn ids(format: Format, data: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(data).expect("UTF-8");
    let json = |line: &str| serde_json::from_str::<serde_json::Value>(line).expect("a JSON line");
    match format {
        Format::Ndjson => text
            .lines()
            .map(|l| JsonEvent::parse(l).expect("an auditd JSON line").id)
            .collect(),
        Format::Ocsf => text
            .lines()
            .map(|l| {
                let v = json(l);
                for path in OCSF_REQUIRED {
                    let found = path.split('.').try_fold(&v, |v, key| v.get(key));
                    assert!(found.is_some(), "OCSF line lacks {path}: {l}");
                }
                assert_eq!(v["class_uid"], 6003);
                assert_eq!(v["category_uid"], 6);
                let activity = v["activity_id"].as_u64().unwrap();
                assert!([1, 2, 3, 4, 99].contains(&activity));
                assert_eq!(v["type_uid"].as_u64(), Some(600_300 + activity));
                v["metadata"]["uid"].as_str().unwrap().to_owned()
            })
            .collect(),
        Format::Ecs => text
            .lines()
            .map(|l| {
                let v = json(l);
                assert!(v["@timestamp"].is_string() && v["ecs"]["version"].is_string());
                v["event"]["id"].as_str().unwrap().to_owned()
            })
            .collect(),
        Format::Cef => text
            .lines()
            .map(|l| {
                let (header, ext) = parse_cef(l);
                assert_eq!(&header[..3], ["CEF:0", "auditd", "auditd"]);
                assert!(ext.contains_key("rt"), "{l}");
                ext["externalId"].clone()
            })
            .collect(),
        Format::Csv => {
            let mut reader = csv::Reader::from_reader(data);
            let id = reader
                .headers()
                .unwrap()
                .iter()
                .position(|h| h == "id")
                .expect("an id column");
            reader
                .records()
                .map(|r| r.expect("an RFC 4180 record")[id].to_owned())
                .collect()
        }
    }
}

fn joined(chunks: &[ExportChunk]) -> Vec<u8> {
    chunks.iter().flat_map(|c| c.data.clone()).collect()
}

/// A server holding `events` generated events over several days, with
/// its data directory (removed when dropped).
async fn loaded_server(
    events: usize,
) -> (
    tempfile::TempDir,
    TestServer,
    Client,
    Vec<auditd::proto::AuditEvent>,
) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let mut client = server.client().await;
    let events = generated(events as u64, 41, 1_000);
    for chunk in events.chunks(500) {
        ingest(&mut client, chunk.to_vec(), WaitFor::Searchable).await;
    }
    (dir, server, client, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_equal_search_in_every_format() {
    let (_dir, server, mut client, events) = loaded_server(3_000).await;
    let mut rng = StdRng::seed_from_u64(3);
    for round in 0..25 {
        let format = Format::ALL[round % Format::ALL.len()];
        // Every third export is of everything: several pages.
        let filter = match round % 3 {
            0 => EventFilter::default(),
            _ => random_filter(&mut rng, &events),
        };
        let ascending = rng.random_bool(0.5);
        let mut search = search_request(filter.clone());
        search.ascending = ascending;
        search.limit = 1_000;
        let (expected, _) = search_all(&mut client, search).await;
        let expected: Vec<String> = expected.into_iter().map(|e| e.id).collect();
        let request = ExportRequest {
            filter: Some(filter.clone()),
            format: proto_format(format) as i32,
            ascending,
            resume_token: String::new(),
        };
        let chunks = export(&mut client, request, usize::MAX).await;
        let data = joined(&chunks);
        assert_eq!(
            ids(format, &data),
            expected,
            "round {round}: {format:?} {filter:?}"
        );
        let counted: u64 = chunks.iter().map(|c| c.events).sum();
        assert_eq!(counted as usize, expected.len());
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_export_resumes_with_exactly_the_rest_of_its_snapshot() {
    let (_dir, server, mut client, events) = loaded_server(3_000).await;
    let mut stored = events.len();
    for format in [Format::Csv, Format::Ndjson] {
        let request = ExportRequest {
            format: proto_format(format) as i32,
            ..Default::default()
        };
        let whole = ids(
            format,
            &joined(&export(&mut client, request.clone(), usize::MAX).await),
        );
        assert_eq!(whole.len(), stored);

        // Two chunks, then the connection goes; more events arrive before
        // the resume, and are not part of the snapshot.
        let first = export(&mut client, request.clone(), 2).await;
        let more = generated(500, 99, 500);
        ingest(&mut client, more, WaitFor::Searchable).await;
        stored += 500;
        let token = first.last().unwrap().resume_token.clone();
        let rest = export(
            &mut client,
            ExportRequest {
                resume_token: token,
                ..request
            },
            usize::MAX,
        )
        .await;
        let mut data = joined(&first);
        data.extend(joined(&rest));
        assert_eq!(ids(format, &data), whole, "{format:?}: resumed = whole");
    }
    let refused = client
        .export(ExportRequest {
            resume_token: "nonsense".into(),
            ..Default::default()
        })
        .await
        .expect_err("a bad token");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().starts_with("resume_token"), "{refused:?}");
    let refused = client
        .export(ExportRequest {
            format: 42,
            ..Default::default()
        })
        .await
        .expect_err("a bad format");
    assert!(refused.message().starts_with("format"), "{refused:?}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_while_ingest_runs_is_one_snapshot() {
    let (_dir, server, mut client, events) = loaded_server(3_000).await;
    let mut stream = client
        .export(ExportRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    let mut producer = server.client().await;
    for seed in 0..4 {
        ingest(
            &mut producer,
            generated(400, 200 + seed, 400),
            WaitFor::Searchable,
        )
        .await;
    }
    let mut data = first.data;
    while let Some(chunk) = stream.next().await {
        data.extend(chunk.unwrap().data);
    }
    let mut got = ids(Format::Ndjson, &data);
    got.sort();
    let mut expected: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    expected.sort();
    assert_eq!(
        got, expected,
        "the events of the first page's snapshot, no more"
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_export_stays_in_scope_and_each_call_is_audited() {
    let (_dir, server, mut admin, events) = loaded_server(2_000).await;
    let mine = events[3].clone();
    let (_, secret) = create(&server, TokenKind::Personal, &mine.subject, "").await;
    let mut personal = server.client_with(&secret).await;
    let chunks = export(
        &mut personal,
        ExportRequest {
            format: ExportFormat::Ecs as i32,
            ..Default::default()
        },
        usize::MAX,
    )
    .await;
    let got = ids(Format::Ecs, &joined(&chunks));
    let in_scope = events.iter().filter(|e| e.subject == mine.subject).count();
    assert_eq!(got.len(), in_scope);
    let by_id: HashMap<&str, &str> = events
        .iter()
        .map(|e| (e.id.as_str(), e.subject.as_str()))
        .collect();
    assert!(got.iter().all(|id| by_id[id.as_str()] == mine.subject));

    let (_, secret) = create(&server, TokenKind::Ingest, "", "").await;
    let refused = server
        .client_with(&secret)
        .await
        .export(ExportRequest::default())
        .await
        .expect_err("an ingest token cannot read");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    let trail = trail_events(&mut admin, "audit.export", 2).await;
    let done = trail
        .iter()
        .find(|e| e.status == 200)
        .expect("the completed export's trail event");
    assert_eq!(done.query["format"], "ecs");
    assert_eq!(done.query["events"], in_scope.to_string());
    assert_eq!(done.subject, mine.subject);
    server.stop().await.unwrap();
}

/// More events than one index read finds (`EXPORT_PAGE_HITS`): the
/// export crosses pages, in both orders, and a resume from a chunk in the
/// middle of a page continues right there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_export_crosses_pages_in_both_orders() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let mut client = server.client().await;
    let events = generated(45_000, 8, 15_000);
    for chunk in events.chunks(5_000) {
        ingest(&mut client, chunk.to_vec(), WaitFor::Searchable).await;
    }
    for ascending in [false, true] {
        let mut search = search_request(EventFilter::default());
        search.ascending = ascending;
        search.limit = 10_000;
        let (expected, _) = search_all(&mut client, search).await;
        let expected: Vec<String> = expected.into_iter().map(|e| e.id).collect();
        let request = ExportRequest {
            ascending,
            ..Default::default()
        };
        let chunks = export(&mut client, request.clone(), usize::MAX).await;
        assert_eq!(
            ids(Format::Ndjson, &joined(&chunks)),
            expected,
            "ascending {ascending}"
        );
        // Resume from the middle of the first page.
        let cut = 7;
        let rest = export(
            &mut client,
            ExportRequest {
                resume_token: chunks[cut - 1].resume_token.clone(),
                ..request
            },
            usize::MAX,
        )
        .await;
        let mut data = joined(&chunks[..cut]);
        data.extend(joined(&rest));
        assert_eq!(
            ids(Format::Ndjson, &data),
            expected,
            "resumed, ascending {ascending}"
        );
    }
    server.stop().await.unwrap();
}
