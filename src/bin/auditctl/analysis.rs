//! `auditctl aggregate`: exact counts over the events a filter matches,
//! through the daemon's Aggregate call.
//!
//! The flags (each repeatable; the filter flags are `search`'s):
//!
//! * `--terms FIELD[:SIZE]`: the SIZE most frequent values of FIELD
//!   (default 10, at most 10,000) and how many matches fall outside them.
//!   FIELD is one of action, access_id, subject, ip, source_name, type,
//!   status, error_id, resource, query.KEY, attributes.KEY. The part after
//!   the last `:` is the size.
//! * `--histogram INTERVAL`: events per time bucket, aligned to the epoch.
//!   INTERVAL is a whole number and a unit (`s`, `m`, `h`, `d`, `w`) or
//!   several of them (`90s`, `30m`, `1h`, `1d`, `1h30m`); at least `1s`.
//! * `--cardinality FIELD`: how many distinct values FIELD has.
//! * `--sub KIND:SPEC`: an aggregation inside each bucket of the first
//!   `--terms` or `--histogram` on the command line, as `terms:FIELD[:SIZE]`,
//!   `histogram:INTERVAL` or `cardinality:FIELD`.
//!
//! Each aggregation is named by its kind and its value as given, in the
//! `--sub` form (`terms:ip`, `terms:status:5`, `histogram:1h`,
//! `cardinality:subject`): the keys of `results` in `--format json`, and
//! the headings of the table.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::io::Write as _;

use anyhow::{bail, Context};
use auditd::proto::aggregation::Kind;
use auditd::proto::{
    AggregateRequest, AggregateResponse, Aggregation, AggregationResult, CardinalityAggregation,
    DateHistogramAggregation, TermsAggregation,
};
use auditd::search::aggregate::{MAX_AGGREGATIONS, MAX_TERMS_SIZE};
use clap::{ArgMatches, ValueEnum};
use serde::Serialize;

use crate::{status_error, Client, FilterArgs};

#[derive(clap::Args, Debug, Clone)]
pub struct AggregateArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// The SIZE most frequent values of FIELD (default 10, at most 10000),
    /// with their counts and the count of the rest. FIELD: action,
    /// access_id, subject, ip, source_name, type, status, error_id,
    /// resource, query.KEY, attributes.KEY. Repeatable.
    #[arg(long = "terms", value_name = "FIELD[:SIZE]")]
    terms: Vec<String>,
    /// Events per time bucket: a whole number and a unit (s, m, h, d, w),
    /// or several (90s, 30m, 1h, 1d, 1h30m); at least 1s. Repeatable.
    #[arg(long = "histogram", value_name = "INTERVAL")]
    histograms: Vec<String>,
    /// The number of distinct values of FIELD (the fields of --terms).
    /// Repeatable.
    #[arg(long = "cardinality", value_name = "FIELD")]
    cardinalities: Vec<String>,
    /// An aggregation inside each bucket of the first --terms or
    /// --histogram given: terms:FIELD[:SIZE], histogram:INTERVAL or
    /// cardinality:FIELD. Repeatable.
    #[arg(long = "sub", value_name = "KIND:SPEC")]
    subs: Vec<String>,
    /// A table, or the AggregateResponse as JSON (results keyed by the
    /// aggregations' names: `terms:ip`, `histogram:1h`, ...).
    #[arg(long, value_enum, default_value_t = AggregateFormat::Table)]
    pub format: AggregateFormat,
    /// The order in which --terms, --histogram and --cardinality were
    /// given: which flag, and which of its values.
    #[arg(skip)]
    order: Vec<(Top, usize)>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AggregateFormat {
    Table,
    Json,
}

/// A top-level aggregation flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Top {
    Terms,
    Histogram,
    Cardinality,
}

impl AggregateArgs {
    /// Records the order of the aggregation flags on the command line,
    /// which the derive does not keep (each flag has a list of its own).
    pub fn note_order(&mut self, matches: &ArgMatches) {
        let mut given = Vec::new();
        for (id, top) in [
            ("terms", Top::Terms),
            ("histograms", Top::Histogram),
            ("cardinalities", Top::Cardinality),
        ] {
            if let Some(indices) = matches.indices_of(id) {
                given.extend(indices.enumerate().map(|(n, at)| (at, top, n)));
            }
        }
        given.sort_unstable();
        self.order = given.into_iter().map(|(_, top, n)| (top, n)).collect();
    }

