//! Reads of the audit log are audited too (PCI DSS 10.2.1.3): every Search,
//! GetEvent and token change becomes an event of type `audit-log/auditd`,
//! stored through the same durable path as any other, after the read ran
//! and before its answer goes out.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{AppError, ErrorKind, Origin};
use crate::auth::Caller;
use crate::ingest::IngestService;
use crate::proto::aggregation::Kind;
use crate::proto::{
    AggregateRequest, Aggregation, AuditEvent, EventFilter, IngestRequest, Outcome, SearchRequest,
    Source,
};
use crate::schema::timestamp_micros;
use crate::search::filter_of;

pub const TRAIL_TYPE: &str = "audit-log/auditd";
pub const SEARCH: &str = "audit.search";
pub const GET_EVENT: &str = "audit.get_event";
pub const AGGREGATE: &str = "audit.aggregate";
pub const TAIL: &str = "audit.tail";
pub const EXPORT: &str = "audit.export";
pub const TOKEN_CREATE: &str = "audit.token.create";
pub const TOKEN_REVOKE: &str = "audit.token.revoke";
pub const TOKEN_LIST: &str = "audit.token.list";
pub const CHECKPOINT: &str = "audit.integrity.checkpoint";
pub const INCLUSION_PROOF: &str = "audit.integrity.inclusion_proof";
pub const CONSISTENCY_PROOF: &str = "audit.integrity.consistency_proof";
pub const AUDIT: &str = "audit.integrity.audit";
pub const TILE: &str = "audit.integrity.tile";
pub const KEY: &str = "audit.integrity.key";
pub const RETENTION_STATUS: &str = "audit.retention.status";
pub const RETENTION_LOCK: &str = "audit.retention.lock";
pub const RETENTION_SWEEP: &str = "audit.retention.sweep";
/// A partition retention dropped (the daemon's own event).
pub const RETENTION_DROP: &str = "audit.retention.drop";
pub const HOLD_ADD: &str = "audit.hold.add";
pub const HOLD_LIST: &str = "audit.hold.list";
pub const HOLD_RELEASE: &str = "audit.hold.release";
pub const SUBJECT_EXPORT: &str = "audit.subject.export";
pub const SUBJECT_ERASE: &str = "audit.subject.erase";

/// Longest value kept from a request in the trail event's `query`.
const MAX_VALUE_CHARS: usize = 512;

/// Stores trail events through the ingest path.
#[derive(Clone)]
pub struct Trail {
    ingest: Arc<IngestService>,
}

impl Trail {
    pub fn new(ingest: Arc<IngestService>) -> Self {
        Trail { ingest }
    }

    /// Whether this node's cluster has several partitions.
    pub fn partitioned(&self) -> bool {
        self.ingest.partitioned()
    }

    /// Stores the trail event of a call that ended with `result`, then
    /// hands `result` back: a read that cannot be audited is not served
    /// (`AppError::NotAudited`), whatever it found.
    pub async fn audited<T>(
        &self,
        caller: &Caller,
        action: &str,
        origin: &Origin,
        query: BTreeMap<String, String>,
        result: Result<T, AppError>,
    ) -> Result<T, AppError> {
        let outcome = result.as_ref().err().map(|e| (e.kind(), e.to_string()));
        let outcome = outcome
            .as_ref()
            .map(|(kind, message)| (*kind, message.as_str()));
        self.store(caller, action, origin, query, outcome).await?;
        result
    }

    /// Runs `work`, a call already checked as valid, while its trail
    /// event is stored, and answers once both are done: the read waits for
    /// the longer of the two, not their sum, and still nothing goes out
    /// unaudited. Should `work` fail after all, a second trail event
    /// records what the caller got.
    pub async fn alongside<T>(
        &self,
        caller: &Caller,
        action: &str,
        origin: &Origin,
        query: BTreeMap<String, String>,
        work: impl std::future::Future<Output = Result<T, AppError>>,
    ) -> Result<T, AppError> {
        let stored = self.store(caller, action, origin, query.clone(), None);
        let (result, stored) = tokio::join!(work, stored);
        stored?;
        match result {
            Ok(value) => Ok(value),
            Err(error) => {
                self.audited(caller, action, origin, query, Err(error))
                    .await
            }
        }
    }

    /// Stores the trail event of a call with `outcome` (`None`: success);
    /// `Err(NotAudited)` if it could not be stored.
    pub async fn store(
        &self,
        caller: &Caller,
        action: &str,
        origin: &Origin,
        query: BTreeMap<String, String>,
        outcome: Option<(ErrorKind, &str)>,
    ) -> Result<(), AppError> {
        let request = IngestRequest {
            events: vec![event(caller, action, origin, query, outcome)],
            ..Default::default()
        };
        if let Err(error) = self.ingest.ingest(request).await {
            tracing::error!(%error, action, "a read could not be audited; refusing it");
            return Err(AppError::NotAudited(error.to_string()));
        }
        Ok(())
    }
}

