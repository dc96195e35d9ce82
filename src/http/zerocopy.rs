//! Plain HTTP connections that send mapped object bytes straight from their file.
//!
//! hyper writes a response as a list of buffers (`writev`): its own (status line, headers,
//! chunk framing, multipart part headers) and the body's. Where a body buffer is an object
//! mapped from the page cache (`storage::first_mapped` knows), [`FileSending`] has the
//! kernel send it from the file (`sendfile`) instead of writing it from memory: the pages
//! are never touched by this process, and a retrieval of cached objects costs no copy on
//! the sending side. Other buffers are written as they are; those just before a mapped one
//! wait for it in the socket (`MSG_MORE`).
//!
//! Requests on these connections carry [`SendsFiles`] so that handlers know to ask for
//! mapped bytes (for HTTP/1 only: HTTP/2 frames copy their data); over TLS (which must
//! encrypt them in memory) they do not. Pages dropped from the cache after an object was
//! mapped are read by a `sendfile` that gives its worker's other tasks away first.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::serve::Listener;
use rustix::net::SendFlags;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

pub use crate::storage::SendsFiles;

/// At most this much is sent per `sendfile` call, its pages checked to be cached first.
const SEND_WINDOW: usize = 4 << 20;

/// Accepts plain TCP connections (Nagle off) as [`FileSending`] streams.
pub struct PlainListener(pub TcpListener);

impl Listener for PlainListener {
    type Io = FileSending;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((socket, peer)) => {
                    let _ = socket.set_nodelay(true);
                    let blocking_allowed = tokio::runtime::Handle::current().runtime_flavor()
                        == tokio::runtime::RuntimeFlavor::MultiThread;
                    return (
                        FileSending {
                            socket,
                            blocking_allowed,
                        },
                        peer,
                    );
                }
                // A connection that went before it was accepted: the next one.
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    // Out of descriptors, say: wait rather than spin (as axum's listener).
                    tracing::error!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// A TCP stream whose writes of mapped object bytes are `sendfile`s.
pub struct FileSending {
    socket: TcpStream,
    /// The runtime can take a worker out for a blocking call (`block_in_place`).
    blocking_allowed: bool,
}

impl FileSending {
    /// Run the non-blocking socket operation `op` once the socket is writable.
    fn poll_send(
        &self,
        cx: &mut Context<'_>,
        mut op: impl FnMut() -> rustix::io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.socket.poll_write_ready(cx))?;
            match self
                .socket
                .try_io(Interest::WRITABLE, || op().map_err(io::Error::from))
            {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }
}

impl FileSending {
    /// Send (a window of) mapped `bytes` from their file. Their pages were in the page
    /// cache when mapped; if some have been dropped since (memory pressure, a slow client),
    /// the call that reads them from the disk runs with the worker handed over to others
    /// (`block_in_place`), not on the async thread.
    fn poll_sendfile(
        &self,
        cx: &mut Context<'_>,
        bytes: &[u8],
        source: crate::storage::Source,
    ) -> Poll<io::Result<usize>> {
        let window = &bytes[..bytes.len().min(SEND_WINDOW)];
        let cold = !crate::storage::cached(window, &source.file, source.offset);
        let sent = ready!(self.poll_send(cx, || {
            let send = || {
                let mut offset = source.offset;
                rustix::fs::sendfile(&self.socket, &*source.file, Some(&mut offset), window.len())
            };
            match cold && self.blocking_allowed {
                true => tokio::task::block_in_place(send),
                false => send(),
            }
        }))?;
        crate::metrics::get().http_file_bytes.inc_by(sent as u64);
        Poll::Ready(Ok(sent))
    }
}

impl AsyncRead for FileSending {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_read(cx, buf)
    }
}

