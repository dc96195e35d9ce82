//! Assembly: build the object store, the index, the ingest path and the [`Context`] from a
//! [`Config`]; bind the listeners (port 0 allowed) and expose their addresses; run the HTTP
//! and DIMSE servers and the background work until the shutdown future resolves; then stop
//! accepting, give work in progress its deadline, and close the index last.
//!
//! Only assembly lives here: what is served is `http/` and `dimse/`, what is stored is
//! `ingest/`.

use std::future::Future;
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
use crate::tls::{self, ServerTls};

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
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("configuration: {0}")]
    Config(String),
    #[error("start-up recovery: {0}")]
    Recovery(#[from] crate::verify::VerifyError),
    #[error("start-up recovery of compression jobs: {0}")]
    CompressRecovery(String),
}

/// The back ends every command needs: the object store, the index and ingest over them.
pub async fn open_backends(config: &Config) -> Result<Ingest, AppError> {
    let store = Store::open(config).await?;
    let relaxed = store.is_local() && config.index.sqlite_synchronous == SqliteSync::Normal;
    let index =
        Index::open_with(&config.index_url(), config.index.max_connections, relaxed).await?;
    config.forward.check().map_err(AppError::Config)?;
    config.compression.target().map_err(AppError::Config)?;
    let routes = crate::ingest::Routes::new(config.forward.rules.clone());
    Ok(Ingest::new(
        store,
        index,
        config.ingest.on_conflict,
        config.ingest.max_instance_bytes,
    )
    .with_routes(routes))
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
    http_tls: Option<ServerTls>,
    dimse: Option<TcpListener>,
    dimse_tls: Option<(TcpListener, ServerTls)>,
    hl7: Option<TcpListener>,
}

impl App {
    pub async fn build(config: Config) -> Result<App, AppError> {
        let addr = config.http.listen;
        let auth = crate::auth::Auth::from_config(&config.auth).await?;
        if !addr.ip().is_loopback() && !auth.is_enabled() {
            return Err(AppError::RemoteWithoutAuth(addr));
        }
        let http_tls = match &config.http.tls {
            Some(files) => Some(tls::server("http", files, crate::http::ALPN)?),
            None => None,
        };
        let dimse_tls_files = config.dimse.tls.as_ref().filter(|_| config.dimse.enabled);
        let dimse_tls = match dimse_tls_files {
            Some(t) => Some((t.listen, tls::server("dimse", &t.files(), &[])?)),
            None => None,
        };
        for dest in config.dimse.destinations.iter().filter(|d| d.tls) {
            tls::client(dest)?;
        }
        let ingest = open_backends(&config).await?;
        let http = bind(addr).await?;
        let dimse = match (config.dimse.enabled, config.dimse.listen) {
            (true, Some(listen)) => Some(bind(listen).await?),
            _ => None,
        };
        let dimse_tls = match dimse_tls {
            Some((listen, tls)) => Some((bind(listen).await?, tls)),
            None => None,
        };
        let hl7 = match config.hl7.listen {
            Some(listen) => Some(bind(listen).await?),
            None => None,
        };
        // Bound first: a second process on a live data directory fails here instead of
        // re-indexing the live one's objects in flight.
        recover(&ingest).await?;
        // What a compression job cut short by a crash left behind.
        let leftovers = crate::compress::recover(&ingest, crate::model::clock::now_millis())
            .await
            .map_err(AppError::CompressRecovery)?;
        if leftovers > 0 {
            tracing::warn!(
                leftovers,
                "start-up recovery finished interrupted compression jobs"
            );
        }
        let app = App {
            ctx: Arc::new(Context::new(config, ingest, auth)),
            http,
            http_tls,
            dimse,
            dimse_tls,
            hl7,
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

    /// `https` when the HTTP listener speaks TLS, else `http`.
    pub fn http_scheme(&self) -> &'static str {
        match self.http_tls {
            Some(_) => "https",
            None => "http",
        }
    }

    /// The plain DIMSE listener's address, when there is one.
    pub fn dimse_addr(&self) -> Option<SocketAddr> {
        self.dimse.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The DICOM TLS listener's address, when there is one.
    pub fn dimse_tls_addr(&self) -> Option<SocketAddr> {
        self.dimse_tls
            .as_ref()
            .and_then(|(l, _)| l.local_addr().ok())
    }

    /// The HL7 (MLLP) listener's address, when there is one.
    pub fn hl7_addr(&self) -> Option<SocketAddr> {
        self.hl7.as_ref().and_then(|l| l.local_addr().ok())
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
        for keys in [
            &self.http_tls,
            &self.dimse_tls.as_ref().map(|(_, t)| t.clone()),
        ]
        .into_iter()
        .flatten()
        {
            tokio::spawn(keys.keys.clone().watch(cancel.clone()));
        }
        let listeners = crate::dimse::Listeners {
            plain: self.dimse,
            tls: self.dimse_tls.map(|(l, t)| (l, t.config)),
        };
        let dimse = (listeners.plain.is_some() || listeners.tls.is_some()).then(|| {
            let (ctx, stop) = (self.ctx.clone(), cancel.clone().cancelled_owned());
            tokio::spawn(async move { crate::dimse::serve(listeners, ctx, stop).await })
        });
        if let Some(listener) = self.hl7 {
            tokio::spawn(crate::hl7::serve(
                listener,
                self.ctx.clone(),
                cancel.clone(),
            ));
        }
        tokio::spawn(sweep_uploads(self.ctx.clone(), cancel.clone()));
        if self.ctx.config.compression.syntax.is_some() {
            let (ingest, config) = (self.ctx.ingest.clone(), self.ctx.config.compression.clone());
            tokio::spawn(crate::compress::run(ingest, config, cancel.clone()));
        }
        crate::forward::spawn(&self.ctx, &cancel);
        if self.ctx.config.retention.is_on() {
            let (ingest, config) = (self.ctx.ingest.clone(), self.ctx.config.retention.clone());
            tokio::spawn(crate::retention::run(ingest, config, cancel.clone()));
        }
        let tls = self.http_tls.map(|t| t.config);
        let served = crate::http::serve(self.http, tls, self.ctx.clone(), cancel)
            .await
            .map_err(AppError::Serve);
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
