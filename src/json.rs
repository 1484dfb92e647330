//! The JSON form of an event (NDJSON files, `auditctl` output): camelCase
//! names, `time` and `received` as seconds since the epoch, as Pryv writes
//! them. On output it also carries Pryv's derived stream ids.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::proto::{AuditEvent, Source};
use crate::schema::{micros_to_timestamp, timestamp_micros};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsonEvent {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received: Option<f64>,
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    pub type_: String,
    #[serde(default)]
    pub action: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub access_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<JsonSource>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub forwarded_for: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub status: i32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error_message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub before: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub after: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    /// The event's place in the log's order (dense, from 0). Output only;
    /// ignored on input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Pryv's `:_audit:access-{accessId}` and `:_audit:action-{action}`.
    /// Output only; ignored on input.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stream_ids: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonSource {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub ip: String,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum JsonError {
    #[error("{field}: {value} is not a time in seconds since the epoch")]
    BadTime { field: &'static str, value: f64 },
    #[error("{0}")]
    Syntax(String),
}

/// Seconds (as JSON writes them) to microseconds, rounded: a float carries
/// about 16 digits, enough for microseconds until the year 2255.
fn seconds_to_micros(field: &'static str, seconds: f64) -> Result<i64, JsonError> {
    let micros = (seconds * 1e6).round();
    // Reject what would not survive the conversion; validation then judges
    // the range (no events before 1970, none far in the future).
    if !micros.is_finite() || micros.abs() > 1e17 {
        return Err(JsonError::BadTime {
            field,
            value: seconds,
        });
    }
    Ok(micros as i64)
}

/// A time as people and scripts write it: seconds since the epoch
/// (`1700000000.5`) or RFC 3339 (`2026-12-02T10:00:00Z`).
pub fn parse_time(value: &str) -> Result<prost_types::Timestamp, String> {
    if let Ok(seconds) = value.parse::<f64>() {
        if !seconds.is_finite() {
            return Err(format!("{value:?} is not a time"));
        }
        let micros = (seconds * 1e6).round() as i64;
        return Ok(micros_to_timestamp(micros));
    }
    let t = time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
        .map_err(|_| format!("{value:?} is neither seconds since the epoch nor RFC 3339"))?;
    Ok(prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: t.nanosecond() as i32,
    })
}

/// Longest interval: its microseconds must fit an i64.
pub const MAX_INTERVAL_SECONDS: i64 = i64::MAX / 1_000_000;

/// `90s`, `30m`, `1h`, `1d`, `2w`, `1h30m`: whole seconds, at least 1.
pub fn parse_interval(value: &str) -> Result<i64, String> {
    let bad = || {
        "not an interval: a whole number and a unit (s, m, h, d or w), \
         e.g. 90s, 30m, 1h, 1d, or several, e.g. 1h30m"
            .to_owned()
    };
    let too_long = || format!("longer than {MAX_INTERVAL_SECONDS} s");
    let mut total: i64 = 0;
    let mut digits = String::new();
    for c in value.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(bad()),
        };
        if digits.is_empty() {
            return Err(bad());
        }
        let n: i64 = digits.parse().map_err(|_| too_long())?;
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(too_long)?;
        digits.clear();
    }
    if !digits.is_empty() || value.is_empty() {
        return Err(bad());
    }
    if total < 1 {
        return Err("an interval of zero: it must be at least 1s".into());
    }
    if total > MAX_INTERVAL_SECONDS {
        return Err(too_long());
    }
    Ok(total)
}

fn micros_to_seconds(micros: i64) -> f64 {
    micros as f64 / 1e6
}

impl JsonEvent {
    /// Parses one NDJSON line.
    pub fn parse(line: &str) -> Result<JsonEvent, JsonError> {
        serde_json::from_str(line).map_err(|e| JsonError::Syntax(e.to_string()))
    }

    pub fn into_proto(self) -> Result<AuditEvent, JsonError> {
        let time = self
            .time
            .map(|t| seconds_to_micros("time", t))
            .transpose()?
            .map(micros_to_timestamp);
        Ok(AuditEvent {
            id: self.id,
            time,
            // Set by the server; a client value is ignored anyway.
            received: None,
            r#type: self.type_,
            action: self.action,
            access_id: self.access_id,
            subject: self.subject,
            source: self.source.map(|s| Source {
                name: s.name,
                ip: s.ip,
            }),
            forwarded_for: self.forwarded_for,
            resource: self.resource,
            query: self.query,
            status: self.status,
            error_id: self.error_id,
            error_message: self.error_message,
            before: self.before,
            after: self.after,
            attributes: self.attributes,
            // Set by the server; a client value is ignored.
            seq: 0,
        })
    }

