//! The offline upload flow of the hospital app: metadata → binary (resumable) → acknowledge.
//!
//! 1. `upload-metadata` validates what the device declares (its UUID for the image, the
//!    order, file name, size, media type, SHA-256 and the study/series/image UIDs) and
//!    records a pending upload **in the index**, so any gateway process can take the next
//!    step. Re-posting the same metadata is a no-op; other metadata under the same UUID is
//!    409.
//! 2. `upload-binary` (multipart/form-data: `image_uuid`, optional `offset`, then `file`)
//!    streams the bytes. A part that ends before the file does — by design, or because the
//!    connection broke — is kept durably in the object store, so the device resumes from
//!    `received` instead of starting over. When the last byte is in, the whole file's size
//!    and SHA-256 are checked against the metadata; DICOM goes through the one ingest path
//!    with the declared UIDs as expectations, photos (JPEG, PNG) are first wrapped into a
//!    Secondary Capture instance with the declared UIDs and the order's patient data. A
//!    failed upload stores nothing (its parts are dropped; the metadata stays, to retry).
//! 3. `acknowledge` answers only when the instance is indexed and its object reads back
//!    with the recorded SHA-256: then, and only then, may the device delete its copy.
//!
//! Pending uploads without progress expire (`uploads.expire_after_secs`).

mod ack;
mod binary;
pub mod wrap;

pub use ack::{acknowledge, AckBody};
use binary::drop_parts;
pub use binary::upload_binary;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::app::AppState;
use crate::index::uploads::{Upload, PENDING, STORED};
use crate::ingest::{Expected, Outcome, Reason};
use crate::model::clock::iso8601;
use crate::model::ObjectKey;
use crate::model::Uid;
use crate::model::{Origin, OriginKind};
use crate::radiology::error::RestError;
use crate::radiology::orders::valid_order_id;
use crate::storage::SpooledFile;

pub const MEDIA_TYPES: &[&str] = &["application/dicom", "image/jpeg", "image/png"];

fn bad(code: &'static str, message: impl Into<String>) -> RestError {
    RestError::bad_request(code, message)
}

/// What the server has for an upload (the status endpoint and most answers).
fn representation(u: &Upload) -> Value {
    let mut v = json!({
        "image_uuid": u.image_uuid,
        "state": u.state,
        "radiology_order_id": u.order_id,
        "filename": u.filename,
        "file_size": u.file_size,
        "mime_type": u.mime_type,
        "checksum": u.checksum,
        "image_metadata": {
            "study_uid": u.study_uid,
            "series_uid": u.series_uid,
            "image_uid": u.image_uid,
        },
        "received": u.received,
        "next_offset": u.received,
        "missing_bytes": u.file_size - u.received,
    });
    if u.state == STORED {
        v["sop_instance_uid"] = json!(u.sop_instance_uid);
        v["sha256"] = json!(u.sha256);
        v["stored_at"] = json!(u.stored_at.map(iso8601));
    }
    v
}

fn parse_uuid(raw: &str) -> Result<uuid::Uuid, RestError> {
    uuid::Uuid::parse_str(raw.trim()).map_err(|_| {
        bad(
            "invalid_image_uuid",
            format!("image_uuid {raw:?} is not a UUID"),
        )
    })
}

async fn load(app: &AppState, uuid: &uuid::Uuid) -> Result<Upload, RestError> {
    app.ingest
        .index()
        .upload(&uuid.to_string())
        .await?
        .ok_or_else(|| {
            RestError::new(
                StatusCode::NOT_FOUND,
                "unknown_image_uuid",
                format!(
                    "no metadata was uploaded for image_uuid {uuid}; POST upload-metadata first"
                ),
            )
        })
}

#[derive(Debug, Deserialize)]
pub struct MetadataBody {
    image_uuid: Option<String>,
    radiology_order_id: Option<Value>,
    filename: Option<String>,
    file_size: Option<Value>,
    mime_type: Option<String>,
    checksum: Option<String>,
    image_metadata: Option<ImageMetadata>,
}

#[derive(Debug, Deserialize)]
pub struct ImageMetadata {
    study_uid: Option<String>,
    series_uid: Option<String>,
    image_uid: Option<String>,
}

fn required<T>(v: Option<T>, name: &str) -> Result<T, RestError> {
    v.ok_or_else(|| {
        bad("missing_field", format!("{name} is required")).with(json!({ "field": name }))
    })
}

fn uid_field(v: Option<String>, name: &str) -> Result<String, RestError> {
    let raw = required(v, name)?;
    Uid::parse(raw.trim())
        .map(|u| u.to_string())
        .map_err(|e| bad("invalid_uid", format!("{name}: {e}")).with(json!({ "field": name })))
}

