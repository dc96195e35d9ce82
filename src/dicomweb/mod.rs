//! DICOMweb over HTTP: routes under `/dicom-web`.
//!
//! Routes are thin: they parse the request into domain types, call one function of
//! `ingest/` or `index/`, and render the answer. Protocol mappings (ingest outcome →
//! STOW failure reason, errors → HTTP status) live in one place per service.

mod error;
pub mod media;
mod stow;
pub mod urls;

use std::sync::Arc;

use axum::routing::post;
use axum::Router;

pub use error::ApiError;

use crate::app::AppState;

/// The DICOMweb routes, to be nested under `/dicom-web`.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/studies", post(stow::store))
        .route("/studies/", post(stow::store))
        .route("/studies/{study}", post(stow::store_in_study))
}