impl AsyncWrite for FileSending {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    /// The buffers up to the first mapped one written together; a mapped one first sent
    /// from its file. The count is of bytes from the start of `bufs`, as `writev`'s is.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match crate::storage::first_mapped(bufs) {
            Some((at, source)) if bufs[..at].iter().all(|b| b.is_empty()) => {
                this.poll_sendfile(cx, &bufs[at], source)
            }
            // What comes before mapped bytes (a part's header, chunk framing) waits for
            // them in the socket (`MSG_MORE`): one segment, not a small one of its own.
            Some((at, _)) => {
                let flags = SendFlags::MORE | SendFlags::NOSIGNAL;
                let socket = &this.socket;
                this.poll_send(cx, || {
                    rustix::net::sendmsg(socket, &bufs[..at], &mut Default::default(), flags)
                })
            }
            None => Pin::new(&mut this.socket).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::future::IntoFuture;
    use std::io::{Read, Write};
    use std::net::SocketAddr;

    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use bytes::Bytes;

    use super::*;
    use crate::config::Config;
    use crate::model::{ObjectKey, Uid};
    use crate::storage::{Spool, Store};

    /// The body of a chunked response, de-chunked.
    fn dechunk(mut rest: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..end]).unwrap(), 16).unwrap();
            if size == 0 {
                return body;
            }
            body.extend_from_slice(&rest[end + 2..end + 2 + size]);
            rest = &rest[end + 2 + size + 2..];
        }
    }

    /// Heap and mapped buffers, mixed, reach a real client byte for byte, through a socket
    /// too small to take a mapped buffer in one call; the mapped ones went by `sendfile`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mapped_buffers_go_from_their_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().to_owned(),
            ..Default::default()
        };
        let store = Store::open(&config).await.unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut spool = Spool::create(store.spool_dir(), 8 << 20).unwrap();
        spool.write(&data).await.unwrap();
        let spooled = spool.finish().await.unwrap();
        let key = ObjectKey::new(&Uid::parse("1.2").unwrap(), &spooled.sha256);
        store.put(&key, spooled).await.unwrap();
        let whole = store.mapped(&key, None).expect("cached");
        let part = store.mapped(&key, Some(1001..70_001)).expect("cached");
        assert!(crate::storage::region(&whole).is_some());
        let chunks = vec![
            Bytes::from_static(b"head"),
            whole.clone(),
            Bytes::from_static(b"--"),
            part.clone(),
            Bytes::from_static(b"tail"),
        ];
        // (From the data, not the mapping: its pages stay untouched, so they can be dropped.)
        let expected = [b"head", &data[..], b"--", &data[1001..70_001], b"tail"].concat();
        let router = Router::new().route(
            "/",
            get(move || {
                let chunks = chunks.clone();
                async move {
                    Body::from_stream(futures::stream::iter(
                        chunks.into_iter().map(Ok::<_, io::Error>),
                    ))
                }
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(axum::serve(PlainListener(listener), router).into_future());
        let before = crate::metrics::get().http_file_bytes.get();
        assert!(
            dechunk(&slow_get(addr).await) == expected,
            "the body differs"
        );
        let from_files = crate::metrics::get().http_file_bytes.get() - before;
        assert!(from_files >= (whole.len() + part.len()) as u64);

        // The object's pages dropped from the cache since it was mapped: sent all the same
        // (read from the disk off the async threads).
        let file = crate::storage::region(&whole).unwrap().file;
        rustix::fs::fadvise(&*file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        let cold = !crate::storage::cached(&whole, &file, 0);
        eprintln!("mapped_buffers_go_from_their_file: pages dropped before the second GET: {cold}");
        assert!(
            dechunk(&slow_get(addr).await) == expected,
            "the body differs (cold: {cold})"
        );
    }

    /// `GET /` from `addr` by a client with a small receive buffer that starts reading late,
    /// so that the server's sends are cut short: the body of the response, de-chunked.
    async fn slow_get(addr: SocketAddr) -> Vec<u8> {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(16 << 10).unwrap();
        let mut stream = socket.connect(addr).await.unwrap().into_std().unwrap();
        stream.set_nonblocking(false).unwrap();
        let got = tokio::task::spawn_blocking(move || {
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(50));
            let mut all = Vec::new();
            stream.read_to_end(&mut all).unwrap();
            all
        })
        .await
        .unwrap();
        let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200") && head.contains("transfer-encoding: chunked"));
        got[head_end..].to_vec()
    }
}
