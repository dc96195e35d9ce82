//! WADO-RS frames and bulk data (PS3.18 §10.4.1.1.4-5): pixel data served by range reads
//! through the frame offset table computed at ingest, never by parsing the object.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures::stream::{self, StreamExt};
use futures::FutureExt;

use super::media::parse_accept;
use super::multipart;
use super::resource::Resource;
use super::wado::{locate, with_object_file};
use super::ApiError;
use crate::context::Context;
use crate::dicom::frames::{decode_table, Frame};
use crate::index::read::InstanceLocation;
use crate::model::{ObjectKey, TransferSyntax};
use crate::render::transcode::{
    decode_frames, encode_frames, JPEG_BASELINE, JPEG_LS_LOSSLESS, RLE_LOSSLESS,
};
use crate::storage::Store;

const EXPLICIT_LE: &str = TransferSyntax::EXPLICIT_VR_LE;

/// The media type of frames encoded in a transfer syntax (PS3.18 Table 8.7.3-2), or
/// `None` for native (uncompressed) pixel data.
pub fn frame_media_type(ts: &str) -> Option<&'static str> {
    Some(match ts {
        "1.2.840.10008.1.2.4.50"
        | "1.2.840.10008.1.2.4.51"
        | "1.2.840.10008.1.2.4.57"
        | "1.2.840.10008.1.2.4.70" => "image/jpeg",
        "1.2.840.10008.1.2.4.80" | "1.2.840.10008.1.2.4.81" => "image/jls",
        "1.2.840.10008.1.2.4.90" | "1.2.840.10008.1.2.4.91" => "image/jp2",
        "1.2.840.10008.1.2.4.92" | "1.2.840.10008.1.2.4.93" => "image/jpx",
        "1.2.840.10008.1.2.4.201" | "1.2.840.10008.1.2.4.202" | "1.2.840.10008.1.2.4.203" => {
            "image/jphc"
        }
        "1.2.840.10008.1.2.5" => "image/dicom-rle",
        "1.2.840.10008.1.2.4.100" | "1.2.840.10008.1.2.4.101" => "video/mpeg",
        "1.2.840.10008.1.2.4.102"
        | "1.2.840.10008.1.2.4.103"
        | "1.2.840.10008.1.2.4.104"
        | "1.2.840.10008.1.2.4.105"
        | "1.2.840.10008.1.2.4.106" => "video/mp4",
        "1.2.840.10008.1.2.4.107" | "1.2.840.10008.1.2.4.108" => "video/H265",
        "1.2.840.10008.1.2.4.110" | "1.2.840.10008.1.2.4.111" | "1.2.840.10008.1.2.4.112" => {
            "image/jxl"
        }
        _ => return None,
    })
}

/// What the frames are sent as.
#[derive(Debug, PartialEq, Eq)]
struct FrameForm {
    /// Content-Type of each part (or of the single body).
    part_type: String,
    multipart: bool,
    /// Decode the frames to native little-endian samples (instead of range reads).
    decode: bool,
    /// Encode the frames in this syntax (JPEG-LS, RLE, JPEG baseline) from the decoded samples.
    encode: Option<&'static str>,
}

