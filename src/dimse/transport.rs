//! What carries an association: plain TCP or TLS (PS3.15 Annex B). dicom-ul negotiates
//! the association on either; the connection then becomes a [`link`] reader and writer
//! that work independently of each other.
//!
//! A TCP socket is duplicated and split. A TLS stream cannot be (one TLS session, one
//! state machine), and dicom-ul keeps it inside the association it returns: a pump task
//! owns that association and relays between its stream and an in-memory pipe whose two
//! halves the link uses. Once our side has closed, the pump waits at most [`LINGER`] for
//! the peer's side to end before it drops the connection.

use std::sync::Arc;
use std::time::Duration;

use dicom_ul::association::client::{self, AsyncClientAssociation};
use dicom_ul::association::server::{self, AsyncServerAssociation};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::link::{self, Reader, Writer};

/// How long a TLS connection stays up after our side of it has closed.
const LINGER: Duration = Duration::from_secs(10);
/// The in-memory pipe between a TLS stream and the link.
const PIPE_BYTES: usize = 256 * 1024;

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
    fn into_link(self, peer_max_pdu: u32) -> std::io::Result<(Reader, Arc<Writer>)> {
        Ok(pump(self, |a| a.inner_stream(), peer_max_pdu))
    }
}

impl Connection for AsyncClientAssociation<client::AsyncTlsStream> {
    fn into_link(mut self, peer_max_pdu: u32) -> std::io::Result<(Reader, Arc<Writer>)> {
        let _ = self.inner_stream().get_ref().0.set_nodelay(true);
        Ok(pump(self, |a| a.inner_stream(), peer_max_pdu))
    }
}

/// Relay between the stream inside `owner` and a pipe; the link gets the pipe's halves.
fn pump<O, S>(
    mut owner: O,
    stream: fn(&mut O) -> &mut S,
    peer_max_pdu: u32,
) -> (Reader, Arc<Writer>)
where
    O: Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (near, far) = tokio::io::duplex(PIPE_BYTES);
    tokio::spawn(async move {
        let (mut net_rd, mut net_wr) = tokio::io::split(stream(&mut owner));
        let (mut pipe_rd, mut pipe_wr) = tokio::io::split(far);
        let outgoing = async {
            let _ = tokio::io::copy(&mut pipe_rd, &mut net_wr).await;
            let _ = net_wr.shutdown().await;
        };
        let incoming = async {
            let _ = tokio::io::copy(&mut net_rd, &mut pipe_wr).await;
            let _ = pipe_wr.shutdown().await;
        };
        tokio::pin!(incoming);
        tokio::select! {
            _ = &mut incoming => {}
            _ = outgoing => {
                let _ = tokio::time::timeout(LINGER, incoming).await;
            }
        }
    });
    let (rd, wr) = tokio::io::split(near);
    link::halves(Box::new(rd), Box::new(wr), peer_max_pdu)
}
