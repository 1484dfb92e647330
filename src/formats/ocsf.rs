//! OCSF: one event of class API Activity (`class_uid` 6003, category
//! Application Activity, 6) of OCSF `OCSF_VERSION` per line.
//!
//! - `activity_id` is the action's `Verb`: Create 1, Read 2, Update 3,
//!   Delete 4, Other 99 (then `activity_name` is the verb as written);
//!   `type_uid` is `class_uid * 100 + activity_id`.
//! - `time` is the event's time (else `received`) in milliseconds;
//!   `metadata.logged_time` is `received`.
//! - `status_id` is Unknown 0 (no status), Success 1 (< 400) or Failure 2;
//!   `status_code` is the status as text. `severity_id` is Informational 1
//!   without a failure, Medium 3 for 4xx, High 4 for 5xx.
//! - `actor.user.uid` is the access: auditd knows the caller only by the
//!   access (token) it used. `api.operation` is the action; `api.response`
//!   has the status, `error_id` and `error_message`.
//! - `src_endpoint.ip` is the source address and `intermediate_ips` the
//!   `forwarded_for` chain (OCSF's place for X-Forwarded-For).
//! - `resources[0].uid` is the resource and its `owner.uid` the subject
//!   (whose data it is); API Activity has no `user` of its own. An event
//!   with a subject but no resource keeps the subject in `unmapped`.
//! - `metadata.uid` is the id, `metadata.log_name` the type and
//!   `metadata.sequence` the seq. The rest goes under `unmapped`.
//!
//! OCSF requires an actor with at least one identifier and a source
//! endpoint with at least one address or name: without an access or a
//! source address those carry the name `unknown`.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{event_micros, micros, millis, verb_word, Outcome, Verb};
use crate::proto::AuditEvent;

/// The OCSF schema version the events follow (`metadata.version`).
pub const OCSF_VERSION: &str = "1.3.0";

/// Every attribute OCSF 1.3.0 requires of an API Activity event, as a dot
/// path: the class's own (`actor`, `api`, `src_endpoint`), the base
/// event's (classification, `time`, `metadata`, `severity_id`) and those
/// of the objects they hold. `metadata.product.name` stands for the
/// product's "name or uid" constraint. Not here: `cloud`, which only the
/// Cloud profile requires, and this export does not declare that profile
/// (`metadata.profiles`); OCSF's validator ignores profile attributes
/// unless the event declares the profile.
pub const OCSF_REQUIRED: &[&str] = &[
    "activity_id",
    "actor",
    "api",
    "api.operation",
    "category_uid",
    "class_uid",
    "metadata",
    "metadata.product",
    "metadata.product.name",
    "metadata.product.vendor_name",
    "metadata.version",
    "severity_id",
    "src_endpoint",
    "time",
    "type_uid",
];

const CLASS_UID: u32 = 6003;
const CATEGORY_UID: u32 = 6;
/// The name OCSF gets where it requires one and the event has nothing.
const UNKNOWN: &str = "unknown";

#[derive(Serialize)]
struct ApiActivity<'a> {
    activity_id: u32,
    activity_name: &'a str,
    category_uid: u32,
    category_name: &'static str,
    class_uid: u32,
    class_name: &'static str,
    type_uid: u32,
    type_name: String,
    time: i64,
    severity_id: u32,
    severity: &'static str,
    status_id: u32,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_code: Option<String>,
    metadata: Metadata<'a>,
    actor: Actor<'a>,
    api: Api<'a>,
    src_endpoint: Endpoint<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    resources: Vec<Resource<'a>>,
    #[serde(skip_serializing_if = "Unmapped::is_empty")]
    unmapped: Unmapped<'a>,
}

#[derive(Serialize)]
struct Metadata<'a> {
    version: &'static str,
    product: Product,
    #[serde(skip_serializing_if = "str::is_empty")]
    uid: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    log_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    logged_time: Option<i64>,
    sequence: u64,
}

#[derive(Serialize)]
struct Product {
    name: &'static str,
    vendor_name: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
struct Actor<'a> {
    user: User<'a>,
}

/// An OCSF user: at least one of `uid` and `name`.
#[derive(Serialize)]
struct User<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    uid: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
}

impl<'a> User<'a> {
    /// The user of that `uid`; one named `unknown` when `uid` is empty.
    fn identified_by(uid: &'a str) -> User<'a> {
        let name = if uid.is_empty() { UNKNOWN } else { "" };
        User { uid, name }
    }
}

#[derive(Serialize)]
struct Api<'a> {
    operation: &'a str,
    #[serde(skip_serializing_if = "Response::is_empty")]
    response: Response<'a>,
}

