//! Viewer integration: a study's OHIF URL with a study-scoped read-only token, its images
//! grouped by series, and signed, expiring image URLs served by the gateway.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use super::error::RestError;
use crate::auth::Principal;
use crate::context::Context;
use crate::index::read::StudyRef;
use crate::model::clock::now_secs;

/// The study named by `{id}` (internal id or StudyInstanceUID), if the caller may see it.
pub async fn study_for(
    app: &Context,
    id: &str,
    principal: Option<&Principal>,
) -> Result<StudyRef, RestError> {
    let study = app
        .index()
        .find_study(id)
        .await?
        .ok_or_else(|| RestError::not_found(format!("no study {id}")))?;
    if let Some(p) = principal {
        if !p.may_read_study(study.study_uid.as_str()) {
            return Err(RestError::forbidden(
                "this token is limited to another study",
            ));
        }
    }
    Ok(study)
}

fn base(app: &Context, headers: &HeaderMap) -> String {
    app.base_url(headers)
}

/// `GET /api/v1/radiology/studies/{id}/viewer-url/`
pub async fn viewer_url(
    State(app): State<Arc<Context>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    principal: Option<Extension<Principal>>,
) -> Result<Response, RestError> {
    let principal = principal.map(|Extension(p)| p);
    let study = study_for(&app, &id, principal.as_ref()).await?;
    let subject = principal
        .as_ref()
        .map(|p| p.name.as_str())
        .unwrap_or("viewer");
    let ttl = app.auth.viewer_token_ttl_secs;
    let (token, expires) = app.auth.study_token(subject, study.study_uid.as_str(), ttl);
    let url = format!(
        "{}/viewer/viewer?StudyInstanceUIDs={}&token={}",
        base(&app, &headers),
        study.study_uid,
        token
    );
    Ok(Json(json!({
        "study_id": study.id,
        "study_instance_uid": study.study_uid,
        "url": url,
        "token": token,
        "expires_at": expires,
    }))
    .into_response())
}

/// `GET /api/v1/radiology/studies/{id}/images/`
pub async fn study_images(
    State(app): State<Arc<Context>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    principal: Option<Extension<Principal>>,
) -> Result<Response, RestError> {
    let principal = principal.map(|Extension(p)| p);
    let study = study_for(&app, &id, principal.as_ref()).await?;
    let images = app.index().study_images(study.id).await?;
    let base = base(&app, &headers);
    let expires = now_secs() + app.auth.url_ttl_secs;
    let mut series: Vec<serde_json::Value> = Vec::new();
    let mut current = None;
    for img in images {
        if current.as_ref() != Some(&img.series_uid) {
            current = Some(img.series_uid.clone());
            series.push(json!({
                "series_instance_uid": img.series_uid,
                "series_number": img.series_number,
                "series_description": img.series_description,
                "modality": img.modality,
                "images": [],
            }));
        }
        let path = file_path(img.id, "dicom");
        let entry = json!({
            "id": img.id,
            "sop_instance_uid": img.sop_instance_uid,
            "sop_class_uid": img.sop_class_uid,
            "instance_number": img.instance_number,
            "frames": img.number_of_frames,
            "url": format!("{base}{path}&{}", app.auth.sign_path(&path, expires)),
            "url_expires_at": expires,
        });
        if let Some(list) = series
            .last_mut()
            .and_then(|s| s.get_mut("images"))
            .and_then(|i| i.as_array_mut())
        {
            list.push(entry);
        }
    }
    Ok(Json(json!({
        "study_id": study.id,
        "study_instance_uid": study.study_uid,
        "series": series,
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
pub struct FormatQuery {
    format: Option<String>,
}

fn parse_format(raw: Option<&str>) -> Result<&'static str, RestError> {
    match raw.unwrap_or("dicom").to_ascii_lowercase().as_str() {
        "dicom" | "dcm" => Ok("dicom"),
        "jpeg" | "jpg" => Ok("jpeg"),
        "png" => Ok("png"),
        other => Err(RestError::bad_request(
            "unsupported_format",
            format!("format {other:?}: use dicom, jpeg or png"),
        )),
    }
}

/// The gateway path of an image file; the signature covers all of it.
fn file_path(id: i64, format: &str) -> String {
    format!("/api/v1/radiology/images/{id}/file?format={format}")
}

async fn image_study(
    app: &Context,
    id: i64,
) -> Result<crate::index::read::InstanceLocation, RestError> {
    app.index()
        .locate_by_id(id)
        .await?
        .ok_or_else(|| RestError::not_found(format!("no image {id}")))
}

/// `GET /api/v1/radiology/images/{id}/url/?format=dicom|jpeg|png`
pub async fn image_url(
    State(app): State<Arc<Context>>,
    Path(id): Path<i64>,
    Query(q): Query<FormatQuery>,
    headers: HeaderMap,
    principal: Option<Extension<Principal>>,
) -> Result<Response, RestError> {
    let format = parse_format(q.format.as_deref())?;
    let loc = image_study(&app, id).await?;
    if let Some(Extension(p)) = &principal {
        if !p.may_read_study(loc.study_uid.as_str()) {
            return Err(RestError::forbidden(
                "this token is limited to another study",
            ));
        }
    }
    let expires = now_secs() + app.auth.url_ttl_secs;
    let path = file_path(id, format);
    Ok(Json(json!({
        "id": id,
        "format": format,
        "url": format!("{}{path}&{}", base(&app, &headers), app.auth.sign_path(&path, expires)),
        "expires_at": expires,
    }))
    .into_response())
}

/// `GET /api/v1/radiology/images/{id}/file?format=…` — by signed URL (checked by the
/// middleware) or with a viewer token.
pub async fn image_file(
    State(app): State<Arc<Context>>,
    Path(id): Path<i64>,
    Query(q): Query<FormatQuery>,
    principal: Option<Extension<Principal>>,
) -> Result<Response, RestError> {
    let format = parse_format(q.format.as_deref())?;
    let loc = image_study(&app, id).await?;
    if let Some(Extension(p)) = &principal {
        if !p.may_read_study(loc.study_uid.as_str()) {
            return Err(RestError::forbidden(
                "this token is limited to another study",
            ));
        }
    }
    let disposition = |ext: &str| format!("inline; filename=\"{}.{ext}\"", loc.sop_instance_uid);
    if format == "dicom" {
        let len = loc.size + loc.part10_prefix;
        let body = app.instance_stream(&loc).await?;
        return Ok((
            [
                (header::CONTENT_TYPE, "application/dicom".to_owned()),
                (header::CONTENT_LENGTH, len.to_string()),
                (header::CONTENT_DISPOSITION, disposition("dcm")),
                (header::CACHE_CONTROL, "private, max-age=3600".to_owned()),
            ],
            Body::from_stream(body),
        )
            .into_response());
    }
    let params = crate::render::Params {
        format: if format == "png" {
            crate::render::Format::Png
        } else {
            crate::render::Format::Jpeg
        },
        ..Default::default()
    };
    let media = params.format.media_type();
    let rendered = app
        .store()
        .with_local_file(&loc.object_key, move |path| {
            crate::render::render(path, 0, &params)
        })
        .await?
        .map_err(|e| {
            RestError::new(
                axum::http::StatusCode::NOT_ACCEPTABLE,
                "not_renderable",
                format!("this image cannot be rendered as {format}: {e}"),
            )
        })?;
    Ok((
        [
            (header::CONTENT_TYPE, media.to_owned()),
            (header::CONTENT_DISPOSITION, disposition(format)),
            (header::CACHE_CONTROL, "private, max-age=3600".to_owned()),
        ],
        rendered,
    )
        .into_response())
}
