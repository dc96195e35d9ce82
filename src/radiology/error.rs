//! Errors of the radiology REST API: an HTTP status, a stable machine-readable code, a
//! message, and optional details (JSON).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

#[derive(Debug)]
pub struct RestError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl RestError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        RestError {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn with(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        RestError::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        RestError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        RestError::new(StatusCode::FORBIDDEN, "out_of_scope", message)
    }

    pub fn internal(message: impl std::fmt::Display) -> Self {
        tracing::error!(error = %message, "internal error in the REST API");
        RestError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error; see the server log",
        )
    }
}

impl From<crate::index::IndexError> for RestError {
    fn from(e: crate::index::IndexError) -> Self {
        RestError::internal(e)
    }
}

impl From<sqlx::Error> for RestError {
    fn from(e: sqlx::Error) -> Self {
        RestError::internal(e)
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.code, "message": self.message });
        if let (Some(Value::Object(extra)), Value::Object(map)) = (self.details, &mut body) {
            for (k, v) in extra {
                map.insert(k, v);
            }
        }
        (self.status, Json(body)).into_response()
    }
}

impl From<crate::storage::StorageError> for RestError {
    fn from(e: crate::storage::StorageError) -> Self {
        RestError::internal(e)
    }
}
