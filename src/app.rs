//! Assembly: build the object store, the index, the ingest path and the [`Context`] from a
//! [`Config`]; bind the listeners (port 0 allowed) and expose their addresses; run the HTTP
//! and DIMSE servers and the background work until the shutdown future resolves; then stop
//! accepting, give work in progress its deadline, and close the index last.
//!
//! Only assembly lives here: what is served is `http/` and `dimse/`, what is stored is
//! `ingest/`.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, SqliteSync};
use crate::context::Context;
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

/// The back ends every command needs: the object store, the index and ingest over them.
pub async fn open_backends(config: &Config) -> Result<Ingest, AppError> {
    let store = Store::open(config).await?;
    let relaxed = store.is_local() && config.index.sqlite_synchronous == SqliteSync::Normal;
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
    if !ingest.store().is_local() || ingest.index().backend() != Backend::Sqlite {
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

/// A server ready to run: its context and bound listeners.
pub struct App {
    ctx: Arc<Context>,
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
        let http = bind(addr).await?;
        let dimse = match config.dimse.enabled {
            true => Some(bind(config.dimse.listen).await?),
            false => None,
        };
        // Bound first: a second process on a live data directory fails here instead of
        // re-indexing the live one's objects in flight.
        recover(&ingest).await?;
        let app = App {
            ctx: Arc::new(Context::new(config, ingest, auth)),
            http,
            dimse,
        };
        app.announce();
        Ok(app)
    }

    fn announce(&self) {
        let (index, store) = (self.ctx.index().backend(), self.ctx.store().describe());
        let http = self.http_addr();
        if self.ctx.auth.is_enabled() {
            tracing::info!(%http, ?index, store, "pacs-lite ready; every request authenticates");
        } else {
            tracing::info!(
                %http,
                ?index,
                store,
                "pacs-lite ready; no credentials are configured, so only loopback clients are served"
            );
        }
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The HTTP service, for callers in the same process (the fuzz targets); `run` serves
    /// the same router on the listener.
    pub fn router(&self) -> Router {
        crate::http::router(self.ctx.clone())
    }

    /// The AE title the DIMSE listener answers to.
    pub fn ae_title(&self) -> &str {
        self.ctx.config.dimse.ae_title.as_str()
    }

    /// The DIMSE listener's address, when DIMSE is enabled.
    pub fn dimse_addr(&self) -> Option<SocketAddr> {
        self.dimse.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serve until `shutdown` resolves; then stop accepting everywhere, let work in progress
    /// finish within its deadline, and close the index.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let cancel = CancellationToken::new();
        tokio::spawn({
            let cancel = cancel.clone();
            async move {
                shutdown.await;
                cancel.cancel();
            }
        });
        let dimse = self.dimse.map(|listener| {
            let (ctx, stop) = (self.ctx.clone(), cancel.clone().cancelled_owned());
            tokio::spawn(async move { crate::dimse::serve(listener, ctx, stop).await })
        });
        tokio::spawn(sweep_uploads(self.ctx.clone(), cancel.clone()));
        let served = serve_http(self.http, self.ctx.clone(), cancel).await;
        if let Some(task) = dimse {
            let _ = task.await;
        }
        tracing::info!("HTTP and DIMSE servers stopped; closing the index");
        self.ctx.index().close().await;
        served
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { addr, source })
}

/// Serve HTTP until `cancel`; then requests in progress get `http.shutdown_grace_secs` to
/// finish before their connections are closed.
async fn serve_http(
    listener: TcpListener,
    ctx: Arc<Context>,
    cancel: CancellationToken,
) -> Result<(), AppError> {
    use axum::serve::ListenerExt;
    let grace = Duration::from_secs(ctx.config.http.shutdown_grace_secs);
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let service = crate::http::router(ctx).into_make_service_with_connect_info::<SocketAddr>();
    let server = axum::serve(listener, service)
        .with_graceful_shutdown(cancel.clone().cancelled_owned())
        .into_future();
    let mut server = tokio::spawn(server);
    let finished = tokio::select! {
        done = &mut server => done,
        _ = cancel.cancelled() => match tokio::time::timeout(grace, &mut server).await {
            Ok(done) => done,
            Err(_) => {
                tracing::warn!(?grace, "HTTP requests still running after the grace period; closing them");
                server.abort();
                return Ok(());
            }
        },
    };
    match finished {
        Ok(served) => served.map_err(AppError::Serve),
        Err(e) => Err(AppError::Serve(std::io::Error::other(e))),
    }
}

/// Expired offline uploads are removed by every process (the deletes are idempotent).
async fn sweep_uploads(ctx: Arc<Context>, cancel: CancellationToken) {
    let every = Duration::from_secs(ctx.config.uploads.sweep_interval_secs.max(1));
    loop {
        crate::uploads::sweep(&ctx).await;
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
