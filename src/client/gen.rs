//! Deterministic synthetic audit events, a Rust port of `shared/workload/gen_events.py`.
//!
//! The point is a workload with the *shape* of real Pryv.io API traffic: the same fields,
//! value pools and skew (a few actions, accesses and addresses make most of the volume), so
//! benchmarks and acceptance checks behave like the Python generator's. Output is not
//! byte-identical with Python (different RNG), but the same seed and options always give
//! byte-identical output here.
//!
//! Random draws happen in the same order as in the Python script, so the two stay easy to
//! compare side by side when one of them changes.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io::{BufWriter, Write};

/// The `type` of every generated event.
pub const EVENT_TYPE: &str = "audit-log/pryv-api";

/// (method id, weight), as in gen_events.py.
const ACTIONS: &[(&str, f64)] = &[
    ("events.get", 40.0),
    ("events.create", 14.0),
    ("events.update", 6.0),
    ("events.delete", 2.0),
    ("events.getAttachment", 3.0),
    ("streams.get", 9.0),
    ("streams.create", 2.0),
    ("streams.update", 1.0),
    ("streams.delete", 0.5),
    ("accesses.get", 3.0),
    ("accesses.create", 1.0),
    ("accesses.delete", 0.4),
    ("auth.login", 5.0),
    ("auth.logout", 1.5),
    ("account.get", 2.0),
    ("account.update", 0.4),
    ("account.changePassword", 0.2),
    ("followedSlices.get", 0.6),
    ("profile.get", 3.0),
    ("profile.update", 0.5),
    ("webhooks.get", 0.4),
    ("webhooks.create", 0.1),
    ("audit.getLogs", 0.3),
    ("getAccessInfo", 4.0),
    ("callBatch", 2.5),
];
const STREAMS: &[&str] = &[
    "diary",
    "work",
    "health",
    "heart-rate",
    "blood-pressure",
    "sleep",
    "steps",
    "weight",
    "mood",
    "medication",
    "consent",
    "profile",
    "location",
    "glucose",
    "notes",
];
/// (status, errorId, message, weight); `{id}` is replaced by 23 random id characters.
const ERRORS: &[(i32, &str, &str, f64)] = &[
    (403, "forbidden", "Access session has expired.", 4.0),
    (
        403,
        "forbidden",
        "The given token's access permissions do not allow this operation.",
        3.0,
    ),
    (
        401,
        "invalid-access-token",
        "Cannot find access from token.",
        3.0,
    ),
    (
        400,
        "invalid-parameters-format",
        "The parameters' format is invalid.",
        2.0,
    ),
    (
        400,
        "invalid-request-structure",
        "Request body must be a JSON object.",
        1.0,
    ),
    (404, "unknown-resource", "Unknown event 'ck{id}'.", 2.0),
    (
        409,
        "item-already-exists",
        "An event with the same id already exists.",
        0.5,
    ),
    (
        413,
        "request-too-large",
        "Attachment exceeds the maximum allowed size.",
        0.3,
    ),
    (
        429,
        "too-many-requests",
        "Rate limit exceeded for this access.",
        0.7,
    ),
    (
        500,
        "unexpected-error",
        "Unexpected error: storage backend timed out after 30000 ms.",
        0.5,
    ),
    (
        503,
        "api-unavailable",
        "The service is in maintenance mode; retry later.",
        0.2,
    ),
];
const SOURCES: &[(&str, f64)] = &[
    ("http", 80.0),
    ("socket.io", 10.0),
    ("grpc", 7.0),
    ("hfs", 2.0),
    ("system", 1.0),
];
const NAMES: &[&str] = &[
    "emma", "liam", "olivia", "noah", "ava", "elijah", "sofia", "lucas", "mia", "mateo", "amelia",
    "leo", "chloe", "yusuf", "zoe", "aarav",
];
const IPV4_FIRST_OCTETS: &[u8] = &[10, 85, 91, 172, 185, 192, 203, 212];
const ALPHA: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
/// Mean arrival rate, events per second (exponential inter-arrival times).
const RATE: f64 = 1000.0;
const ERROR_RATE: f64 = 0.08;
const IPV6_SHARE: f64 = 0.12;

