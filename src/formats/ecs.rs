//! ECS: one Elastic Common Schema (`ECS_VERSION`) document per line, with
//! nested objects (`{"event":{"action":…}}`, not dotted keys).
//!
//! - `@timestamp` is the event's time (else `received`), `event.ingested`
//!   is `received`: RFC 3339 in UTC with microseconds.
//! - `event.id`, `event.action`, `event.sequence` are the id, action and
//!   seq; `event.kind` is `event`, `event.category` is `api` and
//!   `event.type` the action's `Verb`: creation, access, change, deletion,
//!   or info for any other verb.
//! - `event.outcome` is success (< 400), failure (>= 400) or unknown (no
//!   status); `http.response.status_code` is the status when given.
//! - `user.id` is the subject (whose data it is); `source.ip` the source
//!   address; `network.protocol` the source name (`http`, `grpc`, ...);
//!   `error.code` and `error.message` the error id and message.
//! - The rest (access, type, resource, forwarded_for, query, before,
//!   after, attributes) goes under `auditd.*`, under its own name.
//!
//! Empty fields are left out.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{event_micros, micros, rfc3339, Outcome, Verb};
use crate::proto::AuditEvent;

/// The ECS version the documents follow (`ecs.version`).
pub const ECS_VERSION: &str = "8.11.0";

#[derive(Serialize)]
struct Document<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: String,
    ecs: Ecs,
    event: Event<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<Source<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    network: Option<Network<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<User<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http: Option<Http>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Error<'a>>,
    #[serde(skip_serializing_if = "Auditd::is_empty")]
    auditd: Auditd<'a>,
}

#[derive(Serialize)]
struct Ecs {
    version: &'static str,
}

#[derive(Serialize)]
struct Event<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    id: &'a str,
    kind: &'static str,
    category: [&'static str; 1],
    #[serde(rename = "type")]
    type_: [&'static str; 1],
    action: &'a str,
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ingested: Option<String>,
    sequence: u64,
}

#[derive(Serialize)]
struct Source<'a> {
    ip: &'a str,
}

#[derive(Serialize)]
struct Network<'a> {
    protocol: &'a str,
}

#[derive(Serialize)]
struct User<'a> {
    id: &'a str,
}

#[derive(Serialize)]
struct Http {
    response: HttpResponse,
}

#[derive(Serialize)]
struct HttpResponse {
    status_code: i32,
}

#[derive(Serialize)]
struct Error<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    code: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
}

/// auditd's fields that ECS has no place for.
#[derive(Serialize)]
struct Auditd<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    access_id: &'a str,
    #[serde(rename = "type", skip_serializing_if = "str::is_empty")]
    type_: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    resource: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    forwarded_for: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    query: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "str::is_empty")]
    before: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    after: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    attributes: &'a BTreeMap<String, String>,
}

impl Auditd<'_> {
    fn is_empty(&self) -> bool {
        self.access_id.is_empty()
            && self.type_.is_empty()
            && self.resource.is_empty()
            && self.forwarded_for.is_empty()
            && self.query.is_empty()
            && self.before.is_empty()
            && self.after.is_empty()
            && self.attributes.is_empty()
    }
}

pub(super) fn write(event: &AuditEvent, out: &mut Vec<u8>) {
    super::write_json_line(&Document::from_event(event), out);
}

/// `Some(value)` unless `value` is empty.
fn given(value: &str) -> Option<&str> {
    (!value.is_empty()).then_some(value)
}

