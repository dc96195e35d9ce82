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

pub mod wrap;

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
use crate::index::{Origin, OriginKind};
use crate::ingest::{Expected, Outcome, Reason};
use crate::model::Uid;
use crate::radiology::error::RestError;
use crate::radiology::orders::valid_order_id;
use crate::storage::{ObjectKey, SpooledFile};

pub const MEDIA_TYPES: &[&str] = &["application/dicom", "image/jpeg", "image/png"];

fn bad(code: &'static str, message: impl Into<String>) -> RestError {
    RestError::bad_request(code, message)
}

/// ISO 8601 UTC time of a millisecond timestamp.
pub fn iso8601(millis: i64) -> String {
    let secs = millis.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        millis.rem_euclid(1000)
    )
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

/// The start offset a `Content-Range: bytes START-END/TOTAL` header names.
fn content_range_start(headers: &HeaderMap) -> Result<Option<i64>, RestError> {
    let Some(v) = headers.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let v = v.to_str().unwrap_or("").trim();
    let start = v
        .strip_prefix("bytes ")
        .and_then(|r| r.split_once('-'))
        .and_then(|(s, _)| s.trim().parse::<i64>().ok())
        .filter(|s| *s >= 0)
        .ok_or_else(|| {
            bad(
                "invalid_content_range",
                format!("Content-Range {v:?}: use bytes START-END/TOTAL"),
            )
        })?;
    Ok(Some(start))
}

/// `POST /api/v1/radiology/offline-images/upload-binary/`
pub async fn upload_binary(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, RestError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
    {
        return Err(RestError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "upload-binary takes multipart/form-data with the fields image_uuid and file",
        ));
    }
    let boundary = multer::parse_boundary(content_type)
        .map_err(|e| bad("invalid_multipart", format!("no multipart boundary: {e}")))?;
    let mut multipart = multer::Multipart::new(body.into_data_stream(), boundary);
    let mut uuid = None;
    let mut offset = content_range_start(&headers)?;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => {
                return Err(bad("missing_field", "the form has no file field")
                    .with(json!({ "field": "file" })))
            }
            Err(e) => {
                return Err(bad(
                    "invalid_multipart",
                    format!("malformed form data: {e}"),
                ))
            }
        };
        match field.name().unwrap_or("") {
            "image_uuid" => {
                let text = small_text(field).await?;
                uuid = Some(parse_uuid(&text)?);
            }
            "offset" => {
                let text = small_text(field).await?;
                offset = Some(
                    text.trim()
                        .parse::<i64>()
                        .ok()
                        .filter(|o| *o >= 0)
                        .ok_or_else(|| {
                            bad("invalid_offset", "offset must be a non-negative integer")
                        })?,
                );
            }
            "file" => {
                let uuid = uuid.ok_or_else(|| {
                    bad(
                        "missing_field",
                        "image_uuid must come before file in the form",
                    )
                    .with(json!({ "field": "image_uuid" }))
                })?;
                return receive_file(&app, &uuid, offset.unwrap_or(0), field).await;
            }
            _ => {
                // Unknown fields are skipped.
                let _ = small_text(field).await;
            }
        }
    }
}

async fn small_text(field: multer::Field<'_>) -> Result<String, RestError> {
    let mut out = Vec::new();
    let mut field = field;
    while let Some(chunk) = field
        .chunk()
        .await
        .map_err(|e| bad("invalid_multipart", format!("malformed form data: {e}")))?
    {
        out.extend_from_slice(&chunk);
        if out.len() > 1024 {
            return Err(bad(
                "invalid_multipart",
                "form fields other than file are limited to 1 KiB",
            ));
        }
    }
    String::from_utf8(out).map_err(|_| bad("invalid_multipart", "form fields must be UTF-8"))
}

/// Delete objects of upload parts (best effort: `verify` does not sweep these, expiry does).
async fn drop_parts(app: &AppState, keys: Vec<String>) {
    for k in keys {
        let key = ObjectKey::from_trusted(k);
        if let Err(e) = app.ingest.store().delete(&key).await {
            tracing::warn!(key = %key, error = %e, "could not delete an upload part");
        }
    }
}

