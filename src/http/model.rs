//! The JSON forms of the HTTP API's bodies: camelCase, times in seconds
//! since the epoch (RFC 3339 also read), events in their NDJSON form
//! (`crate::json::JsonEvent`). Each converts to or from the proto message
//! the application layer takes, so the two transports share one meaning.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::json::{parse_interval, parse_time, JsonEvent};
use crate::proto::{
    aggregation, AggregateRequest, AggregateResponse, Aggregation, AggregationResult,
    CardinalityAggregation, CreateTokenRequest, DateHistogramAggregation, EventFilter,
    IngestResponse, SearchResponse, TermsAggregation, TokenInfo, TokenKind,
};
use crate::schema::timestamp_micros;

use super::params::parse_outcome;
use super::problem::Problem;

pub(super) fn seconds(t: &prost_types::Timestamp) -> f64 {
    timestamp_micros(Some(t)) as f64 / 1e6
}

/// `POST /v1/events` with `application/json`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngestBody {
    pub events: Vec<JsonEvent>,
    #[serde(default)]
    pub batch_id: String,
    #[serde(default)]
    pub wait_for: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IngestReply {
    pub accepted: u32,
    pub ids: Vec<String>,
    /// Each event's seq, in request order: its leaf index in the Merkle
    /// tree.
    pub seqs: Vec<u64>,
}

impl From<IngestResponse> for IngestReply {
    fn from(r: IngestResponse) -> Self {
        IngestReply {
            accepted: r.accepted,
            ids: r.ids,
            seqs: r.seqs,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SearchReply {
    pub events: Vec<JsonEvent>,
    pub next_page_token: String,
    pub total_hits: u64,
    pub total_hits_is_lower_bound: bool,
}

impl From<SearchResponse> for SearchReply {
    fn from(r: SearchResponse) -> Self {
        SearchReply {
            events: r.events.into_iter().map(JsonEvent::from_proto).collect(),
            next_page_token: r.next_page_token,
            total_hits: r.total_hits,
            total_hits_is_lower_bound: r.total_hits_is_lower_bound,
        }
    }
}

/// A time in a JSON body: seconds since the epoch, or RFC 3339 text.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum TimeJson {
    Seconds(f64),
    Text(String),
}

impl TimeJson {
    fn timestamp(&self, field: &str) -> Result<prost_types::Timestamp, Problem> {
        let text = match self {
            TimeJson::Seconds(s) => s.to_string(),
            TimeJson::Text(t) => t.clone(),
        };
        parse_time(&text).map_err(|reason| Problem::invalid(field, reason))
    }
}

/// `EventFilter` in JSON: the same fields, camelCase.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct FilterJson {
    pub from_time: Option<TimeJson>,
    pub to_time: Option<TimeJson>,
    pub actions: Vec<String>,
    pub access_ids: Vec<String>,
    pub subjects: Vec<String>,
    pub ips: Vec<String>,
    pub status_min: Option<i32>,
    pub status_max: Option<i32>,
    pub outcome: Option<String>,
    pub types: Vec<String>,
    pub source_names: Vec<String>,
    pub text: String,
    pub query: String,
}

impl FilterJson {
    pub fn into_proto(self) -> Result<EventFilter, Problem> {
        let time = |t: Option<TimeJson>, field| t.map(|t| t.timestamp(field)).transpose();
        Ok(EventFilter {
            from_time: time(self.from_time, "from_time")?,
            to_time: time(self.to_time, "to_time")?,
            actions: self.actions,
            access_ids: self.access_ids,
            subjects: self.subjects,
            ips: self.ips,
            status_min: self.status_min,
            status_max: self.status_max,
            outcome: parse_outcome(self.outcome.as_deref().unwrap_or(""))
                .map_err(|reason| Problem::invalid("outcome", reason))? as i32,
            types: self.types,
            source_names: self.source_names,
            text: self.text,
            query: self.query,
        })
    }
}

/// `POST /v1/aggregate`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AggregateBody {
    #[serde(default)]
    pub filter: FilterJson,
    pub aggregations: Vec<AggregationJson>,
}

