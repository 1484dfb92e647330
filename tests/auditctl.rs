//! `auditctl load` and `auditctl bench-search` against a real server: every
//! generated event is acknowledged and stored once, the JSON reports hold
//! the figures the benchmarks quote, and a target rate is kept to (never
//! exceeded).

mod common;

use common::*;

/// Runs `auditctl load ... --json` against `server` and parses its report.
async fn load(server: &TestServer, args: &[&str]) -> serde_json::Value {
    auditctl(server, "load", args).await
}

/// Runs `auditctl <command> ... --json` and parses its report.
async fn auditctl(server: &TestServer, subcommand: &str, args: &[&str]) -> serde_json::Value {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_auditctl"));
    command
        .args(["--addr", &server.url()])
        .args(["--data-dir", server.data_dir.to_str().unwrap()])
        .arg(subcommand)
        .args(args)
        .arg("--json");
    let stdout = run_ok(command).await;
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn ms(report: &serde_json::Value, figure: &str, rank: &str) -> f64 {
    report[figure][rank]
        .as_f64()
        .unwrap_or_else(|| panic!("{figure}.{rank} missing: {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_reports_throughput_latency_and_time_to_searchable() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let report = load(
        &server,
        &[
            "--generate",
            "3000",
            "--batch-size",
            "250",
            "--streams",
            "3",
            "--markers",
            "4",
        ],
    )
    .await;
    assert_eq!(report["events"], 3000, "{report}");
    assert_eq!(report["batches"], 12, "{report}");
    assert_eq!(report["markers_found"], 4, "{report}");
    assert_eq!(report["markers_missing"], 0, "{report}");
    assert!(report["events_per_sec"].as_f64().unwrap() > 0.0);
    assert!(report["ndjson_mb_per_sec"].as_f64().unwrap() > 0.0);
    let (p50, p99, p999) = (
        ms(&report, "ack_latency_ms", "p50"),
        ms(&report, "ack_latency_ms", "p99"),
        ms(&report, "ack_latency_ms", "p999"),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= p999, "{report}");
    // Searchable means committed: never before the acknowledgement.
    assert!(ms(&report, "searchable_ms", "p50") > 0.0, "{report}");
    assert!(ms(&report, "searchable_ms", "max") >= ms(&report, "searchable_ms", "p50"));

    let mut client = server.client().await;
    let stored: std::collections::HashSet<String> =
        auditd::client::gen::events(&auditd::client::gen::GenOptions {
            count: 3000,
            ..Default::default()
        })
        .map(|e| {
            auditd::json::JsonEvent::parse(&e.to_json_line())
                .unwrap()
                .into_proto()
                .unwrap()
                .id
        })
        .collect();
    let found = stored_once_with_all_of(&mut client, &stored).await;
    assert_eq!(found.len(), 3000);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_at_a_target_rate_never_runs_ahead_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    // 10 batches of 100 at 2,000 events/s: the last is due at 0.45 s.
    let report = load(
        &server,
        &[
            "--generate",
            "1000",
            "--batch-size",
            "100",
            "--streams",
            "2",
            "--rate",
            "2000",
            "--markers",
            "2",
        ],
    )
    .await;
    assert_eq!(report["events"], 1000, "{report}");
    assert_eq!(report["target_rate"], 2000.0, "{report}");
    assert!(report["seconds"].as_f64().unwrap() >= 0.45, "{report}");
    assert!(report["events_per_sec"].as_f64().unwrap() <= 2000.0 * 1000.0 / 900.0);
    server.stop().await.unwrap();
}

/// Every shape of the mix runs `--per-shape` times; the shapes whose
/// values always come from one event find events; the same seed asks the
/// same queries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_search_times_every_shape_of_a_seeded_random_mix() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    load(&server, &["--generate", "3000", "--markers", "0"]).await;
    // The same data for both runs: every event searchable before the first
    // draws its pool.
    let mut client = server.client().await;
    let started = std::time::Instant::now();
    while count_stored(&mut client).await < 3000 {
        assert!(
            started.elapsed() < DEADLINE,
            "the load never became searchable"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let args = ["--per-shape", "3", "--seed", "5"];
    let report = auditctl(&server, "bench-search", &args).await;
    let shapes: Vec<(&String, &serde_json::Value)> = report
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| v.get("p99_ms").is_some())
        .collect();
    // 24 shapes; the generated addresses include IPv6, so none is skipped.
    assert_eq!(shapes.len(), 24, "{report}");
    for (name, figures) in &shapes {
        assert_eq!(figures["queries"], 3, "{name}: {report}");
        let (p50, p99, max) = (
            figures["p50_ms"].as_f64().unwrap(),
            figures["p99_ms"].as_f64().unwrap(),
            figures["max_ms"].as_f64().unwrap(),
        );
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{name}: {report}");
    }
    for always in [
        "action",
        "access id",
        "subject",
        "ip",
        "cidr /16",
        "cidr /24",
        "ipv6 /48",
        "type",
        "source name",
        "access id + subject",
        "action + subject",
        "from an instant, oldest first",
        "everything, page 10",
        "scoped: app token",
    ] {
        assert!(
            report[always]["median_hits"].as_u64().unwrap() > 0,
            "{always}: {report}"
        );
    }
    let again = auditctl(&server, "bench-search", &args).await;
    for (name, figures) in shapes {
        assert_eq!(
            figures["median_hits"], again[name]["median_hits"],
            "{name}: the same seed asks the same queries"
        );
    }
    server.stop().await.unwrap();
}