/// Choose how to send frames stored in `stored_ts`. Frames go out as stored when the
/// client accepts that (native pixel data as `application/octet-stream`, compressed
/// frames in their own media type); a request for uncompressed frames of compressed data
/// decodes them.
fn negotiate(accept: &str, stored: &TransferSyntax, frames: usize) -> Result<FrameForm, ApiError> {
    let stored_ts = stored.as_str();
    let native_ts = stored.is_native_le().then_some(EXPLICIT_LE);
    let compressed = frame_media_type(stored_ts);
    let own_type = compressed.unwrap_or("application/octet-stream");
    let own_ts = native_ts.unwrap_or(stored_ts);
    let decodable = stored.is_decodable();
    let as_stored = format!("{own_type}; transfer-syntax={own_ts}");
    let decoded = format!("application/octet-stream; transfer-syntax={EXPLICIT_LE}");
    for a in parse_accept(Some(accept)) {
        let (multipart, ty) = match a.media.essence.as_str() {
            "multipart/related" => (
                true,
                a.media
                    .param("type")
                    .unwrap_or("application/octet-stream")
                    .to_ascii_lowercase(),
            ),
            "*/*" => (true, "*/*".to_owned()),
            other => (false, other.to_owned()),
        };
        if !multipart && frames != 1 {
            continue;
        }
        let ts = a.media.param("transfer-syntax");
        let stored = |decode: bool| {
            Ok(FrameForm {
                part_type: as_stored.clone(),
                multipart,
                decode,
                encode: None,
            })
        };
        let decode = || {
            Ok(FrameForm {
                part_type: decoded.clone(),
                multipart,
                decode: true,
                encode: None,
            })
        };
        match ty.as_str() {
            "*/*" => return stored(false),
            "application/octet-stream" => match ts {
                Some("*") => return stored(false),
                Some(t) if t == stored_ts => return stored(false),
                None | Some(EXPLICIT_LE) if native_ts.is_some() => return stored(false),
                None | Some(EXPLICIT_LE) if decodable => return decode(),
                _ => {}
            },
            t if (Some(t) == compressed
                || (t == "image/x-dicom-rle" && compressed == Some("image/dicom-rle")))
                && (matches!(ts, None | Some("*")) || ts == Some(stored_ts)) =>
            {
                return stored(false);
            }
            _ => {}
        }
        let encoded = encoded_as(&ty, ts);
        if let (true, Some((media, to))) = (decodable, encoded) {
            return Ok(FrameForm {
                part_type: format!("{media}; transfer-syntax={to}"),
                multipart,
                decode: true,
                encode: Some(to),
            });
        }
    }
    Err(ApiError::NotAcceptable(format!(
        "the frames are stored as {own_type} (transfer syntax {stored_ts}); ask for \
         multipart/related; type=\"{own_type}\", transfer-syntax=*, or (when the data can be decoded) \
         application/octet-stream in {EXPLICIT_LE}, image/jls or image/dicom-rle (grayscale), or \
         image/jpeg with transfer-syntax={JPEG_BASELINE} (8-bit, lossy)"
    )))
}

/// The media type and transfer syntax frames of any decodable syntax are encoded in for
/// `ty`: lossless (grayscale) by default, JPEG baseline only when that lossy syntax is named.
fn encoded_as(ty: &str, ts: Option<&str>) -> Option<(&'static str, &'static str)> {
    match ty {
        "image/jls" if matches!(ts, None | Some(JPEG_LS_LOSSLESS)) => {
            Some(("image/jls", JPEG_LS_LOSSLESS))
        }
        "image/dicom-rle" | "image/x-dicom-rle" if matches!(ts, None | Some(RLE_LOSSLESS)) => {
            Some(("image/dicom-rle", RLE_LOSSLESS))
        }
        "image/jpeg" if ts == Some(JPEG_BASELINE) => Some(("image/jpeg", JPEG_BASELINE)),
        _ => None,
    }
}

/// Parse `1,3,5` into frame numbers (1-based), checking them against the instance.
fn frame_numbers(list: &str, available: usize) -> Result<Vec<usize>, ApiError> {
    let numbers = list
        .split(',')
        .map(|n| n.trim().parse::<usize>().ok().filter(|n| *n >= 1))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "frame list {list:?} must be frame numbers (from 1), comma-separated"
            ))
        })?;
    if let Some(n) = numbers.iter().find(|n| **n > available) {
        return Err(ApiError::NotFound(format!(
            "frame {n} does not exist; the instance has {available} frame(s)"
        )));
    }
    if numbers.len() > 10_000 {
        return Err(ApiError::BadRequest(
            "too many frames in one request".into(),
        ));
    }
    Ok(numbers)
}

pub async fn frames(
    State(app): State<Arc<Context>>,
    r: Resource,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let scope = r.scope()?;
    let list = r.frames.clone().unwrap_or_default();
    let loc = locate(&app, &scope).await?.remove(0);
    let numbers = frame_numbers(&list, loc.number_of_frames.max(1) as usize)?;
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("*/*");
    let form = negotiate(accept, &loc.transfer_syntax, numbers.len())?;
    let source = frame_source(&app, &loc, &numbers, &form).await?;
    send_frames(app, &loc, source, form)
}

/// Where the frames' bytes come from.
enum Source {
    /// Byte ranges of the stored object (the frame table computed at ingest).
    Ranges(Vec<Frame>),
    /// Frames decoded to native samples.
    Decoded(Vec<Bytes>),
}