/// Options, defaults equal to gen_events.py's.
#[derive(Debug, Clone)]
pub struct GenOptions {
    pub count: u64,
    pub seed: u64,
    pub accesses: usize,
    pub subjects: usize,
    pub addresses: usize,
    /// Time origin, seconds since the epoch; the first event comes slightly after it.
    pub start: f64,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            count: 100_000,
            seed: 1,
            accesses: 5_000,
            subjects: 2_000,
            addresses: 20_000,
            start: 1_700_000_000.0,
        }
    }
}

/// One generated event (the `type` is always [`EVENT_TYPE`]).
#[derive(Debug, Clone, PartialEq)]
pub struct GenEvent {
    pub id: String,
    /// Seconds since the epoch, already rounded to milliseconds as gen_events.py writes it.
    pub time: f64,
    pub action: String,
    pub access_id: String,
    pub subject: String,
    pub source_name: String,
    pub ip: String,
    /// Empty for auth/account/profile actions.
    pub resource: String,
    /// In insertion order, which is also the JSON key order.
    pub query: Vec<(String, String)>,
    pub status: i32,
    /// (errorId, errorMessage), for the ~8% of calls that failed.
    pub error: Option<(String, String)>,
}

impl GenEvent {
    /// One NDJSON line (no trailing newline) with gen_events.py's key order and compact
    /// separators. Written by hand because serde_json's map (without "preserve_order")
    /// would sort the keys.
    pub fn to_json_line(&self) -> String {
        let mut s = String::with_capacity(400);
        s.push_str("{\"id\":");
        push_str_json(&mut s, &self.id);
        s.push_str(",\"time\":");
        s.push_str(&format_time(self.time));
        s.push_str(",\"type\":");
        push_str_json(&mut s, EVENT_TYPE);
        for (key, value) in [
            ("action", &self.action),
            ("accessId", &self.access_id),
            ("subject", &self.subject),
        ] {
            s.push_str(",\"");
            s.push_str(key);
            s.push_str("\":");
            push_str_json(&mut s, value);
        }
        s.push_str(",\"source\":{\"name\":");
        push_str_json(&mut s, &self.source_name);
        s.push_str(",\"ip\":");
        push_str_json(&mut s, &self.ip);
        s.push_str("},\"resource\":");
        push_str_json(&mut s, &self.resource);
        s.push_str(",\"query\":{");
        for (i, (key, value)) in self.query.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            push_str_json(&mut s, key);
            s.push(':');
            push_str_json(&mut s, value);
        }
        s.push_str("},\"status\":");
        s.push_str(&self.status.to_string());
        if let Some((error_id, message)) = &self.error {
            s.push_str(",\"errorId\":");
            push_str_json(&mut s, error_id);
            s.push_str(",\"errorMessage\":");
            push_str_json(&mut s, message);
        }
        s.push('}');
        s
    }
}

/// Appends `value` as a JSON string literal; going through `Value`'s `Display` is infallible.
fn push_str_json(out: &mut String, value: &str) {
    out.push_str(&serde_json::Value::from(value).to_string());
}

/// Like Python's `json.dumps(round(t, 3))`: shortest round-trip digits, and `.0` on integral
/// values so the output reads as a float the way Python writes it. JSON has no NaN/inf, so
/// those (only reachable with a non-finite `start`) become `null`, as serde_json does.
fn format_time(t: f64) -> String {
    if !t.is_finite() {
        return "null".to_string();
    }
    let mut s = format!("{}", round_ms(t));
    if !s.contains('.') {
        s.push_str(".0");
    }
    s
}

fn round_ms(t: f64) -> f64 {
    (t * 1000.0).round() / 1000.0
}

/// Cumulative weights, so that a draw is one uniform number and a binary search, the way
/// Python's `random.choices(..., cum_weights=...)` works.
fn cumulative(weights: impl IntoIterator<Item = f64>) -> Vec<f64> {
    let mut total = 0.0;
    weights
        .into_iter()
        .map(|w| {
            total += w;
            total
        })
        .collect()
}

