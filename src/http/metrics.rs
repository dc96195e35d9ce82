//! HTTP metrics: every request timed by service (a bounded label: QIDO-RS, WADO-RS,
//! STOW-RS, WADO-URI, the upload API, the REST API, operations, the viewer), and `/metrics`
//! served.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::context::Context;

/// Which service a request is for (a bounded label).
pub fn service(method: &axum::http::Method, path: &str) -> &'static str {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["dicom-web", ..] if method == axum::http::Method::POST => "stow",
        ["dicom-web", .., last] if matches!(*last, "studies" | "series" | "instances") => "qido",
        ["dicom-web", ..] => "wado",
        ["wado"] => "wado_uri",
        ["api", "v1", "radiology", "offline-images", ..] => "upload",
        ["api", ..] => "api",
        ["metrics"] | ["healthz"] | ["readyz"] => "ops",
        _ => "viewer",
    }
}

/// Middleware: time every request.
pub async fn track(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let service = service(&method, req.uri().path());
    let started = Instant::now();
    let rsp = next.run(req).await;
    let status = match rsp.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    crate::metrics::get()
        .http_seconds
        .with_label_values(&[service, method.as_str(), status])
        .observe(started.elapsed().as_secs_f64());
    rsp
}

/// `GET /metrics`
pub async fn serve(State(ctx): State<Arc<Context>>) -> Response {
    let m = ctx.metrics();
    match ctx.index().pending_uploads().await {
        Ok(n) => m.uploads_pending.set(n),
        Err(e) => tracing::warn!(error = %e, "cannot count pending uploads"),
    }
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        m.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    #[test]
    fn services() {
        assert_eq!(service(&Method::GET, "/dicom-web/studies"), "qido");
        assert_eq!(
            service(&Method::GET, "/dicom-web/studies/1.2/series"),
            "qido"
        );
        assert_eq!(
            service(&Method::GET, "/dicom-web/studies/1.2/metadata"),
            "wado"
        );
        assert_eq!(service(&Method::POST, "/dicom-web/studies"), "stow");
        assert_eq!(
            service(
                &Method::POST,
                "/api/v1/radiology/offline-images/upload-binary/"
            ),
            "upload"
        );
        assert_eq!(service(&Method::GET, "/viewer"), "viewer");
        assert_eq!(service(&Method::GET, "/wado"), "wado_uri");
    }
}
