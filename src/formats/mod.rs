//! Export formats: one module per format, each turning one `AuditEvent`
//! into one line. This module picks the format and holds the rules the
//! formats share: the time of an event, its CRUD verb and its outcome.
//! docs/export-formats.md has the field-by-field mapping of each format.

mod cef;
mod csv;
mod ecs;
mod ndjson;
mod ocsf;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::proto::AuditEvent;
use crate::schema::timestamp_micros;

pub use ecs::ECS_VERSION;
pub use ocsf::{OCSF_REQUIRED, OCSF_VERSION};

/// The formats `Export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// auditd's own JSON form (`crate::json::JsonEvent`), one per line.
    Ndjson,
    /// OCSF API Activity (class 6003), one JSON object per line.
    Ocsf,
    /// Elastic Common Schema, one JSON document per line.
    Ecs,
    /// ArcSight Common Event Format, one `CEF:0|…` line per event.
    Cef,
    /// RFC 4180 CSV: a header row, then one record per event.
    Csv,
}

impl Format {
    /// Every format, in the order of `name`'s documentation.
    pub const ALL: [Format; 5] = [
        Format::Ndjson,
        Format::Ocsf,
        Format::Ecs,
        Format::Cef,
        Format::Csv,
    ];

    /// The format's name: `ndjson`, `ocsf`, `ecs`, `cef` or `csv`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Ndjson => "ndjson",
            Format::Ocsf => "ocsf",
            Format::Ecs => "ecs",
            Format::Cef => "cef",
            Format::Csv => "csv",
        }
    }

    /// The format of that `name` (ASCII case ignored), if there is one.
    pub fn parse(name: &str) -> Option<Format> {
        Format::ALL
            .into_iter()
            .find(|format| format.name().eq_ignore_ascii_case(name))
    }

    /// The format's media type, for an HTTP download.
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Ndjson | Format::Ocsf | Format::Ecs => "application/x-ndjson",
            Format::Cef => "text/plain; charset=utf-8",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }

    /// A download's file name extension.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Ndjson | Format::Ocsf | Format::Ecs => "ndjson",
            Format::Cef => "cef",
            Format::Csv => "csv",
        }
    }

    /// The proto enum value that asks for this format.
    pub fn to_proto(self) -> crate::proto::ExportFormat {
        use crate::proto::ExportFormat;
        match self {
            Format::Ndjson => ExportFormat::Ndjson,
            Format::Ocsf => ExportFormat::Ocsf,
            Format::Ecs => ExportFormat::Ecs,
            Format::Cef => ExportFormat::Cef,
            Format::Csv => ExportFormat::Csv,
        }
    }

    /// What goes before the first event of an export (CSV's header row).
    pub fn header(self) -> &'static [u8] {
        match self {
            Format::Csv => csv::HEADER,
            Format::Ndjson | Format::Ocsf | Format::Ecs | Format::Cef => b"",
        }
    }

    /// Appends `event` to `out` as one line, `\n` included.
    pub fn write(self, event: &AuditEvent, out: &mut Vec<u8>) {
        match self {
            Format::Ndjson => ndjson::write(event, out),
            Format::Ocsf => ocsf::write(event, out),
            Format::Ecs => ecs::write(event, out),
            Format::Cef => cef::write(event, out),
            Format::Csv => csv::write(event, out),
        }
    }
}

/// Appends `value` as one line of JSON.
fn write_json_line(value: &impl Serialize, out: &mut Vec<u8>) {
    // Writing to a Vec does no I/O, and the formats serialize only strings,
    // integers and string-keyed maps: nothing that can fail.
    serde_json::to_writer(&mut *out, value).expect("an export line serializes");
    out.push(b'\n');
}

/// A string map (`query`, `attributes`) as JSON text; empty when the map
/// is.
fn json_text(map: &BTreeMap<String, String>) -> String {
    if map.is_empty() {
        return String::new();
    }
    serde_json::to_string(map).expect("a string map serializes")
}