/// Item k has weight 1/(k+1)^s: the first items of a pool dominate, as in real traffic.
fn zipf_cumulative(n: usize, s: f64) -> Vec<f64> {
    cumulative((0..n).map(|k| 1.0 / ((k + 1) as f64).powf(s)))
}

/// Index drawn from cumulative weights (Python's `bisect_right(cum, random() * total)`).
/// `cum` is never empty: every pool holds at least one item.
fn pick(rng: &mut StdRng, cum: &[f64]) -> usize {
    let x = rng.random::<f64>() * cum[cum.len() - 1];
    // min(): guard against float rounding putting x on the very last boundary.
    cum.partition_point(|&c| c <= x).min(cum.len() - 1)
}

fn choose<'a, T: ?Sized>(rng: &mut StdRng, items: &[&'a T]) -> &'a T {
    items[rng.random_range(0..items.len())]
}

fn random_chars(rng: &mut StdRng, n: usize) -> String {
    (0..n)
        .map(|_| ALPHA[rng.random_range(0..ALPHA.len())] as char)
        .collect()
}

/// A collision-resistant-looking id like Pryv's: "ck" and 23 characters of [0-9a-z].
fn cuid(rng: &mut StdRng) -> String {
    format!("ck{}", random_chars(rng, 23))
}

/// The access ids, subjects and client addresses that events draw from (Zipf-weighted).
/// Each pool holds at least one item, where Python would fail on an empty one.
fn build_pools(rng: &mut StdRng, opts: &GenOptions) -> (Vec<String>, Vec<String>, Vec<String>) {
    let access_ids = (0..opts.accesses.max(1)).map(|_| cuid(rng)).collect();
    let subjects = (0..opts.subjects.max(1))
        .map(|i| format!("{}{:04}", choose(rng, NAMES), i))
        .collect();
    let ips = (0..opts.addresses.max(1))
        .map(|_| {
            if rng.random::<f64>() < IPV6_SHARE {
                // Documentation prefix, so generated traffic never names a real host.
                let (a, b, c): (u32, u32, u32) = (
                    rng.random_range(0..1 << 16),
                    rng.random_range(0..1 << 16),
                    rng.random_range(0..1 << 16),
                );
                format!("2001:db8:{a:x}:{b:x}::{c:x}")
            } else {
                let first = IPV4_FIRST_OCTETS[rng.random_range(0..IPV4_FIRST_OCTETS.len())];
                let (b, c, d): (u32, u32, u32) = (
                    rng.random_range(0..256),
                    rng.random_range(0..256),
                    rng.random_range(1..255),
                );
                format!("{first}.{b}.{c}.{d}")
            }
        })
        .collect();
    (access_ids, subjects, ips)
}

/// The call's parameters, as gen_events.py's `query_for` (keys in its insertion order).
fn query_for(rng: &mut StdRng, action: &str) -> Vec<(String, String)> {
    let kv = |k: &str, v: String| (k.to_string(), v);
    if action.starts_with("events.get") {
        let mut q = vec![kv("streams", choose(rng, STREAMS).to_string())];
        q.push(kv("limit", choose(rng, &["20", "100", "1000"]).to_string()));
        if rng.random::<f64>() < 0.5 {
            q.push(kv(
                "fromTime",
                rng.random_range(1_600_000_000u64..1_700_000_000)
                    .to_string(),
            ));
        }
        if rng.random::<f64>() < 0.2 {
            q.push(kv("state", "all".to_string()));
        }
        q
    } else if action == "events.create" || action == "events.update" {
        let stream = choose(rng, STREAMS).to_string();
        let kind = choose(
            rng,
            &["note/txt", "mass/kg", "pressure/mmhg", "count/steps"],
        )
        .to_string();
        vec![kv("streamIds", stream), kv("type", kind)]
    } else if action.starts_with("streams") {
        vec![kv("parentId", choose(rng, STREAMS).to_string())]
    } else if action == "auth.login" {
        vec![kv(
            "appId",
            choose(
                rng,
                &[
                    "pryv-app-web",
                    "diary-mobile",
                    "clinic-portal",
                    "sync-worker",
                ],
            )
            .to_string(),
        )]
    } else {
        Vec::new()
    }
}

