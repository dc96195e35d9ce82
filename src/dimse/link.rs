//! An established association as two independent halves: a [`Writer`] that any task may use
//! to send whole messages, and a [`Reader`] of PDUs. dicom-ul negotiates the association;
//! after that its socket is duplicated and split, so that responses, pending C-FIND/C-MOVE/
//! C-GET answers, C-CANCEL requests and sub-operations can flow both ways at once.
//!
//! A message (command plus optional data set) is written under one lock, so the fragments
//! of two messages never interleave. A data set may be a stream (an object read from the
//! store): it is cut into P-DATA values as it arrives, within the peer's maximum PDU length.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

use super::command::{self, Command};
use dicom_ul::pdu::Pdu;

/// The largest PDU this server accepts (announced during negotiation).
pub const MAX_PDU: u32 = 1 << 20;
/// About how many bytes of PDUs go out in one write while a data set streams.
const WRITE_BATCH: usize = 256 * 1024;

/// How long to wait for the response to a request we sent.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("the association is closed")]
    Closed,
    #[error("network error: {0}")]
    Io(#[from] std::io::Error),
    #[error("reading the data set failed: {0}")]
    Source(String),
    #[error("malformed PDU: {0}")]
    Pdu(String),
    #[error("no response within {0:?}")]
    Timeout(Duration),
}

/// Where a data set comes from.
pub enum DataSet {
    Bytes(Vec<u8>),
    Stream(BoxStream<'static, Result<Bytes, String>>),
}

/// The receiving half of an association's connection, whatever carries it (TCP or TLS).
pub type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The sending half.
pub type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// Split an established association's TCP socket into a reader and a writer.
///
/// The association object is dropped afterwards (dicom-ul does not send anything on drop);
/// the duplicated descriptor keeps the connection open.
pub fn split(
    stream: &mut tokio::net::TcpStream,
    peer_max_pdu: u32,
) -> std::io::Result<(Reader, Arc<Writer>)> {
    let fd = stream.as_fd().try_clone_to_owned()?;
    let socket = fd.try_clone().ok();
    let std_stream = std::net::TcpStream::from(fd);
    std_stream.set_nonblocking(true)?;
    let (rd, wr) = tokio::net::TcpStream::from_std(std_stream)?.into_split();
    Ok(halves(Box::new(rd), Box::new(wr), socket, peer_max_pdu))
}

/// A reader and a writer over the two halves of a connection; `socket` (the TCP socket
/// under it, duplicated) to acknowledge what arrives at once (see [`Reader::next`]).
pub fn halves(
    rd: ReadHalf,
    wr: WriteHalf,
    socket: Option<OwnedFd>,
    peer_max_pdu: u32,
) -> (Reader, Arc<Writer>) {
    if let Some(socket) = &socket {
        let _ = rustix::net::sockopt::set_tcp_quickack(socket, true);
    }
    // Values cost their data plus a 6-byte item header; the PDU header is 6 bytes more.
    let max_fragment = (peer_max_pdu.clamp(4096, 1 << 24) as usize) - 12;
    (
        Reader {
            half: rd,
            buf: BytesMut::with_capacity(64 * 1024),
            socket,
        },
        Arc::new(Writer {
            half: tokio::sync::Mutex::new(Some(wr)),
            open: AtomicBool::new(true),
            max_fragment,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU16::new(1),
        }),
    )
}

/// Reads PDUs.
pub struct Reader {
    half: ReadHalf,
    buf: BytesMut,
    /// The TCP socket, to turn delayed acknowledgements off again after each read.
    socket: Option<OwnedFd>,
}

/// One presentation data value: its bytes are a slice of the PDU as read, not a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub context: u8,
    /// A command fragment (else a data set fragment).
    pub command: bool,
    pub last: bool,
    pub data: Bytes,
}

/// What arrives on an association.
#[derive(Debug)]
pub enum Received {
    /// A P-DATA-TF PDU's values.
    Data(Vec<Value>),
    /// Any other PDU (release, abort…), as dicom-ul reads it.
    Other(Pdu),
}

