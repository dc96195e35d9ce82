//! The last byte of an upload is in: check the whole file against what the device
//! declared, wrap a photo, store it through the ingest path, and record the result. On any
//! failure the received parts are dropped (nothing of a failed upload is kept; the
//! metadata stays, to retry).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{drop_parts, load, outcome, parse_uuid, representation, wrap};
use crate::context::Context;
use crate::index::uploads::Upload;
use crate::ingest::{Expected, Reason, Rejection};
use crate::model::{Origin, OriginKind};
use crate::radiology::error::RestError;
use crate::storage::SpooledFile;

/// Check, store and record the whole file of an upload.
pub(super) async fn finish(
    ctx: &Context,
    u: Upload,
    whole: SpooledFile,
) -> Result<Response, RestError> {
    let origin = Origin::new(
        OriginKind::Upload,
        format!("offline-upload {}", u.image_uuid),
        None,
    );
    let received = whole.sha256;
    let outcome = match declared(&u, &whole) {
        Err(refused) => ctx.ingest.refuse(&origin, refused),
        Ok(()) => match instance(ctx, &u, whole).await {
            Ok(dicom) => {
                let expected = Expected {
                    study_uid: Some(u.study_uid.clone()),
                    series_uid: Some(u.series_uid.clone()),
                    sop_instance_uid: Some(u.image_uid.clone()),
                    sop_class_uid: None,
                };
                ctx.ingest.store_spooled(dicom, origin, &expected).await
            }
            Err(e) => {
                // The photo could not be made an instance: refused like any file.
                let detail = e.message.clone();
                ctx.ingest
                    .refuse(&origin, Rejection::new(Reason::CannotUnderstand, detail));
                return fail(ctx, &u, e).await;
            }
        },
    };
    let accepted = match outcome::accepted(outcome, &u, &received) {
        Ok(a) => a,
        Err(e) => return fail(ctx, &u, e).await,
    };
    let keys = ctx
        .index()
        .finish_upload(
            &u,
            &accepted.sop_instance_uid,
            &accepted.sha256,
            accepted.stored_at,
        )
        .await?;
    drop_parts(ctx, keys).await;
    let done = load(ctx, &parse_uuid(&u.image_uuid)?).await?;
    tracing::info!(upload = %u.image_uuid, sop = %accepted.sop_instance_uid, "offline upload stored");
    Ok((StatusCode::CREATED, Json(representation(&done))).into_response())
}

/// The file is as long as declared and hashes to the declared checksum.
fn declared(u: &Upload, whole: &SpooledFile) -> Result<(), Rejection> {
    if whole.len as i64 != u.file_size {
        let detail = format!(
            "received {} bytes, file_size declared {}",
            whole.len, u.file_size
        );
        return Err(Rejection::new(Reason::SizeMismatch, detail));
    }
    if whole.sha256 != u.checksum {
        let detail = "the file's SHA-256 is not the declared checksum; nothing was stored";
        return Err(Rejection::new(Reason::ChecksumMismatch, detail));
    }
    Ok(())
}

/// The instance to store: the file itself, or the photo wrapped as Secondary Capture.
async fn instance(ctx: &Context, u: &Upload, whole: SpooledFile) -> Result<SpooledFile, RestError> {
    if u.mime_type == "application/dicom" {
        return Ok(whole);
    }
    let order = ctx.index().order(&u.order_id).await?;
    wrap::secondary_capture(&ctx.ingest, whole, u, order.as_ref()).await
}

/// Drop what was received of a failed upload, and answer with the error.
async fn fail(ctx: &Context, u: &Upload, e: RestError) -> Result<Response, RestError> {
    if let Ok(keys) = ctx.index().reset_upload(&u.image_uuid).await {
        drop_parts(ctx, keys).await;
    }
    Err(e)
}
