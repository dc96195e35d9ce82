//! The change feed of stores and deletes in the style of Microsoft's DICOM service
//! (`/changefeed`, `/changefeed/latest`): what downstream systems follow.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::ApiError;
use crate::context::Context;

#[derive(Debug, Deserialize)]
pub struct FeedQuery {
    offset: Option<i64>,
    limit: Option<i64>,
    #[serde(rename = "includeMetadata")]
    include_metadata: Option<bool>,
}

fn entry(c: crate::index::admin::Change, with_metadata: bool) -> Value {
    let mut v = json!({
        "Sequence": c.sequence,
        "StudyInstanceUid": c.study_uid,
        "SeriesInstanceUid": c.series_uid,
        "SopInstanceUid": c.sop_instance_uid,
        "Action": c.action,
        "Timestamp": crate::model::clock::iso8601(c.at),
        "State": c.state,
    });
    if with_metadata {
        let meta = c
            .metadata_json
            .filter(|_| c.state == "current")
            .and_then(|m| serde_json::from_str::<Value>(&m).ok());
        v["Metadata"] = meta.unwrap_or(Value::Null);
    }
    v
}

/// `GET /changefeed?offset=&limit=&includeMetadata=`
pub async fn changefeed(
    State(app): State<Arc<Context>>,
    Query(q): Query<FeedQuery>,
) -> Result<Response, ApiError> {
    let with_metadata = q.include_metadata.unwrap_or(true);
    let changes = app
        .index()
        .changefeed(q.offset.unwrap_or(0), q.limit.unwrap_or(100), with_metadata)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let body: Vec<Value> = changes
        .into_iter()
        .map(|c| entry(c, with_metadata))
        .collect();
    Ok(Json(body).into_response())
}

/// `GET /changefeed/latest`
pub async fn latest(State(app): State<Arc<Context>>) -> Result<Response, ApiError> {
    let index = app.index();
    let seq = index
        .changefeed_latest()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let last = index
        .changefeed(seq - 1, 1, false)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(match last.into_iter().next() {
        Some(c) => Json(entry(c, false)).into_response(),
        None => Json(json!({ "Sequence": 0 })).into_response(),
    })
}
