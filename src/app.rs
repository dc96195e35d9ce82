//! Wiring and lifecycle: build the object store, the index and the ingest pipeline from a
//! [`Config`], bind the HTTP listener (port 0 allowed), serve until the shutdown future
//! resolves, then drain and close the index last.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;

use crate::config::Config;
use crate::index::{Backend, Index, IndexError};
use crate::ingest::Ingest;
use crate::storage::{StorageError, Store};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "refusing to listen on {0}: authentication is not configured, so pacs-lite serves loopback \
         clients only; listen on 127.0.0.1 or ::1"
    )]
    RemoteWithoutAuth(SocketAddr),
    #[error(transparent)]
    Auth(#[from] crate::auth::ConfigError),
    #[error("HTTP server: {0}")]
    Serve(std::io::Error),
    #[error("start-up recovery: {0}")]
    Recovery(#[from] crate::verify::VerifyError),
}

/// Shared state of the HTTP handlers.
pub struct AppState {
    pub config: Config,
    pub ingest: Ingest,
    pub auth: crate::auth::Auth,
}

/// The back ends every command needs: the object store, the index and ingest over them.
pub async fn open_backends(config: &Config) -> Result<Ingest, AppError> {
    let store = Store::open(config).await?;
    let relaxed = store.fs_root().is_some()
        && config.index.sqlite_synchronous == crate::config::SqliteSync::Normal;
    let index =
        Index::open_with(&config.index_url(), config.index.max_connections, relaxed).await?;
    Ok(Ingest::new(
        store,
        index,
        config.ingest.on_conflict,
        config.ingest.max_instance_bytes,
    ))
}

/// SQLite with a filesystem store (whichever `index.sqlite_synchronous`: an earlier run
/// may have been relaxed): re-index the objects whose rows a power failure took — before
/// the server serves, and before `verify --delete-orphans` could take them for orphans.
pub async fn recover(ingest: &Ingest) -> Result<(), AppError> {
    if ingest.store().fs_root().is_none() || ingest.index().backend() != Backend::Sqlite {
        return Ok(());
    }
    let report = crate::verify::recover_recent(ingest).await?;
    if !report.reindexed.is_empty() || !report.torn.is_empty() || !report.conflicting.is_empty() {
        tracing::warn!(
            reindexed = report.reindexed.len(),
            torn = report.torn.len(),
            conflicting = report.conflicting.len(),
            directories = report.directories,
            "start-up recovery re-indexed objects whose rows were lost"
        );
    }
    Ok(())
}

pub struct App {
    state: Arc<AppState>,
    http: TcpListener,
    dimse: Option<TcpListener>,
}

impl App {
    pub async fn build(config: Config) -> Result<App, AppError> {
        let addr = config.http.listen;
        let auth = crate::auth::Auth::from_config(&config.auth).await?;
        if !addr.ip().is_loopback() && !auth.is_enabled() {
            return Err(AppError::RemoteWithoutAuth(addr));
        }
        let ingest = open_backends(&config).await?;
        let http = TcpListener::bind(addr)
            .await
            .map_err(|source| AppError::Bind { addr, source })?;
        let dimse = match config.dimse.enabled {
            true => {
                let addr = config.dimse.listen;
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| AppError::Bind { addr, source })?,
                )
            }
            false => None,
        };
        // Bound first: a second process on a live data directory fails here instead of
        // re-indexing the live one's objects in flight.
        recover(&ingest).await?;
        if auth.is_enabled() {
            tracing::info!(
                http = %http.local_addr().map_err(AppError::Serve)?,
                index = ?ingest.index().backend(),
                store = ingest.store().describe(),
                "pacs-lite ready; every request authenticates"
            );
        } else {
            tracing::info!(
                http = %http.local_addr().map_err(AppError::Serve)?,
                index = ?ingest.index().backend(),
                store = ingest.store().describe(),
                "pacs-lite ready; no credentials are configured, so only loopback clients are served"
            );
        }
        Ok(App {
            state: Arc::new(AppState {
                config,
                ingest,
                auth,
            }),
            http,
            dimse,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The HTTP service, for callers in the same process (the fuzz targets); `run` serves
    /// the same router on the listener.
    pub fn router(&self) -> Router {
        router(self.state.clone())
    }

    /// The AE title the DIMSE listener answers to.
    pub fn ae_title(&self) -> &str {
        &self.state.config.dimse.ae_title
    }

    /// The DIMSE listener's address, when DIMSE is enabled.
    pub fn dimse_addr(&self) -> Option<SocketAddr> {
        self.dimse.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        use axum::serve::ListenerExt;
        // One cancellation for every listener: stop accepting, let in-flight work finish.
        let cancel = tokio_util::sync::CancellationToken::new();
        tokio::spawn({
            let cancel = cancel.clone();
            async move {
                shutdown.await;
                cancel.cancel();
            }
        });
        let dimse = self.dimse.map(|listener| {
            let (ingest, config, cancel) = (
                self.state.ingest.clone(),
                self.state.config.dimse.clone(),
                cancel.clone(),
            );
            tokio::spawn(async move {
                crate::dimse::serve(listener, ingest, config, cancel.cancelled_owned()).await
            })
        });
        // Expired offline uploads are removed by every process (the deletes are idempotent).
        tokio::spawn({
            let (state, cancel) = (self.state.clone(), cancel.clone());
            async move {
                let every =
                    std::time::Duration::from_secs(state.config.uploads.sweep_interval_secs.max(1));
                loop {
                    crate::uploads::sweep(&state).await;
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(every) => {}
                    }
                }
            }
        });
        let router = router(self.state.clone());
        let listener = self.http.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let served = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(cancel.clone().cancelled_owned())
        .await;
        if let Some(task) = dimse {
            let _ = task.await;
        }
        tracing::info!("HTTP and DIMSE servers stopped; closing the index");
        self.state.ingest.index().close().await;
        served.map_err(AppError::Serve)
    }
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .nest("/dicom-web", crate::dicomweb::router())
        .nest("/api/v1/radiology", crate::radiology::router())
        .route("/api/v1/openapi.json", get(crate::radiology::openapi))
        .route("/api/v1/admin/audit", get(crate::radiology::audit))
        .route("/api/v1/admin/audit/", get(crate::radiology::audit))
        .merge(crate::viewer::router(&state.config.viewer.dir))
        .route("/metrics", get(crate::metrics::serve))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::auth::middleware::authorize,
        ))
        .layer(middleware::from_fn(crate::metrics::track))
        .layer(cors(&state.config.http.cors_origins))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
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

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let index = state.ingest.index().check().await;
    let store = state.ingest.store().check().await;
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
