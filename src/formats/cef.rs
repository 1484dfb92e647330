//! CEF: ArcSight's Common Event Format, one line per event:
//!
//! `CEF:0|auditd|auditd|<version>|<action>|<action>|<severity>|<extension>`
//!
//! The action is both the Signature ID and the Name. Severity (0–10) is 3
//! without a failure (status < 400 or none), 5 for 4xx and 7 for 5xx.
//!
//! Extension (left out when empty): `rt` the event's time (else
//! `received`) in ms since the epoch; `externalId` the id; `cat` the type;
//! `app` the source name; `src` the source address, or `c6a2` (label
//! `Source IPv6 Address`, as the spec reserves it) when it is IPv6, since
//! `src` is IPv4 only (an IPv4-mapped IPv6 address goes to `src` as IPv4);
//! `suser` the access (who acted); `duser` the subject (whose data);
//! `request` the resource; `outcome` success or failure (none without a
//! status); `reason` the error id; `msg` the error message; `cn1` the
//! status and `cn2` the seq; `cs1`..`cs6` (each with its `csNLabel`)
//! forwardedFor, query (JSON), before, after, attributes (JSON) and
//! received (RFC 3339, microseconds).
//!
//! Escaping, as "Implementing ArcSight CEF" says: in the header `\` and
//! `|` are escaped with a backslash; a header may not break a line, so CR
//! and LF become spaces there. In extension values `\` and `=` are escaped
//! with a backslash, and CR and LF are written `\r` and `\n`.

use std::net::Ipv6Addr;

use super::{event_micros, json_text, micros, millis, rfc3339, Outcome};
use crate::proto::AuditEvent;

pub(super) fn write(event: &AuditEvent, out: &mut Vec<u8>) {
    let severity = match Outcome::of(event.status) {
        Outcome::Unknown | Outcome::Success => "3",
        Outcome::ClientError => "5",
        Outcome::ServerError => "7",
    };
    out.extend_from_slice(b"CEF:0|auditd|auditd|");
    for field in [
        env!("CARGO_PKG_VERSION"),
        &event.action,
        &event.action,
        severity,
    ] {
        header_field(field, out);
        out.push(b'|');
    }

    let mut ext = Extension { out, first: true };
    ext.field("rt", &millis(event_micros(event)).to_string());
    ext.field("externalId", &event.id);
    ext.field("cat", &event.r#type);
    if let Some(source) = &event.source {
        ext.field("app", &source.name);
        match source.ip.parse::<Ipv6Addr>() {
            Ok(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ext.field("src", &v4.to_string()),
                None => ext.labeled("c6a2", "Source IPv6 Address", &source.ip),
            },
            // IPv4 (or, in an event validation never saw, not an address).
            Err(_) => ext.field("src", &source.ip),
        }
    }
    ext.field("suser", &event.access_id);
    ext.field("duser", &event.subject);
    ext.field("request", &event.resource);
    match Outcome::of(event.status) {
        Outcome::Unknown => {}
        Outcome::Success => ext.field("outcome", "success"),
        Outcome::ClientError | Outcome::ServerError => ext.field("outcome", "failure"),
    }
    ext.field("reason", &event.error_id);
    ext.field("msg", &event.error_message);
    if event.status != 0 {
        ext.labeled("cn1", "status", &event.status.to_string());
    }
    ext.labeled("cn2", "seq", &event.seq.to_string());
    ext.labeled("cs1", "forwardedFor", &event.forwarded_for);
    ext.labeled("cs2", "query", &json_text(&event.query));
    ext.labeled("cs3", "before", &event.before);
    ext.labeled("cs4", "after", &event.after);
    ext.labeled("cs5", "attributes", &json_text(&event.attributes));
    if let Some(received) = micros(event.received.as_ref()) {
        ext.labeled("cs6", "received", &rfc3339(received));
    }
    out.push(b'\n');
}

/// Appends a header field: `\` → `\\`, `|` → `\|`, CR and LF → space.
fn header_field(value: &str, out: &mut Vec<u8>) {
    escape(value, out, |b| match b {
        b'\\' => Some(b"\\\\"),
        b'|' => Some(b"\\|"),
        b'\r' | b'\n' => Some(b" "),
        _ => None,
    });
}

/// Appends an extension value: `\` → `\\`, `=` → `\=`, CR → `\r`,
/// LF → `\n`.
fn extension_value(value: &str, out: &mut Vec<u8>) {
    escape(value, out, |b| match b {
        b'\\' => Some(b"\\\\"),
        b'=' => Some(b"\\="),
        b'\r' => Some(b"\\r"),
        b'\n' => Some(b"\\n"),
        _ => None,
    });
}

/// Appends `value` with each byte that `replace` has a replacement for
/// replaced. Byte by byte is safe: the bytes of a multi-byte UTF-8
/// character are never ASCII.
fn escape(value: &str, out: &mut Vec<u8>, replace: impl Fn(u8) -> Option<&'static [u8]>) {
    for b in value.bytes() {
        match replace(b) {
            Some(replacement) => out.extend_from_slice(replacement),
            None => out.push(b),
        }
    }
}

/// The `key=value` pairs after the header, separated by spaces.
struct Extension<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
}

