//! NDJSON: auditd's own JSON form of an event (`crate::json::JsonEvent`:
//! camelCase names, times in seconds since the epoch, Pryv's stream ids),
//! one object per line. `auditctl ingest` reads these lines back.

use crate::json::JsonEvent;
use crate::proto::AuditEvent;

pub(super) fn write(event: &AuditEvent, out: &mut Vec<u8>) {
    super::write_json_line(&JsonEvent::from_proto(event.clone()), out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::sample_event;

    #[test]
    fn a_line_is_the_json_form_and_reads_back() {
        let event = sample_event();
        let mut out = Vec::new();
        write(&event, &mut out);
        let line = std::str::from_utf8(&out).unwrap();
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.ends_with('\n'));

        let json = JsonEvent::parse(line.trim_end()).unwrap();
        assert_eq!(json, JsonEvent::from_proto(event.clone()));
        let back = json.into_proto().unwrap();
        // What the server sets on ingest does not come back.
        let expected = AuditEvent {
            received: None,
            seq: 0,
            ..event
        };
        assert_eq!(back, expected);
    }
}