/// The generator state behind [`events`].
struct Events {
    rng: StdRng,
    remaining: u64,
    t: f64,
    access_ids: Vec<String>,
    subjects: Vec<String>,
    ips: Vec<String>,
    action_cw: Vec<f64>,
    error_cw: Vec<f64>,
    source_cw: Vec<f64>,
    access_cw: Vec<f64>,
    subject_cw: Vec<f64>,
    ip_cw: Vec<f64>,
}

impl Iterator for Events {
    type Item = GenEvent;

    fn next(&mut self) -> Option<GenEvent> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let rng = &mut self.rng;
        // Poisson arrivals; 1-u is in (0, 1], so the logarithm is finite.
        self.t += -(1.0 - rng.random::<f64>()).ln() / RATE;
        let action = ACTIONS[pick(rng, &self.action_cw)].0;
        let access_id = self.access_ids[pick(rng, &self.access_cw)].clone();
        let id = cuid(rng);
        let subject = self.subjects[pick(rng, &self.subject_cw)].clone();
        let source_name = SOURCES[pick(rng, &self.source_cw)].0.to_string();
        let ip = self.ips[pick(rng, &self.ip_cw)].clone();
        // Sign-in, account and profile calls touch no stream.
        let resource = if ["auth", "account", "profile"]
            .iter()
            .any(|p| action.starts_with(p))
        {
            String::new()
        } else {
            choose(rng, STREAMS).to_string()
        };
        let query = query_for(rng, action);
        let mut status = if action.ends_with(".get") || action == "getAccessInfo" {
            200
        } else {
            201
        };
        let mut error = None;
        if rng.random::<f64>() < ERROR_RATE {
            let (code, error_id, message, _) = ERRORS[pick(rng, &self.error_cw)];
            // Drawn for every error, as in Python, even when the message has no `{id}`.
            let filler = random_chars(rng, 23);
            status = code;
            error = Some((error_id.to_string(), message.replace("{id}", &filler)));
        }
        Some(GenEvent {
            id,
            time: round_ms(self.t),
            action: action.to_string(),
            access_id,
            subject,
            source_name,
            ip,
            resource,
            query,
            status,
            error,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::try_from(self.remaining).unwrap_or(usize::MAX);
        (n, usize::try_from(self.remaining).ok())
    }
}

/// The `opts.count` events of `opts.seed`, in time order.
pub fn events(opts: &GenOptions) -> impl Iterator<Item = GenEvent> {
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let (access_ids, subjects, ips) = build_pools(&mut rng, opts);
    Events {
        remaining: opts.count,
        t: opts.start,
        action_cw: cumulative(ACTIONS.iter().map(|a| a.1)),
        error_cw: cumulative(ERRORS.iter().map(|e| e.3)),
        source_cw: cumulative(SOURCES.iter().map(|s| s.1)),
        access_cw: zipf_cumulative(access_ids.len(), 1.0),
        subject_cw: zipf_cumulative(subjects.len(), 0.8),
        ip_cw: zipf_cumulative(ips.len(), 1.0),
        access_ids,
        subjects,
        ips,
        rng,
    }
}

/// Writes `opts.count` events as NDJSON to `out` (one line each, "\n" terminated).
/// Returns the number of events written.
pub fn write_ndjson(opts: &GenOptions, out: &mut impl Write) -> std::io::Result<u64> {
    // Buffered here so that callers handing in raw stdout or a File do not pay a syscall a line.
    let mut out = BufWriter::new(out);
    let mut written = 0;
    for event in events(opts) {
        out.write_all(event.to_json_line().as_bytes())?;
        out.write_all(b"\n")?;
        written += 1;
    }
    out.flush()?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(count: u64, seed: u64) -> GenOptions {
        GenOptions {
            count,
            seed,
            ..GenOptions::default()
        }
    }

    fn ndjson(o: &GenOptions) -> String {
        let mut buf = Vec::new();
        let n = write_ndjson(o, &mut buf).unwrap();
        assert_eq!(n, o.count);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let a = ndjson(&opts(2_000, 7));
        assert_eq!(a, ndjson(&opts(2_000, 7)));
        assert_ne!(a, ndjson(&opts(2_000, 8)));
        assert_eq!(a.lines().count(), 2_000);
    }

    #[test]
    fn about_eight_percent_fail_with_error_status() {
        let all: Vec<_> = events(&opts(20_000, 1)).collect();
        let failed: Vec<_> = all.iter().filter(|e| e.error.is_some()).collect();
        let share = failed.len() as f64 / all.len() as f64;
        assert!((0.05..0.11).contains(&share), "error share {share}");
        assert!(failed.iter().all(|e| e.status >= 400));
        assert!(all
            .iter()
            .filter(|e| e.error.is_none())
            .all(|e| e.status == 200 || e.status == 201));
        // The `{id}` placeholder is always filled in.
        assert!(failed
            .iter()
            .all(|e| !e.error.as_ref().unwrap().1.contains("{id}")));
    }

    #[test]
    fn some_addresses_are_ipv6() {
        let mut rng = StdRng::seed_from_u64(1);
        let (_, _, ips) = build_pools(&mut rng, &GenOptions::default());
        let v6 = ips.iter().filter(|ip| ip.contains(':')).count() as f64 / ips.len() as f64;
        assert!((0.09..0.15).contains(&v6), "IPv6 share of the pool {v6}");
        assert!(ips.iter().all(|ip| ip.parse::<std::net::IpAddr>().is_ok()));
        // Over events the share is skewed by Zipf, but both families show up and v4 dominates.
        let all: Vec<_> = events(&opts(20_000, 1)).collect();
        let v6_events = all.iter().filter(|e| e.ip.contains(':')).count();
        assert!(
            v6_events > 0 && v6_events < all.len() / 2,
            "{v6_events} IPv6 events"
        );
    }

    #[test]
    fn times_never_go_backwards() {
        let all: Vec<_> = events(&opts(20_000, 3)).collect();
        assert!(all[0].time >= GenOptions::default().start);
        assert!(all.windows(2).all(|w| w[0].time <= w[1].time));
        // About a thousand a second.
        let span = all[all.len() - 1].time - all[0].time;
        assert!((15.0..25.0).contains(&span), "span {span}");
    }

    #[test]
    fn every_line_parses_with_the_expected_keys() {
        let o = opts(3_000, 5);
        for (line, event) in ndjson(&o).lines().zip(events(&o)) {
            assert!(line.starts_with("{\"id\":\"ck"), "key order: {line}");
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            for key in [
                "id", "time", "type", "action", "accessId", "subject", "source", "resource",
                "query", "status",
            ] {
                assert!(v.get(key).is_some(), "missing {key} in {line}");
            }
            assert_eq!(v["id"].as_str().unwrap().len(), 25);
            // Tolerance: serde_json's default float parsing may be off by one ulp.
            assert!(
                (v["time"].as_f64().unwrap() - event.time).abs() < 1e-6,
                "{line}"
            );
            assert_eq!(v["type"], EVENT_TYPE);
            assert!(v["source"]["name"].is_string() && v["source"]["ip"].is_string());
            assert!(v["query"]
                .as_object()
                .unwrap()
                .values()
                .all(|q| q.is_string()));
            assert_eq!(v.get("errorId").is_some(), event.error.is_some());
            assert_eq!(v.get("errorMessage").is_some(), event.error.is_some());
            let action = v["action"].as_str().unwrap();
            let no_resource = ["auth", "account", "profile"]
                .iter()
                .any(|p| action.starts_with(p));
            assert_eq!(v["resource"] == "", no_resource, "{line}");
        }
    }

    #[test]
    fn integral_times_print_like_python() {
        assert_eq!(format_time(1_700_000_001.0), "1700000001.0");
        assert_eq!(format_time(1_700_000_000.001), "1700000000.001");
        assert_eq!(format_time(1_700_000_000.000_4), "1700000000.0");
    }
}