impl Extension<'_> {
    /// Appends `key=value` unless `value` is empty.
    fn field(&mut self, key: &str, value: &str) {
        if value.is_empty() {
            return;
        }
        if !self.first {
            self.out.push(b' ');
        }
        self.first = false;
        self.out.extend_from_slice(key.as_bytes());
        self.out.push(b'=');
        extension_value(value, self.out);
    }

    /// Appends a custom field and its label (`cs1=… cs1Label=…`) unless
    /// `value` is empty.
    fn labeled(&mut self, key: &str, label: &str, value: &str) {
        if !value.is_empty() {
            self.field(key, value);
            self.field(&format!("{key}Label"), label);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::sample_event;
    use crate::proto::Source;

    fn cef(event: &AuditEvent) -> String {
        let mut out = Vec::new();
        write(event, &mut out);
        let line = String::from_utf8(out).unwrap();
        assert!(line.ends_with('\n'));
        assert_eq!(line.matches(['\n', '\r']).count(), 1, "{line:?}");
        line
    }

    /// Reads a line back as the spec says: seven header fields split at
    /// unescaped `|`, then `key=value` pairs split at unescaped `=`.
    fn parse(line: &str) -> (Vec<String>, Vec<(String, String)>) {
        let line = line.strip_suffix('\n').unwrap();
        let mut header = Vec::new();
        let mut field = String::new();
        let mut chars = line.chars();
        while header.len() < 7 {
            match chars.next().unwrap() {
                '\\' => field.push(chars.next().unwrap()),
                '|' => header.push(std::mem::take(&mut field)),
                c => field.push(c),
            }
        }
        // Each key is the last word before an unescaped `=`.
        let mut pairs: Vec<(String, String)> = Vec::new();
        let mut text = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next().unwrap() {
                    'n' => text.push('\n'),
                    'r' => text.push('\r'),
                    c => text.push(c),
                },
                '=' => {
                    let (value, key) = match text.rsplit_once(' ') {
                        Some((value, key)) => (value.to_string(), key.to_string()),
                        None => (String::new(), text.clone()),
                    };
                    if let Some(last) = pairs.last_mut() {
                        last.1 = value;
                    }
                    pairs.push((key, String::new()));
                    text.clear();
                }
                c => text.push(c),
            }
        }
        if let Some(last) = pairs.last_mut() {
            last.1 = text;
        }
        (header, pairs)
    }

    fn value<'p>(pairs: &'p [(String, String)], key: &str) -> Option<&'p str> {
        pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_full_event() {
        let line = cef(&sample_event());
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            line,
            format!(
                "CEF:0|auditd|auditd|{version}|events.get|events.get|5|\
                 rt=1625726631928 externalId=ckabc cat=audit-log/pryv-api app=http \
                 src=85.5.225.68 suser=ck6j duser=emma request=diary outcome=failure \
                 reason=forbidden msg=Access session has expired. \
                 cn1=403 cn1Label=status cn2=42 cn2Label=seq \
                 cs1=10.0.0.1, 10.0.0.2 cs1Label=forwardedFor \
                 cs2={{\"limit\":\"100\",\"streams\":\"diary\"}} cs2Label=query \
                 cs3={{\"a\":1}} cs3Label=before cs4={{\"a\":2}} cs4Label=after \
                 cs5={{\"region\":\"eu\"}} cs5Label=attributes \
                 cs6=2021-07-08T06:43:52.000456Z cs6Label=received\n"
            )
        );
        let (header, pairs) = parse(&line);
        assert_eq!(header[4], "events.get");
        assert_eq!(value(&pairs, "msg"), Some("Access session has expired."));
    }

    #[test]
    fn a_bare_event() {
        let event = AuditEvent {
            action: "auth.login".into(),
            ..Default::default()
        };
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            cef(&event),
            format!(
                "CEF:0|auditd|auditd|{version}|auth.login|auth.login|3|rt=0 cn2=0 cn2Label=seq\n"
            )
        );
    }

    #[test]
    fn header_escapes_backslash_and_pipe_and_drops_line_breaks() {
        let event = AuditEvent {
            action: "a\\b|c=d\re\nf".into(),
            ..Default::default()
        };
        let line = cef(&event);
        assert!(
            line.contains("|a\\\\b\\|c=d e f|a\\\\b\\|c=d e f|3|"),
            "{line}"
        );
        let (header, _) = parse(&line);
        assert_eq!(header.len(), 7);
        assert_eq!(header[4], "a\\b|c=d e f");
        assert_eq!(header[5], "a\\b|c=d e f");
        assert_eq!(header[6], "3");
    }

    #[test]
    fn extension_escapes_backslash_equals_and_line_breaks() {
        let nasty = "C:\\dir a=b|c\r\nd";
        let event = AuditEvent {
            action: "events.get".into(),
            error_message: nasty.into(),
            resource: "x=y".into(),
            ..Default::default()
        };
        let line = cef(&event);
        assert!(line.contains("msg=C:\\\\dir a\\=b|c\\r\\nd"), "{line}");
        assert!(line.contains("request=x\\=y"), "{line}");
        let (_, pairs) = parse(&line);
        assert_eq!(value(&pairs, "msg"), Some(nasty));
        assert_eq!(value(&pairs, "request"), Some("x=y"));
    }

    #[test]
    fn ipv6_sources_go_to_c6a2() {
        let with_ip = |ip: &str| AuditEvent {
            action: "events.get".into(),
            source: Some(Source {
                name: String::new(),
                ip: ip.into(),
            }),
            ..Default::default()
        };
        let (_, pairs) = parse(&cef(&with_ip("2001:db8::1")));
        assert_eq!(value(&pairs, "c6a2"), Some("2001:db8::1"));
        assert_eq!(value(&pairs, "c6a2Label"), Some("Source IPv6 Address"));
        assert_eq!(value(&pairs, "src"), None);
        let (_, pairs) = parse(&cef(&with_ip("::ffff:10.1.2.3")));
        assert_eq!(value(&pairs, "src"), Some("10.1.2.3"));
        assert_eq!(value(&pairs, "c6a2"), None);
    }

    #[test]
    fn severities_and_outcomes() {
        for (status, severity, outcome) in [
            (0, "3", None),
            (200, "3", Some("success")),
            (404, "5", Some("failure")),
            (503, "7", Some("failure")),
        ] {
            let event = AuditEvent {
                action: "events.get".into(),
                status,
                ..Default::default()
            };
            let (header, pairs) = parse(&cef(&event));
            assert_eq!(header[6], severity, "{status}");
            assert_eq!(value(&pairs, "outcome"), outcome, "{status}");
        }
    }
}