/// When the event happened, in microseconds since the epoch: its `time`,
/// or `received` when it has none (as the server defaults it).
fn event_micros(event: &AuditEvent) -> i64 {
    timestamp_micros(event.time.as_ref().or(event.received.as_ref()))
}

/// A timestamp in microseconds since the epoch, if there is one.
fn micros(timestamp: Option<&prost_types::Timestamp>) -> Option<i64> {
    timestamp.map(|t| timestamp_micros(Some(t)))
}

/// Microseconds to whole milliseconds (rounded down), the unit of OCSF's
/// timestamps and CEF's `rt`.
fn millis(micros: i64) -> i64 {
    micros.div_euclid(1000)
}

/// RFC 3339 in UTC with exactly six fractional digits (the precision
/// auditd stores), e.g. `2021-07-08T06:43:51.928000Z`. Empty for a time
/// outside years 1..=9999, which validation never lets in.
pub(crate) fn rfc3339(micros: i64) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .ok()
        .and_then(|t| t.format(FORMAT).ok())
        .unwrap_or_default()
}

/// What kind of operation an action is, by its verb:
///
/// - the verb of `VERB /path` is the HTTP method;
/// - the verb of a method id is the first word of its last dot-separated
///   part, words being split at `_`, `-` and camelCase humps:
///   `events.get` → `get`, `events.getAttachment` → `get`,
///   `account.changePassword` → `change`, `getAccessInfo` → `get`.
///
/// The verb, with ASCII case ignored, then decides (see `Verb::of`);
/// anything else (`auth.login`, `callBatch`, `OPTIONS /`) is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    /// create, add, insert, post
    Create,
    /// get, list, read, search, find, head
    Read,
    /// update, edit, set, change, modify, put, patch
    Update,
    /// delete, remove, destroy
    Delete,
    Other,
}

impl Verb {
    fn of(action: &str) -> Verb {
        match verb_word(action).to_ascii_lowercase().as_str() {
            "create" | "add" | "insert" | "post" => Verb::Create,
            "get" | "list" | "read" | "search" | "find" | "head" => Verb::Read,
            "update" | "edit" | "set" | "change" | "modify" | "put" | "patch" => Verb::Update,
            "delete" | "remove" | "destroy" => Verb::Delete,
            _ => Verb::Other,
        }
    }
}

/// The verb of `action`, as it is written there (see `Verb`).
fn verb_word(action: &str) -> &str {
    let action = action.trim();
    let part = match action.split_once(char::is_whitespace) {
        Some((method, _path)) => method,
        None => action.rsplit('.').next().unwrap_or(action),
    };
    first_word(part)
}

/// `part` up to its first `_` or `-`, or the first upper-case letter that
/// follows a lower-case one: `getAttachment` → `get`, `GET` → `GET`.
fn first_word(part: &str) -> &str {
    let mut after_lower = false;
    for (i, c) in part.char_indices() {
        if c == '_' || c == '-' || (c.is_uppercase() && after_lower) {
            return &part[..i];
        }
        after_lower = c.is_lowercase();
    }
    part
}

/// How the call ended, from `status`: 0 is "not given", below 400 is a
/// success, from 400 a failure (the client's up to 499, the server's
/// from 500).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Unknown,
    Success,
    ClientError,
    ServerError,
}

impl Outcome {
    fn of(status: i32) -> Outcome {
        match status {
            0 => Outcome::Unknown,
            s if s < 400 => Outcome::Success,
            s if s < 500 => Outcome::ClientError,
            _ => Outcome::ServerError,
        }
    }
}