    /// The aggregation flags in the order given (or flag by flag, when
    /// the order was not recorded).
    fn ordered(&self) -> Vec<(Top, &str)> {
        let value = |top: Top, n: usize| -> Option<&str> {
            match top {
                Top::Terms => self.terms.get(n),
                Top::Histogram => self.histograms.get(n),
                Top::Cardinality => self.cardinalities.get(n),
            }
            .map(String::as_str)
        };
        let recorded: Option<Vec<(Top, &str)>> = self
            .order
            .iter()
            .map(|&(top, n)| value(top, n).map(|v| (top, v)))
            .collect();
        let count = self.terms.len() + self.histograms.len() + self.cardinalities.len();
        match recorded {
            Some(recorded) if recorded.len() == count => recorded,
            _ => (self.terms.iter().map(|v| (Top::Terms, v.as_str())))
                .chain(self.histograms.iter().map(|v| (Top::Histogram, v.as_str())))
                .chain(
                    self.cardinalities
                        .iter()
                        .map(|v| (Top::Cardinality, v.as_str())),
                )
                .collect(),
        }
    }

    /// The request these flags say; `Err`, saying which flag is wrong,
    /// before anything is sent.
    pub fn request(&self) -> anyhow::Result<AggregateRequest> {
        let filter = self.filter.to_filter()?;
        let mut aggregations = Vec::new();
        for (top, value) in self.ordered() {
            aggregations.push(match top {
                Top::Terms => terms(value).with_context(|| format!("--terms {value:?}"))?,
                Top::Histogram => {
                    histogram(value).with_context(|| format!("--histogram {value:?}"))?
                }
                Top::Cardinality => {
                    cardinality(value).with_context(|| format!("--cardinality {value:?}"))?
                }
            });
        }
        if aggregations.is_empty() {
            bail!("nothing to count: give at least one --terms, --histogram or --cardinality");
        }
        if aggregations.len() > MAX_AGGREGATIONS {
            bail!(
                "{} aggregations: at most {MAX_AGGREGATIONS} (--terms, --histogram and --cardinality together)",
                aggregations.len()
            );
        }
        unique(&aggregations, "")?;
        if !self.subs.is_empty() {
            let subs = self
                .subs
                .iter()
                .map(|spec| sub(spec).with_context(|| format!("--sub {spec:?}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            unique(&subs, "--sub ")?;
            let parent = aggregations
                .iter_mut()
                .find(|a| !matches!(a.kind, Some(Kind::Cardinality(_))))
                .context(
                    "--sub goes inside the buckets of a --terms or --histogram, and none is given",
                )?;
            parent.sub_aggregations = subs;
        }
        Ok(AggregateRequest {
            filter: Some(filter),
            aggregations,
        })
    }
}

/// Refuses two aggregations of one level with the same name (the same
/// flag and value given twice).
fn unique(aggregations: &[Aggregation], flag: &str) -> anyhow::Result<()> {
    let mut names = HashSet::new();
    for a in aggregations {
        if !names.insert(a.name.as_str()) {
            bail!("{flag}{} is given twice", a.name);
        }
    }
    Ok(())
}

/// `FIELD[:SIZE]`.
fn terms(value: &str) -> anyhow::Result<Aggregation> {
    let (field, size) = match value.rsplit_once(':') {
        None => (value, 0),
        Some((field, size)) => {
            let size = match size.parse::<u32>() {
                Ok(n) if (1..=MAX_TERMS_SIZE).contains(&n) => n,
                _ => bail!("the size {size:?} is not a whole number from 1 to {MAX_TERMS_SIZE}"),
            };
            (field, size)
        }
    };
    Ok(named(
        "terms",
        value,
        Kind::Terms(TermsAggregation {
            field: field_name(field)?,
            size,
        }),
    ))
}

fn histogram(value: &str) -> anyhow::Result<Aggregation> {
    let seconds = parse_interval(value)?;
    Ok(named(
        "histogram",
        value,
        Kind::DateHistogram(DateHistogramAggregation {
            interval: Some(prost_types::Duration { seconds, nanos: 0 }),
        }),
    ))
}

fn cardinality(value: &str) -> anyhow::Result<Aggregation> {
    Ok(named(
        "cardinality",
        value,
        Kind::Cardinality(CardinalityAggregation {
            field: field_name(value)?,
        }),
    ))
}

/// `terms:FIELD[:SIZE]`, `histogram:INTERVAL` or `cardinality:FIELD`.
fn sub(spec: &str) -> anyhow::Result<Aggregation> {
    match spec.split_once(':') {
        Some(("terms", value)) => terms(value),
        Some(("histogram", value)) => histogram(value),
        Some(("cardinality", value)) => cardinality(value),
        _ => bail!("not terms:FIELD[:SIZE], histogram:INTERVAL or cardinality:FIELD"),
    }
}

fn named(kind: &str, value: &str, what: Kind) -> Aggregation {
    Aggregation {
        name: format!("{kind}:{value}"),
        kind: Some(what),
        sub_aggregations: Vec::new(),
    }
}

/// A field name as given; the daemon says whether it knows it.
fn field_name(field: &str) -> anyhow::Result<String> {
    if field.is_empty() || field.contains(char::is_whitespace) {
        bail!("{field:?} is not a field name (action, access_id, subject, ip, source_name, type, status, error_id, resource, query.KEY, attributes.KEY)");
    }
    Ok(field.to_owned())
}

/// `90s`, `30m`, `1h`, `1d`, `2w`, `1h30m`: whole seconds, at least 1.
fn parse_interval(value: &str) -> anyhow::Result<i64> {
    auditd::json::parse_interval(value).map_err(anyhow::Error::msg)
}

pub async fn aggregate(
    mut client: Client,
    request: AggregateRequest,
    format: AggregateFormat,
) -> anyhow::Result<()> {
    let response = client
        .aggregate(request.clone())
        .await
        .map_err(status_error)?
        .into_inner();
    let text = match format {
        AggregateFormat::Table => table(&request.aggregations, &response, columns()),
        AggregateFormat::Json => to_json(&response)? + "\n",
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// The terminal's width: `COLUMNS`, else 80.
fn columns() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse().ok())
        .filter(|&c: &usize| c > 0)
        .unwrap_or(80)
}

/// The response as JSON (pretty, `total_hits` first): the proto's field
/// names; a histogram bucket's `start` in RFC 3339 (none on terms
/// buckets); results keyed by the aggregations' names.
fn to_json(response: &AggregateResponse) -> serde_json::Result<String> {
    #[derive(Serialize)]
    struct Response<'a> {
        total_hits: u64,
        results: BTreeMap<&'a str, JsonResult<'a>>,
    }
    #[derive(Serialize)]
    struct JsonResult<'a> {
        buckets: Vec<JsonBucket<'a>>,
        other_count: u64,
        value: u64,
        approximate: bool,
    }
    #[derive(Serialize)]
    struct JsonBucket<'a> {
        key: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        start: Option<String>,
        count: u64,
        sub: BTreeMap<&'a str, JsonResult<'a>>,
    }
    fn results(of: &BTreeMap<String, AggregationResult>) -> BTreeMap<&str, JsonResult<'_>> {
        of.iter()
            .map(|(name, r)| {
                let result = JsonResult {
                    buckets: r
                        .buckets
                        .iter()
                        .map(|b| JsonBucket {
                            key: &b.key,
                            start: b.start.as_ref().map(rfc3339),
                            count: b.count,
                            sub: results(&b.sub),
                        })
                        .collect(),
                    other_count: r.other_count,
                    value: r.value,
                    approximate: r.approximate,
                };
                (name.as_str(), result)
            })
            .collect()
    }
    serde_json::to_string_pretty(&Response {
        total_hits: response.total_hits,
        results: results(&response.results),
    })
}