/// `POST /api/v1/radiology/offline-images/upload-metadata/`
pub async fn upload_metadata(
    State(app): State<Arc<AppState>>,
    body: Result<Json<MetadataBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, RestError> {
    let Json(m) = body.map_err(|e| bad("invalid_json", e.body_text()))?;
    let uuid = parse_uuid(&required(m.image_uuid, "image_uuid")?)?;
    let order_id = match required(m.radiology_order_id, "radiology_order_id")? {
        Value::String(s) => s,
        Value::Number(n) => n.to_string(),
        _ => {
            return Err(bad(
                "invalid_order_id",
                "radiology_order_id must be a string or a number",
            ))
        }
    };
    if !valid_order_id(&order_id) {
        return Err(bad(
            "invalid_order_id",
            "radiology_order_id must be 1 to 64 letters, digits or - _ . :",
        ));
    }
    let filename = required(m.filename, "filename")?;
    if filename.is_empty() || filename.len() > 255 || filename.chars().any(char::is_control) {
        return Err(bad(
            "invalid_filename",
            "filename must be 1 to 255 printable characters",
        ));
    }
    let file_size = match required(m.file_size, "file_size")? {
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
    .filter(|n| *n > 0)
    .ok_or_else(|| bad("invalid_file_size", "file_size must be a positive integer"))?;
    let limit = app.config.ingest.max_instance_bytes;
    if file_size as u64 > limit {
        return Err(RestError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "file_too_large",
            format!("file_size {file_size} is above the limit of {limit} bytes"),
        ));
    }
    let mime_type = required(m.mime_type, "mime_type")?
        .trim()
        .to_ascii_lowercase();
    if !MEDIA_TYPES.contains(&mime_type.as_str()) {
        return Err(RestError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "mime_type {mime_type:?}: use one of {}",
                MEDIA_TYPES.join(", ")
            ),
        ));
    }
    let checksum = required(m.checksum, "checksum")?
        .trim()
        .to_ascii_lowercase();
    if checksum.len() != 64 || !checksum.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(
            "invalid_checksum",
            "checksum must be a SHA-256 in hex (64 digits)",
        ));
    }
    let meta = required(m.image_metadata, "image_metadata")?;
    let upload = Upload {
        image_uuid: uuid.to_string(),
        order_id,
        filename,
        file_size,
        mime_type,
        checksum,
        study_uid: uid_field(meta.study_uid, "image_metadata.study_uid")?,
        series_uid: uid_field(meta.series_uid, "image_metadata.series_uid")?,
        image_uid: uid_field(meta.image_uid, "image_metadata.image_uid")?,
        state: PENDING.into(),
        received: 0,
        sop_instance_uid: None,
        sha256: None,
        stored_at: None,
        created_at: 0,
        updated_at: 0,
    };
    let index = app.ingest.index();
    if index.create_upload(&upload).await? {
        let created = index.upload(&upload.image_uuid).await?.unwrap_or(upload);
        return Ok((StatusCode::CREATED, Json(representation(&created))).into_response());
    }
    let existing = load(&app, &uuid).await?;
    let same = (
        &existing.order_id,
        &existing.filename,
        existing.file_size,
        &existing.mime_type,
        &existing.checksum,
        &existing.study_uid,
        &existing.series_uid,
        &existing.image_uid,
    ) == (
        &upload.order_id,
        &upload.filename,
        upload.file_size,
        &upload.mime_type,
        &upload.checksum,
        &upload.study_uid,
        &upload.series_uid,
        &upload.image_uid,
    );
    if !same {
        return Err(RestError::new(
            StatusCode::CONFLICT,
            "image_uuid_conflict",
            "this image_uuid was registered with other metadata",
        )
        .with(json!({ "existing": representation(&existing) })));
    }
    Ok((StatusCode::OK, Json(representation(&existing))).into_response())
}

/// `GET /api/v1/radiology/offline-images/{image_uuid}/`
pub async fn status(
    State(app): State<Arc<AppState>>,
    Path(raw): Path<String>,
) -> Result<Response, RestError> {
    let u = load(&app, &parse_uuid(&raw)?).await?;
    Ok(Json(representation(&u)).into_response())
}

/// Remove pending uploads without progress for `expire_after_secs`, with their parts.
pub async fn sweep(app: &AppState) {
    let expire = app.config.uploads.expire_after_secs as i64;
    let before = crate::model::clock::now_millis() - expire * 1000;
    let stale = match app.ingest.index().stale_uploads(before).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list expired uploads");
            return;
        }
    };
    for uuid in &stale {
        match app.ingest.index().delete_upload(uuid).await {
            Ok(keys) => drop_parts(app, keys).await,
            Err(e) => tracing::warn!(upload = %uuid, error = %e, "cannot remove an expired upload"),
        }
    }
    if !stale.is_empty() {
        tracing::info!(count = stale.len(), "expired pending uploads removed");
    }
}
