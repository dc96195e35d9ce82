//! `GET /api/v1/admin/forward`: each forwarding destination's outbox — pending (and of
//! those, in flight), delivered, failed, the oldest pending job's age, the last delivery
//! and the last error.

use std::sync::Arc;

use axum::extract::State;
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
