//! `auditctl bench-search`: search latency over gRPC for a fixed query mix
//! (issue 4): one filter (action; access id; IP; CIDR /16), three filters
//! plus a one-day time range, free text of one and two words, a status
//! range, and page 10 of everything (newest first), each at limit 100.
//! Two more rows show what the mix leaves out, outside its summary: page 10
//! oldest first, and the action filter with an exact total.
//!
//! The values come from the data itself, so the mix works on any index:
//! the newest event gives the action, access, subject, address and day; the
//! newest failed event gives the words of free text (its error message).
//! Each query runs once to warm up, then `--iterations` times; latency is
//! from request to complete reply, as a client sees it (every search is
//! also audited through the WAL, which is part of the cost).

use std::time::Instant;

use anyhow::{bail, Context};
use auditd::proto::{AuditEvent, Outcome, SearchRequest};

use crate::{status_error, Client};

/// Results per page, as the mix asks.
const LIMIT: u32 = 100;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchSearchArgs {
    /// Timed runs of each query.
    #[arg(long, default_value_t = 100)]
    iterations: usize,
    /// Print the report as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Run only the queries whose name contains this (to profile one).
    #[arg(long)]
    only: Option<String>,
}

/// Which summary a query's samples join.
#[derive(Clone, Copy, PartialEq)]
enum Group {
    Filtered,
    FreeText,
    /// Shown on its own row only.
    Extra,
}

/// One query of the mix: a name, its group, and the request.
struct Query {
    name: String,
    group: Group,
    request: SearchRequest,
    /// Pages to follow before the timed one (paging to page 10: 9).
    skip_pages: usize,
}

pub async fn bench_search(mut client: Client, args: BenchSearchArgs) -> anyhow::Result<()> {
    if args.iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    let mut queries = mix(&mut client).await?;
    if let Some(only) = &args.only {
        queries.retain(|q| q.name.contains(only.as_str()));
        if queries.is_empty() {
            bail!("--only {only:?}: no query of the mix has that in its name");
        }
    }
    let mut report = serde_json::Map::new();
    let mut all = [Vec::new(), Vec::new()];
    let mut rows = Vec::new();
    for query in &queries {
        let mut samples = Vec::with_capacity(args.iterations);
        let (mut hits, mut lower_bound) = (0, false);
        for i in 0..=args.iterations {
            let seconds;
            (seconds, hits, lower_bound) = run(&mut client, query).await?;
            if i > 0 {
                samples.push(seconds * 1e3);
            }
        }
        match query.group {
            Group::Filtered => all[0].extend_from_slice(&samples),
            Group::FreeText => all[1].extend_from_slice(&samples),
            Group::Extra => {}
        }
        samples.sort_by(f64::total_cmp);
        let (p50, p99) = (rank(&samples, 0.5), rank(&samples, 0.99));
        let shown = match lower_bound {
            true => format!(">={hits}"),
            false => hits.to_string(),
        };
        rows.push((query.name.clone(), shown, p50, p99));
        report.insert(
            query.name.clone(),
            serde_json::json!({
                "total_hits": hits,
                "total_hits_is_lower_bound": lower_bound,
                "p50_ms": p50,
                "p99_ms": p99,
            }),
        );
    }
    for (name, samples) in ["filtered", "free_text"].into_iter().zip(all.iter_mut()) {
        samples.sort_by(f64::total_cmp);
        report.insert(
            format!("all_{name}"),
            serde_json::json!({ "p50_ms": rank(samples, 0.5), "p99_ms": rank(samples, 0.99) }),
        );
    }
    report.insert("iterations".into(), args.iterations.into());
    if args.json {
        println!("{}", serde_json::Value::Object(report));
        return Ok(());
    }
    println!(
        "{:<44} {:>12} {:>9} {:>9}",
        "QUERY", "TOTAL HITS", "P50 ms", "P99 ms"
    );
    for (name, hits, p50, p99) in rows {
        println!("{name:<44} {hits:>12} {p50:>9.2} {p99:>9.2}");
    }
    for key in ["all_filtered", "all_free_text"] {
        let v = &report[key];
        println!(
            "{key:<44} {:>12} {:>9.2} {:>9.2}",
            "",
            v["p50_ms"].as_f64().unwrap_or(f64::NAN),
            v["p99_ms"].as_f64().unwrap_or(f64::NAN)
        );
    }
    Ok(())
}

