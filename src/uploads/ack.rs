//! `acknowledge`: the ACK that lets the device delete its copy, given only when the
//! instance is indexed and its object reads back with the recorded SHA-256.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{bad, load, parse_uuid, representation};
use crate::context::Context;
use crate::index::uploads::{Upload, UploadState};
use crate::model::clock::{iso8601, now_millis};
use crate::radiology::error::RestError;

#[derive(Debug, Deserialize)]
pub struct AckBody {
    image_uuid: Option<String>,
}

/// `POST /api/v1/radiology/offline-images/acknowledge/`
pub async fn acknowledge(
    State(ctx): State<Arc<Context>>,
    body: Result<Json<AckBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, RestError> {
    let Json(b) = body.map_err(|e| bad("invalid_json", e.body_text()))?;
    let raw = b.image_uuid.ok_or_else(|| {
        bad("missing_field", "image_uuid is required").with(json!({ "field": "image_uuid" }))
    })?;
    let u = load(&ctx, &parse_uuid(&raw)?).await?;
    let sop = match (&u.state, &u.sop_instance_uid) {
        (UploadState::Stored, Some(sop)) => sop.clone(),
        _ => return Err(not_stored_yet(&u)),
    };
    // Stored: check that the index has it and that its object reads back intact.
    let index = ctx.index();
    let loc = index.locate_instance(&sop).await?.ok_or_else(|| {
        RestError::new(
            StatusCode::CONFLICT,
            "not_stored",
            "the instance is not in the index; upload again and keep the local copy",
        )
    })?;
    let (sha, _) = ctx
        .store()
        .digest(&loc.object_key)
        .await
        .map_err(|e| verification_failed(format!("the object cannot be read: {e}")))?;
    // The stored object is intact, and it is (or was re-encoded losslessly from) the
    // bytes this upload delivered.
    let received = index.received_sha256(&sop).await?;
    if sha != loc.sha256 || u.sha256.is_none() || u.sha256 != received {
        return Err(verification_failed(
            "the stored object does not match its recorded SHA-256".to_owned(),
        ));
    }
    let instance_id = index.instance_id(&sop).await?;
    Ok(Json(json!({
        "acknowledged": true,
        "image_uuid": u.image_uuid,
        "instance_id": instance_id,
        "study_instance_uid": loc.study_uid,
        "series_instance_uid": loc.series_uid,
        "sop_instance_uid": loc.sop_instance_uid,
        // As acknowledged before any re-encoding (compression at rest changes only what
        // is stored, never what was received).
        "sha256": received,
        "size": loc.size,
        "stored_at": u.stored_at.map(iso8601),
        "verified_at": iso8601(now_millis()),
    }))
    .into_response())
}

/// 409: the upload is not stored (yet), and what is missing.
fn not_stored_yet(u: &Upload) -> RestError {
    let missing = if u.received == 0 {
        "the binary has not been uploaded".to_owned()
    } else {
        format!(
            "{} of {} bytes are missing",
            u.file_size - u.received,
            u.file_size
        )
    };
    RestError::new(
        StatusCode::CONFLICT,
        "not_stored",
        format!("not stored yet: {missing}; keep the local copy"),
    )
    .with(json!({ "upload": representation(u), "missing": missing }))
}

fn verification_failed(message: String) -> RestError {
    tracing::error!(%message, "acknowledgement refused");
    RestError::new(StatusCode::CONFLICT, "verification_failed", message)
}