    /// The event as auditd stored it, `received` and `seq` included (which
    /// [`JsonEvent::into_proto`] drops, as a server sets them): what a
    /// receipt's leaf is checked against.
    pub fn into_stored(self) -> Result<AuditEvent, JsonError> {
        let received = self
            .received
            .map(|t| seconds_to_micros("received", t))
            .transpose()?
            .map(micros_to_timestamp);
        let seq = self.seq.unwrap_or(0);
        let mut event = self.into_proto()?;
        event.received = received;
        event.seq = seq;
        Ok(event)
    }

    pub fn from_proto(event: AuditEvent) -> JsonEvent {
        let mut stream_ids = Vec::new();
        if !event.access_id.is_empty() {
            stream_ids.push(format!(":_audit:access-{}", event.access_id));
        }
        if !event.action.is_empty() {
            stream_ids.push(format!(":_audit:action-{}", event.action));
        }
        JsonEvent {
            time: event
                .time
                .as_ref()
                .map(|t| micros_to_seconds(timestamp_micros(Some(t)))),
            received: event
                .received
                .as_ref()
                .map(|t| micros_to_seconds(timestamp_micros(Some(t)))),
            id: event.id,
            type_: event.r#type,
            action: event.action,
            access_id: event.access_id,
            subject: event.subject,
            source: event.source.map(|s| JsonSource {
                name: s.name,
                ip: s.ip,
            }),
            forwarded_for: event.forwarded_for,
            resource: event.resource,
            query: event.query,
            status: event.status,
            error_id: event.error_id,
            error_message: event.error_message,
            before: event.before,
            after: event.after,
            attributes: event.attributes,
            seq: Some(event.seq),
            stream_ids,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("90s").unwrap(), 90);
        assert_eq!(parse_interval("30m").unwrap(), 1_800);
        assert_eq!(parse_interval("1h").unwrap(), 3_600);
        assert_eq!(parse_interval("1d").unwrap(), 86_400);
        assert_eq!(parse_interval("1w").unwrap(), 604_800);
        assert_eq!(parse_interval("1h30m").unwrap(), 5_400);
        for bad in [
            "",
            "0s",
            "0h0m",
            "h",
            "1",
            "1x",
            "-1h",
            "1.5h",
            "1 h",
            "99999999999999999999s",
        ] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
        assert!(parse_interval(&format!("{}s", MAX_INTERVAL_SECONDS + 1)).is_err());
    }

    #[test]
    fn a_generated_line_round_trips() {
        let line = r#"{"id":"ckabc","time":1625726631.928,"type":"audit-log/pryv-api","action":"events.get","accessId":"ck6j","subject":"emma","source":{"name":"http","ip":"85.5.225.68"},"resource":"diary","query":{"streams":"diary","limit":"100"},"status":403,"errorId":"forbidden","errorMessage":"Access session has expired."}"#;
        let event = JsonEvent::parse(line).unwrap().into_proto().unwrap();
        assert_eq!(timestamp_micros(event.time.as_ref()), 1_625_726_631_928_000);
        assert_eq!(event.source.as_ref().unwrap().ip, "85.5.225.68");
        let back = JsonEvent::from_proto(event);
        assert_eq!(back.time, Some(1625726631.928));
        assert_eq!(
            back.stream_ids,
            vec![":_audit:access-ck6j", ":_audit:action-events.get"]
        );
        let text = serde_json::to_string(&back).unwrap();
        assert!(text.contains(r#""time":1625726631.928"#), "{text}");
    }

    #[test]
    fn absurd_times_and_unknown_fields_are_errors() {
        assert!(matches!(
            JsonEvent::parse(r#"{"action":"a","time":1e300}"#)
                .unwrap()
                .into_proto(),
            Err(JsonError::BadTime { field: "time", .. })
        ));
        assert!(JsonEvent::parse(r#"{"action":"a","time":NaN}"#).is_err());
        assert!(JsonEvent::parse(r#"{"action":"a","acessId":"typo"}"#).is_err());
    }
}
