//! Deleting studies, series and instances (admin only; PS3.18 has no delete, this follows
//! the common `DELETE` on the DICOMweb resource): rows first (one transaction, change feed
//! entries included), then the objects. An object left behind by a crash in between is an
//! orphan that `verify` sweeps.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::context::Context;
use crate::dicomweb::{ApiError, Resource};
use crate::index::read::Scope;

/// `DELETE /studies/{study}[/series/{series}[/instances/{sop}]]`: rows first (one
/// transaction, change feed entries included), then the objects.
pub async fn delete(State(ctx): State<Arc<Context>>, r: Resource) -> Result<Response, ApiError> {
    let scope: Scope = r.scope()?;
    let deleted = ctx
        .index()
        .delete_scope(&scope)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    if deleted.is_empty() {
        return Err(ApiError::NotFound("nothing stored there".into()));
    }
    ctx.store().delete_deleted(&deleted).await;
    tracing::info!(study = %scope.study, instances = deleted.len(), "deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}