/// The values of a P-DATA-TF PDU's body (PS3.8 9.3.5: items of a 4-byte length, the
/// presentation context ID, the message control header, then the fragment), sliced out of
/// `body` without copying.
pub fn parse_pdata(mut body: Bytes) -> Result<Vec<Value>, LinkError> {
    let mut values = Vec::with_capacity(1);
    while !body.is_empty() {
        if body.len() < 6 {
            return Err(LinkError::Pdu("P-DATA-TF item truncated".into()));
        }
        let len = u32::from_be_bytes([body[0], body[1], body[2], body[3]]) as usize;
        if len < 2 || len > body.len() - 4 {
            return Err(LinkError::Pdu(format!(
                "P-DATA-TF item length {len} does not fit its PDU"
            )));
        }
        let (context, header) = (body[4], body[5]);
        body.advance(6);
        let data = body.split_to(len - 2);
        values.push(Value {
            context,
            command: header & 1 != 0,
            last: header & 2 != 0,
            data,
        });
    }
    Ok(values)
}

impl Reader {
    /// The next PDU; `Err(Closed)` when the peer closed the connection. P-DATA-TF PDUs
    /// (nearly all traffic) are sliced here without copying their values; the others are
    /// read by dicom-ul.
    pub async fn next(&mut self) -> Result<Received, LinkError> {
        loop {
            if self.buf.len() >= 6 && self.buf[0] == 0x04 {
                let len = u32::from_be_bytes([self.buf[2], self.buf[3], self.buf[4], self.buf[5]]);
                let total = 6 + len as usize;
                // No more than we announced (PS3.8 D.1): a longer one is not waited for.
                if len > MAX_PDU {
                    return Err(LinkError::Pdu(format!(
                        "P-DATA-TF of {len} bytes, over the maximum PDU length of {MAX_PDU}"
                    )));
                }
                if self.buf.len() >= total {
                    let mut pdu = self.buf.split_to(total).freeze();
                    pdu.advance(6);
                    return Ok(Received::Data(parse_pdata(pdu)?));
                }
                // Room for the whole PDU, so that it arrives in few reads.
                self.buf.reserve(total - self.buf.len());
            } else if !self.buf.is_empty() {
                let mut cursor = std::io::Cursor::new(&self.buf[..]);
                match dicom_ul::read_pdu(&mut cursor, MAX_PDU, false) {
                    Ok(Some(pdu)) => {
                        let used = cursor.position() as usize;
                        self.buf.advance(used);
                        return Ok(Received::Other(pdu));
                    }
                    Ok(None) => {}
                    Err(e) => return Err(LinkError::Pdu(e.to_string())),
                }
            }
            if self.half.read_buf(&mut self.buf).await? == 0 {
                return Err(LinkError::Closed);
            }
            // Every segment is acknowledged at once, not up to 40 ms later. A sender that
            // writes a PDU in pieces with Nagle's algorithm on (dcmtk's default: a PDV
            // header, then its value) holds each next piece until the last is
            // acknowledged: with delayed acknowledgements every message waited 40 ms.
            // Linux turns quick acknowledgement off again by itself, hence after each read.
            if let Some(socket) = &self.socket {
                let _ = rustix::net::sockopt::set_tcp_quickack(socket, true);
            }
        }
    }
}

/// Sends whole messages and PDUs; shared by every task working on the association.
pub struct Writer {
    half: tokio::sync::Mutex<Option<WriteHalf>>,
    open: AtomicBool,
    max_fragment: usize,
    /// Our requests waiting for their responses, by message ID.
    pending: Mutex<HashMap<u16, oneshot::Sender<Command>>>,
    next_id: AtomicU16,
}

fn pdata_header(context: u8, command: bool, last: bool, len: usize) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0] = 0x04;
    h[2..6].copy_from_slice(&((len + 6) as u32).to_be_bytes());
    h[6..10].copy_from_slice(&((len + 2) as u32).to_be_bytes());
    h[10] = context;
    h[11] = u8::from(command) | (u8::from(last) << 1);
    h
}

/// Append `data` as P-DATA PDUs of one value each, at most `max` bytes per value (an empty
/// `data` is one empty last value).
fn push_values(out: &mut Vec<u8>, context: u8, command: bool, data: &[u8], max: usize) {
    if data.is_empty() {
        out.extend_from_slice(&pdata_header(context, command, true, 0));
        return;
    }
    let n = data.len().div_ceil(max);
    for (i, chunk) in data.chunks(max).enumerate() {
        out.extend_from_slice(&pdata_header(context, command, i + 1 == n, chunk.len()));
        out.extend_from_slice(chunk);
    }
}

/// Bytes waiting to be written together: PDU headers and slices of data chunks.
#[derive(Default)]
struct Gather {
    parts: Vec<Bytes>,
    len: usize,
}

