//! `auditctl bench-aggregate` and `auditctl bench-tail`: the analysis
//! figures of issue 16, over gRPC, as a client sees them.
//!
//! bench-aggregate times three questions, with values from the data (the
//! newest event gives the day; the access with the most failures, the
//! access):
//! - count by action over one day (terms on action, size 100);
//! - the top 10 addresses over everything (terms on ip);
//! - failures per hour of one access over 30 days (a 1 h histogram).
//!
//! Each runs once to warm up, then `--iterations` times.
//!
//! bench-tail follows everything for `--seconds` while something else
//! ingests, and reports how long after `received` (when auditd accepted
//! the event, just before its acknowledgement) each event arrived.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use auditd::proto::aggregation::Kind;
use auditd::proto::{
    AggregateRequest, Aggregation, DateHistogramAggregation, EventFilter, Outcome, SearchRequest,
    TailRequest, TermsAggregation,
};
use auditd::schema::timestamp_micros;

use crate::{status_error, Client};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchAggregateArgs {
    /// Timed runs of each question.
    #[arg(long, default_value_t = 100)]
    iterations: usize,
    /// Print the report as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchTailArgs {
    /// How long to follow.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Print the report as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Also report acknowledged-to-delivered latency, from the file
    /// `auditctl load --ack-log` wrote (read once following ends; the
    /// load must have finished by then).
    #[arg(long, value_name = "FILE")]
    ack_log: Option<std::path::PathBuf>,
}

fn terms(field: &str, size: u32) -> Aggregation {
    Aggregation {
        name: field.into(),
        kind: Some(Kind::Terms(TermsAggregation {
            field: field.into(),
            size,
        })),
        sub_aggregations: vec![],
    }
}

