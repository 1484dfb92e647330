//! Retention and legal hold over HTTP: the twins of gRPC's `Retention`
//! service (the application layer's `RetentionService`: admin tokens only,
//! every call on the trail).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::api::{body, json_body, Api, Authed};
use super::model::seconds;
use super::openapi::Problems;
use super::problem::Problem;
use crate::proto::{AddHoldRequest, DroppedDay, Hold, RetentionStatus, SweepResponse};

/// What is kept, and for how long.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionJson {
    /// The compliance floor in days; absent: none.
    pub floor_days: Option<u32>,
    /// Days an event no rule matches is kept; absent: forever.
    pub default_days: Option<u32>,
    pub rules: Vec<RuleJson>,
    /// The holds in force.
    pub holds: Vec<HoldJson>,
    pub dropped: Vec<DroppedJson>,
    /// The oldest day still held (`2026-10-01`); empty: none.
    pub oldest_day: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleJson {
    pub name: String,
    pub type_prefix: String,
    pub actions: Vec<String>,
    pub days: u32,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HoldJson {
    pub id: String,
    pub subject: String,
    pub query: String,
    pub reason: String,
    pub created_by: String,
    /// Seconds since the epoch.
    pub created: Option<f64>,
    /// Seconds since the epoch; absent while in force.
    pub released: Option<f64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DroppedJson {
    pub id: String,
    pub day: String,
    /// Seconds since the epoch.
    pub dropped: Option<f64>,
    pub rule: String,
    pub days: u32,
    pub events: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeptJson {
    pub day: String,
    pub reason: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SweepJson {
    pub dropped: Vec<DroppedJson>,
    /// Days past the shortest retention that stay, and why.
    pub kept: Vec<KeptJson>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HoldList {
    pub holds: Vec<HoldJson>,
}

/// `POST /v1/retention/lock`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LockBody {
    pub min_days: u32,
}

/// `POST /v1/holds`: a subject, a query, or both, and why.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HoldBody {
    #[serde(default)]
    pub subject: String,
    #[serde(default)]
    pub query: String,
    /// Required; missing or blank is a 400 naming `reason`.
    #[serde(default)]
    pub reason: String,
}

/// `GET /v1/retention`.
#[utoipa::path(get, path = "/v1/retention", tag = "retention",
    responses((status = 200, body = RetentionJson), Problems))]
pub async fn status(State(api): State<Api>, auth: Authed) -> Result<Json<RetentionJson>, Problem> {
    let status = api.app.retention.status(&auth.caller, &auth.origin).await?;
    Ok(Json(status.into()))
}

/// `POST /v1/retention/lock`: raises the compliance floor, for good.
#[utoipa::path(post, path = "/v1/retention/lock", tag = "retention",
    request_body = LockBody,
    responses((status = 200, body = RetentionJson), Problems))]
pub async fn lock(
    State(api): State<Api>,
    auth: Authed,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<RetentionJson>, Problem> {
    let bytes = body(bytes, &api)?;
    let request = json_body::<LockBody>(&bytes)?;
    let status = api
        .app
        .retention
        .lock(&auth.caller, &auth.origin, request.min_days)
        .await?;
    Ok(Json(status.into()))
}

/// `POST /v1/retention/sweep`: drops now what is due.
#[utoipa::path(post, path = "/v1/retention/sweep", tag = "retention",
    responses((status = 200, body = SweepJson), Problems))]
pub async fn sweep(State(api): State<Api>, auth: Authed) -> Result<Json<SweepJson>, Problem> {
    let swept = api.app.retention.sweep(&auth.caller, &auth.origin).await?;
    Ok(Json(swept.into()))
}

/// `GET /v1/holds`: the holds in force.
#[utoipa::path(get, path = "/v1/holds", tag = "retention",
    responses((status = 200, body = HoldList), Problems))]
pub async fn list_holds(State(api): State<Api>, auth: Authed) -> Result<Json<HoldList>, Problem> {
    let holds = api
        .app
        .retention
        .list_holds(&auth.caller, &auth.origin, false)
        .await?;
    Ok(Json(HoldList {
        holds: holds.into_iter().map(HoldJson::from).collect(),
    }))
}

/// `POST /v1/holds`.
#[utoipa::path(post, path = "/v1/holds", tag = "retention",
    request_body = HoldBody,
    responses((status = 200, body = HoldJson), Problems))]
pub async fn add_hold(
    State(api): State<Api>,
    auth: Authed,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<HoldJson>, Problem> {
    let bytes = body(bytes, &api)?;
    let request = json_body::<HoldBody>(&bytes)?;
    let request = AddHoldRequest {
        subject: request.subject,
        query: request.query,
        reason: request.reason,
    };
    let hold = api
        .app
        .retention
        .add_hold(&auth.caller, &auth.origin, request)
        .await?;
    Ok(Json(hold.into()))
}

/// `DELETE /v1/holds/{id}`: releases a hold.
#[utoipa::path(delete, path = "/v1/holds/{id}", tag = "retention",
    params(("id" = String, Path, description = "The hold's id")),
    responses((status = 200, body = HoldJson), Problems))]
pub async fn release_hold(
    State(api): State<Api>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<Json<HoldJson>, Problem> {
    let hold = api
        .app
        .retention
        .release_hold(&auth.caller, &auth.origin, id)
        .await?;
    Ok(Json(hold.into()))
}

impl From<RetentionStatus> for RetentionJson {
    fn from(s: RetentionStatus) -> Self {
        RetentionJson {
            floor_days: s.floor_days,
            default_days: s.default_days,
            rules: s
                .rules
                .into_iter()
                .map(|r| RuleJson {
                    name: r.name,
                    type_prefix: r.type_prefix,
                    actions: r.actions,
                    days: r.days,
                })
                .collect(),
            holds: s.holds.into_iter().map(HoldJson::from).collect(),
            dropped: s.dropped.into_iter().map(DroppedJson::from).collect(),
            oldest_day: s.oldest_day,
        }
    }
}

impl From<Hold> for HoldJson {
    fn from(h: Hold) -> Self {
        HoldJson {
            created: h.created.as_ref().map(seconds),
            released: h.released.as_ref().map(seconds),
            id: h.id,
            subject: h.subject,
            query: h.query,
            reason: h.reason,
            created_by: h.created_by,
        }
    }
}

impl From<DroppedDay> for DroppedJson {
    fn from(d: DroppedDay) -> Self {
        DroppedJson {
            dropped: d.dropped.as_ref().map(seconds),
            id: d.id,
            day: d.day,
            rule: d.rule,
            days: d.days,
            events: d.events,
            bytes: d.bytes,
        }
    }
}

impl From<SweepResponse> for SweepJson {
    fn from(s: SweepResponse) -> Self {
        SweepJson {
            dropped: s.dropped.into_iter().map(DroppedJson::from).collect(),
            kept: s
                .kept
                .into_iter()
                .map(|k| KeptJson {
                    day: k.day,
                    reason: k.reason,
                })
                .collect(),
        }
    }
}