impl<'a> Document<'a> {
    fn from_event(event: &'a AuditEvent) -> Document<'a> {
        let event_type = match Verb::of(&event.action) {
            Verb::Create => "creation",
            Verb::Read => "access",
            Verb::Update => "change",
            Verb::Delete => "deletion",
            Verb::Other => "info",
        };
        let outcome = match Outcome::of(event.status) {
            Outcome::Unknown => "unknown",
            Outcome::Success => "success",
            Outcome::ClientError | Outcome::ServerError => "failure",
        };
        let source = event.source.as_ref();
        Document {
            timestamp: rfc3339(event_micros(event)),
            ecs: Ecs {
                version: ECS_VERSION,
            },
            event: Event {
                id: &event.id,
                kind: "event",
                category: ["api"],
                type_: [event_type],
                action: &event.action,
                outcome,
                ingested: micros(event.received.as_ref()).map(rfc3339),
                sequence: event.seq,
            },
            source: source.and_then(|s| given(&s.ip)).map(|ip| Source { ip }),
            network: source
                .and_then(|s| given(&s.name))
                .map(|protocol| Network { protocol }),
            user: given(&event.subject).map(|id| User { id }),
            http: (event.status != 0).then_some(Http {
                response: HttpResponse {
                    status_code: event.status,
                },
            }),
            error: (!event.error_id.is_empty() || !event.error_message.is_empty()).then_some(
                Error {
                    code: &event.error_id,
                    message: &event.error_message,
                },
            ),
            auditd: Auditd {
                access_id: &event.access_id,
                type_: &event.r#type,
                resource: &event.resource,
                forwarded_for: &event.forwarded_for,
                query: &event.query,
                before: &event.before,
                after: &event.after,
                attributes: &event.attributes,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::formats::sample_event;

    fn ecs(event: &AuditEvent) -> Value {
        let mut out = Vec::new();
        write(event, &mut out);
        assert!(out.ends_with(b"\n"));
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn a_full_event_maps_onto_ecs() {
        assert_eq!(
            ecs(&sample_event()),
            json!({
                "@timestamp": "2021-07-08T06:43:51.928123Z",
                "ecs": {"version": "8.11.0"},
                "event": {
                    "id": "ckabc",
                    "kind": "event",
                    "category": ["api"],
                    "type": ["access"],
                    "action": "events.get",
                    "outcome": "failure",
                    "ingested": "2021-07-08T06:43:52.000456Z",
                    "sequence": 42,
                },
                "source": {"ip": "85.5.225.68"},
                "network": {"protocol": "http"},
                "user": {"id": "emma"},
                "http": {"response": {"status_code": 403}},
                "error": {"code": "forbidden", "message": "Access session has expired."},
                "auditd": {
                    "access_id": "ck6j",
                    "type": "audit-log/pryv-api",
                    "resource": "diary",
                    "forwarded_for": "10.0.0.1, 10.0.0.2",
                    "query": {"limit": "100", "streams": "diary"},
                    "before": "{\"a\":1}",
                    "after": "{\"a\":2}",
                    "attributes": {"region": "eu"},
                },
            })
        );
    }

    #[test]
    fn a_bare_event_leaves_empty_fields_out() {
        let event = AuditEvent {
            action: "auth.login".into(),
            ..Default::default()
        };
        assert_eq!(
            ecs(&event),
            json!({
                "@timestamp": "1970-01-01T00:00:00.000000Z",
                "ecs": {"version": "8.11.0"},
                "event": {
                    "kind": "event",
                    "category": ["api"],
                    "type": ["info"],
                    "action": "auth.login",
                    "outcome": "unknown",
                    "sequence": 0,
                },
            })
        );
    }

    #[test]
    fn types_and_outcomes() {
        for (action, status, event_type, outcome) in [
            ("events.create", 201, "creation", "success"),
            ("GET /events", 200, "access", "success"),
            ("streams.update", 400, "change", "failure"),
            ("DELETE /events/1", 500, "deletion", "failure"),
        ] {
            let event = AuditEvent {
                action: action.into(),
                status,
                ..sample_event()
            };
            let value = ecs(&event);
            assert_eq!(value["event"]["type"], json!([event_type]), "{action}");
            assert_eq!(value["event"]["outcome"], outcome, "{action}");
            assert_eq!(value["http"]["response"]["status_code"], status);
        }
    }

    #[test]
    fn time_falls_back_to_received() {
        let event = AuditEvent {
            time: None,
            ..sample_event()
        };
        assert_eq!(ecs(&event)["@timestamp"], "2021-07-08T06:43:52.000456Z");
    }
}