async fn receive_file(
    app: &AppState,
    uuid: &uuid::Uuid,
    offset: i64,
    mut field: multer::Field<'_>,
) -> Result<Response, RestError> {
    let index = app.ingest.index();
    let mut u = load(app, uuid).await?;
    if u.state == STORED {
        // Already done: nothing to receive (idempotent).
        return Ok((StatusCode::OK, Json(representation(&u))).into_response());
    }
    if offset != u.received {
        if offset == 0 {
            // Starting over.
            let keys = index.reset_upload(&u.image_uuid).await?;
            drop_parts(app, keys).await;
            u.received = 0;
        } else {
            return Err(RestError::new(
                StatusCode::CONFLICT,
                "offset_mismatch",
                format!(
                    "the server has {} bytes of this file; send from offset {}",
                    u.received, u.received
                ),
            )
            .with(json!({ "received": u.received, "next_offset": u.received })));
        }
    }
    let room = (u.file_size - offset) as u64;
    let mut spool = app
        .ingest
        .start_spool()
        .map_err(|r| RestError::internal(r.detail))?;
    let mut got: u64 = 0;
    let mut broken = None;
    loop {
        match field.chunk().await {
            Ok(Some(chunk)) => {
                got += chunk.len() as u64;
                if got > room {
                    return Err(bad(
                        "size_mismatch",
                        format!("more bytes than file_size {} declared", u.file_size),
                    )
                    .with(json!({ "received": u.received, "file_size": u.file_size })));
                }
                spool
                    .write(&chunk)
                    .await
                    .map_err(|e| RestError::internal(format!("spooling an upload: {e}")))?;
            }
            Ok(None) => break,
            Err(e) => {
                broken = Some(e.to_string());
                break;
            }
        }
    }
    let spooled = spool
        .finish()
        .await
        .map_err(|e| RestError::internal(format!("spooling an upload: {e}")))?;
    let end = offset + got as i64;
    if let Some(why) = broken {
        // Keep what arrived: the device resumes from there.
        let received = if got > 0 {
            keep_part(app, &u, offset, spooled).await?
        } else {
            u.received
        };
        return Err(bad(
            "incomplete_upload",
            format!("the upload broke off ({why}); resume from offset {received}"),
        )
        .with(json!({ "received": received, "next_offset": received, "file_size": u.file_size })));
    }
    if end < u.file_size {
        let received = keep_part(app, &u, offset, spooled).await?;
        let u = load(app, uuid).await?;
        debug_assert_eq!(u.received, received);
        return Ok((StatusCode::ACCEPTED, Json(representation(&u))).into_response());
    }
    // The last byte is in: the whole file.
    let whole = if offset == 0 {
        spooled
    } else {
        keep_part(app, &u, offset, spooled).await?;
        assemble(app, &u).await?
    };
    finish(app, u, whole).await
}

/// Store a part durably and record it; the upload's new `received`.
async fn keep_part(
    app: &AppState,
    u: &Upload,
    offset: i64,
    spooled: SpooledFile,
) -> Result<i64, RestError> {
    let uuid = uuid::Uuid::parse_str(&u.image_uuid).map_err(RestError::internal)?;
    let key = ObjectKey::upload_chunk(&uuid, offset as u64);
    let len = spooled.len as i64;
    app.ingest
        .store()
        .put(&key, spooled)
        .await
        .map_err(|e| RestError::internal(format!("storing an upload part: {e}")))?;
    if !app
        .ingest
        .index()
        .add_upload_chunk(&u.image_uuid, offset, len, key.as_str())
        .await?
    {
        drop_parts(app, vec![key.as_str().to_owned()]).await;
        let now = load(app, &uuid).await?;
        return Err(RestError::new(
            StatusCode::CONFLICT,
            "offset_mismatch",
            "another request changed this upload meanwhile; check its status and resume",
        )
        .with(json!({ "received": now.received, "next_offset": now.received })));
    }
    Ok(offset + len)
}

