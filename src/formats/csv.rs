//! CSV, as RFC 4180 says: a header row (`HEADER`), then one record per
//! event, comma-separated, CRLF-terminated, a cell quoted (`"`, doubled
//! inside) when it holds a comma, a quote or a line break.
//!
//! One column per field, in the order of `HEADER`. `time` and `received`
//! are RFC 3339 in UTC with microseconds; `source_name` and `ip` are the
//! source's; `query` and `attributes` are JSON objects. An absent or empty
//! value (no time, status 0, no query) is an empty cell.
//!
//! Against CSV (formula) injection, as OWASP advises, a cell that starts
//! with `=`, `+`, `-`, `@`, a tab or a CR gets a `'` in front, so that a
//! spreadsheet shows it as text instead of evaluating it.

use std::borrow::Cow;

use super::{json_text, micros, rfc3339};
use crate::proto::AuditEvent;

/// The header row: the column names, CRLF-terminated.
pub(super) const HEADER: &[u8] = b"id,time,received,type,action,access_id,subject,source_name,\
ip,forwarded_for,resource,query,status,error_id,error_message,before,after,attributes,seq\r\n";

pub(super) fn write(event: &AuditEvent, out: &mut Vec<u8>) {
    let time = micros(event.time.as_ref()).map(rfc3339).unwrap_or_default();
    let received = micros(event.received.as_ref())
        .map(rfc3339)
        .unwrap_or_default();
    let source = event.source.as_ref();
    let status = if event.status == 0 {
        String::new()
    } else {
        event.status.to_string()
    };
    let seq = event.seq.to_string();
    let (query, attributes) = (json_text(&event.query), json_text(&event.attributes));
    let cells: [&str; 19] = [
        &event.id,
        &time,
        &received,
        &event.r#type,
        &event.action,
        &event.access_id,
        &event.subject,
        source.map_or("", |s| &s.name),
        source.map_or("", |s| &s.ip),
        &event.forwarded_for,
        &event.resource,
        &query,
        &status,
        &event.error_id,
        &event.error_message,
        &event.before,
        &event.after,
        &attributes,
        &seq,
    ];
    let mut writer = ::csv::WriterBuilder::new()
        .terminator(::csv::Terminator::CRLF)
        .from_writer(out);
    // Writing to a Vec does no I/O; every record has the same 19 cells.
    writer
        .write_record(cells.map(defuse).iter().map(|cell| cell.as_bytes()))
        .expect("a record writes to a Vec");
    writer.flush().expect("a Vec flushes");
}

/// `cell`, with a `'` in front when a spreadsheet would take it for a
/// formula.
fn defuse(cell: &str) -> Cow<'_, str> {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        Cow::Owned(format!("'{cell}"))
    } else {
        Cow::Borrowed(cell)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::sample_event;

    /// The header and one event, read back with the csv crate.
    fn read_back(event: &AuditEvent) -> (Vec<String>, Vec<String>) {
        let mut out = HEADER.to_vec();
        let start = out.len();
        write(event, &mut out);
        assert!(out[start..].ends_with(b"\r\n"));
        let mut reader = ::csv::Reader::from_reader(out.as_slice());
        let header = reader.headers().unwrap().iter().map(String::from).collect();
        let records: Vec<::csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(records.len(), 1);
        (header, records[0].iter().map(String::from).collect())
    }

    #[test]
    fn a_full_event_reads_back_column_by_column() {
        let (header, record) = read_back(&sample_event());
        let row: Vec<(&str, &str)> = header
            .iter()
            .map(String::as_str)
            .zip(record.iter().map(String::as_str))
            .collect();
        assert_eq!(
            row,
            [
                ("id", "ckabc"),
                ("time", "2021-07-08T06:43:51.928123Z"),
                ("received", "2021-07-08T06:43:52.000456Z"),
                ("type", "audit-log/pryv-api"),
                ("action", "events.get"),
                ("access_id", "ck6j"),
                ("subject", "emma"),
                ("source_name", "http"),
                ("ip", "85.5.225.68"),
                ("forwarded_for", "10.0.0.1, 10.0.0.2"),
                ("resource", "diary"),
                ("query", r#"{"limit":"100","streams":"diary"}"#),
                ("status", "403"),
                ("error_id", "forbidden"),
                ("error_message", "Access session has expired."),
                ("before", r#"{"a":1}"#),
                ("after", r#"{"a":2}"#),
                ("attributes", r#"{"region":"eu"}"#),
                ("seq", "42"),
            ]
        );
    }

    #[test]
    fn the_header_is_one_crlf_row() {
        assert!(HEADER.ends_with(b"seq\r\n"));
        assert_eq!(HEADER.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(HEADER.iter().filter(|&&b| b == b',').count(), 18);
    }

    #[test]
    fn empty_values_are_empty_cells() {
        let event = AuditEvent {
            action: "auth.login".into(),
            ..Default::default()
        };
        let mut out = Vec::new();
        write(&event, &mut out);
        assert_eq!(out, b",,,,auth.login,,,,,,,,,,,,,,0\r\n");
    }

    #[test]
    fn commas_quotes_and_line_breaks_are_quoted() {
        let nasty = "a,b \"c\"\r\nd\ne";
        let event = AuditEvent {
            action: "events.get".into(),
            error_message: nasty.into(),
            ..Default::default()
        };
        let mut out = Vec::new();
        write(&event, &mut out);
        let line = String::from_utf8(out).unwrap();
        assert!(line.contains("\"a,b \"\"c\"\"\r\nd\ne\""), "{line:?}");
        let (_, record) = read_back(&event);
        assert_eq!(record[14], nasty);
    }

    #[test]
    fn formula_cells_are_defused() {
        for (value, expected) in [
            ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"),
            ("+1", "'+1"),
            ("-1", "'-1"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            ("\rx", "'\rx"),
            ("a=b", "a=b"),
            ("'quoted", "'quoted"),
            ("", ""),
        ] {
            let event = AuditEvent {
                action: value.into(),
                resource: value.into(),
                ..Default::default()
            };
            let (_, record) = read_back(&event);
            assert_eq!(record[4], expected, "{value:?}");
            assert_eq!(record[10], expected, "{value:?}");
        }
    }
}
