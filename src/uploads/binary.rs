//! `upload-binary`: receiving the bytes of an upload, keeping parts durably (the device
//! resumes from `received`), and assembling the whole file for [`super::finish`].

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde_json::json;

use super::{bad, drop_parts, finish, load, parse_uuid, representation};
use crate::context::Context;
use crate::index::uploads::{Upload, UploadState};
use crate::ingest::{Reason, Rejection};
use crate::model::{ObjectKey, Origin, OriginKind};
use crate::radiology::error::RestError;
use crate::storage::{SpooledFile, StorageError};

/// `POST /api/v1/radiology/offline-images/upload-binary/`
pub async fn upload_binary(
    State(ctx): State<Arc<Context>>,
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
    let (uuid, offset, file) = form(&mut multipart, content_range_start(&headers)?).await?;
    receive_file(&ctx, &uuid, offset.unwrap_or(0), file).await
}

/// The form's `image_uuid` and `offset` fields, up to its `file` field.
async fn form<'r>(
    multipart: &mut multer::Multipart<'r>,
    mut offset: Option<i64>,
) -> Result<(uuid::Uuid, Option<i64>, multer::Field<'r>), RestError> {
    let mut uuid = None;
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
            "image_uuid" => uuid = Some(parse_uuid(&small_text(field).await?)?),
            "offset" => offset = Some(parse_offset(&small_text(field).await?)?),
            "file" => {
                let uuid = uuid.ok_or_else(|| {
                    bad(
                        "missing_field",
                        "image_uuid must come before file in the form",
                    )
                    .with(json!({ "field": "image_uuid" }))
                })?;
                return Ok((uuid, offset, field));
            }
            // Unknown fields are skipped.
            _ => drop(small_text(field).await),
        }
    }
}

fn parse_offset(text: &str) -> Result<i64, RestError> {
    text.trim()
        .parse::<i64>()
        .ok()
        .filter(|o| *o >= 0)
        .ok_or_else(|| bad("invalid_offset", "offset must be a non-negative integer"))
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

/// Receive the file field from `offset`: keep a part, or finish the upload with the last.
async fn receive_file(
    ctx: &Context,
    uuid: &uuid::Uuid,
    offset: i64,
    field: multer::Field<'_>,
) -> Result<Response, RestError> {
    let u = load(ctx, uuid).await?;
    if u.state == UploadState::Stored {
        // Already done: nothing to receive (idempotent).
        return Ok((StatusCode::OK, Json(representation(&u))).into_response());
    }
    let u = from_offset(ctx, u, offset).await?;
    let part = spool_part(ctx, &u, offset, field).await?;
    let end = offset + part.spooled.len as i64;
    if let Some(why) = part.broken {
        // Keep what arrived: the device resumes from there.
        let received = match part.spooled.len {
            0 => u.received,
            _ => keep_part(ctx, &u, offset, part.spooled).await?,
        };
        return Err(bad(
            "incomplete_upload",
            format!("the upload broke off ({why}); resume from offset {received}"),
        )
        .with(json!({ "received": received, "next_offset": received, "file_size": u.file_size })));
    }
    if end < u.file_size {
        keep_part(ctx, &u, offset, part.spooled).await?;
        let u = load(ctx, uuid).await?;
        return Ok((StatusCode::ACCEPTED, Json(representation(&u))).into_response());
    }
    // The last byte is in: the whole file.
    let whole = if offset == 0 {
        part.spooled
    } else {
        keep_part(ctx, &u, offset, part.spooled).await?;
        assemble(ctx, &u).await?
    };
    finish::finish(ctx, u, whole).await
}

/// The upload ready to take bytes at `offset`: from where it is, or from zero again.
async fn from_offset(ctx: &Context, mut u: Upload, offset: i64) -> Result<Upload, RestError> {
    if offset == u.received {
        return Ok(u);
    }
    if offset != 0 {
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
    // Starting over.
    let keys = ctx.index().reset_upload(&u.image_uuid).await?;
    drop_parts(ctx, keys).await;
    u.received = 0;
    Ok(u)
}

/// What arrived of a part: its bytes, and why the stream broke off, if it did.
struct Part {
    spooled: SpooledFile,
    broken: Option<String>,
}

/// Spool the file field; more bytes than the file can have left is a refused upload.
async fn spool_part(
    ctx: &Context,
    u: &Upload,
    offset: i64,
    mut field: multer::Field<'_>,
) -> Result<Part, RestError> {
    let room = (u.file_size - offset) as u64;
    let spooling = |e: StorageError| RestError::internal(format!("spooling an upload: {e}"));
    let mut spool = ctx.ingest.new_spool().map_err(spooling)?;
    let mut broken = None;
    loop {
        match field.chunk().await {
            Ok(Some(chunk)) => {
                if spool.len() + chunk.len() as u64 > room {
                    return Err(too_much(ctx, u));
                }
                spool.write(&chunk).await.map_err(spooling)?;
            }
            Ok(None) => break,
            Err(e) => {
                broken = Some(e.to_string());
                break;
            }
        }
    }
    let spooled = spool.finish().await.map_err(spooling)?;
    Ok(Part { spooled, broken })
}

/// More bytes than `file_size` declared: the upload is refused (counted like any refusal).
fn too_much(ctx: &Context, u: &Upload) -> RestError {
    let origin = Origin::new(
        OriginKind::Upload,
        format!("offline-upload {}", u.image_uuid),
        None,
    );
    let detail = format!("more bytes than file_size {} declared", u.file_size);
    ctx.ingest.refuse(
        &origin,
        Rejection::new(Reason::SizeMismatch, detail.clone()),
    );
    bad("size_mismatch", detail).with(json!({ "received": u.received, "file_size": u.file_size }))
}

/// Store a part durably and record it; the upload's new `received`.
async fn keep_part(
    ctx: &Context,
    u: &Upload,
    offset: i64,
    spooled: SpooledFile,
) -> Result<i64, RestError> {
    let uuid = parse_uuid(&u.image_uuid)?;
    let key = ObjectKey::upload_part(&uuid, offset as u64);
    let len = spooled.len as i64;
    ctx.store()
        .put(&key, spooled)
        .await
        .map_err(|e| RestError::internal(format!("storing an upload part: {e}")))?;
    let recorded = ctx
        .index()
        .add_upload_chunk(&u.image_uuid, offset, len, &key)
        .await?;
    if !recorded {
        drop_parts(ctx, vec![key]).await;
        let now = load(ctx, &uuid).await?;
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
async fn assemble(ctx: &Context, u: &Upload) -> Result<SpooledFile, RestError> {
    let reading = |e: StorageError| RestError::internal(format!("reading an upload part: {e}"));
    let spooling = |e: StorageError| RestError::internal(format!("spooling an upload: {e}"));
    let mut spool = ctx.ingest.new_spool().map_err(spooling)?;
    let mut next = 0i64;
    for chunk in ctx.index().upload_chunks(&u.image_uuid).await? {
        if chunk.start != next {
            return Err(RestError::internal(format!(
                "upload {} has a gap at byte {next}",
                u.image_uuid
            )));
        }
        let mut stream = ctx
            .store()
            .stream(&chunk.object_key, None)
            .await
            .map_err(reading)?;
        while let Some(bytes) = stream.next().await {
            spool
                .write(&bytes.map_err(reading)?)
                .await
                .map_err(spooling)?;
        }
        next = chunk.start + chunk.length;
    }
    spool.finish().await.map_err(spooling)
}
