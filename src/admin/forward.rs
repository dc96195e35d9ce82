//! The forwarding outbox for administrators:
//!
//! - `GET /api/v1/admin/forward`: each destination's outbox — pending (and of those, in
//!   flight), delivered, failed, the oldest pending job's age, the last delivery and the
//!   last error;
//! - `GET /api/v1/admin/forward/{destination}/failed`: the jobs refused for good, why;
//! - `POST /api/v1/admin/forward/{destination}/retry`: queue those again;
//! - `POST /api/v1/admin/forward/{destination}` with `{"studies": [UIDs]}`: queue whole
//!   studies now, whether sent before or not.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::context::Context;
use crate::model::clock::now_millis;
use crate::radiology::error::RestError;

pub async fn status(State(ctx): State<Arc<Context>>) -> Result<Response, RestError> {
    let mut outboxes = ctx.index().outbox_status().await?;
    // Destinations without a job yet are listed too.
    for dest in &ctx.config.forward.destinations {
        if !outboxes.iter().any(|o| o.destination == dest.name) {
            outboxes.push(crate::index::forward::OutboxStatus {
                destination: dest.name.clone(),
                ..Default::default()
            });
        }
    }
    let now = now_millis();
    let destinations: Vec<serde_json::Value> = outboxes
        .iter()
        .map(|o| {
            let mut v = serde_json::to_value(o).unwrap_or_default();
            let age = o.oldest_pending_at.map(|t| (now - t).max(0) / 1000);
            v["oldest_pending_seconds"] = serde_json::json!(age);
            v
        })
        .collect();
    Ok(Json(serde_json::json!({ "destinations": destinations })).into_response())
}

fn destination(ctx: &Context, name: &str) -> Result<(), RestError> {
    match ctx
        .config
        .forward
        .destinations
        .iter()
        .any(|d| d.name == name)
    {
        true => Ok(()),
        false => Err(RestError::not_found(format!(
            "no forwarding destination named {name:?}"
        ))),
    }
}

/// At most this many failed jobs are listed.
const FAILED_LIMIT: i64 = 10_000;

pub async fn failed(
    State(ctx): State<Arc<Context>>,
    Path(name): Path<String>,
) -> Result<Response, RestError> {
    destination(&ctx, &name)?;
    let jobs = ctx.index().failed_forward_jobs(&name, FAILED_LIMIT).await?;
    Ok(Json(serde_json::json!({ "destination": name, "failed": jobs })).into_response())
}

pub async fn retry(
    State(ctx): State<Arc<Context>>,
    Path(name): Path<String>,
) -> Result<Response, RestError> {
    destination(&ctx, &name)?;
    let queued = ctx.index().retry_failed_forward_jobs(&name).await?;
    tracing::info!(destination = %name, queued, "failed forwarding jobs queued again");
    Ok(Json(serde_json::json!({ "destination": name, "queued": queued })).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Studies {
    studies: Vec<String>,
}

pub async fn queue(
    State(ctx): State<Arc<Context>>,
    Path(name): Path<String>,
    body: Result<Json<Studies>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, RestError> {
    destination(&ctx, &name)?;
    let Json(body) = body.map_err(|e| {
        RestError::bad_request("bad_body", format!("expected {{\"studies\": [UIDs]}}: {e}"))
    })?;
    let mut uids = Vec::with_capacity(body.studies.len());
    for raw in &body.studies {
        let uid = crate::model::Uid::parse(raw)
            .map_err(|e| RestError::bad_request("bad_uid", format!("study {raw:?}: {e}")))?;
        uids.push(uid);
    }
    if uids.is_empty() {
        return Err(RestError::bad_request("bad_body", "no study UID given"));
    }
    let mut queued = 0;
    let mut unknown = Vec::new();
    for uid in &uids {
        match ctx.index().queue_study_forward(&name, uid).await? {
            0 => unknown.push(uid.to_string()),
            n => queued += n,
        }
    }
    if !unknown.is_empty() {
        let e = RestError::not_found(format!("no stored study {}", unknown.join(", ")));
        return Err(e.with(serde_json::json!({ "queued": queued, "unknown": unknown })));
    }
    tracing::info!(destination = %name, studies = uids.len(), queued, "studies queued for forwarding");
    let body = serde_json::json!({ "destination": name, "queued": queued });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}
