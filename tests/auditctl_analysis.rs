//! `auditctl aggregate`, `export` and `tail` against a real server: the
//! table and the JSON of an aggregation hold the counts of the ingested
//! events; an export to a file (CSV, NDJSON) holds exactly the ingested
//! events; a tail prints what is ingested after it starts, resumes after
//! the daemon restarts, and stops on Ctrl-C.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Output, Stdio};
use std::time::Instant;

use auditd::json::JsonEvent;
use auditd::proto::{AuditEvent, WaitFor};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use common::*;

/// `auditctl --addr <server> --data-dir <its dir>`, with nothing from the
/// environment that could point it elsewhere.
fn auditctl(server: &TestServer) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_auditctl"));
    for var in [
        "AUDITCTL_ADDR",
        "AUDITCTL_TOKEN",
        "AUDITCTL_DATA_DIR",
        "AUDITCTL_TLS_CA",
    ] {
        command.env_remove(var);
    }
    command
        .args(["--addr", &server.url()])
        .args(["--data-dir", server.data_dir.to_str().unwrap()]);
    command
}

/// Runs `command` to its end on a blocking thread, killing it and failing
/// when it takes longer than the `DEADLINE`.
async fn run(mut command: Command) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start auditctl");
    let pid = child.id();
    let wait = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap());
    match tokio::time::timeout(DEADLINE, wait).await {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("auditctl did not end in time: {command:?}");
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `command`'s stdout; fails, with both outputs, unless it succeeds.
async fn stdout_of(command: Command) -> String {
    let out = run(command).await;
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `generated` events over three days, stored and searchable; with the
/// ids the server gave them.
async fn dataset(server: &TestServer, count: u64, seed: u64) -> Vec<AuditEvent> {
    let mut events = generated(count, seed, count / 3);
    let mut client = server.client().await;
    let reply = ingest(&mut client, events.clone(), WaitFor::Searchable).await;
    assert_eq!(reply.ids.len(), events.len());
    for (event, id) in events.iter_mut().zip(reply.ids) {
        event.id = id;
    }
    events
}

/// What `aggregate --terms action:100 --sub terms:status:100 --histogram 1d
/// --cardinality subject` says, in a form both outputs and the oracle
/// give.
#[derive(Debug, Default, PartialEq)]
struct Counts {
    total: u64,
    /// action → (count, status → count).
    actions: BTreeMap<String, (u64, BTreeMap<String, u64>)>,
    actions_other: u64,
    /// Each status sub-aggregation's other count, summed.
    statuses_other: u64,
    /// Day start (RFC 3339) → count, for the days that have events.
    days: BTreeMap<String, u64>,
    subjects: u64,
}

const AGGREGATE: &[&str] = &[
    "aggregate",
    "--terms",
    "action:100",
    "--histogram",
    "1d",
    "--cardinality",
    "subject",
    "--sub",
    "terms:status:100",
];

fn rfc3339(seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// The counts, by brute force over the events.
fn oracle(events: &[AuditEvent]) -> Counts {
    let mut counts = Counts {
        total: events.len() as u64,
        ..Default::default()
    };
    let mut subjects = HashSet::new();
    for e in events {
        let (n, statuses) = counts.actions.entry(e.action.clone()).or_default();
        *n += 1;
        if e.status != 0 {
            *statuses.entry(e.status.to_string()).or_default() += 1;
        }
        let seconds = e.time.as_ref().unwrap().seconds;
        *counts
            .days
            .entry(rfc3339(seconds.div_euclid(86_400) * 86_400))
            .or_default() += 1;
        if !e.subject.is_empty() {
            subjects.insert(e.subject.clone());
        }
    }
    counts.subjects = subjects.len() as u64;
    // Sizes of 100 hold every value: nothing is left for `other`.
    assert!(counts.actions.len() <= 100);
    assert!(counts.actions.values().all(|(_, s)| s.len() <= 100));
    counts
}

/// The counts a table shows; checks the histogram's bars on the way.
fn from_table(table: &str, columns: usize) -> Counts {
    let mut counts = Counts::default();
    let mut section = "";
    let mut action = String::new();
    let mut bars = Vec::new();
    let lines: Vec<&str> = table.lines().collect();
    let total = lines[0]
        .strip_prefix("total_hits: ")
        .expect("total_hits first");
    counts.total = total.parse().unwrap();
    for line in &lines[1..] {
        if line.is_empty() {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let cells: Vec<&str> = line.split_whitespace().collect();
        if indent == 0 {
            section = line;
            if let Some(value) = line.strip_prefix("cardinality:subject = ") {
                counts.subjects = value.parse().unwrap();
            }
            continue;
        }
        let count = || -> u64 { cells[1].parse().unwrap_or_else(|_| panic!("{line}")) };
        match (section, indent) {
            ("terms:action:100", 2) if cells[0] == "(other)" => counts.actions_other = count(),
            ("terms:action:100", 2) => {
                action = cells[0].to_owned();
                counts
                    .actions
                    .insert(action.clone(), (count(), BTreeMap::new()));
            }
            ("terms:action:100", 4) => assert_eq!(cells, ["terms:status:100"], "{line}"),
            ("terms:action:100", 6) if cells[0] == "(other)" => counts.statuses_other += count(),
            ("terms:action:100", 6) => {
                let statuses = &mut counts.actions.get_mut(&action).unwrap().1;
                statuses.insert(cells[0].to_owned(), count());
            }
            ("histogram:1d", 2) => {
                if count() > 0 {
                    counts.days.insert(cells[0].to_owned(), count());
                }
                let bar = cells.get(2).map_or(0, |b| b.chars().count());
                assert_eq!(count() > 0, bar > 0, "{line}");
                assert!(
                    line.chars().count() <= columns,
                    "wider than {columns}: {line}"
                );
                bars.push((count(), bar, line.chars().count()));
            }
            _ => panic!("unexpected line in {section:?}: {line:?}"),
        }
    }
    // The largest bucket's bar reaches the last column; the others are no
    // longer than their counts say.
    let largest = bars.iter().map(|b| b.0).max().unwrap();
    for (count, bar, width) in &bars {
        if *count == largest {
            assert_eq!(*width, columns, "the largest bar fills the line");
        }
        let full = bars.iter().find(|b| b.0 == largest).unwrap().1 as u64;
        assert!(*bar as u64 <= full * count / largest + 1);
    }
    counts
}

/// The counts the JSON holds; checks the order of its buckets.
fn from_json(json: &serde_json::Value) -> Counts {
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or_else(|| panic!("{v}"));
    let results = &json["results"];
    let mut counts = Counts {
        total: n(&json["total_hits"]),
        actions_other: n(&results["terms:action:100"]["other_count"]),
        subjects: n(&results["cardinality:subject"]["value"]),
        ..Default::default()
    };
    assert_eq!(results["cardinality:subject"]["approximate"], false);
    let buckets = results["terms:action:100"]["buckets"].as_array().unwrap();
    let order: Vec<(std::cmp::Reverse<u64>, &str)> = buckets
        .iter()
        .map(|b| {
            (
                std::cmp::Reverse(n(&b["count"])),
                b["key"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(order.is_sorted(), "terms by count, then key: {order:?}");
    for bucket in buckets {
        let statuses = &bucket["sub"]["terms:status:100"];
        counts.statuses_other += n(&statuses["other_count"]);
        let statuses = statuses["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["key"].as_str().unwrap().to_owned(), n(&s["count"])))
            .collect();
        counts.actions.insert(
            bucket["key"].as_str().unwrap().to_owned(),
            (n(&bucket["count"]), statuses),
        );
    }
    let days = results["histogram:1d"]["buckets"].as_array().unwrap();
    let starts: Vec<&str> = days.iter().map(|d| d["start"].as_str().unwrap()).collect();
    assert!(starts.is_sorted(), "{starts:?}");
    for day in days {
        if n(&day["count"]) > 0 {
            counts
                .days
                .insert(day["start"].as_str().unwrap().to_owned(), n(&day["count"]));
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregate_prints_the_counts_of_the_ingested_events_as_a_table_and_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let events = dataset(&server, 600, 11).await;
    let expected = oracle(&events);
    assert!(expected.days.len() >= 3, "{:?}", expected.days);

    let columns = 100;
    let mut table = auditctl(&server);
    table.args(AGGREGATE).env("COLUMNS", columns.to_string());
    let table = stdout_of(table).await;
    assert_eq!(from_table(&table, columns), expected, "\n{table}");

    let mut json = auditctl(&server);
    json.args(AGGREGATE).args(["--format", "json"]);
    let json = stdout_of(json).await;
    let json: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(from_json(&json), expected, "\n{json:#}");

    // The filter flags filter: one action's events only.
    let action = events[0].action.clone();
    let mut filtered = auditctl(&server);
    filtered
        .args(AGGREGATE)
        .args(["--action", &action, "--format", "json"]);
    let filtered: serde_json::Value = serde_json::from_str(&stdout_of(filtered).await).unwrap();
    let only: Vec<AuditEvent> = events
        .iter()
        .filter(|e| e.action == action)
        .cloned()
        .collect();
    assert_eq!(from_json(&filtered), oracle(&only));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_aggregate_flags_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    for (flags, says) in [
        (&["--terms", "ip:x"][..], "--terms \"ip:x\": the size \"x\""),
        (&["--terms", "ip:0"][..], "from 1 to 10000"),
        (&["--histogram", "0s"][..], "--histogram \"0s\""),
        (&["--histogram", "1y"][..], "not an interval"),
        (&["--sub", "terms:ip"][..], "nothing to count"),
        (&["--terms", "nosuchfield"][..], "InvalidArgument"),
    ] {
        let mut command = auditctl(&server);
        command.arg("aggregate").args(flags);
        let out = run(command).await;
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{flags:?}");
        assert!(
            stderr.starts_with("auditctl: ") && stderr.contains(says),
            "{flags:?}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{flags:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    server.stop().await.unwrap();
}

/// Exported events against the ingested ones, field by field (what the
/// server sets on ingest aside).
fn assert_same_events(exported: Vec<AuditEvent>, ingested: &[AuditEvent]) {
    let by_id: HashMap<&str, &AuditEvent> = ingested.iter().map(|e| (e.id.as_str(), e)).collect();
    let mut seen = HashSet::new();
    for mut event in exported {
        assert!(seen.insert(event.id.clone()), "{} exported twice", event.id);
        let want = by_id
            .get(event.id.as_str())
            .unwrap_or_else(|| panic!("{} not ingested", event.id));
        event.received = None;
        event.seq = 0;
        assert_eq!(&event, *want);
    }
    assert_eq!(seen.len(), ingested.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_to_a_file_holds_exactly_the_ingested_events() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let events = dataset(&server, 900, 5).await;
    let ids: HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();

    // CSV, oldest first.
    let csv = dir.path().join("events.csv");
    let mut command = auditctl(&server);
    command
        .args(["export", "--format", "csv", "--ascending", "-o"])
        .arg(&csv);
    let out = run(command).await;
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(out.stdout.is_empty(), "with -o, nothing goes to stdout");
    assert!(stderr.contains("exported 900 events"), "{stderr}");
    let mut reader = csv::Reader::from_path(&csv).unwrap();
    let header = reader.headers().unwrap().clone();
    let column = |name: &str| header.iter().position(|h| h == name).unwrap();
    let (id, time) = (column("id"), column("time"));
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), 900);
    let exported: HashSet<&str> = records.iter().map(|r| &r[id]).collect();
    assert_eq!(exported, ids);
    let times: Vec<&str> = records.iter().map(|r| &r[time]).collect();
    assert!(times.is_sorted(), "--ascending is oldest first");

    // NDJSON, newest first: the events themselves.
    let ndjson = dir.path().join("events.ndjson");
    let mut command = auditctl(&server);
    command
        .args(["export", "--format", "ndjson", "--output"])
        .arg(&ndjson);
    let out = run(command).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("exported 900 events"));
    let file = std::fs::read_to_string(&ndjson).unwrap();
    let exported: Vec<AuditEvent> = file
        .lines()
        .map(|line| JsonEvent::parse(line).unwrap().into_proto().unwrap())
        .collect();
    let times: Vec<i64> = exported
        .iter()
        .map(|e| auditd::schema::timestamp_micros(e.time.as_ref()))
        .collect();
    assert!(times.is_sorted_by(|a, b| a >= b), "newest first");
    assert_same_events(exported, &events);

    // To stdout, with a filter.
    let action = events[0].action.clone();
    let mut command = auditctl(&server);
    command.args(["export", "--format", "ndjson", "--action", &action]);
    let stdout = stdout_of(command).await;
    let exported: Vec<AuditEvent> = stdout
        .lines()
        .map(|line| JsonEvent::parse(line).unwrap().into_proto().unwrap())
        .collect();
    let only: Vec<AuditEvent> = events
        .iter()
        .filter(|e| e.action == action)
        .cloned()
        .collect();
    assert_same_events(exported, &only);
    server.stop().await.unwrap();
}

/// A child's output, a line at a time, read on a thread of its own.
fn lines_of(read: impl Read + Send + 'static) -> UnboundedReceiver<String> {
    let (tx, rx) = unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(read).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// `auditctl tail` in a child process; killed when dropped.
struct Tail {
    child: Child,
    stdout: UnboundedReceiver<String>,
    stderr: UnboundedReceiver<String>,
    /// Every stderr line so far, for failure messages.
    log: Vec<String>,
    /// Every event printed so far, in order.
    printed: Vec<String>,
}

impl Tail {
    fn start(mut command: Command) -> Tail {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start auditctl tail");
        let stdout = lines_of(child.stdout.take().unwrap());
        let stderr = lines_of(child.stderr.take().unwrap());
        Tail {
            child,
            stdout,
            stderr,
            log: Vec::new(),
            printed: Vec::new(),
        }
    }

    /// Waits for a stderr line that contains `text`.
    async fn wait_stderr(&mut self, text: &str) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            match tokio::time::timeout_at(deadline, self.stderr.recv()).await {
                Ok(Some(line)) => {
                    let found = line.contains(text);
                    self.log.push(line);
                    if found {
                        return;
                    }
                }
                Ok(None) => panic!("tail ended before {text:?}: {:?}", self.log),
                Err(_) => panic!("no {text:?} on stderr in time: {:?}", self.log),
            }
        }
    }

    /// Reads printed events until every id of `want` has come.
    async fn wait_ids(&mut self, want: &[String]) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut missing: HashSet<&String> = want.iter().collect();
        for id in &self.printed {
            missing.remove(id);
        }
        while !missing.is_empty() {
            match tokio::time::timeout_at(deadline, self.stdout.recv()).await {
                Ok(Some(line)) => {
                    let event = JsonEvent::parse(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
                    missing.remove(&event.id);
                    self.printed.push(event.id);
                }
                Ok(None) => panic!("tail ended; stderr: {:?}", self.log),
                Err(_) => panic!(
                    "{} of {} events not printed in time; stderr: {:?}",
                    missing.len(),
                    want.len(),
                    self.log
                ),
            }
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process, killed if a failed test leaves it running.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_new_events_resumes_after_a_restart_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(test_config(dir.path())).await;
    let mut client = server.client().await;
    // Stored before the tail starts: never printed.
    let before = ingest(&mut client, generated(50, 1, 1_000), WaitFor::Searchable).await;

    let mut command = auditctl(&server);
    command.args(["tail", "--format", "json"]);
    let mut tail = Tail::start(command);
    tail.wait_stderr("following").await;

    let first = ingest(&mut client, generated(200, 2, 1_000), WaitFor::Durable).await;
    tail.wait_ids(&first.ids).await;

    // The daemon stops (the stream ends with UNAVAILABLE and a resume
    // token) and starts again on the same address: the tail carries on.
    let addr = server.grpc;
    server.stop().await.unwrap();
    let mut config = test_config(dir.path());
    config.grpc_addr = addr;
    server = TestServer::start(config).await;
    tail.wait_stderr("tail resumed").await;
    let mut client = server.client().await;
    let second = ingest(&mut client, generated(200, 3, 1_000), WaitFor::Durable).await;
    tail.wait_ids(&second.ids).await;
    assert!(
        tail.log
            .iter()
            .any(|l| l.contains("tail stream ended (Unavailable")),
        "{:?}",
        tail.log
    );

    // Each event once, nothing from before the start, nothing else (the
    // reads' trail is left out as search leaves it out).
    let mut printed = HashSet::new();
    for id in &tail.printed {
        assert!(printed.insert(id.as_str()), "{id} printed twice");
    }
    let ingested: HashSet<&str> = first
        .ids
        .iter()
        .chain(&second.ids)
        .map(String::as_str)
        .collect();
    assert_eq!(printed, ingested);
    assert!(before.ids.iter().all(|id| !printed.contains(id.as_str())));

    // Ctrl-C: exit 0.
    let pid = tail.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let after = tokio::time::timeout_at(deadline, tail.stdout.recv())
        .await
        .expect("tail did not stop on SIGINT");
    assert_eq!(after, None, "printed after SIGINT");
    let status = tail.child.wait().unwrap();
    assert!(status.success(), "{status:?}; stderr: {:?}", tail.log);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_errors_the_caller_must_fix_end_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let started = Instant::now();

    let mut bad_filter = auditctl(&server);
    bad_filter.args(["tail", "--ip", "not-an-address"]);
    let out = run(bad_filter).await;
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.starts_with("auditctl: InvalidArgument"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let mut bad_token = auditctl(&server);
    bad_token.args(["--token", "not-a-token", "tail"]);
    let out = run(bad_token).await;
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.starts_with("auditctl: Unauthenticated"), "{stderr}");

    let mut export = auditctl(&server);
    export.args(["--token", "not-a-token", "export", "--format", "csv"]);
    let out = run(export).await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).starts_with("auditctl: Unauthenticated"));
    // Refused at once: no retries, no backoff.
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_resumes_after_the_daemon_ends_a_stalled_stream() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.stream_idle_timeout_ms = 300;
    let server = TestServer::start(config).await;
    // Far more than the pipe, the HTTP/2 windows and the daemon's few
    // chunks of buffer hold together (about 9 MB of NDJSON).
    let mut events = Vec::new();
    let mut client = server.client().await;
    for seed in 0..6 {
        let batch = generated(5_000, 100 + seed, 1_000_000);
        let reply = ingest(&mut client, batch.clone(), WaitFor::Searchable).await;
        events.extend(batch.into_iter().zip(reply.ids).map(|(mut e, id)| {
            e.id = id;
            e
        }));
    }

    // Nobody reads auditctl's stdout: it blocks writing, stops reading
    // the stream, and the daemon ends the stream (ABORTED, with the token)
    // once it has waited the idle timeout. Its trail event says so.
    let mut child = Killed(
        auditctl(&server)
            .args(["export", "--format", "ndjson", "--ascending"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start auditctl export"),
    );
    let child = &mut child.0;
    let stdout = child.stdout.take().unwrap();
    let mut stderr = lines_of(child.stderr.take().unwrap());
    let ended = trail_events(&mut client, auditd::app::trail::EXPORT, 1).await;
    assert_eq!(ended[0].error_id, "Aborted", "{:?}", ended[0]);

    // Reading again, auditctl meets the error and resumes after the last
    // chunk it wrote: every event once.
    let mut stdout = lines_of(stdout);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut exported = Vec::new();
    while let Some(line) = tokio::time::timeout_at(deadline, stdout.recv())
        .await
        .expect("export did not end in time")
    {
        exported.push(JsonEvent::parse(&line).unwrap().into_proto().unwrap());
    }
    let mut log = Vec::new();
    while let Some(line) = tokio::time::timeout_at(deadline, stderr.recv())
        .await
        .expect("stderr did not end in time")
    {
        log.push(line);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}: {log:?}");
    let said = |text: &str| log.iter().any(|l| l.contains(text));
    assert!(said("export stream ended (Aborted"), "{log:?}");
    assert!(said("export resumed after"), "{log:?}");
    assert_same_events(exported, &events);
    server.stop().await.unwrap();
}
