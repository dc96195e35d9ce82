//! Radiology orders: registered by the hospital system (here, or over HL7 v2 through
//! `crate::hl7`), listed, and linked to the studies taken for them — uploaded for them
//! (offline upload metadata), stored with their Study Instance UID (from the worklist) or
//! with their accession number (C-STORE, STOW-RS) — with their performed steps (MPPS).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::error::RestError;
use crate::context::Context;
use crate::index::orders::{Order, OrderFilter, Step};
use crate::model::{DicomDate, OrderId, OrderStatus, Uid};

/// One scheduled procedure step of a `PUT` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepBody {
    id: Option<String>,
    modality: Option<String>,
    station_ae: Option<String>,
    start: Option<String>,
    description: Option<String>,
}

/// The body of `PUT /orders/{id}`, parsed into an [`Order`].
#[derive(Debug, Deserialize)]
pub struct OrderBody {
    accession_number: Option<String>,
    patient_id: Option<String>,
    issuer_of_patient_id: Option<String>,
    patient_name: Option<String>,
    patient_birth_date: Option<String>,
    patient_sex: Option<String>,
    requested_procedure_id: Option<String>,
    requested_procedure_description: Option<String>,
    referring_physician: Option<String>,
    study_instance_uid: Option<String>,
    status: Option<String>,
    #[serde(default)]
    scheduled_procedure_steps: Vec<StepBody>,
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

fn bad(message: impl Into<String>) -> RestError {
    RestError::bad_request("invalid_order", message)
}

/// Empty strings are absent values.
fn given(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

impl OrderBody {
    /// The order, and whether it sets the status.
    fn into_order(self, order_id: OrderId) -> Result<(Order, bool), RestError> {
        let status =
            match given(self.status) {
                Some(s) => Some(OrderStatus::parse(&s).ok_or_else(|| {
                    bad("status: scheduled, in_progress, completed or discontinued")
                })?),
                None => None,
            };
        let study_instance_uid = match given(self.study_instance_uid) {
            Some(u) => {
                Some(Uid::parse(&u).map_err(|e| bad(format!("study_instance_uid: {u:?}: {e}")))?)
            }
            None => None,
        };
        let steps = self
            .scheduled_procedure_steps
            .into_iter()
            .map(|s| Step {
                id: given(s.id).unwrap_or_default(),
                modality: given(s.modality),
                station_ae: given(s.station_ae),
                start: given(s.start),
                description: given(s.description),
            })
            .collect();
        let order = Order {
            order_id,
            accession_number: given(self.accession_number),
            patient_id: given(self.patient_id),
            issuer_of_patient_id: given(self.issuer_of_patient_id),
            patient_name: given(self.patient_name),
            patient_birth_date: given(self.patient_birth_date),
            patient_sex: given(self.patient_sex),
            requested_procedure_id: given(self.requested_procedure_id),
            requested_procedure_description: given(self.requested_procedure_description),
            referring_physician: given(self.referring_physician),
            study_instance_uid,
            status: status.unwrap_or(OrderStatus::Scheduled),
            scheduled_procedure_steps: steps,
        };
        crate::worklist::check(&order).map_err(|e| bad(e.to_string()))?;
        Ok((order, status.is_some()))
    }
}

/// `PUT /api/v1/radiology/orders/{id}`: create the order or replace its details. The
/// status and the Study Instance UID are kept when not given.
pub async fn put_order(
    State(ctx): State<Arc<Context>>,
    Path(id): Path<String>,
    body: Result<Json<OrderBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, RestError> {
    let id = order_id(&id)?;
    let Json(body) = body.map_err(|e| RestError::bad_request("invalid_json", e.body_text()))?;
    let (order, status_given) = body.into_order(id)?;
    let (created, order) = crate::worklist::put(ctx.index(), order, status_given).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(order)).into_response())
}

/// The order a path names, or the 400 / 404 that says why not.
async fn find_order(ctx: &Context, raw: &str) -> Result<Order, RestError> {
    let id = order_id(raw)?;
    ctx.index()
        .order(&id)
        .await?
        .ok_or_else(|| RestError::not_found(format!("no order {id}")))
}

/// `GET /api/v1/radiology/orders/{id}`
pub async fn get_order(
    State(ctx): State<Arc<Context>>,
    Path(id): Path<String>,
) -> Result<Response, RestError> {
    let order = find_order(&ctx, &id).await?;
    Ok(Json(order).into_response())
}

/// The query of `GET /orders`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    date: Option<String>,
    modality: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
}

/// `GET /api/v1/radiology/orders?status=&date=&modality=&limit=&offset=`: most recently
/// changed first; `date` (YYYY-MM-DD or YYYYMMDD) and `modality` select orders with a
/// step that day or on that modality.
pub async fn list_orders(
    State(ctx): State<Arc<Context>>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, RestError> {
    let Query(q) = query.map_err(|e| RestError::bad_request("invalid_query", e.body_text()))?;
    let status = match given(q.status) {
        Some(s) => Some(OrderStatus::parse(&s).ok_or_else(|| {
            RestError::bad_request(
                "invalid_query",
                "status must be scheduled, in_progress, completed or discontinued",
            )
        })?),
        None => None,
    };
    let date = match given(q.date) {
        Some(d) => Some(
            DicomDate::date(&d.replace('-', ""))
                .map_err(|_| RestError::bad_request("invalid_query", "date must be YYYY-MM-DD"))?
                .as_str()
                .to_owned(),
        ),
        None => None,
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let filter = OrderFilter {
        status,
        date,
        modality: given(q.modality).map(|m| m.to_ascii_uppercase()),
        limit,
        offset: q.offset.unwrap_or(0),
    };
    let orders = ctx.index().orders(&filter).await?;
    Ok(Json(json!({ "orders": orders, "limit": limit, "offset": filter.offset })).into_response())
}

/// `GET /api/v1/radiology/orders/{id}/studies/`
pub async fn order_studies(
    State(ctx): State<Arc<Context>>,
    Path(id): Path<String>,
) -> Result<Response, RestError> {
    let order = find_order(&ctx, &id).await?;
    let studies = ctx.index().order_studies(&order).await?;
    let performed = ctx.index().order_mpps(&order.order_id).await?;
    Ok(Json(json!({
        "order": order,
        "studies": studies,
        "performed_procedure_steps": performed,
    }))
    .into_response())
}
