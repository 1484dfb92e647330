//! The Merkle log over HTTP: the C2SP `tlog-tiles` read paths
//! (`/tlog/checkpoint`, `/tlog/tile/…`; on a cluster of several
//! partitions each partition's under `/tlog/partition/<p>/`), so that an
//! existing tlog client can fetch proofs, the verifier key (`/tlog/key`), and an event's receipt
//! (`/v1/events/{id}/receipt`), a C2SP `tlog-proof` for curl. The same
//! rules as gRPC's `Integrity` (the application layer's): checkpoints and
//! tiles to every read token, receipts inside read scope, every call on
//! the trail.

use axum::extract::{Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};

use super::api::{Api, Authed};
use super::openapi::Problems;
use super::problem::Problem;
use crate::proto::GetInclusionProofRequest;

const TEXT: &str = "text/plain; charset=utf-8";

/// `GET /tlog/checkpoint`: the latest signed checkpoint note.
pub async fn checkpoint(State(api): State<Api>, auth: Authed) -> Result<Response, Problem> {
    checkpoint_of(api, auth, None).await
}

/// `GET /tlog/partition/{p}/checkpoint`: partition `p`'s latest signed
/// checkpoint note, on a cluster of several partitions.
pub async fn partition_checkpoint(
    State(api): State<Api>,
    auth: Authed,
    Path(partition): Path<u32>,
) -> Result<Response, Problem> {
    checkpoint_of(api, auth, Some(partition)).await
}

async fn checkpoint_of(
    api: Api,
    auth: Authed,
    partition: Option<u32>,
) -> Result<Response, Problem> {
    let checkpoint = api
        .app
        .integrity
        .tlog_checkpoint(&auth.caller, &auth.origin, partition)
        .await?;
    Ok((
        [(CONTENT_TYPE, TEXT), (CACHE_CONTROL, "no-cache")],
        checkpoint.note,
    )
        .into_response())
}

/// `GET /tlog/key`: the log's note verifier key, one line.
pub async fn key(State(api): State<Api>, auth: Authed) -> Result<Response, Problem> {
    let key = api
        .app
        .integrity
        .verifier_key(&auth.caller, &auth.origin)
        .await?;
    Ok(([(CONTENT_TYPE, TEXT)], format!("{key}\n")).into_response())
}

/// `GET /tlog/tile/<L>/<N>[.p/<W>]`: a tile's hashes. A full tile never
/// changes, so it may be cached for good.
pub async fn tile(
    State(api): State<Api>,
    auth: Authed,
    Path(rest): Path<String>,
) -> Result<Response, Problem> {
    tile_of(api, auth, None, rest).await
}

/// `GET /tlog/partition/{p}/tile/<L>/<N>[.p/<W>]`: a tile of partition
/// `p`'s tree, on a cluster of several partitions.
pub async fn partition_tile(
    State(api): State<Api>,
    auth: Authed,
    Path((partition, rest)): Path<(u32, String)>,
) -> Result<Response, Problem> {
    tile_of(api, auth, Some(partition), rest).await
}

async fn tile_of(
    api: Api,
    auth: Authed,
    partition: Option<u32>,
    rest: String,
) -> Result<Response, Problem> {
    let path = format!("tile/{rest}");
    let bytes = api
        .app
        .integrity
        .tile(&auth.caller, &auth.origin, partition, &path)
        .await?;
    let cache = if path.contains(".p/") {
        "no-cache"
    } else {
        "public, max-age=31536000, immutable"
    };
    Ok((
        [
            (CONTENT_TYPE, "application/octet-stream"),
            (CACHE_CONTROL, cache),
        ],
        bytes,
    )
        .into_response())
}

/// `GET /v1/events/{id}/receipt`.
#[utoipa::path(get, path = "/v1/events/{id}/receipt", tag = "integrity",
    description = "The event's receipt: its inclusion proof in the Merkle log against the latest signed checkpoint, as a C2SP tlog-proof (docs/integrity.md). 503 with Retry-After while the event is newer than the latest checkpoint.",
    params(("id" = String, Path, description = "The event's id")),
    responses((status = 200, content_type = "text/plain", body = String), Problems))]
pub async fn receipt(
    State(api): State<Api>,
    auth: Authed,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let proof = api
        .app
        .integrity
        .inclusion_proof(
            &auth.caller,
            &auth.origin,
            GetInclusionProofRequest {
                id,
                ..Default::default()
            },
        )
        .await?;
    Ok(([(CONTENT_TYPE, TEXT)], proof.tlog_proof).into_response())
}
