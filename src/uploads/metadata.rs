//! `upload-metadata`: what the device declares about an image, checked field by field and
//! recorded as a pending upload (idempotent; other metadata under the same UUID is 409).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{bad, load, parse_uuid, representation, MEDIA_TYPES};
use crate::context::Context;
use crate::index::uploads::{Upload, UploadState};
use crate::model::{Sha256, Uid};
use crate::radiology::error::RestError;
use crate::radiology::orders::order_id;

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

/// `POST /api/v1/radiology/offline-images/upload-metadata/`
pub async fn upload_metadata(
    State(ctx): State<Arc<Context>>,
    body: Result<Json<MetadataBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, RestError> {
    let Json(m) = body.map_err(|e| bad("invalid_json", e.body_text()))?;
    let upload = m.into_upload(ctx.config.ingest.max_instance_bytes)?;
    let index = ctx.index();
    if index.create_upload(&upload).await? {
        let created = index.upload(&upload.image_uuid).await?.unwrap_or(upload);
        return Ok((StatusCode::CREATED, Json(representation(&created))).into_response());
    }
    let uuid = parse_uuid(&upload.image_uuid)?;
    let existing = load(&ctx, &uuid).await?;
    if !same_declaration(&existing, &upload) {
        return Err(RestError::new(
            StatusCode::CONFLICT,
            "image_uuid_conflict",
            "this image_uuid was registered with other metadata",
        )
        .with(json!({ "existing": representation(&existing) })));
    }
    Ok((StatusCode::OK, Json(representation(&existing))).into_response())
}

/// Whether two uploads declare the same image.
fn same_declaration(a: &Upload, b: &Upload) -> bool {
    (
        &a.order_id,
        &a.filename,
        a.file_size,
        &a.mime_type,
        &a.checksum,
        &a.study_uid,
        &a.series_uid,
        &a.image_uid,
    ) == (
        &b.order_id,
        &b.filename,
        b.file_size,
        &b.mime_type,
        &b.checksum,
        &b.study_uid,
        &b.series_uid,
        &b.image_uid,
    )
}

fn required<T>(v: Option<T>, name: &str) -> Result<T, RestError> {
    v.ok_or_else(|| {
        bad("missing_field", format!("{name} is required")).with(json!({ "field": name }))
    })
}

fn uid_field(v: Option<String>, name: &str) -> Result<Uid, RestError> {
    let raw = required(v, name)?;
    Uid::parse(raw.trim())
        .map_err(|e| bad("invalid_uid", format!("{name}: {e}")).with(json!({ "field": name })))
}

impl MetadataBody {
    /// The pending upload these fields declare, or the 4xx that says which field is wrong.
    fn into_upload(self, max_bytes: u64) -> Result<Upload, RestError> {
        let uuid = parse_uuid(&required(self.image_uuid, "image_uuid")?)?;
        let order_id = match required(self.radiology_order_id, "radiology_order_id")? {
            Value::String(s) => order_id(&s),
            Value::Number(n) => order_id(&n.to_string()),
            _ => Err(bad(
                "invalid_order_id",
                "radiology_order_id must be a string or a number",
            )),
        }
        .map_err(|_| {
            bad(
                "invalid_order_id",
                "radiology_order_id must be 1 to 64 letters, digits or - _ . :",
            )
        })?;
        let filename = filename(required(self.filename, "filename")?)?;
        let file_size = file_size(required(self.file_size, "file_size")?, max_bytes)?;
        let mime_type = mime_type(required(self.mime_type, "mime_type")?)?;
        let checksum = Sha256::parse_hex(&required(self.checksum, "checksum")?).map_err(|_| {
            bad(
                "invalid_checksum",
                "checksum must be a SHA-256 in hex (64 digits)",
            )
        })?;
        let meta = required(self.image_metadata, "image_metadata")?;
        Ok(Upload {
            image_uuid: uuid.to_string(),
            order_id,
            filename,
            file_size,
            mime_type,
            checksum,
            study_uid: uid_field(meta.study_uid, "image_metadata.study_uid")?,
            series_uid: uid_field(meta.series_uid, "image_metadata.series_uid")?,
            image_uid: uid_field(meta.image_uid, "image_metadata.image_uid")?,
            state: UploadState::Pending,
            received: 0,
            sop_instance_uid: None,
            sha256: None,
            stored_at: None,
            created_at: 0,
            updated_at: 0,
        })
    }
}

fn filename(name: String) -> Result<String, RestError> {
    if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
        return Err(bad(
            "invalid_filename",
            "filename must be 1 to 255 printable characters",
        ));
    }
    Ok(name)
}

fn file_size(raw: Value, limit: u64) -> Result<i64, RestError> {
    let size = match raw {
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
    .filter(|n| *n > 0)
    .ok_or_else(|| bad("invalid_file_size", "file_size must be a positive integer"))?;
    if size as u64 > limit {
        return Err(RestError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "file_too_large",
            format!("file_size {size} is above the limit of {limit} bytes"),
        ));
    }
    Ok(size)
}

fn mime_type(raw: String) -> Result<String, RestError> {
    let mime = raw.trim().to_ascii_lowercase();
    if !MEDIA_TYPES.contains(&mime.as_str()) {
        return Err(RestError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("mime_type {mime:?}: use one of {}", MEDIA_TYPES.join(", ")),
        ));
    }
    Ok(mime)
}