/// A timestamp in RFC 3339, UTC (`2023-11-14T22:00:00Z`).
fn rfc3339(t: &prost_types::Timestamp) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(
        i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos),
    )
    .ok()
    .and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
    .unwrap_or_else(|| format!("{}s", t.seconds))
}

/// The table: `total_hits: N`, then each aggregation in the order asked,
/// a heading (its name) and one row per bucket — the key (a histogram's
/// bucket start) and the count, for a histogram a bar scaled to its
/// largest bucket, for terms a last `(other)` row — with the
/// sub-aggregations of each bucket indented under it.
fn table(asked: &[Aggregation], response: &AggregateResponse, columns: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "total_hits: {}", response.total_hits);
    for aggregation in asked {
        out.push('\n');
        render(
            &mut out,
            aggregation,
            response.results.get(&aggregation.name),
            0,
            columns,
        );
    }
    out
}

/// The row label for the `other_count` of terms.
const OTHER: &str = "(other)";

fn render(
    out: &mut String,
    aggregation: &Aggregation,
    result: Option<&AggregationResult>,
    indent: usize,
    columns: usize,
) {
    let pad = " ".repeat(indent);
    let name = &aggregation.name;
    let Some(result) = result else {
        let _ = writeln!(out, "{pad}{name}: no result");
        return;
    };
    let histogram = match aggregation.kind {
        Some(Kind::Cardinality(_)) | None => {
            let approximate = if result.approximate {
                " (approximate)"
            } else {
                ""
            };
            let _ = writeln!(out, "{pad}{name} = {}{approximate}", result.value);
            return;
        }
        Some(Kind::DateHistogram(_)) => true,
        Some(Kind::Terms(_)) => false,
    };
    let _ = writeln!(out, "{pad}{name}");
    let keys: Vec<String> = result
        .buckets
        .iter()
        .map(|b| match (&b.start, histogram) {
            (Some(start), true) => rfc3339(start),
            _ => shown(&b.key),
        })
        .collect();
    let other = (!histogram).then_some(result.other_count);
    let key_width = keys
        .iter()
        .map(|k| k.chars().count())
        .chain(other.map(|_| OTHER.len()))
        .max()
        .unwrap_or(0);
    let count_width = result
        .buckets
        .iter()
        .map(|b| b.count)
        .chain(other)
        .map(|c| c.to_string().len())
        .max()
        .unwrap_or(1);
    let largest = result.buckets.iter().map(|b| b.count).max().unwrap_or(0);
    let bar_width = columns
        .saturating_sub(indent + 2 + key_width + 1 + count_width + 1)
        .max(10);
    for (bucket, key) in result.buckets.iter().zip(&keys) {
        let padding = key_width.saturating_sub(key.chars().count());
        let _ = write!(
            out,
            "{pad}  {key}{:padding$} {:>count_width$}",
            "", bucket.count
        );
        if histogram && bucket.count > 0 {
            let _ = write!(out, " {}", bar(bucket.count, largest, bar_width));
        }
        out.push('\n');
        for sub in &aggregation.sub_aggregations {
            render(out, sub, bucket.sub.get(&sub.name), indent + 4, columns);
        }
    }
    if let Some(other) = other {
        let _ = writeln!(out, "{pad}  {OTHER:<key_width$} {other:>count_width$}");
    }
}