pub async fn bench_aggregate(mut client: Client, args: BenchAggregateArgs) -> anyhow::Result<()> {
    if args.iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    let sample = client
        .search(SearchRequest {
            limit: 1,
            ..Default::default()
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .events
        .pop()
        .context("the index holds no event: ingest some first")?;
    // The access with the most failures: the busiest histogram.
    let busiest = client
        .aggregate(AggregateRequest {
            filter: Some(EventFilter {
                outcome: Outcome::Failure as i32,
                ..Default::default()
            }),
            aggregations: vec![terms("access_id", 1)],
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let access = busiest
        .results
        .get("access_id")
        .and_then(|r| r.buckets.first())
        .map(|b| b.key.clone())
        .context("the index holds no failed event")?;
    let seconds = sample.time.as_ref().map_or(0, |t| t.seconds);
    let day_end = seconds - seconds.rem_euclid(86_400) + 86_400;
    let at = |s: i64| {
        Some(prost_types::Timestamp {
            seconds: s,
            nanos: 0,
        })
    };
    let questions = [
        (
            "count by action, one day".to_owned(),
            AggregateRequest {
                filter: Some(EventFilter {
                    from_time: at(day_end - 86_400),
                    to_time: at(day_end),
                    ..Default::default()
                }),
                aggregations: vec![terms("action", 100)],
            },
        ),
        (
            "top 10 ips, everything".to_owned(),
            AggregateRequest {
                filter: None,
                aggregations: vec![terms("ip", 10)],
            },
        ),
        (
            format!("failures per hour, access {access}, 30 days"),
            AggregateRequest {
                filter: Some(EventFilter {
                    from_time: at(day_end - 30 * 86_400),
                    to_time: at(day_end),
                    access_ids: vec![access.clone()],
                    outcome: Outcome::Failure as i32,
                    ..Default::default()
                }),
                aggregations: vec![Aggregation {
                    name: "per_hour".into(),
                    kind: Some(Kind::DateHistogram(DateHistogramAggregation {
                        interval: Some(prost_types::Duration {
                            seconds: 3_600,
                            nanos: 0,
                        }),
                    })),
                    sub_aggregations: vec![],
                }],
            },
        ),
    ];
    let mut report = serde_json::Map::new();
    for (name, request) in questions {
        let mut samples = Vec::with_capacity(args.iterations);
        let mut hits = 0;
        for i in 0..=args.iterations {
            let started = Instant::now();
            let reply = client
                .aggregate(request.clone())
                .await
                .map_err(status_error)?
                .into_inner();
            if i > 0 {
                samples.push(started.elapsed().as_secs_f64() * 1e3);
            }
            hits = reply.total_hits;
        }
        report.insert(name, summary(&mut samples, hits));
    }
    print(report, args.json, "QUESTION", "TOTAL HITS");
    Ok(())
}

pub async fn bench_tail(mut client: Client, args: BenchTailArgs) -> anyhow::Result<()> {
    let mut stream = client
        .tail(TailRequest::default())
        .await
        .map_err(status_error)?
        .into_inner();
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let mut samples = Vec::new();
    // (seq, unix microseconds delivered), for --ack-log.
    let mut delivered = Vec::new();
    while let Ok(next) = tokio::time::timeout_at(until.into(), stream.message()).await {
        let Some(response) = next.map_err(status_error)? else {
            bail!("the tail stream ended");
        };
        let now = crate::load::unix_micros();
        for event in response.events {
            let received = timestamp_micros(event.received.as_ref());
            samples.push((now - received) as f64 / 1e3);
            if args.ack_log.is_some() {
                delivered.push((event.seq, now));
            }
        }
    }
    if samples.is_empty() {
        bail!(
            "no event arrived in {} s: is something ingesting?",
            args.seconds
        );
    }
    let events = samples.len() as u64;
    let mut report = serde_json::Map::new();
    report.insert(
        "received to delivered".into(),
        summary(&mut samples, events),
    );
    if let Some(path) = &args.ack_log {
        let acked = read_ack_log(path)?;
        let mut since_ack = ack_to_delivered(&acked, &delivered);
        if since_ack.is_empty() {
            bail!("no delivered event is in {}", path.display());
        }
        let count = since_ack.len() as u64;
        report.insert(
            "acknowledged to delivered".into(),
            summary(&mut since_ack, count),
        );
    }
    print(report, args.json, "FIGURE", "EVENTS");
    Ok(())
}

/// p50 and p99 (nearest rank) of `samples` in ms, and a count.
fn summary(samples: &mut [f64], count: u64) -> serde_json::Value {
    samples.sort_by(f64::total_cmp);
    let rank = |q: f64| {
        let i = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i]
    };
    serde_json::json!({ "count": count, "p50_ms": rank(0.5), "p99_ms": rank(0.99) })
}

fn print(report: serde_json::Map<String, serde_json::Value>, json: bool, what: &str, count: &str) {
    if json {
        println!("{}", serde_json::Value::Object(report));
        return;
    }
    println!("{what:<48} {count:>12} {:>9} {:>9}", "P50 ms", "P99 ms");
    for (name, v) in report {
        println!(
            "{name:<48} {:>12} {:>9.2} {:>9.2}",
            v["count"],
            v["p50_ms"].as_f64().unwrap_or(f64::NAN),
            v["p99_ms"].as_f64().unwrap_or(f64::NAN)
        );
    }
}

/// `auditctl load --ack-log`'s lines, sorted by first seq.
fn read_ack_log(path: &std::path::Path) -> anyhow::Result<Vec<(u64, u64, i64)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {} (has the load finished?)", path.display()))?;
    let mut runs = text
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let mut parts = line.split(' ').map(str::parse::<i64>);
            match (parts.next(), parts.next(), parts.next()) {
                (Some(Ok(first)), Some(Ok(last)), Some(Ok(at))) => {
                    Ok((first as u64, last as u64, at))
                }
                _ => bail!(
                    "{} line {}: not `<first> <last> <micros>`",
                    path.display(),
                    i + 1
                ),
            }
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    runs.sort_unstable();
    Ok(runs)
}

/// Milliseconds from each delivered event's acknowledgement to its
/// delivery, for the events an acknowledged run holds (not the daemon's
/// own trail events).
fn ack_to_delivered(acked: &[(u64, u64, i64)], delivered: &[(u64, i64)]) -> Vec<f64> {
    delivered
        .iter()
        .filter_map(|&(seq, at)| {
            let i = acked.partition_point(|run| run.0 <= seq).checked_sub(1)?;
            let (_, last, acked_at) = acked[i];
            (seq <= last).then(|| (at - acked_at) as f64 / 1e3)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{ack_to_delivered, read_ack_log};

    #[test]
    fn a_bad_ack_log_line_is_named_and_a_good_log_is_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acks.txt");
        std::fs::write(&path, "12 20 5000\n0 9 1000\n").unwrap();
        assert_eq!(
            read_ack_log(&path).unwrap(),
            vec![(0, 9, 1_000), (12, 20, 5_000)]
        );
        std::fs::write(&path, "0 9 1000\n12 twenty 5000\n").unwrap();
        let error = read_ack_log(&path).unwrap_err().to_string();
        assert!(error.contains("line 2"), "{error}");
        let missing = dir.path().join("none.txt");
        let error = format!("{:#}", read_ack_log(&missing).unwrap_err());
        assert!(error.contains("has the load finished?"), "{error}");
    }

    #[test]
    fn each_delivered_event_is_timed_from_its_runs_acknowledgement() {
        let acked = [(0, 9, 1_000), (12, 20, 5_000)];
        // Seq 10 and 30 were never acknowledged by the load (trail events).
        let delivered = [
            (3, 3_000),
            (10, 4_000),
            (12, 9_000),
            (20, 6_000),
            (30, 9_000),
        ];
        assert_eq!(ack_to_delivered(&acked, &delivered), vec![2.0, 4.0, 1.0]);
    }
}
