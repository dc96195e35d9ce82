//! What carries an association: plain TCP or TLS (PS3.15 Annex B). dicom-ul negotiates
//! the association on either; the connection then becomes a [`link`] reader and writer
//! that work independently of each other.
//!
//! A TCP socket is duplicated and split. A TLS stream cannot be duplicated (one TLS session,
//! one state machine), and dicom-ul keeps it inside the association it returns: both halves
//! then share that association behind a lock taken for the length of one poll, as
//! `tokio::io::split` does with a stream it owns — no task and no copy in between.

use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use dicom_ul::association::client::{self, AsyncClientAssociation};
use dicom_ul::association::server::{self, AsyncServerAssociation};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::link::{self, Reader, Writer};

/// An established association that can become a link.
pub(super) trait Connection: Send + 'static {
    fn into_link(self, peer_max_pdu: u32) -> std::io::Result<(Reader, Arc<Writer>)>;
}

impl Connection for AsyncServerAssociation<TcpStream> {
    fn into_link(mut self, peer_max_pdu: u32) -> std::io::Result<(Reader, Arc<Writer>)> {
        link::split(self.inner_stream(), peer_max_pdu)
    }
}

impl Connection for AsyncClientAssociation<TcpStream> {
    fn into_link(mut self, peer_max_pdu: u32) -> std::io::Result<(Reader, Arc<Writer>)> {
        let _ = self.inner_stream().set_nodelay(true);
        link::split(self.inner_stream(), peer_max_pdu)
    }
}

impl Connection for AsyncServerAssociation<server::AsyncTlsStream> {
    fn into_link(mut self, peer_max_pdu: u32) -> std::io::Result<(Reader, Arc<Writer>)> {
        let socket = self
            .inner_stream()
            .get_ref()
            .0
            .as_fd()
            .try_clone_to_owned()
            .ok();
        Ok(shared(self, |a| a.inner_stream(), socket, peer_max_pdu))
    }
}

impl Connection for AsyncClientAssociation<client::AsyncTlsStream> {
    fn into_link(mut self, peer_max_pdu: u32) -> std::io::Result<(Reader, Arc<Writer>)> {
        let tcp = self.inner_stream().get_ref().0;
        let _ = tcp.set_nodelay(true);
        let socket = tcp.as_fd().try_clone_to_owned().ok();
        Ok(shared(self, |a| a.inner_stream(), socket, peer_max_pdu))
    }
}

/// Reader and writer halves over the stream inside `owner`.
fn shared<O, S>(
    owner: O,
    stream: fn(&mut O) -> &mut S,
    socket: Option<OwnedFd>,
    peer_max_pdu: u32,
) -> (Reader, Arc<Writer>)
where
    O: Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let owner = Arc::new(Mutex::new(owner));
    let half = || Half {
        owner: owner.clone(),
        stream,
    };
    link::halves(Box::new(half()), Box::new(half()), socket, peer_max_pdu)
}

/// One half of a shared stream: reads or writes, each under the lock for one poll.
struct Half<O, S> {
    owner: Arc<Mutex<O>>,
    stream: fn(&mut O) -> &mut S,
}

impl<O, S: Unpin> Half<O, S> {
    fn with<R>(&self, f: impl FnOnce(Pin<&mut S>) -> R) -> R {
        let mut owner = self
            .owner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(Pin::new((self.stream)(&mut owner)))
    }
}

impl<O, S: AsyncRead + Unpin> AsyncRead for Half<O, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.with(|s| s.poll_read(cx, buf))
    }
}

impl<O, S: AsyncWrite + Unpin> AsyncWrite for Half<O, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.with(|s| s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.with(|s| s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.with(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.with(|s| s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.with(|s| s.poll_shutdown(cx))
    }
}
