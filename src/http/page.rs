//! The search page (`/`): four files from `web/`, embedded in the binary
//! at build time, so the page needs nothing from elsewhere (no CDN, no
//! font, no npm). The page talks to the `/v1` API like any client.

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

/// One embedded file: its route, media type and bytes.
struct Asset {
    path: &'static str,
    media_type: &'static str,
    body: &'static str,
}

const ASSETS: [Asset; 4] = [
    Asset {
        path: "/",
        media_type: "text/html; charset=utf-8",
        body: include_str!("../../web/index.html"),
    },
    Asset {
        path: "/app.js",
        media_type: "text/javascript; charset=utf-8",
        body: include_str!("../../web/app.js"),
    },
    Asset {
        path: "/app.css",
        media_type: "text/css; charset=utf-8",
        body: include_str!("../../web/app.css"),
    },
    Asset {
        path: "/favicon.svg",
        media_type: "image/svg+xml",
        body: include_str!("../../web/favicon.svg"),
    },
];

/// The page's routes; they need no token (the page asks for one).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    ASSETS.iter().fold(Router::new(), |router, asset| {
        let (media_type, body) = (asset.media_type, asset.body);
        router.route(
            asset.path,
            get(move || async move {
                (
                    [(CONTENT_TYPE, media_type), (CACHE_CONTROL, "no-cache")],
                    body,
                )
                    .into_response()
            }),
        )
    })
}
