//! `GET /api/v1/admin/audit?study=&who=&action=&after=&limit=`: the audit trail (who
//! stored, read, queried or deleted which study, over HTTP or DIMSE, from which address).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::context::Context;
use crate::index::admin::AuditFilter;
use crate::radiology::error::RestError;

pub async fn audit(
    State(ctx): State<Arc<Context>>,
    Query(filter): Query<AuditFilter>,
) -> Result<Response, RestError> {
    ctx.index().flush_audit().await;
    let events = ctx.index().audit_events(&filter).await?;
    Ok(Json(serde_json::json!({ "events": events })).into_response())
}
