//! DICOMweb over HTTP: routes under `/dicom-web`.
//!
//! Routes are thin: they parse the request into domain types, call one function of
//! `ingest/` or `index/`, and render the answer. Protocol mappings (ingest outcome →
//! STOW failure reason, errors → HTTP status) live in one place per service.

mod error;
pub mod media;
mod qido;
mod stow;
pub mod urls;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

pub use error::ApiError;

use crate::app::AppState;
use crate::model::Uid;

/// The DICOMweb routes, to be nested under `/dicom-web`.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/studies", post(stow::store).get(qido::studies))
        .route("/studies/", post(stow::store).get(qido::studies))
        .route("/studies/{study}", post(stow::store_in_study))
        .route("/series", get(qido::series))
        .route("/instances", get(qido::instances))
        .route("/studies/{study}/series", get(qido::study_series))
        .route("/studies/{study}/instances", get(qido::study_instances))
        .route(
            "/studies/{study}/series/{series}/instances",
            get(qido::series_instances),
        )
}

/// A UID from the URL path, or a 400 that says which one is wrong.
pub(crate) fn path_uid(raw: &str, name: &str) -> Result<Uid, ApiError> {
    Uid::parse(raw).map_err(|e| ApiError::BadRequest(format!("{name} in the URL {raw:?}: {e}")))
}