/// A key as a row shows it: quoted when empty or holding control
/// characters (a line break would break the table).
fn shown(key: &str) -> String {
    if key.is_empty() || key.chars().any(char::is_control) {
        format!("{key:?}")
    } else {
        key.to_owned()
    }
}

/// `count` of `largest` as a bar of at most `width` cells, in eighths of
/// a cell; a count above zero shows at least one eighth.
fn bar(count: u64, largest: u64, width: usize) -> String {
    const PARTS: [&str; 8] = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"];
    if largest == 0 || count == 0 {
        return String::new();
    }
    let eighths =
        (u128::from(count) * width as u128 * 8 + u128::from(largest) / 2) / u128::from(largest);
    let eighths = (eighths as usize).max(1);
    let mut bar = "█".repeat(eighths / 8);
    bar.push_str(PARTS[eighths % 8]);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use auditd::proto::Bucket;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: AggregateArgs,
    }

    fn args(line: &[&str]) -> AggregateArgs {
        let matches = <Cli as clap::CommandFactory>::command()
            .try_get_matches_from(std::iter::once("aggregate").chain(line.iter().copied()))
            .unwrap();
        let mut cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap();
        cli.args.note_order(&matches);
        cli.args
    }

    fn request(line: &[&str]) -> anyhow::Result<AggregateRequest> {
        args(line).request()
    }

    fn error(line: &[&str]) -> String {
        format!("{:#}", request(line).unwrap_err())
    }

    #[test]
    fn aggregations_keep_the_command_line_order_and_the_sub_goes_in_the_first() {
        let r = request(&[
            "--cardinality",
            "ip",
            "--histogram",
            "1h",
            "--terms",
            "action:5",
            "--terms",
            "query.streams",
            "--sub",
            "terms:status:3",
            "--sub",
            "cardinality:subject",
        ])
        .unwrap();
        let names: Vec<&str> = r.aggregations.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "cardinality:ip",
                "histogram:1h",
                "terms:action:5",
                "terms:query.streams"
            ]
        );
        let subs: Vec<&str> = r.aggregations[1]
            .sub_aggregations
            .iter()
            .map(|a| a.name.as_str())
            .collect();
        assert_eq!(subs, ["terms:status:3", "cardinality:subject"]);
        assert!(r.aggregations[2].sub_aggregations.is_empty());
        match &r.aggregations[2].kind {
            Some(Kind::Terms(t)) => assert_eq!((t.field.as_str(), t.size), ("action", 5)),
            other => panic!("{other:?}"),
        }
        match &r.aggregations[1].kind {
            Some(Kind::DateHistogram(h)) => assert_eq!(h.interval.unwrap().seconds, 3_600),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_flags_are_one_clear_line() {
        for (line, says) in [
            (&["--terms", "ip:x"][..], "--terms \"ip:x\": the size \"x\""),
            (&["--terms", "ip:0"][..], "from 1 to 10000"),
            (&["--terms", "ip:10001"][..], "from 1 to 10000"),
            (&["--terms", ":5"][..], "not a field name"),
            (
                &["--histogram", "0s"][..],
                "--histogram \"0s\": an interval of zero",
            ),
            (&["--histogram", "soon"][..], "not an interval"),
            (&["--sub", "terms:ip"][..], "nothing to count"),
            (
                &["--cardinality", "ip", "--sub", "terms:ip"][..],
                "--sub goes inside",
            ),
            (
                &["--terms", "ip", "--sub", "top:ip"][..],
                "--sub \"top:ip\": not terms",
            ),
            (
                &["--terms", "ip", "--terms", "ip"][..],
                "terms:ip is given twice",
            ),
            (&["--from", "yesterday", "--terms", "ip"][..], "--from"),
        ] {
            let message = error(line);
            assert!(message.contains(says), "{line:?}: {message}");
            assert!(!message.contains('\n'), "{line:?}: {message}");
        }
        let eleven: Vec<String> = (1..=11).map(|n| format!("{n}h")).collect();
        let line: Vec<&str> = eleven.iter().flat_map(|h| ["--histogram", h]).collect();
        assert!(error(&line).contains("at most 10"));
    }

    fn bucket(key: &str, count: u64) -> Bucket {
        Bucket {
            key: key.into(),
            count,
            ..Default::default()
        }
    }

    #[test]
    fn the_table_nests_subs_and_draws_bars_to_the_largest_bucket() {
        let asked = request(&[
            "--terms",
            "action",
            "--histogram",
            "1h",
            "--cardinality",
            "ip",
            "--sub",
            "terms:status",
        ])
        .unwrap()
        .aggregations;
        let mut login = bucket("auth.login", 30);
        login.sub.insert(
            "terms:status".into(),
            AggregationResult {
                buckets: vec![bucket("200", 20), bucket("401", 10)],
                ..Default::default()
            },
        );
        let at = |seconds, count| Bucket {
            start: Some(prost_types::Timestamp { seconds, nanos: 0 }),
            count,
            ..Default::default()
        };
        let response = AggregateResponse {
            total_hits: 42,
            results: [
                (
                    "terms:action".to_owned(),
                    AggregationResult {
                        buckets: vec![login, bucket("", 2)],
                        other_count: 10,
                        ..Default::default()
                    },
                ),
                (
                    "histogram:1h".to_owned(),
                    AggregationResult {
                        buckets: vec![
                            at(1_700_002_800, 40),
                            at(1_700_006_400, 0),
                            at(1_700_010_000, 2),
                        ],
                        ..Default::default()
                    },
                ),
                (
                    "cardinality:ip".to_owned(),
                    AggregationResult {
                        value: 7,
                        ..Default::default()
                    },
                ),
            ]
            .into(),
        };
        let text = table(&asked, &response, 60);
        let expected = "total_hits: 42

terms:action
  auth.login 30
    terms:status
      200     20
      401     10
      (other)  0
  \"\"          2
    terms:status: no result
  (other)    10

histogram:1h
  2023-11-14T23:00:00Z 40 ██████████████████████████████████
  2023-11-15T00:00:00Z  0
  2023-11-15T01:00:00Z  2 █▊

cardinality:ip = 7
";
        assert_eq!(text, expected, "\n{text}");
        for line in text.lines() {
            assert!(line.chars().count() <= 60, "{line}");
        }

        let json = to_json(&response).unwrap();
        assert!(
            json.trim_start().starts_with("{\n  \"total_hits\": 42,"),
            "{json}"
        );
        let json: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(json["total_hits"], 42);
        let action = &json["results"]["terms:action"];
        assert_eq!(action["other_count"], 10);
        assert_eq!(action["buckets"][0]["key"], "auth.login");
        assert_eq!(
            action["buckets"][0]["sub"]["terms:status"]["buckets"][1]["count"],
            10
        );
        assert!(action["buckets"][0].get("start").is_none());
        let hours = &json["results"]["histogram:1h"]["buckets"];
        assert_eq!(hours[0]["start"], "2023-11-14T23:00:00Z");
        assert_eq!(json["results"]["cardinality:ip"]["value"], 7);
    }

    #[test]
    fn bars() {
        assert_eq!(bar(0, 10, 10), "");
        assert_eq!(bar(10, 10, 10), "█".repeat(10));
        assert_eq!(bar(5, 10, 10), "█".repeat(5));
        assert_eq!(bar(1, 1_000_000, 10), "▏");
        assert_eq!(bar(u64::MAX, u64::MAX, 3), "███");
    }
}
