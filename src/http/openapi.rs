//! `GET /v1/openapi.json`: the OpenAPI 3.1 document of the `/v1` routes,
//! derived from the handlers' `#[utoipa::path]` attributes and the JSON
//! types themselves, never written by hand.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::problem::ProblemBody;
use super::{api, retention, streams, subjects, tlog};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "auditd",
        description = "Audit events over HTTP/JSON: the twin of the gRPC API \
                       (`proto/audit/v1/audit.proto`), with the same scope, read \
                       trail, limits and errors.",
    ),
    paths(
        api::ingest,
        api::search,
        api::get_event,
        tlog::receipt,
        api::aggregate,
        streams::tail,
        streams::export,
        api::create_token,
        api::list_tokens,
        api::revoke_token,
        retention::status,
        retention::lock,
        retention::sweep,
        retention::list_holds,
        retention::add_hold,
        retention::release_hold,
        subjects::export,
        subjects::erase,
    ),
    components(schemas(ProblemBody)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The errors any `/v1` route may answer, as problem+json.
#[allow(dead_code)]
#[derive(utoipa::IntoResponses)]
pub enum Problems {
    /// A bad field, named in `violations`.
    #[response(status = 400, content_type = "application/problem+json")]
    Invalid(#[to_schema] ProblemBody),
    /// No valid bearer token (the same answer for every bad one).
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthenticated(#[to_schema] ProblemBody),
    /// The token may not do this.
    #[response(status = 403, content_type = "application/problem+json")]
    PermissionDenied(#[to_schema] ProblemBody),
    /// No such thing, or outside the token's scope.
    #[response(status = 404, content_type = "application/problem+json")]
    NotFound(#[to_schema] ProblemBody),
    /// The same batch id is being stored right now, or the state forbids
    /// the change (a retention change under the compliance floor).
    #[response(status = 409, content_type = "application/problem+json")]
    Aborted(#[to_schema] ProblemBody),
    /// The body is over `limits.max_message_bytes`.
    #[response(status = 413, content_type = "application/problem+json")]
    TooLarge(#[to_schema] ProblemBody),
    /// Overloaded, or a limit reached; `Retry-After` when waiting helps.
    #[response(status = 429, content_type = "application/problem+json")]
    Exhausted(#[to_schema] ProblemBody),
    /// Not stored, or starting.
    #[response(status = 503, content_type = "application/problem+json")]
    Unavailable(#[to_schema] ProblemBody),
}

/// The document, as served.
pub fn document() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|_| "{}".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_with_every_route() {
        let document: serde_json::Value = serde_json::from_str(&document()).unwrap();
        assert_eq!(document["openapi"], "3.1.0");
        for (path, method) in [
            ("/v1/events", "post"),
            ("/v1/events", "get"),
            ("/v1/events/{id}", "get"),
            ("/v1/aggregate", "post"),
            ("/v1/tail", "get"),
            ("/v1/export", "get"),
            ("/v1/tokens", "post"),
            ("/v1/tokens", "get"),
            ("/v1/tokens/{id}", "delete"),
        ] {
            let operation = &document["paths"][path][method];
            assert!(operation.is_object(), "{method} {path}");
            assert!(
                operation["responses"]["400"].is_object(),
                "{method} {path} documents its problems"
            );
        }
        let schemes = &document["components"]["securitySchemes"]["bearer"];
        assert_eq!(schemes["scheme"], "bearer");
    }
}