/// An event with every field set, for the formats' tests.
#[cfg(test)]
fn sample_event() -> AuditEvent {
    use crate::proto::Source;
    use crate::schema::micros_to_timestamp;
    AuditEvent {
        id: "ckabc".into(),
        time: Some(micros_to_timestamp(1_625_726_631_928_123)),
        received: Some(micros_to_timestamp(1_625_726_632_000_456)),
        r#type: "audit-log/pryv-api".into(),
        action: "events.get".into(),
        access_id: "ck6j".into(),
        subject: "emma".into(),
        source: Some(Source {
            name: "http".into(),
            ip: "85.5.225.68".into(),
        }),
        forwarded_for: "10.0.0.1, 10.0.0.2".into(),
        resource: "diary".into(),
        query: [
            ("streams".into(), "diary".into()),
            ("limit".into(), "100".into()),
        ]
        .into(),
        status: 403,
        error_id: "forbidden".into(),
        error_message: "Access session has expired.".into(),
        before: r#"{"a":1}"#.into(),
        after: r#"{"a":2}"#.into(),
        attributes: [("region".into(), "eu".into())].into(),
        seq: 42,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        for format in Format::ALL {
            assert_eq!(Format::parse(format.name()), Some(format));
        }
        assert_eq!(Format::parse("OCSF"), Some(Format::Ocsf));
        assert_eq!(Format::parse("json"), None);
    }

    #[test]
    fn every_format_writes_one_line() {
        let mut event = sample_event();
        event.error_message = "line one\nline two\r\n".into();
        for format in Format::ALL {
            let mut out = Vec::new();
            format.write(&event, &mut out);
            assert!(out.ends_with(b"\n"), "{}", format.name());
            let body = &out[..out.len() - 1];
            // Only CSV may break a line, inside a quoted cell.
            if format != Format::Csv {
                assert!(!body.contains(&b'\n'), "{}", format.name());
            }
        }
    }

    #[test]
    fn only_csv_has_a_header() {
        for format in Format::ALL {
            assert_eq!(format.header().is_empty(), format != Format::Csv);
        }
    }

    #[test]
    fn verbs_of_method_ids_and_http_requests() {
        for (action, verb) in [
            ("events.get", Verb::Read),
            ("events.getAttachment", Verb::Read),
            ("getAccessInfo", Verb::Read),
            ("audit.get_logs", Verb::Read),
            ("streams.list", Verb::Read),
            ("events.create", Verb::Create),
            ("accesses.add", Verb::Create),
            ("streams.update", Verb::Update),
            ("account.changePassword", Verb::Update),
            ("profile.edit", Verb::Update),
            ("events.delete", Verb::Delete),
            ("accesses.delete", Verb::Delete),
            ("streams.remove", Verb::Delete),
            ("GET /events", Verb::Read),
            ("get /events", Verb::Read),
            ("HEAD /events", Verb::Read),
            ("POST /events", Verb::Create),
            ("PUT /events/1", Verb::Update),
            ("PATCH /events/1", Verb::Update),
            ("DELETE /events/1", Verb::Delete),
            ("OPTIONS /", Verb::Other),
            ("auth.login", Verb::Other),
            ("callBatch", Verb::Other),
            ("settings.setup", Verb::Other),
            ("", Verb::Other),
        ] {
            assert_eq!(Verb::of(action), verb, "{action}");
        }
        assert_eq!(verb_word("events.getAttachment"), "get");
        assert_eq!(verb_word("GET /a.b"), "GET");
        assert_eq!(verb_word("callBatch"), "call");
    }

    #[test]
    fn outcomes_by_status() {
        assert_eq!(Outcome::of(0), Outcome::Unknown);
        assert_eq!(Outcome::of(200), Outcome::Success);
        assert_eq!(Outcome::of(399), Outcome::Success);
        assert_eq!(Outcome::of(400), Outcome::ClientError);
        assert_eq!(Outcome::of(499), Outcome::ClientError);
        assert_eq!(Outcome::of(500), Outcome::ServerError);
    }

    #[test]
    fn times() {
        let event = sample_event();
        assert_eq!(event_micros(&event), 1_625_726_631_928_123);
        let no_time = AuditEvent {
            time: None,
            ..event
        };
        assert_eq!(event_micros(&no_time), 1_625_726_632_000_456);
        assert_eq!(millis(1_625_726_631_928_999), 1_625_726_631_928);
        assert_eq!(
            rfc3339(1_625_726_631_928_000),
            "2021-07-08T06:43:51.928000Z"
        );
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(i64::MAX), "");
    }
}
