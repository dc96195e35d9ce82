//! DICOMweb over HTTP: routes under `/dicom-web`, and WADO-URI at `/wado` (`wado_uri`).
//!
//! Routes are thin: they parse the request into domain types, call one function of
//! `ingest/` or `index/` through the [`Context`], and render the answer. Protocol mappings
//! (ingest outcome → STOW failure reason in `stow.rs`, errors → HTTP status in `error.rs`)
//! live in one place each. The admin-only deletes on these resources are `crate::admin`'s.

mod bulk;
mod changefeed;
mod error;
pub mod frames;
pub mod media;
mod multipart;
mod qido;
mod rendered;
mod resource;
mod stow;
pub(crate) mod wado;
pub mod wado_uri;

use std::sync::Arc;

use axum::http::{header, Extensions, HeaderMap, StatusCode, Version};
use axum::routing::{get, post};
use axum::Router;
use tower_http::compression::CompressionLayer;

pub use error::ApiError;
pub use resource::Resource;

use crate::context::Context;
use crate::model::query::Level;

/// The DICOMweb routes, to be nested under `/dicom-web`.
pub fn router() -> Router<Arc<Context>> {
    const STUDY: &str = "/studies/{study}";
    const SERIES: &str = "/studies/{study}/series/{series}";
    const INSTANCE: &str = "/studies/{study}/series/{series}/instances/{sop}";
    const FRAMES: &str = "/studies/{study}/series/{series}/instances/{sop}/frames/{frames}";
    let search = |level| move |s, r, q, h, p| qido::search_at(level, s, r, q, h, p);
    let mut router = Router::new()
        .route("/studies", post(stow::store).get(search(Level::Study)))
        .route("/studies/", post(stow::store).get(search(Level::Study)))
        .route(STUDY, post(stow::store).get(wado::retrieve))
        .route("/changefeed", get(changefeed::changefeed))
        .route("/changefeed/latest", get(changefeed::latest))
        .route("/series", get(search(Level::Series)))
        .route("/instances", get(search(Level::Instance)))
        .route(&format!("{STUDY}/series"), get(search(Level::Series)))
        .route(&format!("{STUDY}/instances"), get(search(Level::Instance)))
        .route(&format!("{SERIES}/instances"), get(search(Level::Instance)))
        .route(SERIES, get(wado::retrieve))
        .route(INSTANCE, get(wado::retrieve))
        .route(FRAMES, get(frames::frames))
        .route(
            &format!("{INSTANCE}/bulkdata/{{tag}}"),
            get(frames::bulkdata),
        );
    for base in [STUDY, SERIES, INSTANCE] {
        router = router.route(&format!("{base}/metadata"), get(wado::metadata));
    }
    for base in [STUDY, SERIES, INSTANCE, FRAMES] {
        router = router
            .route(&format!("{base}/rendered"), get(rendered::rendered))
            .route(&format!("{base}/thumbnail"), get(rendered::thumbnail));
    }
    router.layer(CompressionLayer::new().compress_when(is_json))
}

/// Compress JSON answers (metadata, search results); DICOM objects and frames are
/// already compact or compressed.
fn is_json(_: StatusCode, _: Version, headers: &HeaderMap, _: &Extensions) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("json"))
}
