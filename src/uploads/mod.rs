//! The offline upload flow of the hospital app: metadata → binary (resumable) → acknowledge.
//!
//! 1. `upload-metadata` ([`metadata`]) validates what the device declares (its UUID for the
//!    image, the order, file name, size, media type, SHA-256 and the study/series/image
//!    UIDs) and records a pending upload **in the index**, so any gateway process can take
//!    the next step. Re-posting the same metadata is a no-op; other metadata under the same
//!    UUID is 409.
//! 2. `upload-binary` ([`binary`]; multipart/form-data: `image_uuid`, optional `offset`,
//!    then `file`) streams the bytes. A part that ends before the file does — by design,
//!    or because the connection broke — is kept durably in the object store, so the device
//!    resumes from `received` instead of starting over. When the last byte is in, the whole
//!    file's size and SHA-256 are checked against the metadata ([`finish`]); DICOM goes
//!    through the one ingest path with the declared UIDs as expectations, photos (JPEG,
//!    PNG) are first wrapped into a Secondary Capture instance ([`wrap`]). A failed upload
//!    stores nothing (its parts are dropped; the metadata stays, to retry).
//! 3. `acknowledge` ([`ack`]) answers only when the instance is indexed and its object
//!    reads back with the recorded SHA-256: then, and only then, may the device delete its
//!    copy.
//!
//! Every ingest outcome of the flow becomes a REST error code in one place
//! ([`outcome`]). Pending uploads without progress expire (`uploads.expire_after_secs`).

mod ack;
mod binary;
mod finish;
mod metadata;
mod outcome;
pub mod wrap;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use crate::context::Context;
use crate::index::uploads::{Upload, UploadState};
use crate::model::clock::iso8601;
use crate::model::ObjectKey;
use crate::radiology::both;
use crate::radiology::error::RestError;

/// The media types an upload may have.
pub const MEDIA_TYPES: &[&str] = &["application/dicom", "image/jpeg", "image/png"];

/// The routes, to be nested under `/api/v1/radiology`.
pub fn router() -> Router<Arc<Context>> {
    let mut r = Router::new();
    r = both(
        r,
        "/offline-images/upload-metadata",
        post(metadata::upload_metadata),
    );
    r = both(
        r,
        "/offline-images/upload-binary",
        post(binary::upload_binary),
    );
    r = both(r, "/offline-images/acknowledge", post(ack::acknowledge));
    r = both(r, "/offline-images/{uuid}", get(status));
    r
}

fn bad(code: &'static str, message: impl Into<String>) -> RestError {
    RestError::bad_request(code, message)
}

/// What the server has for an upload (the status endpoint and most answers).
fn representation(u: &Upload) -> Value {
    let mut v = json!({
        "image_uuid": u.image_uuid,
        "state": u.state.as_str(),
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
    if u.state == UploadState::Stored {
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

async fn load(ctx: &Context, uuid: &uuid::Uuid) -> Result<Upload, RestError> {
    ctx.index().upload(&uuid.to_string()).await?.ok_or_else(|| {
        RestError::new(
            StatusCode::NOT_FOUND,
            "unknown_image_uuid",
            format!("no metadata was uploaded for image_uuid {uuid}; POST upload-metadata first"),
        )
    })
}

/// `GET /api/v1/radiology/offline-images/{image_uuid}/`
async fn status(
    axum::extract::State(ctx): axum::extract::State<Arc<Context>>,
    axum::extract::Path(raw): axum::extract::Path<String>,
) -> Result<axum::Json<Value>, RestError> {
    let u = load(&ctx, &parse_uuid(&raw)?).await?;
    Ok(axum::Json(representation(&u)))
}

/// Delete objects of upload parts (best effort: `verify` does not sweep these, expiry does).
async fn drop_parts(ctx: &Context, keys: Vec<ObjectKey>) {
    for key in keys {
        if let Err(e) = ctx.store().delete(&key).await {
            tracing::warn!(key = %key, error = %e, "could not delete an upload part");
        }
    }
}

/// Remove pending uploads without progress for `expire_after_secs`, with their parts.
pub async fn sweep(ctx: &Context) {
    let expire = ctx.config.uploads.expire_after_secs as i64;
    let before = crate::model::clock::now_millis() - expire * 1000;
    let stale = match ctx.index().stale_uploads(before).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list expired uploads");
            return;
        }
    };
    for uuid in &stale {
        match ctx.index().delete_upload(uuid).await {
            Ok(keys) => drop_parts(ctx, keys).await,
            Err(e) => tracing::warn!(upload = %uuid, error = %e, "cannot remove an expired upload"),
        }
    }
    if !stale.is_empty() {
        tracing::info!(count = stale.len(), "expired pending uploads removed");
    }
}