/// The whole file from its stored parts, in a spool (hashed on the way).
async fn assemble(app: &AppState, u: &Upload) -> Result<SpooledFile, RestError> {
    let mut spool = app
        .ingest
        .start_spool()
        .map_err(|r| RestError::internal(r.detail))?;
    let mut next = 0i64;
    for chunk in app.ingest.index().upload_chunks(&u.image_uuid).await? {
        if chunk.start != next {
            return Err(RestError::internal(format!(
                "upload {} has a gap at byte {next}",
                u.image_uuid
            )));
        }
        let key = ObjectKey::from_trusted(chunk.object_key);
        let mut stream = app
            .ingest
            .store()
            .stream(&key, None)
            .await
            .map_err(|e| RestError::internal(format!("reading an upload part: {e}")))?;
        while let Some(bytes) = stream.next().await {
            let bytes =
                bytes.map_err(|e| RestError::internal(format!("reading an upload part: {e}")))?;
            spool
                .write(&bytes)
                .await
                .map_err(|e| RestError::internal(format!("spooling an upload: {e}")))?;
        }
        next = chunk.start + chunk.length;
    }
    spool
        .finish()
        .await
        .map_err(|e| RestError::internal(format!("spooling an upload: {e}")))
}

/// Check the whole file, store it through the ingest path, and record the result. On any
/// failure the received parts are dropped (nothing of a failed upload is kept).
async fn finish(app: &AppState, u: Upload, whole: SpooledFile) -> Result<Response, RestError> {
    let index = app.ingest.index();
    let fail = |e: RestError| async {
        if let Ok(keys) = index.reset_upload(&u.image_uuid).await {
            drop_parts(app, keys).await;
        }
        Err::<Response, RestError>(e)
    };
    if whole.len as i64 != u.file_size {
        return fail(bad(
            "size_mismatch",
            format!(
                "received {} bytes, file_size declared {}",
                whole.len, u.file_size
            ),
        ))
        .await;
    }
    let sha = hex::encode(whole.sha256);
    if sha != u.checksum {
        return fail(
            RestError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "checksum_mismatch",
                "the file's SHA-256 is not the declared checksum; nothing was stored",
            )
            .with(json!({ "declared": u.checksum, "received_sha256": sha })),
        )
        .await;
    }
    let dicom = if u.mime_type == "application/dicom" {
        whole
    } else {
        let order = index.order(&u.order_id).await?;
        match wrap::secondary_capture(&app.ingest, whole, &u, order.as_ref()).await {
            Ok(s) => s,
            Err(e) => return fail(e).await,
        }
    };
    let expected = Expected {
        study_uid: Uid::parse(&u.study_uid).ok(),
        series_uid: Uid::parse(&u.series_uid).ok(),
        sop_instance_uid: Uid::parse(&u.image_uid).ok(),
        sop_class_uid: None,
    };
    let origin = Origin {
        kind: OriginKind::Upload,
        who: format!("offline-upload {}", u.image_uuid),
        address: None,
    };
    let accepted = match app.ingest.store_spooled(dicom, origin, &expected).await {
        Outcome::Stored(a) => a,
        Outcome::AlreadyStored(a) if !a.kept_original => a,
        Outcome::AlreadyStored(_) => {
            return fail(RestError::new(
                StatusCode::CONFLICT,
                "conflicting_instance",
                "another version of this image (same image_uid, other bytes) is stored",
            ))
            .await
        }
        Outcome::Rejected(r) => {
            let e = match r.reason {
                Reason::StudyUidMismatch | Reason::DataSetMismatch => RestError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "uid_mismatch",
                    format!("the file does not match the declared UIDs: {}", r.detail),
                ),
                Reason::ConflictingDuplicate => RestError::new(
                    StatusCode::CONFLICT,
                    "conflicting_instance",
                    r.detail.clone(),
                ),
                Reason::TooLarge => RestError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "file_too_large",
                    r.detail.clone(),
                ),
                Reason::OutOfResources | Reason::ProcessingFailure => {
                    RestError::internal(format!("storing an upload: {}", r.detail))
                }
                _ => RestError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_dicom",
                    format!("the file is not a storable DICOM instance: {}", r.detail),
                ),
            };
            return fail(e).await;
        }
    };
    let keys = index
        .finish_upload(
            &u,
            accepted.sop_instance_uid.as_str(),
            &accepted.sha256,
            accepted.stored_at,
        )
        .await?;
    drop_parts(app, keys).await;
    let done = load(
        app,
        &uuid::Uuid::parse_str(&u.image_uuid).map_err(RestError::internal)?,
    )
    .await?;
    tracing::info!(upload = %u.image_uuid, sop = %accepted.sop_instance_uid, "offline upload stored");
    Ok((StatusCode::CREATED, Json(representation(&done))).into_response())
}

