//! The hospital app's REST API under `/api/v1/radiology`: viewer integration
//! ([`images`]), radiology orders ([`orders`]) and the offline upload flow
//! (`crate::uploads`). Errors carry stable machine-readable codes ([`error`]).
//! Paths work with and without a trailing slash, as the app uses them.

pub mod error;
pub mod images;
pub mod orders;

use std::sync::Arc;

use axum::routing::{get, post, put, MethodRouter};
use axum::Router;

use crate::app::AppState;

/// Add `path` and `path/` with the same handler.
fn both(
    router: Router<Arc<AppState>>,
    path: &str,
    handler: MethodRouter<Arc<AppState>>,
) -> Router<Arc<AppState>> {
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

/// `GET /api/v1/admin/audit?study=&who=&action=&after=&limit=` (admin): the audit trail.
pub async fn audit(
    axum::extract::State(app): axum::extract::State<Arc<AppState>>,
    axum::extract::Query(filter): axum::extract::Query<crate::index::admin::AuditFilter>,
) -> Result<axum::response::Response, error::RestError> {
    use axum::response::IntoResponse;
    app.ingest.index().flush_audit().await;
    let events = app.ingest.index().audit_events(&filter).await?;
    Ok(axum::Json(serde_json::json!({ "events": events })).into_response())
}

/// The routes, to be nested under `/api/v1/radiology`.
pub fn router() -> Router<Arc<AppState>> {
    let mut r = Router::new();
    r = both(r, "/studies/{id}/viewer-url", get(images::viewer_url));
    r = both(r, "/studies/{id}/images", get(images::study_images));
    r = both(r, "/images/{id}/url", get(images::image_url));
    r = both(r, "/images/{id}/file", get(images::image_file));
    r = both(r, "/orders/{id}", put(orders::put_order));
    r = both(r, "/orders/{id}/studies", get(orders::order_studies));
    r = both(
        r,
        "/offline-images/upload-metadata",
        post(crate::uploads::upload_metadata),
    );
    r = both(
        r,
        "/offline-images/upload-binary",
        post(crate::uploads::upload_binary),
    );
    r = both(
        r,
        "/offline-images/acknowledge",
        post(crate::uploads::acknowledge),
    );
    r = both(r, "/offline-images/{uuid}", get(crate::uploads::status));
    r
}
