//! The HTTP face of the server: the router that puts every adapter's routes together,
//! the middleware around them (authentication and authorization, metrics, CORS, tracing),
//! the health and readiness checks, and `/metrics`; serving it over TCP (where cached
//! objects go out with `sendfile`, `zerocopy.rs`) or TLS.
//!
//! Above the adapters: it imports their `router()`s and nothing imports it but `app.rs`
//! (and the fuzz targets, through `App::router`).

mod auth;
mod metrics;
mod policy;
mod serve;
mod zerocopy;

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;

pub use auth::COOKIE;
pub use serve::{serve, ALPN};

use crate::context::Context;

/// Every route of the server, with its middleware.
pub fn router(ctx: Arc<Context>) -> Router {
    let dicomweb = crate::dicomweb::router().merge(crate::admin::dicomweb_router());
    let api = crate::radiology::router().merge(crate::uploads::router());
    Router::new()
        .nest("/dicom-web", dicomweb)
        .nest("/api/v1/radiology", api)
        .route("/api/v1/openapi.json", get(crate::radiology::openapi))
        .merge(crate::dicomweb::wado_uri::router())
        .merge(crate::admin::router())
        .merge(crate::viewer::router(&ctx.config.viewer.dir))
        .route("/metrics", get(metrics::serve))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .layer(middleware::from_fn_with_state(ctx.clone(), auth::authorize))
        .layer(middleware::from_fn(metrics::track))
        .layer(cors(&ctx.config.http.cors_origins))
        .layer(TraceLayer::new_for_http())
        .layer(middleware::map_request(host_from_authority))
        .with_state(ctx)
}

/// HTTP/2 carries the host in the `:authority` pseudo-header, which hyper puts in the URI,
/// not in `Host`: copy it there, so absolute URLs (RetrieveURL, BulkDataURI, signed URLs)
/// come out the same over either version.
async fn host_from_authority(mut request: axum::extract::Request) -> axum::extract::Request {
    use axum::http::{header::HOST, HeaderValue};
    if !request.headers().contains_key(HOST) {
        let authority = request.uri().authority().map(|a| a.as_str().to_owned());
        if let Some(value) = authority.and_then(|a| HeaderValue::from_str(&a).ok()) {
            request.headers_mut().insert(HOST, value);
        }
    }
    request
}

/// CORS for browser clients on other origins: preflight answered, Authorization allowed.
fn cors(origins: &[String]) -> CorsLayer {
    use axum::http::{header, HeaderValue, Method};
    let layer = CorsLayer::new()
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            header::IF_NONE_MATCH,
        ])
        .expose_headers([header::WARNING, header::ETAG, header::CONTENT_LOCATION]);
    if origins.iter().any(|o| o == "*") {
        layer.allow_origin(AllowOrigin::any())
    } else {
        let list: Vec<HeaderValue> = origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        layer.allow_origin(AllowOrigin::list(list))
    }
}

/// `GET /readyz`: the index and the object store answer.
async fn ready(State(ctx): State<Arc<Context>>) -> Response {
    let index = ctx.index().check().await;
    let store = ctx.store().check().await;
    match (index, store) {
        (Ok(()), Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        (i, s) => {
            tracing::warn!(index = ?i.err(), store = ?s.err(), "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "index or object store unreachable\n",
            )
                .into_response()
        }
    }
}
