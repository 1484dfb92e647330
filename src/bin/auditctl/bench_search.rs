//! `auditctl bench-search`: search latency over gRPC for the questions an
//! investigator asks (issue 17), with values drawn at random, from a seed,
//! out of the data itself, so the mix cannot be tuned to its own values.
//!
//! A pool of events is sampled first (an event at or after each of
//! `POOL` random instants of the data's time span). Each shape then runs
//! `--per-shape` times, each time with a fresh event from the pool, after
//! one untimed warm-up. Latency is from request to complete reply, as a
//! client sees it (every search is audited through the WAL, which is part
//! of the cost). The report gives p50, p99 and max per shape, and the
//! median number of matches.

use std::time::Instant;

use anyhow::{bail, Context};
use auditd::client::{BearerToken, Client};
use auditd::proto::tokens_client::TokensClient;
use auditd::proto::{AuditEvent, CreateTokenRequest, Outcome, SearchRequest, TokenKind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Endpoint;

use crate::status_error;

/// Events sampled from the data to draw values from.
const POOL: usize = 1_000;
/// App tokens made for the scoped shape, each for a pool event's subject
/// and access.
const SCOPED_TOKENS: usize = 20;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchSearchArgs {
    /// Timed queries of each shape (each with fresh random values).
    #[arg(long, default_value_t = 200)]
    per_shape: usize,
    /// Seed of the random draws: the same seed on the same data asks the
    /// same queries.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the report as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Run only the shapes whose name contains this (to profile one).
    #[arg(long)]
    only: Option<String>,
    /// Also print the N slowest queries of each shape, with their time
    /// and filter (to find what a tail is made of).
    #[arg(long, default_value_t = 0)]
    slowest: usize,
}

/// The shapes of the mix, by name.
const SHAPES: &[&str] = &[
    "action",
    "action prefix",
    "access id",
    "subject",
    "ip",
    "cidr /16",
    "cidr /24",
    "ipv6 /48",
    "status range",
    "outcome",
    "type",
    "source name",
    "access id + subject",
    "action + subject",
    "action + subject + success, one day",
    "free text, 1-3 words",
    "query string",
    "access id, ascending",
    "from an instant, oldest first",
    "everything, page 10",
    "access id, limit 10",
    "access id, limit 1000",
    "access id, exact total",
    "scoped: app token",
];

/// One query to time: the client to ask (admin or a scoped token), the
/// request, and pages to follow untimed first.
struct Query {
    request: SearchRequest,
    scoped: Option<usize>,
    skip_pages: usize,
}

pub async fn bench_search(
    endpoint: Endpoint,
    bearer: BearerToken,
    args: BenchSearchArgs,
) -> anyhow::Result<()> {
    if args.per_shape == 0 {
        bail!("--per-shape must be at least 1");
    }
    let shapes: Vec<&str> = SHAPES
        .iter()
        .copied()
        .filter(|s| args.only.as_ref().is_none_or(|o| s.contains(o.as_str())))
        .collect();
    if shapes.is_empty() {
        bail!("--only: no shape has that in its name");
    }
    let channel = endpoint.connect().await.context("cannot reach auditd")?;
    let mut admin = auditd::client::audit_log(channel.clone(), bearer.clone());
    let mut rng = StdRng::seed_from_u64(args.seed);
    let pool = sample(&mut admin, &mut rng).await?;
    let mut scoped = Vec::new();
    if shapes.contains(&"scoped: app token") {
        let mut tokens = TokensClient::with_interceptor(channel.clone(), bearer);
        for _ in 0..SCOPED_TOKENS {
            let e = &pool[rng.random_range(0..pool.len())];
            let secret = tokens
                .create_token(CreateTokenRequest {
                    kind: TokenKind::App as i32,
                    name: "bench-search".into(),
                    subject: e.subject.clone(),
                    access_id: e.access_id.clone(),
                    ..Default::default()
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .secret;
            scoped.push(auditd::client::audit_log(
                channel.clone(),
                BearerToken::new(&secret)?,
            ));
        }
    }

    let mut report = serde_json::Map::new();
    let mut rows = Vec::new();
    for shape in shapes {
        let mut samples = Vec::with_capacity(args.per_shape);
        let mut hits = Vec::with_capacity(args.per_shape);
        let mut timed = Vec::with_capacity(args.per_shape);
        for i in 0..=args.per_shape {
            let Some(query) = build(shape, &pool, &mut rng, scoped.len()) else {
                break;
            };
            let client = match query.scoped {
                Some(k) => &mut scoped[k],
                None => &mut admin,
            };
            let (seconds, total, lower_bound) = run(client, &query).await?;
            if i > 0 {
                samples.push(seconds * 1e3);
                hits.push((total, lower_bound));
                if args.slowest > 0 {
                    timed.push((seconds * 1e3, total, describe(&query.request)));
                }
            }
        }
        if samples.is_empty() {
            continue;
        }
        timed.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (ms, total, filter) in timed.iter().take(args.slowest) {
            eprintln!("slow: {shape}: {ms:.2} ms, {total} hits: {filter}");
        }
        samples.sort_by(f64::total_cmp);
        hits.sort();
        let (median, lower_bound) = hits[hits.len() / 2];
        let shown = match lower_bound {
            true => format!(">={median}"),
            false => median.to_string(),
        };
        let (p50, p99, max) = (
            rank(&samples, 0.5),
            rank(&samples, 0.99),
            samples[samples.len() - 1],
        );
        rows.push((shape, shown, p50, p99, max));
        report.insert(
            shape.into(),
            serde_json::json!({
                "median_hits": median,
                "hits_lower_bound": lower_bound,
                "p50_ms": p50, "p99_ms": p99, "max_ms": max,
                "queries": samples.len(),
            }),
        );
    }
    report.insert("per_shape".into(), args.per_shape.into());
    report.insert("seed".into(), args.seed.into());
    if args.json {
        println!("{}", serde_json::Value::Object(report));
        return Ok(());
    }
    println!(
        "{:<38} {:>14} {:>9} {:>9} {:>9}",
        "SHAPE", "MEDIAN HITS", "P50 ms", "P99 ms", "MAX ms"
    );
    for (shape, hits, p50, p99, max) in rows {
        println!("{shape:<38} {hits:>14} {p50:>9.2} {p99:>9.2} {max:>9.2}");
    }
    Ok(())
}

/// The pool: for each of `POOL` random instants between the oldest and
/// the newest event, the first event at or after it.
async fn sample(client: &mut Client, rng: &mut StdRng) -> anyhow::Result<Vec<AuditEvent>> {
    let end = |ascending| SearchRequest {
        limit: 1,
        ascending,
        ..Default::default()
    };
    let micros = |e: &AuditEvent| auditd::schema::timestamp_micros(e.time.as_ref());
    let first = |request| {
        let mut client = client.clone();
        async move {
            client
                .search(request)
                .await
                .map_err(status_error)
                .map(|r| r.into_inner().events.pop())
        }
    };
    let oldest = first(end(true))
        .await?
        .context("the index holds no event: ingest some first")?;
    let newest = first(end(false))
        .await?
        .context("the index holds no event")?;
    let (lo, hi) = (micros(&oldest), micros(&newest));
    let mut pool = Vec::with_capacity(POOL);
    for _ in 0..POOL {
        let at = rng.random_range(lo..=hi);
        let request = SearchRequest {
            from_time: Some(auditd::schema::micros_to_timestamp(at)),
            ..end(true)
        };
        if let Some(event) = first(request).await? {
            pool.push(event);
        }
    }
    Ok(pool)
}

/// A query of `shape` with values from a random pool event; `None` when
/// the pool has no event the shape can use (no IPv6 address).
fn build(shape: &str, pool: &[AuditEvent], rng: &mut StdRng, scoped: usize) -> Option<Query> {
    let e = pool[rng.random_range(0..pool.len())].clone();
    let ip = e.source.as_ref().map(|s| s.ip.clone()).unwrap_or_default();
    let base = SearchRequest {
        limit: 100,
        ..Default::default()
    };
    let query = |request| Query {
        request,
        scoped: None,
        skip_pages: 0,
    };
    let by_access = SearchRequest {
        access_ids: vec![e.access_id.clone()],
        ..base.clone()
    };
    let words: Vec<String> = [&e.error_message, &e.subject, &e.action]
        .iter()
        .flat_map(|s| s.split(|c: char| !c.is_alphanumeric()))
        .filter(|w| w.len() >= 3)
        .map(str::to_lowercase)
        .collect();
    let seconds = e.time.as_ref().map_or(0, |t| t.seconds);
    let day = seconds - seconds.rem_euclid(86_400);
    let at = |s: i64| {
        Some(prost_types::Timestamp {
            seconds: s,
            nanos: 0,
        })
    };
    Some(match shape {
        "action" => query(SearchRequest {
            actions: vec![e.action.clone()],
            ..base
        }),
        "action prefix" => {
            let family = e.action.split(['.', ' ']).next().unwrap_or_default();
            query(SearchRequest {
                actions: vec![format!("{family}*")],
                ..base
            })
        }
        "access id" => query(by_access),
        "subject" => query(SearchRequest {
            subjects: vec![e.subject.clone()],
            ..base
        }),
        "ip" => query(SearchRequest {
            ips: vec![ip],
            ..base
        }),
        "cidr /16" => query(SearchRequest {
            ips: vec![cidr(pool, rng, 16, false)?],
            ..base
        }),
        "cidr /24" => query(SearchRequest {
            ips: vec![cidr(pool, rng, 24, false)?],
            ..base
        }),
        "ipv6 /48" => query(SearchRequest {
            ips: vec![cidr(pool, rng, 48, true)?],
            ..base
        }),
        "status range" => {
            let class = [200, 400, 500][rng.random_range(0..3)];
            query(SearchRequest {
                status_min: Some(class),
                status_max: Some(class + 99),
                ..base
            })
        }
        "outcome" => query(SearchRequest {
            outcome: [Outcome::Success, Outcome::Failure][rng.random_range(0..2)] as i32,
            ..base
        }),
        "type" => query(SearchRequest {
            types: vec![e.r#type.clone()],
            ..base
        }),
        "source name" => query(SearchRequest {
            source_names: vec![e.source.clone().unwrap_or_default().name],
            ..base
        }),
        "access id + subject" => query(SearchRequest {
            subjects: vec![e.subject.clone()],
            ..by_access
        }),
        "action + subject" => query(SearchRequest {
            actions: vec![e.action.clone()],
            subjects: vec![e.subject.clone()],
            ..base
        }),
        "action + subject + success, one day" => query(SearchRequest {
            actions: vec![e.action.clone()],
            subjects: vec![e.subject.clone()],
            outcome: Outcome::Success as i32,
            from_time: at(day),
            to_time: at(day + 86_400),
            ..base
        }),
        "free text, 1-3 words" => {
            let n = rng.random_range(1..=3.min(words.len().max(1)));
            let start = rng.random_range(0..=words.len().saturating_sub(n));
            query(SearchRequest {
                text: words.get(start..start + n)?.join(" "),
                ..base
            })
        }
        "query string" => query(SearchRequest {
            query: match e.action.contains(char::is_whitespace) {
                true => format!("action:{:?} AND status:[400 TO 499]", e.action),
                false => format!("action:{} AND status:[400 TO 499]", e.action),
            },
            ..base
        }),
        "access id, ascending" => query(SearchRequest {
            ascending: true,
            ..by_access
        }),
        "from an instant, oldest first" => query(SearchRequest {
            from_time: e.time,
            ascending: true,
            ..base
        }),
        "everything, page 10" => Query {
            request: base,
            scoped: None,
            skip_pages: 9,
        },
        "access id, limit 10" => query(SearchRequest {
            limit: 10,
            ..by_access
        }),
        "access id, limit 1000" => query(SearchRequest {
            limit: 1_000,
            ..by_access
        }),
        "access id, exact total" => query(SearchRequest {
            exact_total: true,
            ..by_access
        }),
        "scoped: app token" => Query {
            request: base,
            scoped: Some(rng.random_range(0..scoped.max(1))),
            skip_pages: 0,
        },
        other => unreachable!("a shape of SHAPES: {other}"),
    })
}

/// The `/bits` block of a random pool address of the family asked for.
fn cidr(pool: &[AuditEvent], rng: &mut StdRng, bits: u8, v6: bool) -> Option<String> {
    let candidates: Vec<&AuditEvent> = pool
        .iter()
        .filter(|p| p.source.as_ref().is_some_and(|s| s.ip.contains(':') == v6))
        .collect();
    if candidates.is_empty() {
        return None;
    }
    let pick = candidates[rng.random_range(0..candidates.len())];
    let addr: std::net::IpAddr = pick.source.as_ref()?.ip.parse().ok()?;
    Some(ipnet::IpNet::new(addr, bits).ok()?.trunc().to_string())
}

/// The filter of `request`, in a line: its fields that are set.
fn describe(request: &SearchRequest) -> String {
    let lists = [
        ("actions", &request.actions),
        ("access_ids", &request.access_ids),
        ("subjects", &request.subjects),
        ("ips", &request.ips),
        ("types", &request.types),
        ("source_names", &request.source_names),
    ];
    let mut parts: Vec<String> = lists
        .iter()
        .filter(|(_, values)| !values.is_empty())
        .map(|(name, values)| format!("{name}={values:?}"))
        .collect();
    for (name, value) in [("text", &request.text), ("query", &request.query)] {
        if !value.is_empty() {
            parts.push(format!("{name}={value:?}"));
        }
    }
    if request.from_time.is_some() || request.to_time.is_some() {
        parts.push("a time range".into());
    }
    if request.status_min.is_some() || request.status_max.is_some() {
        parts.push(format!(
            "status {:?}..={:?}",
            request.status_min, request.status_max
        ));
    }
    parts.push(format!("limit {}", request.limit));
    parts.join(", ")
}

/// Runs one query (following `skip_pages` first, untimed) and returns the
/// time of the last page, its total hits, and whether that is a lower
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
            break;
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

/// Nearest-rank percentile of sorted samples.
pub(crate) fn rank(sorted: &[f64], q: f64) -> f64 {
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}