/// Runs one query (following `skip_pages` first, untimed) and returns the
/// time of the last page and the total hits, and whether that is a lower
/// bound.
async fn run(client: &mut Client, query: &Query) -> anyhow::Result<(f64, u64, bool)> {
    let mut request = query.request.clone();
    for _ in 0..query.skip_pages {
        let page = client
            .search(request.clone())
            .await
            .map_err(status_error)?
            .into_inner();
        if page.next_page_token.is_empty() {
            bail!("{}: fewer pages than asked", query.name);
        }
        request.page_token = page.next_page_token;
    }
    let started = Instant::now();
    let page = client
        .search(request)
        .await
        .map_err(status_error)?
        .into_inner();
    Ok((
        started.elapsed().as_secs_f64(),
        page.total_hits,
        page.total_hits_is_lower_bound,
    ))
}

/// Nearest-rank percentile of sorted samples (NaN, shown as null in JSON,
/// when there are none: `--only` can leave a group empty).
fn rank(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

async fn newest(client: &mut Client, outcome: Outcome) -> anyhow::Result<AuditEvent> {
    client
        .search(SearchRequest {
            limit: 1,
            outcome: outcome as i32,
            ..Default::default()
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .events
        .into_iter()
        .next()
        .context("the index holds no such event: ingest some first")
}

/// The query mix, with values taken from the data.
async fn mix(client: &mut Client) -> anyhow::Result<Vec<Query>> {
    let sample = newest(client, Outcome::Any).await?;
    let failed = newest(client, Outcome::Failure).await?;
    let ip = sample
        .source
        .as_ref()
        .map(|s| s.ip.clone())
        .unwrap_or_default();
    let cidr = match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => {
            let [a, b, _, _] = v4.octets();
            format!("{a}.{b}.0.0/16")
        }
        Ok(std::net::IpAddr::V6(v6)) => format!("{}/32", v6),
        Err(_) => bail!("the newest event has no address to build a CIDR query from"),
    };
    let words: Vec<String> = failed
        .error_message
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() >= 4)
        .map(str::to_lowercase)
        .take(2)
        .collect();
    if words.len() < 2 {
        bail!("the newest failed event's error message has fewer than two words");
    }
    let seconds = sample.time.as_ref().map_or(0, |t| t.seconds);
    let day = seconds - seconds.rem_euclid(86_400);
    let at = |s: i64| prost_types::Timestamp {
        seconds: s,
        nanos: 0,
    };
    let base = SearchRequest {
        limit: LIMIT,
        ..Default::default()
    };
    let query = |name: String, group: Group, request: SearchRequest| Query {
        name,
        group,
        request,
        skip_pages: 0,
    };
    let by_action = SearchRequest {
        actions: vec![sample.action.clone()],
        ..base.clone()
    };
    Ok(vec![
        query(
            format!("action {}", sample.action),
            Group::Filtered,
            by_action.clone(),
        ),
        query(
            format!("access id {}", sample.access_id),
            Group::Filtered,
            SearchRequest {
                access_ids: vec![sample.access_id.clone()],
                ..base.clone()
            },
        ),
        query(
            format!("ip {ip}"),
            Group::Filtered,
            SearchRequest {
                ips: vec![ip.clone()],
                ..base.clone()
            },
        ),
        query(
            format!("cidr {cidr}"),
            Group::Filtered,
            SearchRequest {
                ips: vec![cidr],
                ..base.clone()
            },
        ),
        query(
            "action + subject + success, one day".into(),
            Group::Filtered,
            SearchRequest {
                actions: vec![sample.action.clone()],
                subjects: vec![sample.subject.clone()],
                outcome: Outcome::Success as i32,
                from_time: Some(at(day)),
                to_time: Some(at(day + 86_400)),
                ..base.clone()
            },
        ),
        query(
            "status 400-499".into(),
            Group::Filtered,
            SearchRequest {
                status_min: Some(400),
                status_max: Some(499),
                ..base.clone()
            },
        ),
        Query {
            name: "everything, page 10".into(),
            group: Group::Filtered,
            request: base.clone(),
            skip_pages: 9,
        },
        query(
            format!("text {:?}", words[0]),
            Group::FreeText,
            SearchRequest {
                text: words[0].clone(),
                ..base.clone()
            },
        ),
        query(
            format!("text {:?}", words.join(" ")),
            Group::FreeText,
            SearchRequest {
                text: words.join(" "),
                ..base.clone()
            },
        ),
        Query {
            name: "everything, page 10, oldest first".into(),
            group: Group::Extra,
            request: SearchRequest {
                ascending: true,
                ..base
            },
            skip_pages: 9,
        },
        query(
            format!("action {}, exact total", sample.action),
            Group::Extra,
            SearchRequest {
                exact_total: true,
                ..by_action
            },
        ),
    ])
}