impl Gather {
    fn push(&mut self, b: Bytes) {
        self.len += b.len();
        self.parts.push(b);
    }

    /// Move the first `n` bytes of `pending` here, splitting a chunk where needed.
    fn take(&mut self, pending: &mut VecDeque<Bytes>, mut n: usize) {
        while n > 0 {
            let Some(front) = pending.front_mut() else {
                return;
            };
            if front.len() <= n {
                n -= front.len();
                if let Some(whole) = pending.pop_front() {
                    self.push(whole);
                }
            } else {
                let part = front.split_to(n);
                self.push(part);
                n = 0;
            }
        }
    }

    /// Write everything gathered: in vectored writes where the link takes them, else
    /// copied into one buffer (TLS, which would make a record of each slice).
    async fn write(&mut self, w: &mut WriteHalf) -> std::io::Result<()> {
        if !w.is_write_vectored() {
            let mut all = Vec::with_capacity(self.len);
            for p in self.parts.drain(..) {
                all.extend_from_slice(&p);
            }
            self.len = 0;
            return w.write_all(&all).await;
        }
        let mut at = 0;
        while at < self.parts.len() {
            let slices: Vec<std::io::IoSlice<'_>> = self.parts[at..]
                .iter()
                .take(256)
                .map(|p| std::io::IoSlice::new(p))
                .collect();
            let mut n = w.write_vectored(&slices).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            while n > 0 && at < self.parts.len() {
                let first = &mut self.parts[at];
                if first.len() <= n {
                    n -= first.len();
                    at += 1;
                } else {
                    first.advance(n);
                    n = 0;
                }
            }
        }
        self.parts.clear();
        self.len = 0;
        Ok(())
    }
}

