//! Batch validation: all or nothing. Every violation names the event by
//! index, the field and the reason, so a producer can fix its batch in one
//! round trip.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use crate::config::Limits;
use crate::proto::AuditEvent;

/// Longest client-chosen id.
pub const MAX_ID_LEN: usize = 128;

/// Most violations listed in one error; the count is always exact.
pub const MAX_REPORTED_VIOLATIONS: usize = 100;

/// One thing wrong with one event (or with the batch, when `index` is
/// `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub index: Option<usize>,
    pub field: &'static str,
    pub reason: String,
}

impl Violation {
    /// The field's path in the request: `events[3].source.ip`.
    pub fn path(&self) -> String {
        match self.index {
            Some(i) => format!("events[{i}].{}", self.field),
            None => self.field.to_owned(),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path(), self.reason)
    }
}

/// Why a batch was refused: the first violations and how many there are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidBatch {
    pub violations: Vec<Violation>,
    pub total: usize,
    pub invalid_events: usize,
    pub events: usize,
}

impl fmt::Display for InvalidBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "batch rejected, nothing stored: {} of {} events invalid",
            self.invalid_events, self.events
        )?;
        for (i, v) in self.violations.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { "; " })?;
            write!(f, "{v}")?;
        }
        if self.total > self.violations.len() {
            write!(f, "; and {} more", self.total - self.violations.len())?;
        }
        Ok(())
    }
}

/// Checks a whole batch against `limits`; `now_micros` is the server clock.
pub fn validate_batch(
    events: &[AuditEvent],
    limits: &Limits,
    now_micros: i64,
) -> Result<(), InvalidBatch> {
    let mut out = Collector::default();
    if events.is_empty() {
        out.push(None, "events", "a batch needs at least one event".into());
    }
    if events.len() > limits.max_batch_events {
        out.push(
            None,
            "events",
            format!(
                "{} events; at most {} per batch",
                events.len(),
                limits.max_batch_events
            ),
        );
    }
    let mut seen_ids: HashMap<&str, usize> = HashMap::with_capacity(events.len());
    let mut invalid: HashSet<usize> = HashSet::new();
    for (i, event) in events.iter().enumerate() {
        let before = out.total;
        validate_event(i, event, limits, now_micros, &mut out);
        if !event.id.is_empty() {
            if let Some(first) = seen_ids.insert(event.id.as_str(), i) {
                out.push(Some(i), "id", format!("the same id as events[{first}]"));
            }
        }
        if out.total > before {
            invalid.insert(i);
        }
    }
    if out.total == 0 {
        return Ok(());
    }
    Err(InvalidBatch {
        violations: out.list,
        total: out.total,
        invalid_events: invalid.len(),
        events: events.len(),
    })
}

/// Whether `value` holds a Unicode control character (C0, DEL or C1). A
/// byte scan first: C0 and DEL are single bytes, and every C1 character
/// (U+0080..U+009F) is encoded as 0xC2 then a second byte, so text
/// without those bytes (nearly all of it) skips decoding its characters.
fn has_control(value: &str) -> bool {
    value.bytes().any(|b| b < 0x20 || b == 0x7f || b == 0xc2) && value.chars().any(char::is_control)
}

#[derive(Default)]
struct Collector {
    list: Vec<Violation>,
    total: usize,
}

impl Collector {
    fn push(&mut self, index: Option<usize>, field: &'static str, reason: String) {
        self.total += 1;
        if self.list.len() < MAX_REPORTED_VIOLATIONS {
            self.list.push(Violation {
                index,
                field,
                reason,
            });
        }
    }
}

