//! WADO-URI (PS3.18 §9, the URI service) at `GET /wado`, at the top level as Orthanc and
//! dcm4chee mount it: one instance named by `studyUID`, `seriesUID` and `objectUID`, sent
//! as its Part-10 object (`contentType=application/dicom`) or as a rendered JPEG, PNG or
//! GIF of one frame.
//!
//! The query is parsed in `query.rs`; the answers reuse WADO-RS: the object streams from
//! the store as `wado.rs` sends it (byte-identical when the stored transfer syntax is
//! asked for or none is, transcoded by `render::transcode` otherwise), and images are
//! rendered as `rendered.rs` renders them. A study-scoped token reaches only its own
//! study: the middleware lets it through to `/wado` (`http::policy`), and this handler
//! refuses any other `studyUID`; the index lookup then requires the object to be in that
//! study and series.

mod query;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};

use self::query::{Answer, WadoQuery};
use super::rendered::render_one;
use super::wado::{instance_bytes, locate, target_for, Reading, Wanted};
use super::ApiError;
use crate::auth::Principal;
use crate::context::Context;
use crate::index::read::{InstanceLocation, Scope};
use crate::render::Params;
use crate::storage::SendsFiles;

/// The route: `GET /wado` (and `HEAD`).
pub fn router() -> Router<Arc<Context>> {
    Router::new().route("/wado", get(retrieve))
}

/// `GET /wado?requestType=WADO&studyUID=…&seriesUID=…&objectUID=…[&contentType=…]…`
#[tracing::instrument(name = "wado_uri", skip_all, fields(study, series, object))]
pub async fn retrieve(
    State(app): State<Arc<Context>>,
    principal: Option<Extension<Principal>>,
    sends: Option<Extension<SendsFiles>>,
    version: axum::http::Version,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let q = WadoQuery::parse(raw.as_deref().unwrap_or(""))?;
    let span = tracing::Span::current();
    span.record("study", q.study.as_str());
    span.record("series", q.series.as_str());
    span.record("object", q.object.as_str());
    if let Some(Extension(p)) = &principal {
        if !p.may_read_study(q.study.as_str()) {
            return Err(ApiError::Forbidden(
                "this token is limited to reading another study".into(),
            ));
        }
    }
    let scope = Scope {
        study: q.study,
        series: Some(q.series),
        instance: Some(q.object),
    };
    let loc = locate(&app, &scope).await?.swap_remove(0);
    match q.answer {
        Answer::Dicom(wanted) => dicom(&app, &loc, &wanted, Reading::of(sends, version)).await,
        Answer::Image { params, frame } => image(&app, &loc, frame, &params).await,
    }
}

/// The Part-10 object, streamed: as stored, or in the transfer syntax asked for.
async fn dicom(
    app: &Context,
    loc: &InstanceLocation,
    wanted: &Wanted,
    reading: Reading,
) -> Result<Response, ApiError> {
    let target = target_for(loc, wanted)?;
    let (len, body) = instance_bytes(app, loc, &target, reading).await?;
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/dicom")
        .header(header::CONTENT_LENGTH, len)
        .body(Body::from_stream(body))
        .expect("valid response"))
}

/// One frame rendered; a frame beyond the last is the request's fault (400).
async fn image(
    app: &Context,
    loc: &InstanceLocation,
    frame: u32,
    params: &Params,
) -> Result<Response, ApiError> {
    let frames = loc.number_of_frames.max(1);
    if i64::from(frame) > frames {
        return Err(ApiError::BadRequest(format!(
            "frameNumber {frame} is beyond the last frame; the instance has {frames} frame(s)"
        )));
    }
    let bytes = render_one(app, loc, frame, params).await?;
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, params.format.media_type())
        .header(header::CONTENT_LENGTH, bytes.len())
        .body(Body::from(bytes))
        .expect("valid response"))
}