/// The trail event for one call by `caller`. `outcome` is the kind and
/// message of the error the caller got (`None` for success); the
/// transport is the event's source name.
pub fn event(
    caller: &Caller,
    action: &str,
    origin: &Origin,
    query: BTreeMap<String, String>,
    outcome: Option<(ErrorKind, &str)>,
) -> AuditEvent {
    // Every value, whoever wrote the map, bounded and without the
    // characters validation would refuse: a trail event is never refused.
    let query = query
        .into_iter()
        .map(|(key, value)| (clean(&key), clean(&value)))
        .collect();
    let mut attributes = BTreeMap::new();
    attributes.insert("token_id".to_owned(), caller.token_id.clone());
    attributes.insert("token_kind".to_owned(), caller.kind.name().to_owned());
    let (status, error_id, error_message) = match outcome {
        None => (200, String::new(), String::new()),
        Some((kind, message)) => (
            i32::from(kind.http_status()),
            kind.name().to_owned(),
            clean(message),
        ),
    };
    AuditEvent {
        r#type: TRAIL_TYPE.into(),
        action: action.into(),
        access_id: caller.audit_access_id().to_owned(),
        subject: caller.subject.clone(),
        source: Some(Source {
            name: origin.transport.into(),
            ip: origin.peer.map(|p| p.ip().to_string()).unwrap_or_default(),
        }),
        query,
        status,
        error_id,
        error_message,
        attributes,
        ..Default::default()
    }
}

/// The filters and paging of a search, as the trail records them.
pub fn search_query(r: &SearchRequest) -> BTreeMap<String, String> {
    let mut q = filter_query(&filter_of(r));
    q.insert("limit".to_owned(), r.limit.to_string());
    if r.ascending {
        q.insert("ascending".to_owned(), "true".into());
    }
    if !r.page_token.is_empty() {
        q.insert("page".to_owned(), "next".into());
    }
    q
}

/// An aggregate call, as the trail records it: its filter, and its
/// aggregations as `name=kind(field)`, subs in brackets.
pub fn aggregate_query(r: &AggregateRequest) -> BTreeMap<String, String> {
    fn describe(a: &Aggregation) -> String {
        let kind = match &a.kind {
            Some(Kind::Terms(t)) => format!("terms({}:{})", t.field, t.size),
            Some(Kind::DateHistogram(h)) => {
                let seconds = h.interval.as_ref().map_or(0, |d| d.seconds);
                format!("date_histogram({seconds}s)")
            }
            Some(Kind::Cardinality(c)) => format!("cardinality({})", c.field),
            None => "none".into(),
        };
        let subs: Vec<String> = a.sub_aggregations.iter().map(describe).collect();
        match subs.is_empty() {
            true => format!("{}={kind}", a.name),
            false => format!("{}={kind}[{}]", a.name, subs.join(",")),
        }
    }
    let mut q = filter_query(&r.filter.clone().unwrap_or_default());
    let all: Vec<String> = r.aggregations.iter().map(describe).collect();
    q.insert("aggregations".to_owned(), clean(&all.join(",")));
    q
}

/// A filter, as the trail records it: one entry per field that is set.
pub fn filter_query(r: &EventFilter) -> BTreeMap<String, String> {
    let mut q = BTreeMap::new();
    let mut put = |key: &str, value: String| {
        if !value.is_empty() {
            q.insert(key.to_owned(), clean(&value));
        }
    };
    let seconds = |t: &Option<prost_types::Timestamp>| {
        t.as_ref()
            .map(|t| format!("{}", timestamp_micros(Some(t)) as f64 / 1e6))
            .unwrap_or_default()
    };
    put("from_time", seconds(&r.from_time));
    put("to_time", seconds(&r.to_time));
    put("actions", r.actions.join(","));
    put("access_ids", r.access_ids.join(","));
    put("subjects", r.subjects.join(","));
    put("ips", r.ips.join(","));
    put(
        "status_min",
        r.status_min.map(|s| s.to_string()).unwrap_or_default(),
    );
    put(
        "status_max",
        r.status_max.map(|s| s.to_string()).unwrap_or_default(),
    );
    if r.outcome != Outcome::Any as i32 {
        put("outcome", r.outcome.to_string());
    }
    put("types", r.types.join(","));
    put("source_names", r.source_names.join(","));
    put("text", r.text.clone());
    put("query", r.query.clone());
    q
}

/// Request text goes into the trail bounded and without the characters
/// validation would refuse.
fn clean(value: &str) -> String {
    value
        .chars()
        .take(MAX_VALUE_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
