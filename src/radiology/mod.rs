//! The hospital app's REST API under `/api/v1/radiology`: viewer integration
//! ([`images`]) and radiology orders ([`orders`]); the offline upload flow under the same
//! prefix is `crate::uploads`'. Errors carry stable machine-readable codes ([`error`]),
//! shared with the upload flow. Paths work with and without a trailing slash, as the app
//! uses them.

pub mod error;
pub mod images;
pub mod orders;

use std::sync::Arc;

use axum::routing::{get, put, MethodRouter};
use axum::Router;

use crate::context::Context;

/// Add `path` and `path/` with the same handler.
pub fn both(
    router: Router<Arc<Context>>,
    path: &str,
    handler: MethodRouter<Arc<Context>>,
) -> Router<Arc<Context>> {
    router
        .route(path, handler.clone())
        .route(&format!("{path}/"), handler)
}

/// The OpenAPI document of this API (`conformance/openapi.json`, checked by the tests).
pub const OPENAPI: &str = include_str!("../../conformance/openapi.json");

/// `GET /api/v1/openapi.json`
pub async fn openapi() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
}

/// The routes, to be nested under `/api/v1/radiology`.
pub fn router() -> Router<Arc<Context>> {
    let mut r = Router::new();
    r = both(r, "/studies/{id}/viewer-url", get(images::viewer_url));
    r = both(r, "/studies/{id}/images", get(images::study_images));
    r = both(r, "/images/{id}/url", get(images::image_url));
    r = both(r, "/images/{id}/file", get(images::image_file));
    r = both(r, "/orders", get(orders::list_orders));
    r = both(
        r,
        "/orders/{id}",
        put(orders::put_order).get(orders::get_order),
    );
    r = both(r, "/orders/{id}/studies", get(orders::order_studies));
    r
}