#[derive(Debug, Deserialize)]
pub struct AckBody {
    image_uuid: Option<String>,
}

/// `POST /api/v1/radiology/offline-images/acknowledge/`
pub async fn acknowledge(
    State(app): State<Arc<AppState>>,
    body: Result<Json<AckBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, RestError> {
    let Json(b) = body.map_err(|e| bad("invalid_json", e.body_text()))?;
    let uuid = parse_uuid(&required(b.image_uuid, "image_uuid")?)?;
    let u = load(&app, &uuid).await?;
    if u.state != STORED {
        let missing = if u.received == 0 {
            "the binary has not been uploaded".to_owned()
        } else {
            format!(
                "{} of {} bytes are missing",
                u.file_size - u.received,
                u.file_size
            )
        };
        return Err(RestError::new(
            StatusCode::CONFLICT,
            "not_stored",
            format!("not stored yet: {missing}; keep the local copy"),
        )
        .with(json!({ "upload": representation(&u), "missing": missing })));
    }
    // Stored: check that the index has it and that its object reads back intact.
    let sop = u.sop_instance_uid.clone().unwrap_or_default();
    let sop_uid = Uid::parse(&sop).map_err(RestError::internal)?;
    let index = app.ingest.index();
    let loc = index.locate_instance(&sop_uid).await?.ok_or_else(|| {
        RestError::new(
            StatusCode::CONFLICT,
            "not_stored",
            "the instance is not in the index; upload again and keep the local copy",
        )
    })?;
    let key = ObjectKey::parse(&loc.object_key)
        .ok_or_else(|| RestError::internal(format!("malformed object key {}", loc.object_key)))?;
    let mut stream = app
        .ingest
        .store()
        .stream(&key, None)
        .await
        .map_err(|e| verification_failed(format!("the object cannot be read: {e}")))?;
    let mut hasher = Sha256::new();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| verification_failed(format!("the object cannot be read: {e}")))?;
        hasher.update(&chunk);
    }
    let sha = hex::encode(hasher.finalize());
    if sha != loc.sha256 || Some(&sha) != u.sha256.as_ref() {
        return Err(verification_failed(
            "the stored object does not match its recorded SHA-256".to_owned(),
        ));
    }
    let instance_id = index.instance_id(&sop_uid).await?;
    Ok(Json(json!({
        "acknowledged": true,
        "image_uuid": u.image_uuid,
        "instance_id": instance_id,
        "study_instance_uid": loc.study_uid,
        "series_instance_uid": loc.series_uid,
        "sop_instance_uid": loc.sop_instance_uid,
        "sha256": sha,
        "size": loc.size,
        "stored_at": u.stored_at.map(iso8601),
        "verified_at": iso8601(crate::index::now_millis()),
    }))
    .into_response())
}

fn verification_failed(message: String) -> RestError {
    tracing::error!(%message, "acknowledgement refused");
    RestError::new(StatusCode::CONFLICT, "verification_failed", message)
}

/// Remove pending uploads without progress for `expire_after_secs`, with their parts.
pub async fn sweep(app: &AppState) {
    let expire = app.config.uploads.expire_after_secs as i64;
    let before = crate::index::now_millis() - expire * 1000;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_times() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(iso8601(1_795_829_599_000), "2026-11-28T01:33:19.000Z");
    }
}
