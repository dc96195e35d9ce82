//! WADO-RS (PS3.18 §10.4): retrieve studies, series and instances as Part-10 objects, and
//! their metadata as DICOM JSON.
//!
//! Objects stream from the object store into a `multipart/related` body; metadata is the
//! JSON precomputed at ingest, with BulkDataURIs made absolute for this request.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};

use super::media::{parse_accept, Acceptable};
use super::multipart::{self, ByteStream};
use super::resource::Resource;
use super::ApiError;
use crate::context::Context;
use crate::dicom::json::BULK_PREFIX;
use crate::index::read::{InstanceLocation, Scope};
use crate::model::TransferSyntax;
use crate::render::transcode::{can_transcode, transcode_file, TARGETS};
use crate::storage::SendsFiles;

/// Retrieve a study, series or instance.
pub async fn retrieve(
    State(app): State<Arc<Context>>,
    sends: Option<Extension<SendsFiles>>,
    version: Version,
    r: Resource,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    retrieve_scope(app, headers, r.scope()?, Reading::of(sends, version)).await
}

/// Metadata of a study, series or instance.
pub async fn metadata(
    State(app): State<Arc<Context>>,
    r: Resource,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    metadata_scope(app, headers, r.scope()?).await
}

pub(crate) async fn locate(
    app: &Context,
    scope: &Scope,
) -> Result<Vec<InstanceLocation>, ApiError> {
    let found = app.index().locate(scope).await?;
    if found.is_empty() {
        return Err(ApiError::NotFound(not_found_message(scope)));
    }
    Ok(found)
}

fn not_found_message(scope: &Scope) -> String {
    match (&scope.series, &scope.instance) {
        (_, Some(sop)) => format!(
            "no instance {sop} in series {} of study {}",
            scope.series.as_ref().unwrap(),
            scope.study
        ),
        (Some(series), None) => format!("no series {series} in study {}", scope.study),
        _ => format!("no study {}", scope.study),
    }
}

/// How the objects are to be sent.
enum Packaging {
    Multipart,
    /// A bare `application/dicom` body (one instance only).
    Single,
}

/// The transfer syntax a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Wanted {
    /// `transfer-syntax=*`: as stored.
    AsStored,
    /// No `transfer-syntax`: the standard default, Explicit VR Little Endian, where the
    /// stored object can be decoded; otherwise as stored (the part's Content-Type says).
    Default,
    Exactly(TransferSyntax),
}

/// Pick the response form and the transfer syntax.
fn negotiate(accept: &[Acceptable], single: bool) -> Result<(Packaging, Wanted), ApiError> {
    for a in accept {
        let packaging = match a.media.essence.as_str() {
            "multipart/related" => match a.media.param("type") {
                None => Packaging::Multipart,
                Some(t) if t.eq_ignore_ascii_case("application/dicom") => Packaging::Multipart,
                Some(_) => continue,
            },
            "application/dicom" if single => Packaging::Single,
            "*/*" | "multipart/*" => Packaging::Multipart,
            _ => continue,
        };
        let wanted = match a.media.param("transfer-syntax") {
            None => Wanted::Default,
            Some("*") => Wanted::AsStored,
            Some(ts) => Wanted::Exactly(TransferSyntax::parse(ts).map_err(|e| {
                ApiError::NotAcceptable(format!("{e}; this server sends {}", TARGETS.join(" or ")))
            })?),
        };
        return Ok((packaging, wanted));
    }
    Err(ApiError::NotAcceptable(
        "instances are available as multipart/related; type=\"application/dicom\" (or application/dicom for one instance)".into(),
    ))
}

/// The transfer syntax one instance goes out in.
pub(super) fn target_for(
    loc: &InstanceLocation,
    wanted: &Wanted,
) -> Result<TransferSyntax, ApiError> {
    let stored = &loc.transfer_syntax;
    let explicit = TransferSyntax::explicit_vr_le();
    Ok(match wanted {
        Wanted::AsStored => stored.clone(),
        Wanted::Default if can_transcode(stored, &explicit) => explicit,
        Wanted::Default => stored.clone(),
        Wanted::Exactly(ts) if can_transcode(stored, ts) => ts.clone(),
        Wanted::Exactly(ts) => {
            return Err(ApiError::NotAcceptable(format!(
                "instance {} is stored in transfer syntax {stored} and cannot be sent in {ts}; this server \
                 sends the stored syntax (transfer-syntax=*) or decodes to {}",
                loc.sop_instance_uid,
                TARGETS.join(" or ")
            )))
        }
    })
}

