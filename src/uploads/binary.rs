//! `upload-binary`: receiving the bytes, keeping parts durably, assembling the whole file,
//! checking it and storing it through the ingest path.

use super::*;

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
pub(super) async fn drop_parts(app: &AppState, keys: Vec<String>) {
    for k in keys {
        let Ok(key) = ObjectKey::try_from(k) else {
            continue;
        };
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
    let key = ObjectKey::upload_part(&uuid, offset as u64);
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
        let key = ObjectKey::try_from(chunk.object_key).map_err(RestError::internal)?;
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
    let sha = whole.sha256.to_hex();
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
