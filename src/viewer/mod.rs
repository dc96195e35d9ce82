//! Serving the OHIF viewer same-origin: the application under `/viewer`, its generated
//! configuration at `/app-config.js` (from `ohif-config/app-config.js`), and its static
//! files at the site root wherever no API route matches (the prebuilt viewer loads its
//! scripts from `/`).
//!
//! Owns no DICOM logic; the viewer talks to `/dicom-web` like any other client.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tower_http::services::ServeDir;

use crate::context::Context;

const TEMPLATE: &str = include_str!("../../ohif-config/app-config.js");

/// The viewer's routes and the static fallback.
pub fn router(dir: &Path) -> Router<Arc<Context>> {
    Router::new()
        .route("/viewer", get(index))
        .route("/viewer/", get(index))
        .route("/viewer/{*rest}", get(index))
        .route("/app-config.js", get(app_config))
        .fallback_service(ServeDir::new(dir))
}

/// The configuration with its placeholders filled in.
pub fn app_config_js(name: &str) -> String {
    TEMPLATE
        .replace("{{ROUTER_BASENAME}}", "/viewer")
        .replace("{{DICOMWEB_PATH}}", "/dicom-web")
        .replace("{{NAME}}", &name.replace(['\'', '\\', '\n'], " "))
}

async fn app_config(State(app): State<Arc<Context>>) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        app_config_js(&app.config.viewer.name),
    )
        .into_response()
}

async fn index(State(app): State<Arc<Context>>) -> Response {
    let path: PathBuf = app.config.viewer.dir.join("index.html");
    match tokio::fs::read(&path).await {
        Ok(html) => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")],
            html,
        )
            .into_response(),
        Err(_) => (
            StatusCode::NOT_FOUND,
            format!(
                "the OHIF viewer is not installed in {}; run scripts/fetch-ohif.sh (or set viewer.dir)\n",
                app.config.viewer.dir.display()
            ),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn config_is_filled_in() {
        let js = super::app_config_js("Clinic's PACS");
        for placeholder in ["{{ROUTER_BASENAME}}", "{{DICOMWEB_PATH}}", "{{NAME}}"] {
            assert!(!js.contains(placeholder), "{placeholder}");
        }
        assert!(js.contains("routerBasename: '/viewer'"));
        assert!(js.contains("window.location.origin + '/dicom-web'"));
        assert!(js.contains("friendlyName: 'Clinic s PACS'"));
    }
}
