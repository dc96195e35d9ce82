//! Radiology orders: registered by the hospital system, linked to the studies uploaded for
//! them (offline upload metadata) or stored with their accession number (C-STORE, STOW-RS).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::error::RestError;
use crate::app::AppState;
use crate::index::uploads::Order;

/// Order ids are the hospital's: short printable text without separators.
pub fn valid_order_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

fn check_text(name: &str, v: &Option<String>, max: usize) -> Result<(), RestError> {
    match v {
        Some(s) if s.len() > max || s.chars().any(char::is_control) => Err(RestError::bad_request(
            "invalid_order",
            format!("{name} must be at most {max} printable characters"),
        )),
        _ => Ok(()),
    }
}

/// `PUT /api/v1/radiology/orders/{id}`
pub async fn put_order(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Result<Json<Order>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, RestError> {
    if !valid_order_id(&id) {
        return Err(RestError::bad_request(
            "invalid_order_id",
            "order ids are 1 to 64 letters, digits or - _ . :",
        ));
    }
    let Json(mut order) =
        body.map_err(|e| RestError::bad_request("invalid_json", e.body_text()))?;
    order.order_id = id;
    check_text("accession_number", &order.accession_number, 16)?;
    check_text("patient_id", &order.patient_id, 64)?;
    check_text("patient_name", &order.patient_name, 64 * 5)?;
    if let Some(d) = &order.patient_birth_date {
        if !(d.is_empty() || (d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit()))) {
            return Err(RestError::bad_request(
                "invalid_order",
                "patient_birth_date must be YYYYMMDD",
            ));
        }
    }
    if let Some(s) = &order.patient_sex {
        if !["", "M", "F", "O"].contains(&s.as_str()) {
            return Err(RestError::bad_request(
                "invalid_order",
                "patient_sex must be M, F or O",
            ));
        }
    }
    let created = app.ingest.index().put_order(&order).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(order)).into_response())
}

/// `GET /api/v1/radiology/orders/{id}/studies/`
pub async fn order_studies(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, RestError> {
    let order = app
        .ingest
        .index()
        .order(&id)
        .await?
        .ok_or_else(|| RestError::not_found(format!("no order {id}")))?;
    let studies = app.ingest.index().order_studies(&order).await?;
    Ok(Json(json!({ "order": order, "studies": studies })).into_response())
}
