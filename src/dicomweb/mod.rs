//! DICOMweb over HTTP: routes under `/dicom-web`.
//!
//! Routes are thin: they parse the request into domain types, call one function of
//! `ingest/` or `index/`, and render the answer. Protocol mappings (ingest outcome →
//! STOW failure reason, errors → HTTP status) live in one place per service.

mod bulk;
mod error;
pub mod frames;
pub mod media;
mod multipart;
mod qido;
mod rendered;
mod stow;
pub mod urls;
mod wado;

use std::sync::Arc;

use axum::http::{header, Extensions, HeaderMap, StatusCode, Version};
use axum::routing::{get, post};
use axum::Router;
use tower_http::compression::CompressionLayer;

pub use error::ApiError;

use crate::app::AppState;
use crate::model::Uid;

/// The DICOMweb routes, to be nested under `/dicom-web`.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/studies", post(stow::store).get(qido::studies))
        .route("/studies/", post(stow::store).get(qido::studies))
        .route(
            "/studies/{study}",
            post(stow::store_in_study).get(wado::study),
        )
        .route("/studies/{study}/metadata", get(wado::study_metadata))
        .route("/studies/{study}/series/{series}", get(wado::series))
        .route(
            "/studies/{study}/series/{series}/metadata",
            get(wado::series_metadata),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{sop}",
            get(wado::instance),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{sop}/metadata",
            get(wado::instance_metadata),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{sop}/frames/{frames}",
            get(frames::frames),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{sop}/bulkdata/{tag}",
            get(frames::bulkdata),
        )
        .route("/studies/{study}/rendered", get(rendered::study))
        .route("/studies/{study}/thumbnail", get(rendered::study_thumbnail))
        .route(
            "/studies/{study}/series/{series}/rendered",
            get(rendered::series),
        )
        .route(
            "/studies/{study}/series/{series}/thumbnail",
            get(rendered::series_thumbnail),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{sop}/rendered",
            get(rendered::instance),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{sop}/thumbnail",
            get(rendered::instance_thumbnail),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{sop}/frames/{frames}/rendered",
            get(rendered::frame),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{sop}/frames/{frames}/thumbnail",
            get(rendered::frame_thumbnail),
        )
        .route("/series", get(qido::series))
        .route("/instances", get(qido::instances))
        .route("/studies/{study}/series", get(qido::study_series))
        .route("/studies/{study}/instances", get(qido::study_instances))
        .route(
            "/studies/{study}/series/{series}/instances",
            get(qido::series_instances),
        )
        .layer(CompressionLayer::new().compress_when(is_json))
}

/// Compress JSON answers (metadata, search results); DICOM objects and frames are
/// already compact or compressed.
fn is_json(_: StatusCode, _: Version, headers: &HeaderMap, _: &Extensions) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("json"))
}

/// A UID from the URL path, or a 400 that says which one is wrong.
pub(crate) fn path_uid(raw: &str, name: &str) -> Result<Uid, ApiError> {
    Uid::parse(raw).map_err(|e| ApiError::BadRequest(format!("{name} in the URL {raw:?}: {e}")))
}