fn validate_event(i: usize, e: &AuditEvent, limits: &Limits, now_micros: i64, out: &mut Collector) {
    let at = Some(i);
    if !e.id.is_empty() {
        if e.id.len() > MAX_ID_LEN {
            out.push(
                at,
                "id",
                format!("{} characters; at most {MAX_ID_LEN}", e.id.len()),
            );
        } else if !e.id.bytes().all(|b| b.is_ascii_graphic()) {
            out.push(
                at,
                "id",
                "only printable ASCII characters, no spaces".into(),
            );
        }
    }
    if let Some(time) = &e.time {
        if !(0..1_000_000_000).contains(&time.nanos) {
            out.push(
                at,
                "time",
                format!("nanos {} out of range 0..1e9", time.nanos),
            );
        } else if time.seconds < 0 {
            out.push(at, "time", "before 1970-01-01T00:00:00Z".into());
        } else {
            let skew = limits.max_clock_skew_secs as i64 * 1_000_000;
            let micros = time.seconds.saturating_mul(1_000_000);
            if micros > now_micros.saturating_add(skew) {
                out.push(
                    at,
                    "time",
                    format!(
                        "{}s in the future; the allowed clock skew is {}s",
                        (micros - now_micros) / 1_000_000,
                        limits.max_clock_skew_secs
                    ),
                );
            }
        }
    }
    if e.action.is_empty() {
        out.push(at, "action", "required".into());
    }
    let source = e.source.as_ref();
    let identifiers: [(&'static str, &str); 8] = [
        ("type", &e.r#type),
        ("action", &e.action),
        ("access_id", &e.access_id),
        ("subject", &e.subject),
        ("source.name", source.map_or("", |s| s.name.as_str())),
        ("resource", &e.resource),
        ("error_id", &e.error_id),
        ("forwarded_for", &e.forwarded_for),
    ];
    for (field, value) in identifiers {
        check_len(at, field, value, limits.max_field_bytes, out);
        if has_control(value) {
            out.push(at, field, "control characters are not allowed".into());
        }
    }
    if let Some(source) = source {
        if !source.ip.is_empty() && source.ip.parse::<IpAddr>().is_err() {
            out.push(
                at,
                "source.ip",
                format!("{:?} is not an IPv4 or IPv6 address", truncate(&source.ip)),
            );
        }
    }
    if !e.forwarded_for.is_empty() {
        if let Some(bad) = e
            .forwarded_for
            .split(',')
            .map(str::trim)
            .find(|part| part.parse::<IpAddr>().is_err())
        {
            out.push(
                at,
                "forwarded_for",
                format!(
                    "{:?} is not an IPv4 or IPv6 address (expected a comma-separated list)",
                    truncate(bad)
                ),
            );
        }
    }
    if e.status != 0 && !(100..=599).contains(&e.status) {
        out.push(
            at,
            "status",
            format!(
                "{} is not an HTTP-style status (100..=599, or 0 when not given)",
                e.status
            ),
        );
    }
    for (field, value) in [
        ("error_message", &e.error_message),
        ("before", &e.before),
        ("after", &e.after),
    ] {
        check_len(at, field, value, limits.max_text_bytes, out);
        if value.contains('\0') {
            out.push(at, field, "NUL characters are not allowed".into());
        }
    }
    for (field, value) in [("before", &e.before), ("after", &e.after)] {
        if !value.is_empty() && value.len() <= limits.max_text_bytes {
            if let Err(error) = serde_json::from_str::<serde::de::IgnoredAny>(value) {
                out.push(at, field, format!("not valid JSON: {error}"));
            }
        }
    }
    for (field, map) in [("query", &e.query), ("attributes", &e.attributes)] {
        if map.len() > limits.max_map_entries {
            out.push(
                at,
                field,
                format!("{} entries; at most {}", map.len(), limits.max_map_entries),
            );
        }
        for (key, value) in map {
            if key.is_empty() {
                out.push(at, field, "an empty key".into());
            } else if key.len() > limits.max_map_key_bytes {
                out.push(
                    at,
                    field,
                    format!(
                        "key of {} bytes; at most {}",
                        key.len(),
                        limits.max_map_key_bytes
                    ),
                );
            } else if key.chars().any(char::is_control) {
                out.push(
                    at,
                    field,
                    format!("key {:?} has control characters", truncate(key)),
                );
            }
            if value.len() > limits.max_map_value_bytes {
                out.push(
                    at,
                    field,
                    format!(
                        "value of key {:?} has {} bytes; at most {}",
                        truncate(key),
                        value.len(),
                        limits.max_map_value_bytes
                    ),
                );
            } else if value.contains('\0') {
                out.push(
                    at,
                    field,
                    format!("value of key {:?} has a NUL character", truncate(key)),
                );
            }
        }
    }
}

fn check_len(at: Option<usize>, field: &'static str, value: &str, max: usize, out: &mut Collector) {
    if value.len() > max {
        out.push(at, field, format!("{} bytes; at most {max}", value.len()));
    }
}

/// Bad values are echoed back, but never more than a short prefix.
fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_control_agrees_with_char_is_control() {
        let mut samples: Vec<String> = ["", "plain", "é ü ß", "\u{a0}nbsp", "日本語", "\u{1F600}"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for c in (0..0x250u32).filter_map(char::from_u32) {
            samples.push(format!("a{c}b"));
        }
        for s in &samples {
            assert_eq!(has_control(s), s.chars().any(char::is_control), "{s:?}");
        }
    }
    use crate::proto::Source;

    fn valid() -> AuditEvent {
        AuditEvent {
            action: "events.get".into(),
            source: Some(Source {
                name: "http".into(),
                ip: "10.0.0.1".into(),
            }),
            status: 200,
            ..Default::default()
        }
    }

    fn reasons(events: &[AuditEvent]) -> Vec<String> {
        match validate_batch(events, &Limits::default(), 1_700_000_000_000_000) {
            Ok(()) => vec![],
            Err(e) => e.violations.iter().map(|v| v.path()).collect(),
        }
    }

    #[test]
    fn a_valid_event_passes() {
        assert!(reasons(&[valid()]).is_empty());
    }

    #[test]
    fn every_rule_names_its_field() {
        type Breaker = Box<dyn Fn(&mut AuditEvent)>;
        let cases: Vec<(&str, Breaker)> = vec![
            ("events[0].action", Box::new(|e| e.action.clear())),
            ("events[0].id", Box::new(|e| e.id = "x".repeat(129))),
            ("events[0].id", Box::new(|e| e.id = "has space".into())),
            (
                "events[0].source.ip",
                Box::new(|e| e.source.as_mut().unwrap().ip = "300.1.1.1".into()),
            ),
            (
                "events[0].forwarded_for",
                Box::new(|e| e.forwarded_for = "10.0.0.1, nope".into()),
            ),
            ("events[0].status", Box::new(|e| e.status = 42)),
            (
                "events[0].before",
                Box::new(|e| e.before = "{not json".into()),
            ),
            (
                "events[0].subject",
                Box::new(|e| e.subject = "a\u{7}b".into()),
            ),
            (
                "events[0].error_message",
                Box::new(|e| e.error_message = "nul\0".into()),
            ),
            (
                "events[0].resource",
                Box::new(|e| e.resource = "r".repeat(1025)),
            ),
            (
                "events[0].time",
                Box::new(|e| {
                    e.time = Some(prost_types::Timestamp {
                        seconds: 1_700_000_000 + 3600,
                        nanos: 0,
                    })
                }),
            ),
            (
                "events[0].time",
                Box::new(|e| {
                    e.time = Some(prost_types::Timestamp {
                        seconds: -62_135_596_800, // year 1
                        nanos: 0,
                    })
                }),
            ),
            (
                "events[0].attributes",
                Box::new(|e| {
                    for k in 0..65 {
                        e.attributes.insert(format!("k{k}"), "v".into());
                    }
                }),
            ),
            (
                "events[0].query",
                Box::new(|e| drop(e.query.insert("k".into(), "v".repeat(4097)))),
            ),
        ];
        for (field, break_it) in cases {
            let mut event = valid();
            break_it(&mut event);
            assert_eq!(reasons(&[event]), vec![field.to_string()], "{field}");
        }
    }

    #[test]
    fn batch_rules_and_duplicates_within_a_batch() {
        assert_eq!(reasons(&[]), vec!["events"]);
        let mut a = valid();
        a.id = "same".into();
        let b = a.clone();
        assert_eq!(reasons(&[a, b]), vec!["events[1].id"]);
        let too_many = vec![valid(); 10_001];
        assert_eq!(reasons(&too_many), vec!["events"]);
    }

    #[test]
    fn the_message_counts_and_lists_every_bad_event() {
        let mut bad = valid();
        bad.action.clear();
        let err = validate_batch(&[valid(), bad.clone(), bad], &Limits::default(), 0).unwrap_err();
        assert_eq!(err.invalid_events, 2);
        let text = err.to_string();
        assert!(text.contains("2 of 3 events invalid"), "{text}");
        assert!(text.contains("events[1].action: required"), "{text}");
        assert!(text.contains("events[2].action: required"), "{text}");
    }
}
