//! Serving the router: on plain TCP, or over TLS (HTTPS, with HTTP/2 and HTTP/1.1 offered
//! by ALPN); graceful shutdown with a deadline. Plain connections send cached objects
//! without copying them ([`super::zerocopy`]).
//!
//! TLS handshakes run in tasks of their own, not in the accept loop, so a slow or hostile
//! client holds up nobody else; a handshake gets [`HANDSHAKE_TIMEOUT`], and one that fails
//! is logged with the peer's address and counted by reason.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::{Listener, ListenerExt};
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::zerocopy::{PlainListener, SendsFiles};
use crate::context::Context;

/// How long a client has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; connections beyond are closed at once.
const MAX_HANDSHAKES: usize = 256;

/// ALPN protocols offered by the HTTPS listener, preferred first.
pub const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Serve HTTP (or HTTPS with `tls`) until `cancel`; then requests in progress get
/// `http.shutdown_grace_secs` to finish before their connections are closed.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    ctx: Arc<Context>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let grace = Duration::from_secs(ctx.config.http.shutdown_grace_secs);
    let router = super::router(ctx);
    let stop = cancel.clone().cancelled_owned();
    let server: BoxFuture<'static, std::io::Result<()>> = match tls {
        None => {
            // Plain connections send cached objects from their files (`zerocopy`).
            let service = router
                .layer(axum::Extension(SendsFiles))
                .into_make_service_with_connect_info::<SocketAddr>();
            // (`tap_io` for the connection's address, as TlsListener's.)
            let listener = PlainListener(listener).tap_io(|_| {});
            axum::serve(listener, service)
                .with_graceful_shutdown(stop)
                .into_future()
                .boxed()
        }
        Some(config) => {
            let listener = TlsListener::spawn(listener, config)?.tap_io(|_| {});
            let service = router.into_make_service_with_connect_info::<SocketAddr>();
            axum::serve(listener, service)
                .with_graceful_shutdown(stop)
                .into_future()
                .boxed()
        }
    };
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
    finished.map_err(std::io::Error::other)?
}

/// Connections that have completed their TLS handshake.
struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    fn spawn(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let accepting = tokio::spawn(accept_loop(tcp, TlsAcceptor::from(config), tx));
        Ok(TlsListener {
            ready,
            local,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Accept TCP connections and hand each to a handshake task.
async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (socket, peer) = match tcp.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                // Out of descriptors, say: wait a little rather than spin.
                tracing::warn!(error = %e, "accepting an HTTPS connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            count("busy");
            tracing::warn!(%peer, "too many TLS handshakes in progress; connection closed");
            continue;
        };
        let _ = socket.set_nodelay(true);
        let (acceptor, ready) = (acceptor.clone(), ready.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                Ok(Ok(stream)) => {
                    drop(permit);
                    let _ = ready.send((stream, peer)).await;
                }
                Ok(Err(e)) => {
                    let reason = crate::tls::refusal(&e);
                    count(reason);
                    tracing::info!(%peer, reason, error = %e, "TLS handshake refused");
                }
                Err(_) => {
                    count("timeout");
                    tracing::info!(%peer, "TLS handshake not completed in time");
                }
            }
        });
    }
}

fn count(reason: &str) {
    crate::metrics::get()
        .tls_handshakes_refused
        .with_label_values(&["http", reason])
        .inc();
}