/// Objects up to this size go out as stored read whole, in one go (and, when several are
/// retrieved, read ahead of the one being sent); larger ones stream.
const SMALL_OBJECT: u64 = 1 << 20;
/// How many objects a retrieval reads ahead (small ones sent as stored only: memory stays
/// under `READ_AHEAD` × `SMALL_OBJECT`).
const READ_AHEAD: usize = 8;

fn small_as_stored(loc: &InstanceLocation, target: &TransferSyntax) -> bool {
    *target == loc.transfer_syntax && loc.size + loc.part10_prefix <= SMALL_OBJECT
}

/// Objects smaller than this are copied even where they could be mapped: mapping one and
/// sending it on its own (`mmap`, `munmap`, a `sendfile` between the part headers' writes)
/// costs more than copying a few pages, and small objects read together go out together.
const MAPPED_AT_LEAST: u64 = 128 << 10;

/// How a response's objects may be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reading {
    /// Into memory (or streamed through it).
    Copied,
    /// Mapped from the page cache where cached: the connection sends them from their files.
    Mapped,
}

impl Reading {
    /// Mapped where the connection sends files and speaks HTTP/1 (HTTP/2 frames copy
    /// their data: mapped pages would be read here, perhaps from the disk).
    pub(crate) fn of(sends: Option<Extension<SendsFiles>>, version: Version) -> Self {
        let http1 = matches!(version, Version::HTTP_10 | Version::HTTP_11);
        match sends {
            Some(_) if http1 => Reading::Mapped,
            _ => Reading::Copied,
        }
    }

    /// Whether `loc`, sent as `target`, is to be mapped (see [`MAPPED_AT_LEAST`]).
    fn maps(self, loc: &InstanceLocation, target: &TransferSyntax) -> bool {
        self == Reading::Mapped && *target == loc.transfer_syntax && loc.size >= MAPPED_AT_LEAST
    }
}

/// One instance in transfer syntax `target`: its length and bytes (as stored: mapped when
/// `reading` allows and the object is cached, read whole when small, else streamed from
/// the store; transcoded in memory otherwise).
pub(super) async fn instance_bytes(
    app: &Context,
    loc: &InstanceLocation,
    target: &TransferSyntax,
    reading: Reading,
) -> Result<(u64, ByteStream), ApiError> {
    if reading.maps(loc, target) {
        if let Some(chunks) = app.instance_mapped(loc) {
            let len = chunks.iter().map(|c| c.len() as u64).sum();
            return Ok((len, stream::iter(chunks.into_iter().map(Ok)).boxed()));
        }
    }
    if small_as_stored(loc, target) {
        let bytes = app.instance_whole(loc).await?;
        let len = bytes.len() as u64;
        return Ok((len, stream::once(async move { Ok(bytes) }).boxed()));
    }
    if *target == loc.transfer_syntax {
        return Ok((loc.size + loc.part10_prefix, object_stream(app, loc).await?));
    }
    let target = target.clone();
    let bytes = with_object_file(app, loc, move |path| transcode_file(path, &target))
        .await?
        .map_err(|e| {
            ApiError::NotAcceptable(format!("transcoding {}: {e}", loc.sop_instance_uid))
        })?;
    let len = bytes.len() as u64;
    Ok((
        len,
        stream::once(async move { Ok(Bytes::from(bytes)) }).boxed(),
    ))
}

/// Run blocking work (decoding, rendering) on a local file holding an instance.
pub(crate) async fn with_object_file<T, F>(
    app: &Context,
    loc: &InstanceLocation,
    work: F,
) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&std::path::Path) -> T + Send + 'static,
{
    Ok(app.store().with_local_file(&loc.object_key, work).await?)
}

/// The Part-10 bytes of one instance, streamed.
async fn object_stream(app: &Context, loc: &InstanceLocation) -> Result<ByteStream, ApiError> {
    Ok(app
        .instance_stream(loc)
        .await?
        .map_err(std::io::Error::other)
        .boxed())
}