/// Range reads when the client takes the frames as stored and the table exists;
/// decoding otherwise (which needs a decodable transfer syntax).
async fn frame_source(
    app: &Context,
    loc: &InstanceLocation,
    numbers: &[usize],
    form: &FrameForm,
) -> Result<Source, ApiError> {
    if !form.decode {
        if let Some(table) = loc.frame_table.as_deref() {
            let table = decode_table(table).ok_or_else(|| {
                ApiError::Internal(format!("corrupt frame table for {}", loc.sop_instance_uid))
            })?;
            if numbers.iter().all(|n| *n <= table.len()) {
                return Ok(Source::Ranges(
                    numbers.iter().map(|n| table[n - 1].clone()).collect(),
                ));
            }
        }
    }
    if !loc.transfer_syntax.is_decodable() {
        return Err(ApiError::NotAcceptable(format!(
            "the frames of instance {} cannot be read directly and its transfer syntax {} cannot be decoded here",
            loc.sop_instance_uid, loc.transfer_syntax
        )));
    }
    let indexes: Vec<u32> = numbers.iter().map(|n| *n as u32 - 1).collect();
    let decoded = match form.encode {
        Some(ts) => {
            let to = TransferSyntax::parse(ts).map_err(|e| ApiError::Internal(e.to_string()))?;
            with_object_file(app, loc, move |path| encode_frames(path, &indexes, &to))
                .await?
                .map_err(|e| {
                    ApiError::NotAcceptable(format!("the frames cannot be encoded: {e}"))
                })?
        }
        None => with_object_file(app, loc, move |path| decode_frames(path, &indexes))
            .await?
            .map_err(|e| ApiError::NotAcceptable(format!("the frames cannot be decoded: {e}")))?,
    };
    Ok(Source::Decoded(
        decoded.into_iter().map(Bytes::from).collect(),
    ))
}

/// The `{tag}` of a bulk data URL.
#[derive(serde::Deserialize)]
pub struct BulkTag {
    tag: String,
}

/// Bulk data of an instance: Pixel Data (as its frames) or another top-level binary value.
pub async fn bulkdata(
    State(app): State<Arc<Context>>,
    r: Resource,
    Path(tag): Path<BulkTag>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let scope = r.scope()?;
    let tag = tag.tag;
    let loc = locate(&app, &scope).await?.remove(0);
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("*/*");
    if tag.eq_ignore_ascii_case("7FE00010") {
        let numbers: Vec<usize> = (1..=loc.number_of_frames.max(1) as usize).collect();
        let form = FrameForm {
            multipart: true,
            ..negotiate(accept, &loc.transfer_syntax, numbers.len())?
        };
        let source = frame_source(&app, &loc, &numbers, &form).await?;
        return send_frames(app, &loc, source, form);
    }
    let tag = parse_tag(&tag)?;
    let value = super::bulk::read_value(app.store(), &loc.object_key, tag).await?;
    let header = multipart::part_header("application/octet-stream", Some(value.len() as u64), None);
    let body = multipart::part(header, stream::once(async move { Ok(value) }).boxed())
        .chain(multipart::closing());
    Ok(Response::builder()
        .header(
            header::CONTENT_TYPE,
            multipart::content_type("application/octet-stream"),
        )
        .body(Body::from_stream(body))
        .expect("valid response"))
}

fn parse_tag(raw: &str) -> Result<dicom_core::Tag, ApiError> {
    let ok = raw.len() == 8 && raw.bytes().all(|b| b.is_ascii_hexdigit());
    let bad = || ApiError::BadRequest(format!("bulk data tag {raw:?} is not 8 hex digits"));
    if !ok {
        return Err(bad());
    }
    let g = u16::from_str_radix(&raw[..4], 16).map_err(|_| bad())?;
    let e = u16::from_str_radix(&raw[4..], 16).map_err(|_| bad())?;
    Ok(dicom_core::Tag(g, e))
}

