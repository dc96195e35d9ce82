//! The administrators' routes: deleting studies, series and instances (`DELETE` on the
//! DICOMweb resources), reading the audit trail (`/api/v1/admin/audit`) and the
//! forwarding outbox (`/api/v1/admin/forward`). Every route
//! here needs the admin role (`http/policy.rs`).

mod audit;
mod delete;
mod forward;

use std::sync::Arc;

use axum::routing::{delete, get, post};
use axum::Router;

use crate::context::Context;

/// The deletes, to be merged into the DICOMweb routes under `/dicom-web`.
pub fn dicomweb_router() -> Router<Arc<Context>> {
    Router::new()
        .route("/studies/{study}", delete(delete::delete))
        .route("/studies/{study}/series/{series}", delete(delete::delete))
        .route(
            "/studies/{study}/series/{series}/instances/{sop}",
            delete(delete::delete),
        )
}

/// The routes at the top level.
pub fn router() -> Router<Arc<Context>> {
    Router::new()
        .route("/api/v1/admin/audit", get(audit::audit))
        .route("/api/v1/admin/audit/", get(audit::audit))
        .route("/api/v1/admin/forward", get(forward::status))
        .route("/api/v1/admin/forward/{destination}", post(forward::queue))
        .route(
            "/api/v1/admin/forward/{destination}/failed",
            get(forward::failed),
        )
        .route(
            "/api/v1/admin/forward/{destination}/retry",
            post(forward::retry),
        )
}