async fn retrieve_scope(
    app: Arc<Context>,
    headers: HeaderMap,
    scope: Scope,
    reading: Reading,
) -> Result<Response, ApiError> {
    let accept = parse_accept(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let (packaging, wanted) = negotiate(&accept, scope.instance.is_some())?;
    let found = locate(&app, &scope).await?;
    let targets = found
        .iter()
        .map(|l| target_for(l, &wanted))
        .collect::<Result<Vec<_>, _>>()?;
    // The first object is opened now, so that a failure is an error status rather than a
    // truncated body; the others open as the body streams.
    let (len, first) = instance_bytes(&app, &found[0], &targets[0], reading).await?;
    if let Packaging::Single = packaging {
        return Ok(Response::builder()
            .header(
                header::CONTENT_TYPE,
                format!("application/dicom; transfer-syntax={}", targets[0]),
            )
            .header(header::CONTENT_LENGTH, len)
            .body(Body::from_stream(first))
            .expect("valid response"));
    }
    let mut first = Some((len, first));
    // Small objects are read ahead, several at a time; large and transcoded ones are
    // opened in turn, as the body reaches them.
    let parts = stream::iter(found.into_iter().zip(targets))
        .map(move |(loc, target)| {
            let app = app.clone();
            let opened = first.take();
            async move {
                let ahead = match opened {
                    Some(ready) => Some(Ok(ready)),
                    // (Mapping reads nothing: mapped objects are not read ahead.)
                    None if small_as_stored(&loc, &target) && !reading.maps(&loc, &target) => {
                        Some(instance_bytes(&app, &loc, &target, reading).await)
                    }
                    None => None,
                };
                (app, loc, target, ahead)
            }
        })
        .buffered(READ_AHEAD)
        .then(move |(app, loc, target, ahead)| async move {
            let opened = match ahead {
                Some(opened) => opened,
                None => instance_bytes(&app, &loc, &target, reading).await,
            };
            let (len, body) = match opened {
                Ok((len, body)) => (Some(len), body),
                Err(e) => {
                    tracing::error!(sop = %loc.sop_instance_uid, error = %e, "instance unreadable during retrieval");
                    (None, stream::once(async move { Err(std::io::Error::other(e.to_string())) }).boxed())
                }
            };
            let content_type = format!("application/dicom; transfer-syntax={target}");
            multipart::part(multipart::part_header(&content_type, len, None), body)
        })
        .flatten()
        .chain(multipart::closing());
    Ok(Response::builder()
        .header(
            header::CONTENT_TYPE,
            multipart::content_type("application/dicom"),
        )
        .body(Body::from_stream(parts))
        .expect("valid response"))
}

async fn metadata_scope(
    app: Arc<Context>,
    headers: HeaderMap,
    scope: Scope,
) -> Result<Response, ApiError> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    if !super::media::accepts_any(accept, &["application/dicom+json", "application/json"]) {
        return Err(ApiError::NotAcceptable(
            "metadata is available as application/dicom+json".into(),
        ));
    }
    let rows = app.index().metadata(&scope).await?;
    if rows.is_empty() {
        return Err(ApiError::NotFound(not_found_message(&scope)));
    }
    let base = app.base_url(&headers);
    let mut hasher = Sha256::new();
    hasher.update(base.as_bytes());
    for (_, sha) in &rows {
        hasher.update(sha.to_hex().as_bytes());
    }
    let etag = format!("\"{}\"", &hex::encode(hasher.finalize())[..32]);
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().trim_start_matches("W/") == etag || t.trim() == "*")
        });
    if matches {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    let prefix = format!("\"BulkDataURI\":\"{BULK_PREFIX}");
    let replacement = format!("\"BulkDataURI\":\"{base}/dicom-web/");
    let total: usize = rows.iter().map(|(j, _)| j.len() + 1).sum();
    let mut body = String::with_capacity(total + 2);
    body.push('[');
    for (i, (json, _)) in rows.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&json.replace(&prefix, &replacement));
    }
    body.push(']');
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/dicom+json")],
        body,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, v);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(s: &str) -> Vec<Acceptable> {
        parse_accept(Some(s))
    }

    #[test]
    fn negotiation() {
        let n = |a: &str, single| negotiate(&accept(a), single);
        assert!(matches!(
            n("*/*", false),
            Ok((Packaging::Multipart, Wanted::Default))
        ));
        assert!(matches!(
            n("multipart/related; type=application/dicom", false),
            Ok((Packaging::Multipart, Wanted::Default))
        ));
        assert!(matches!(
            n(
                "multipart/related; type=\"application/dicom\"; transfer-syntax=*",
                false
            ),
            Ok((Packaging::Multipart, Wanted::AsStored))
        ));
        assert!(matches!(
            n("application/dicom", true),
            Ok((Packaging::Single, _))
        ));
        assert!(n("application/dicom", false).is_err());
        assert!(n("application/zip", true).is_err());
        let (_, wanted) = n(
            "multipart/related; type=application/dicom; transfer-syntax=1.2.840.10008.1.2",
            true,
        )
        .unwrap();
        assert_eq!(wanted, Wanted::Exactly(TransferSyntax::implicit_vr_le()));
    }
}