fn send_frames(
    app: Arc<Context>,
    loc: &InstanceLocation,
    source: Source,
    form: FrameForm,
) -> Result<Response, ApiError> {
    let key = loc.object_key.clone();
    let store = app.store().clone();
    // Each frame as (length, future of its bytes): range reads happen as the body streams.
    let frames: Vec<(
        u64,
        futures::future::BoxFuture<'static, std::io::Result<Bytes>>,
    )> = match source {
        Source::Decoded(list) => list
            .into_iter()
            .map(|b| (b.len() as u64, futures::future::ready(Ok(b)).boxed()))
            .collect(),
        Source::Ranges(list) => list
            .into_iter()
            .map(|frame| {
                let (store, key) = (store.clone(), key.clone());
                let len: u64 = frame.iter().map(|(_, l)| *l as u64).sum();
                (len, read_frame(store, key, frame, len).boxed())
            })
            .collect(),
    };
    if !form.multipart {
        let (len, data) = frames.into_iter().next().expect("one frame");
        return Ok(Response::builder()
            .header(header::CONTENT_TYPE, form.part_type)
            .header(header::CONTENT_LENGTH, len)
            .body(Body::from_stream(stream::once(data)))
            .expect("valid response"));
    }
    let part_type = form.part_type.clone();
    let parts = stream::iter(frames)
        .map(move |(len, data)| {
            multipart::part(
                multipart::part_header(&part_type, Some(len), None),
                stream::once(data).boxed(),
            )
        })
        .flatten()
        .chain(multipart::closing());
    let outer = form
        .part_type
        .split(';')
        .next()
        .unwrap_or("application/octet-stream")
        .to_owned();
    Ok(Response::builder()
        .header(
            header::CONTENT_TYPE,
            format!(
                "{}; transfer-syntax={}",
                multipart::content_type(&outer),
                part_ts(&form.part_type)
            ),
        )
        .body(Body::from_stream(parts))
        .expect("valid response"))
}

/// A frame's bytes as stored: nearly every frame is one range, sent as read (not copied
/// again); the fragments of an encapsulated frame put together.
async fn read_frame(
    store: Store,
    key: ObjectKey,
    frame: Frame,
    len: u64,
) -> std::io::Result<Bytes> {
    let read = |(off, l): (u64, u32)| {
        let (store, key) = (&store, &key);
        async move {
            store
                .read_range(key, off..off + l as u64)
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))
        }
    };
    if let [range] = frame[..] {
        return read(range).await;
    }
    let mut out = BytesMut::with_capacity(len as usize);
    for range in frame {
        out.extend_from_slice(&read(range).await?);
    }
    Ok(out.freeze())
}

fn part_ts(part_type: &str) -> &str {
    part_type
        .split("transfer-syntax=")
        .nth(1)
        .unwrap_or(EXPLICIT_LE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_negotiation() {
        let t = |uid: &str| TransferSyntax::parse(uid).unwrap();
        let ok = |accept: &str, ts: &str| negotiate(accept, &t(ts), 2).map(|f| f.part_type);
        const IMPLICIT_LE: &str = TransferSyntax::IMPLICIT_VR_LE;
        assert_eq!(
            ok(
                "multipart/related; type=application/octet-stream; transfer-syntax=*",
                IMPLICIT_LE
            )
            .unwrap(),
            "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
        );
        assert!(ok(
            "multipart/related; type=\"application/octet-stream\"",
            EXPLICIT_LE
        )
        .is_ok());
        let jpeg = "1.2.840.10008.1.2.4.50";
        assert_eq!(
            ok("multipart/related; type=\"image/jpeg\"", jpeg).unwrap(),
            format!("image/jpeg; transfer-syntax={jpeg}")
        );
        assert_eq!(
            ok(
                "multipart/related; type=application/octet-stream; transfer-syntax=*",
                jpeg
            )
            .unwrap(),
            format!("image/jpeg; transfer-syntax={jpeg}")
        );
        let decoded = negotiate(
            "multipart/related; type=application/octet-stream",
            &t(jpeg),
            2,
        )
        .unwrap();
        assert!(decoded.decode && decoded.part_type.starts_with("application/octet-stream"));
        let mpeg = t("1.2.840.10008.1.2.4.100");
        assert!(!mpeg.is_decodable());
        assert!(negotiate("multipart/related; type=application/octet-stream", &mpeg, 2).is_err());
        assert!(ok("multipart/related; type=image/jp2", jpeg).is_err());
        assert!(ok("*/*", jpeg).is_ok());
        assert!(ok(
            "multipart/related; type=image/x-dicom-rle",
            "1.2.840.10008.1.2.5"
        )
        .is_ok());
        assert!(
            negotiate("application/octet-stream", &t(EXPLICIT_LE), 2).is_err(),
            "single part needs one frame"
        );
        assert!(
            !negotiate("application/octet-stream", &t(EXPLICIT_LE), 1)
                .unwrap()
                .multipart
        );
    }

    #[test]
    fn frame_lists() {
        assert_eq!(frame_numbers("1,3, 2", 3).unwrap(), vec![1, 3, 2]);
        assert!(matches!(
            frame_numbers("0", 3),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(frame_numbers("4", 3), Err(ApiError::NotFound(_))));
        assert!(matches!(
            frame_numbers("a", 3),
            Err(ApiError::BadRequest(_))
        ));
    }
}
