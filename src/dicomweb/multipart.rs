//! Writing `multipart/related` responses as streams: part headers are small buffers, part
//! bodies are streamed from the object store, nothing is assembled in memory.

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};

/// The boundary of every multipart response (never occurs in DICOM part headers).
pub const BOUNDARY: &str = "pacs-lite-7b1f0c3e9a5d4b82";

pub type ByteStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// The opening delimiter and headers of one part.
pub fn part_header(content_type: &str, length: Option<u64>, location: Option<&str>) -> Bytes {
    let mut h = format!("--{BOUNDARY}\r\nContent-Type: {content_type}\r\n");
    if let Some(len) = length {
        h.push_str(&format!("Content-Length: {len}\r\n"));
    }
    if let Some(loc) = location {
        h.push_str(&format!("Content-Location: {loc}\r\n"));
    }
    h.push_str("\r\n");
    Bytes::from(h)
}

/// One part: header, body, and the line break that ends it.
pub fn part(header: Bytes, body: ByteStream) -> ByteStream {
    stream::once(async move { Ok(header) })
        .chain(body)
        .chain(stream::once(async { Ok(Bytes::from_static(b"\r\n")) }))
        .boxed()
}

/// The closing delimiter.
pub fn closing() -> ByteStream {
    stream::once(async { Ok(Bytes::from(format!("--{BOUNDARY}--\r\n"))) }).boxed()
}

/// The response Content-Type for parts of the given type.
pub fn content_type(part_type: &str) -> String {
    format!("multipart/related; type=\"{part_type}\"; boundary={BOUNDARY}")
}
