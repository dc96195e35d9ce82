//! Radiology orders: registered by the hospital system, linked to the studies uploaded for
//! them (offline upload metadata) or stored with their accession number (C-STORE, STOW-RS).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::error::RestError;
use crate::context::Context;
use crate::index::uploads::Order;
use crate::model::{DicomDate, OrderId};

/// The body of `PUT /orders/{id}`, parsed into an [`Order`].
#[derive(Debug, Deserialize)]
pub struct OrderBody {
    accession_number: Option<String>,
    patient_id: Option<String>,
    patient_name: Option<String>,
    patient_birth_date: Option<String>,
    patient_sex: Option<String>,
}

/// An order id from a path or a body, or the 400 that says what is wrong with it.
pub fn order_id(raw: &str) -> Result<OrderId, RestError> {
    OrderId::parse(raw).map_err(|_| {
        RestError::bad_request(
            "invalid_order_id",
            "order ids are 1 to 64 letters, digits or - _ . :",
        )
    })
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

impl OrderBody {
    fn into_order(self, order_id: OrderId) -> Result<Order, RestError> {
        check_text("accession_number", &self.accession_number, 16)?;
        check_text("patient_id", &self.patient_id, 64)?;
        check_text("patient_name", &self.patient_name, 64 * 5)?;
        if let Some(d) = self.patient_birth_date.as_deref().filter(|d| !d.is_empty()) {
            DicomDate::date(d).map_err(|_| {
                RestError::bad_request("invalid_order", "patient_birth_date must be YYYYMMDD")
            })?;
        }
        if let Some(s) = &self.patient_sex {
            if !["", "M", "F", "O"].contains(&s.as_str()) {
                return Err(RestError::bad_request(
                    "invalid_order",
                    "patient_sex must be M, F or O",
                ));
            }
        }
        Ok(Order {
            order_id,
            accession_number: self.accession_number,
            patient_id: self.patient_id,
            patient_name: self.patient_name,
            patient_birth_date: self.patient_birth_date,
            patient_sex: self.patient_sex,
        })
    }
}

/// `PUT /api/v1/radiology/orders/{id}`
pub async fn put_order(
    State(ctx): State<Arc<Context>>,
    Path(id): Path<String>,
    body: Result<Json<OrderBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, RestError> {
    let id = order_id(&id)?;
    let Json(body) = body.map_err(|e| RestError::bad_request("invalid_json", e.body_text()))?;
    let order = body.into_order(id)?;
    let created = ctx.index().put_order(&order).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(order)).into_response())
}

/// `GET /api/v1/radiology/orders/{id}/studies/`
pub async fn order_studies(
    State(ctx): State<Arc<Context>>,
    Path(id): Path<String>,
) -> Result<Response, RestError> {
    let id = order_id(&id)?;
    let order = ctx
        .index()
        .order(&id)
        .await?
        .ok_or_else(|| RestError::not_found(format!("no order {id}")))?;
    let studies = ctx.index().order_studies(&order).await?;
    Ok(Json(json!({ "order": order, "studies": studies })).into_response())
}