#[derive(Serialize)]
struct Response<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<i32>,
    #[serde(skip_serializing_if = "str::is_empty")]
    error: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    error_message: &'a str,
}

impl Response<'_> {
    fn is_empty(&self) -> bool {
        self.code.is_none() && self.error.is_empty() && self.error_message.is_empty()
    }
}

#[derive(Serialize)]
struct Endpoint<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    ip: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    intermediate_ips: Vec<&'a str>,
}

#[derive(Serialize)]
struct Resource<'a> {
    uid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<User<'a>>,
}

#[derive(Serialize)]
struct Unmapped<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    subject: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    source_name: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    query: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "str::is_empty")]
    before: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    after: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    attributes: &'a BTreeMap<String, String>,
}

impl Unmapped<'_> {
    fn is_empty(&self) -> bool {
        self.subject.is_empty()
            && self.source_name.is_empty()
            && self.query.is_empty()
            && self.before.is_empty()
            && self.after.is_empty()
            && self.attributes.is_empty()
    }
}

pub(super) fn write(event: &AuditEvent, out: &mut Vec<u8>) {
    super::write_json_line(&ApiActivity::from_event(event), out);
}

impl<'a> ApiActivity<'a> {
    fn from_event(event: &'a AuditEvent) -> ApiActivity<'a> {
        let (activity_id, activity_caption) = match Verb::of(&event.action) {
            Verb::Create => (1, "Create"),
            Verb::Read => (2, "Read"),
            Verb::Update => (3, "Update"),
            Verb::Delete => (4, "Delete"),
            Verb::Other => (99, "Other"),
        };
        // For Other, OCSF asks for the source's own word.
        let activity_name = match (activity_id, verb_word(&event.action)) {
            (99, word) if !word.is_empty() => word,
            _ => activity_caption,
        };
        let (status_id, status) = match Outcome::of(event.status) {
            Outcome::Unknown => (0, "Unknown"),
            Outcome::Success => (1, "Success"),
            Outcome::ClientError | Outcome::ServerError => (2, "Failure"),
        };
        let (severity_id, severity) = match Outcome::of(event.status) {
            Outcome::Unknown | Outcome::Success => (1, "Informational"),
            Outcome::ClientError => (3, "Medium"),
            Outcome::ServerError => (4, "High"),
        };
        let given_status = (event.status != 0).then_some(event.status);
        let ip = event.source.as_ref().map_or("", |s| s.ip.as_str());
        let owner = (!event.subject.is_empty()).then(|| User::identified_by(&event.subject));
        let resources: Vec<Resource> = if event.resource.is_empty() {
            Vec::new()
        } else {
            vec![Resource {
                uid: &event.resource,
                owner,
            }]
        };
        ApiActivity {
            activity_id,
            activity_name,
            category_uid: CATEGORY_UID,
            category_name: "Application Activity",
            class_uid: CLASS_UID,
            class_name: "API Activity",
            type_uid: CLASS_UID * 100 + activity_id,
            type_name: format!("API Activity: {activity_caption}"),
            time: millis(event_micros(event)),
            severity_id,
            severity,
            status_id,
            status,
            status_code: given_status.map(|s| s.to_string()),
            metadata: Metadata {
                version: OCSF_VERSION,
                product: Product {
                    name: "auditd",
                    vendor_name: "auditd",
                    version: env!("CARGO_PKG_VERSION"),
                },
                uid: &event.id,
                log_name: &event.r#type,
                logged_time: micros(event.received.as_ref()).map(millis),
                sequence: event.seq,
            },
            actor: Actor {
                user: User::identified_by(&event.access_id),
            },
            api: Api {
                operation: &event.action,
                response: Response {
                    code: given_status,
                    error: &event.error_id,
                    error_message: &event.error_message,
                },
            },
            src_endpoint: Endpoint {
                ip,
                name: if ip.is_empty() { UNKNOWN } else { "" },
                intermediate_ips: event
                    .forwarded_for
                    .split(',')
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .collect(),
            },
            unmapped: Unmapped {
                subject: if event.resource.is_empty() {
                    &event.subject
                } else {
                    ""
                },
                source_name: event.source.as_ref().map_or("", |s| s.name.as_str()),
                query: &event.query,
                before: &event.before,
                after: &event.after,
                attributes: &event.attributes,
            },
            resources,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::formats::sample_event;

    fn ocsf(event: &AuditEvent) -> Value {
        let mut out = Vec::new();
        write(event, &mut out);
        assert!(out.ends_with(b"\n"));
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        serde_json::from_slice(&out).unwrap()
    }

    fn at<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
        path.split('.').try_fold(value, |v, key| v.get(key))
    }

    fn assert_required(value: &Value) {
        for path in OCSF_REQUIRED {
            assert!(at(value, path).is_some(), "{path} missing in {value}");
        }
        // The objects' "at least one of" constraints.
        assert!(at(value, "actor.user.uid").is_some() || at(value, "actor.user.name").is_some());
        assert!(at(value, "src_endpoint.ip").is_some() || at(value, "src_endpoint.name").is_some());
    }

    #[test]
    fn a_full_event_maps_onto_api_activity() {
        let value = ocsf(&sample_event());
        assert_required(&value);
        assert_eq!(
            value,
            json!({
                "activity_id": 2,
                "activity_name": "Read",
                "category_uid": 6,
                "category_name": "Application Activity",
                "class_uid": 6003,
                "class_name": "API Activity",
                "type_uid": 600302,
                "type_name": "API Activity: Read",
                "time": 1_625_726_631_928_i64,
                "severity_id": 3,
                "severity": "Medium",
                "status_id": 2,
                "status": "Failure",
                "status_code": "403",
                "metadata": {
                    "version": "1.3.0",
                    "product": {
                        "name": "auditd",
                        "vendor_name": "auditd",
                        "version": env!("CARGO_PKG_VERSION"),
                    },
                    "uid": "ckabc",
                    "log_name": "audit-log/pryv-api",
                    "logged_time": 1_625_726_632_000_i64,
                    "sequence": 42,
                },
                "actor": {"user": {"uid": "ck6j"}},
                "api": {
                    "operation": "events.get",
                    "response": {
                        "code": 403,
                        "error": "forbidden",
                        "error_message": "Access session has expired.",
                    },
                },
                "src_endpoint": {
                    "ip": "85.5.225.68",
                    "intermediate_ips": ["10.0.0.1", "10.0.0.2"],
                },
                "resources": [{"uid": "diary", "owner": {"uid": "emma"}}],
                "unmapped": {
                    "source_name": "http",
                    "query": {"limit": "100", "streams": "diary"},
                    "before": "{\"a\":1}",
                    "after": "{\"a\":2}",
                    "attributes": {"region": "eu"},
                },
            })
        );
    }

    #[test]
    fn a_bare_event_still_has_every_required_attribute() {
        let event = AuditEvent {
            action: "auth.login".into(),
            subject: "emma".into(),
            ..Default::default()
        };
        let value = ocsf(&event);
        assert_required(&value);
        assert_eq!(value["activity_id"], 99);
        assert_eq!(value["activity_name"], "login");
        assert_eq!(value["type_uid"], 600399);
        assert_eq!(value["type_name"], "API Activity: Other");
        assert_eq!(value["time"], 0);
        assert_eq!(value["status_id"], 0);
        assert_eq!(value["status"], "Unknown");
        assert_eq!(value["severity_id"], 1);
        assert!(value.get("status_code").is_none());
        assert_eq!(value["actor"], json!({"user": {"name": "unknown"}}));
        assert_eq!(value["src_endpoint"], json!({"name": "unknown"}));
        assert_eq!(value["api"], json!({"operation": "auth.login"}));
        assert!(value.get("resources").is_none());
        assert_eq!(value["unmapped"], json!({"subject": "emma"}));
        assert!(value["metadata"].get("uid").is_none());
        assert!(value["metadata"].get("logged_time").is_none());
    }

    #[test]
    fn activities_statuses_and_severities() {
        for (action, status, activity, status_id, severity_id) in [
            ("events.create", 201, 1, 1, 1),
            ("GET /events", 200, 2, 1, 1),
            ("streams.update", 404, 3, 2, 3),
            ("DELETE /events/1", 503, 4, 2, 4),
        ] {
            let event = AuditEvent {
                action: action.into(),
                status,
                ..sample_event()
            };
            let value = ocsf(&event);
            assert_eq!(value["activity_id"], activity, "{action}");
            assert_eq!(value["type_uid"], 600300 + activity, "{action}");
            assert_eq!(value["status_id"], status_id, "{action}");
            assert_eq!(value["severity_id"], severity_id, "{action}");
            assert_eq!(value["status_code"], status.to_string(), "{action}");
        }
    }

    #[test]
    fn time_falls_back_to_received() {
        let event = AuditEvent {
            time: None,
            ..sample_event()
        };
        assert_eq!(ocsf(&event)["time"], 1_625_726_632_000_i64);
    }

    #[test]
    fn text_is_escaped_as_json() {
        let event = AuditEvent {
            action: "a\"b\\c\nd".into(),
            ..sample_event()
        };
        assert_eq!(ocsf(&event)["api"]["operation"], "a\"b\\c\nd");
    }
}