impl Writer {
    /// Whether the association can still carry messages.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// A message ID for a request of ours.
    pub fn next_message_id(&self) -> u16 {
        loop {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    /// Send one message: the command, then the data set if there is one. Each fragment
    /// goes in a P-DATA PDU of its own (dcmtk does not take the values of several
    /// messages in one PDU).
    pub async fn message(
        &self,
        context: u8,
        command: &[u8],
        data: Option<DataSet>,
    ) -> Result<(), LinkError> {
        let mut guard = self.half.lock().await;
        if !self.is_open() {
            return Err(LinkError::Closed);
        }
        let w = guard.as_mut().ok_or(LinkError::Closed)?;
        let result = self.write_message(w, context, command, data).await;
        if let Err(LinkError::Io(_)) = &result {
            self.open.store(false, Ordering::Release);
        }
        result
    }

    /// Send several messages with their in-memory data sets (C-FIND's pending answers) in
    /// one write: each still in P-DATA PDUs of its own, but one system call and one wake-up
    /// of the peer for all of them.
    pub async fn messages(
        &self,
        context: u8,
        messages: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<(), LinkError> {
        let max = self.max_fragment;
        let mut out = Vec::new();
        for (command, data) in messages {
            push_values(&mut out, context, true, command, max);
            push_values(&mut out, context, false, data, max);
        }
        let mut guard = self.half.lock().await;
        if !self.is_open() {
            return Err(LinkError::Closed);
        }
        let w = guard.as_mut().ok_or(LinkError::Closed)?;
        let result = w.write_all(&out).await.map_err(LinkError::from);
        if result.is_err() {
            self.open.store(false, Ordering::Release);
        }
        result
    }

    async fn write_message(
        &self,
        w: &mut WriteHalf,
        context: u8,
        command: &[u8],
        data: Option<DataSet>,
    ) -> Result<(), LinkError> {
        let max = self.max_fragment;
        // The command and an in-memory data set go out in one write: one PDU per
        // fragment, all in one buffer.
        let mut out = Vec::new();
        push_values(&mut out, context, true, command, max);
        let stream = match data {
            None => None,
            Some(DataSet::Bytes(bytes)) => {
                push_values(&mut out, context, false, &bytes, max);
                None
            }
            Some(DataSet::Stream(stream)) => Some(stream),
        };
        let Some(mut stream) = stream else {
            w.write_all(&out).await?;
            return Ok(());
        };
        // Fragments gather behind the command and go out in writes of about WRITE_BATCH
        // bytes, several PDUs each (a peer's small maximum PDU does not mean small writes),
        // as slices of the chunks read: no copy of the data on our side. At least one byte
        // is kept back, so the last fragment is never empty.
        let mut gather = Gather::default();
        gather.push(Bytes::from(out));
        let mut pending: VecDeque<Bytes> = VecDeque::new();
        let mut pending_len = 0;
        let mut failed = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => {
                    pending_len += c.len();
                    pending.push_back(c);
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
            while pending_len > max {
                gather.push(Bytes::copy_from_slice(&pdata_header(
                    context, false, false, max,
                )));
                gather.take(&mut pending, max);
                pending_len -= max;
                if gather.len >= WRITE_BATCH {
                    gather.write(w).await?;
                }
            }
        }
        if let Some(e) = failed {
            // The message cannot be completed: the association is unusable.
            self.open.store(false, Ordering::Release);
            return Err(LinkError::Source(e));
        }
        gather.push(Bytes::copy_from_slice(&pdata_header(
            context,
            false,
            true,
            pending_len,
        )));
        gather.take(&mut pending, pending_len);
        gather.write(w).await?;
        Ok(())
    }

    /// Send a request and wait for its response.
    pub async fn request(
        &self,
        context: u8,
        message_id: u16,
        command: &[u8],
        data: Option<DataSet>,
    ) -> Result<Command, LinkError> {
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .expect("pending lock")
            .insert(message_id, tx);
        let sent = self.message(context, command, data).await;
        let result = match sent {
            Ok(()) => match tokio::time::timeout(RESPONSE_TIMEOUT, rx).await {
                Ok(Ok(rsp)) => Ok(rsp),
                Ok(Err(_)) => Err(LinkError::Closed),
                Err(_) => Err(LinkError::Timeout(RESPONSE_TIMEOUT)),
            },
            Err(e) => Err(e),
        };
        self.pending
            .lock()
            .expect("pending lock")
            .remove(&message_id);
        result
    }

    /// Hand a response to the request waiting for it; false if nobody waits.
    pub fn deliver(&self, response: Command) -> bool {
        let waiting = response
            .responded_to
            .and_then(|id| self.pending.lock().expect("pending lock").remove(&id));
        match waiting {
            Some(tx) => tx.send(response).is_ok(),
            None => false,
        }
    }

    /// Send a PDU that ends or answers the association (A-RELEASE, A-ABORT).
    pub async fn control(&self, pdu: &Pdu) -> Result<(), LinkError> {
        let mut bytes = Vec::new();
        dicom_ul::write_pdu(&mut bytes, pdu).map_err(|e| LinkError::Pdu(e.to_string()))?;
        let mut guard = self.half.lock().await;
        let w = guard.as_mut().ok_or(LinkError::Closed)?;
        w.write_all(&bytes).await?;
        Ok(())
    }

    /// No more messages: mark closed, fail the waiting requests, shut the socket down
    /// once the messages in progress are written.
    pub async fn close(&self) {
        self.open.store(false, Ordering::Release);
        self.pending.lock().expect("pending lock").clear();
        if let Some(mut w) = self.half.lock().await.take() {
            let _ = w.shutdown().await;
        }
    }

    /// Mark closed (after a release or abort) without waiting for the lock.
    pub fn mark_closed(&self) {
        self.open.store(false, Ordering::Release);
        self.pending.lock().expect("pending lock").clear();
    }
}

/// The largest command set accepted (real ones are a few hundred bytes).
pub const MAX_COMMAND: usize = 64 * 1024;

/// Gathers the P-DATA values of a command set into the decoded command.
#[derive(Default)]
pub struct Assembler {
    command: Vec<u8>,
    too_large: bool,
}

impl Assembler {
    /// Add a command fragment; the decoded command once the last one is in. A command set
    /// larger than [`MAX_COMMAND`] is discarded as it arrives and refused at its end.
    pub fn command_fragment(
        &mut self,
        data: &[u8],
        last: bool,
    ) -> Option<Result<Command, command::CommandError>> {
        if self.command.len() + data.len() > MAX_COMMAND {
            self.too_large = true;
            self.command = Vec::new();
        } else if !self.too_large {
            self.command.extend_from_slice(data);
        }
        if !last {
            return None;
        }
        let bytes = std::mem::take(&mut self.command);
        if std::mem::take(&mut self.too_large) {
            return Some(Err(command::CommandError(format!(
                "command set larger than {MAX_COMMAND} bytes"
            ))));
        }
        Some(command::decode(&bytes))
    }
}

#[cfg(test)]
#[path = "link_tests.rs"]
mod tests;
