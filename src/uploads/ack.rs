//! `acknowledge`: the ACK that lets the device delete its copy, given only when the
//! instance is indexed and its object reads back with the recorded SHA-256.

use super::*;

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
        "verified_at": iso8601(crate::model::clock::now_millis()),
    }))
    .into_response())
}

fn verification_failed(message: String) -> RestError {
    tracing::error!(%message, "acknowledgement refused");
    RestError::new(StatusCode::CONFLICT, "verification_failed", message)
}