/// One aggregation: exactly one of `terms`, `dateHistogram` and
/// `cardinality`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AggregationJson {
    pub name: String,
    #[serde(default)]
    pub terms: Option<TermsJson>,
    #[serde(default)]
    pub date_histogram: Option<HistogramJson>,
    #[serde(default)]
    pub cardinality: Option<FieldJson>,
    #[serde(default)]
    #[schema(no_recursion)]
    pub sub_aggregations: Vec<AggregationJson>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TermsJson {
    pub field: String,
    #[serde(default)]
    pub size: u32,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldJson {
    pub field: String,
}

/// `interval`: whole seconds, or text as `auditctl --histogram` takes it
/// (`90s`, `1h`, `1d`, `1h30m`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HistogramJson {
    pub interval: IntervalJson,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum IntervalJson {
    Seconds(i64),
    Text(String),
}

impl AggregateBody {
    pub fn into_proto(self) -> Result<AggregateRequest, Problem> {
        Ok(AggregateRequest {
            filter: Some(self.filter.into_proto()?),
            aggregations: self
                .aggregations
                .into_iter()
                .map(AggregationJson::into_proto)
                .collect::<Result<_, _>>()?,
        })
    }
}

impl AggregationJson {
    fn into_proto(self) -> Result<Aggregation, Problem> {
        let kinds = [
            self.terms.is_some(),
            self.date_histogram.is_some(),
            self.cardinality.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err(Problem::invalid(
                "aggregations.kind",
                "exactly one of terms, dateHistogram and cardinality",
            ));
        }
        let kind = if let Some(t) = self.terms {
            aggregation::Kind::Terms(TermsAggregation {
                field: t.field,
                size: t.size,
            })
        } else if let Some(h) = self.date_histogram {
            let seconds = match h.interval {
                IntervalJson::Seconds(s) => s,
                IntervalJson::Text(t) => parse_interval(&t).map_err(|reason| {
                    Problem::invalid("aggregations.date_histogram.interval", reason)
                })?,
            };
            aggregation::Kind::DateHistogram(DateHistogramAggregation {
                interval: Some(prost_types::Duration { seconds, nanos: 0 }),
            })
        } else {
            let field = self.cardinality.map(|c| c.field).unwrap_or_default();
            aggregation::Kind::Cardinality(CardinalityAggregation { field })
        };
        Ok(Aggregation {
            name: self.name,
            kind: Some(kind),
            sub_aggregations: self
                .sub_aggregations
                .into_iter()
                .map(AggregationJson::into_proto)
                .collect::<Result<_, _>>()?,
        })
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AggregateReply {
    pub total_hits: u64,
    pub results: BTreeMap<String, ResultJson>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResultJson {
    pub buckets: Vec<BucketJson>,
    pub other_count: u64,
    pub value: u64,
    pub approximate: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BucketJson {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// A histogram bucket's start, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<f64>,
    pub count: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(no_recursion)]
    pub sub: BTreeMap<String, ResultJson>,
}

fn results(of: BTreeMap<String, AggregationResult>) -> BTreeMap<String, ResultJson> {
    of.into_iter()
        .map(|(name, r)| {
            let result = ResultJson {
                buckets: r
                    .buckets
                    .into_iter()
                    .map(|b| BucketJson {
                        start: b.start.as_ref().map(seconds),
                        key: b.key,
                        count: b.count,
                        sub: results(b.sub),
                    })
                    .collect(),
                other_count: r.other_count,
                value: r.value,
                approximate: r.approximate,
            };
            (name, result)
        })
        .collect()
}

impl From<AggregateResponse> for AggregateReply {
    fn from(r: AggregateResponse) -> Self {
        AggregateReply {
            total_hits: r.total_hits,
            results: results(r.results),
        }
    }
}

/// A token's kind as JSON names it: `admin`, `personal`, `app`, `shared`,
/// `ingest`.
fn kind_name(kind: i32) -> String {
    TokenKind::try_from(kind)
        .map(|k| {
            k.as_str_name()
                .trim_start_matches("TOKEN_KIND_")
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

fn parse_kind(name: &str) -> Result<TokenKind, Problem> {
    TokenKind::from_str_name(&format!("TOKEN_KIND_{}", name.to_ascii_uppercase()))
        .filter(|k| *k != TokenKind::Unspecified)
        .ok_or_else(|| {
            Problem::invalid(
                "kind",
                format!("{name:?} is not admin, personal, app, shared or ingest"),
            )
        })
}

/// `POST /v1/tokens`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateTokenBody {
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub subject: String,
    #[serde(default)]
    pub access_id: String,
    #[serde(default)]
    pub sources: Vec<String>,
    #[serde(default)]
    pub type_prefix: String,
}

impl CreateTokenBody {
    pub fn into_proto(self) -> Result<CreateTokenRequest, Problem> {
        Ok(CreateTokenRequest {
            kind: parse_kind(&self.kind)? as i32,
            name: self.name,
            subject: self.subject,
            access_id: self.access_id,
            sources: self.sources,
            type_prefix: self.type_prefix,
        })
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenJson {
    pub id: String,
    pub kind: String,
    pub name: String,
    pub subject: String,
    pub access_id: String,
    pub sources: Vec<String>,
    pub type_prefix: String,
    /// Seconds since the epoch.
    pub created: Option<f64>,
    pub revoked: bool,
}

impl From<TokenInfo> for TokenJson {
    fn from(t: TokenInfo) -> Self {
        TokenJson {
            kind: kind_name(t.kind),
            created: t.created.as_ref().map(seconds),
            id: t.id,
            name: t.name,
            subject: t.subject,
            access_id: t.access_id,
            sources: t.sources,
            type_prefix: t.type_prefix,
            revoked: t.revoked,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedToken {
    pub token: TokenJson,
    /// The bearer secret: shown once.
    pub secret: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenJson>,
}
