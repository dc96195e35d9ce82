//! STOW-RS (PS3.18 §10.5): `POST /studies[/{study}]` with `multipart/related;
//! type="application/dicom"` or a single `application/dicom` body.
//!
//! Each part streams into the ingest path as it arrives; the response lists what was
//! stored (ReferencedSOPSequence) and what was not (FailedSOPSequence) with the standard
//! failure reasons. This file holds the one mapping from ingest outcomes to STOW.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{Stream, StreamExt};
use serde_json::{json, Map, Value as Json};

use super::media::MediaType;
use super::resource::Resource;
use super::ApiError;
use crate::context::Context;
use crate::ingest::{Accepted, Expected, Outcome, Reason, Rejection};
use crate::model::Uid;
use crate::model::{Origin, OriginKind};

const DICOM_JSON: &str = "application/dicom+json";

/// `POST /studies` and `POST /studies/{study}`.
pub async fn store(
    State(app): State<Arc<Context>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    r: Resource,
    headers: HeaderMap,
    principal: Option<axum::Extension<crate::auth::Principal>>,
    body: Body,
) -> Result<Response, ApiError> {
    let who = principal.map_or_else(|| "anonymous".to_owned(), |p| p.0.name);
    run(app, peer, who, headers, r.study, body).await
}

/// How the request body is framed.
enum Framing {
    Single,
    Multipart { boundary: String },
}

fn framing(headers: &HeaderMap) -> Result<Framing, ApiError> {
    let raw = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::UnsupportedMediaType(
                "a Content-Type is required: multipart/related; type=\"application/dicom\"".into(),
            )
        })?;
    let media = MediaType::parse(raw).ok_or_else(|| {
        ApiError::UnsupportedMediaType(format!("cannot parse Content-Type {raw:?}"))
    })?;
    match media.essence.as_str() {
        "application/dicom" => Ok(Framing::Single),
        "multipart/related" => {
            if let Some(ty) = media.param("type") {
                if !ty.eq_ignore_ascii_case("application/dicom") {
                    return Err(ApiError::UnsupportedMediaType(format!(
                        "multipart/related type {ty:?} is not supported; send type=\"application/dicom\""
                    )));
                }
            }
            let boundary = media
                .param("boundary")
                .filter(|b| !b.is_empty())
                .ok_or_else(|| ApiError::BadRequest("multipart/related without a boundary parameter".into()))?;
            Ok(Framing::Multipart { boundary: boundary.to_owned() })
        }
        other => Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {other} is not supported; send multipart/related; type=\"application/dicom\" or application/dicom"
        ))),
    }
}

fn check_accept(headers: &HeaderMap) -> Result<(), ApiError> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    if super::media::accepts_any(accept, &[DICOM_JSON, "application/json"]) {
        return Ok(());
    }
    Err(ApiError::NotAcceptable(format!(
        "the store response is available as {DICOM_JSON} only, not {}",
        accept.unwrap_or("")
    )))
}

async fn run(
    app: Arc<Context>,
    peer: std::net::SocketAddr,
    who: String,
    headers: HeaderMap,
    study: Option<Uid>,
    body: Body,
) -> Result<Response, ApiError> {
    check_accept(&headers)?;
    let framing = framing(&headers)?;
    let limit = app.config.http.max_request_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge(format!(
            "the request body exceeds the limit of {limit} bytes"
        )));
    }
    let over = Arc::new(AtomicBool::new(false));
    let stream = limited(body.into_data_stream(), limit, over.clone());
    let origin = Origin {
        kind: OriginKind::Stow,
        who,
        address: Some(peer.ip().to_string()),
    };
    let expected = Expected {
        study_uid: study.clone(),
        ..Default::default()
    };
    let mut parts = Pipeline::new(app.clone(), origin, expected);
    let framing_result = match framing {
        Framing::Single => parts.add(stream).await,
        Framing::Multipart { boundary } => {
            let mut multipart = multer::Multipart::new(stream, boundary);
            loop {
                let field = match multipart.next_field().await {
                    Ok(Some(f)) => f,
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e.to_string()),
                };
                let part_type = field
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok());
                let part_media =
                    part_type.map(|t| MediaType::parse(t).map(|m| m.essence).unwrap_or_default());
                if let Some(ct) = part_media.filter(|m| m != "application/dicom") {
                    let detail = format!(
                        "part {} has Content-Type {ct}, not application/dicom",
                        parts.len() + 1
                    );
                    parts.refuse(Rejection::new(Reason::CannotUnderstand, detail));
                    continue;
                }
                if let Err(e) = parts.add(field).await {
                    break Err(e);
                }
            }
        }
    };
    // Every part that was received completely is stored (or refused) before answering.
    let outcomes = parts.finish().await;
    if let Err(cause) = framing_result {
        return Err(body_error(&over, limit, &cause, outcomes.len()));
    }
    if outcomes.is_empty() {
        return Err(ApiError::BadRequest(
            "the request holds no DICOM instance".into(),
        ));
    }
    let base = app.base_url(&headers);
    Ok(render(&base, study.as_ref(), &outcomes))
}

/// The parts of one request: each is spooled as it arrives, then stored on its own task
/// while the next part is read, so that fsyncs overlap and index rows share commits.
/// At most [`IN_FLIGHT`] parts are being stored at once; outcomes keep request order.
struct Pipeline {
    app: Arc<Context>,
    origin: Origin,
    expected: Arc<Expected>,
    pending: FuturesOrdered<BoxFuture<'static, Outcome>>,
    done: Vec<Outcome>,
}

const IN_FLIGHT: usize = 16;

impl Pipeline {
    fn new(app: Arc<Context>, origin: Origin, expected: Expected) -> Self {
        Pipeline {
            app,
            origin,
            expected: Arc::new(expected),
            pending: FuturesOrdered::new(),
            done: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.done.len() + self.pending.len()
    }

    /// A part refused before it was spooled (counted by ingest like any refusal).
    fn refuse(&mut self, r: Rejection) {
        let outcome = self.app.ingest.refuse(&self.origin, r);
        self.answered(outcome);
    }

    fn answered(&mut self, outcome: Outcome) {
        self.pending
            .push_back(Box::pin(futures::future::ready(outcome)));
    }

    /// Spool one part and start storing it. Err: the body broke off inside this part.
    async fn add<S, E>(&mut self, part: S) -> Result<(), String>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        match self.app.ingest.spool(&self.origin, part).await {
            // The body broke off inside this part (counted as the part's refusal): the
            // request is answered as a whole with what went wrong.
            Err(Outcome::Rejected(r)) if r.reason == Reason::Truncated => return Err(r.detail),
            Err(outcome) => self.answered(outcome),
            Ok(spooled) => {
                let (ingest, origin, expected) = (
                    self.app.ingest.clone(),
                    self.origin.clone(),
                    self.expected.clone(),
                );
                let task =
                    tokio::spawn(
                        async move { ingest.store_spooled(spooled, origin, &expected).await },
                    );
                let (ingest, origin) = (self.app.ingest.clone(), self.origin.clone());
                self.pending.push_back(Box::pin(async move {
                    task.await.unwrap_or_else(|e| {
                        tracing::error!(error = %e, "store task failed");
                        let detail = "the server failed while storing the object";
                        ingest.refuse(&origin, Rejection::new(Reason::ProcessingFailure, detail))
                    })
                }));
            }
        }
        while self.pending.len() >= IN_FLIGHT {
            if let Some(outcome) = self.pending.next().await {
                self.done.push(outcome);
            }
        }
        Ok(())
    }

    async fn finish(mut self) -> Vec<Outcome> {
        while let Some(outcome) = self.pending.next().await {
            self.done.push(outcome);
        }
        self.done
    }
}

/// Count body bytes and end the stream with an error once `limit` is passed.
fn limited(
    body: impl Stream<Item = Result<Bytes, axum::Error>> + Send + 'static,
    limit: u64,
    over: Arc<AtomicBool>,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let mut seen = 0u64;
    body.map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        seen += chunk.len() as u64;
        if seen > limit {
            over.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other(format!(
                "request body exceeds {limit} bytes"
            )));
        }
        Ok(chunk)
    })
}

fn body_error(over: &AtomicBool, limit: u64, cause: &str, done: usize) -> ApiError {
    let kept = if done > 0 {
        format!(" ({done} complete instance(s) before it were processed)")
    } else {
        String::new()
    };
    if over.load(Ordering::Relaxed) {
        ApiError::PayloadTooLarge(format!(
            "the request body exceeds the limit of {limit} bytes{kept}"
        ))
    } else {
        ApiError::BadRequest(format!(
            "malformed or truncated request body: {cause}{kept}"
        ))
    }
}

/// The STOW failure reason (PS3.18 §10.5.3, PS3.4 Annex B) for an ingest rejection: the
/// one mapping from ingest outcomes to STOW-RS.
fn failure_reason(reason: Reason) -> u16 {
    const PROCESSING_FAILURE: u16 = 0x0110;
    const DUPLICATE_SOP_INSTANCE: u16 = 0x0111;
    const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
    const OUT_OF_RESOURCES: u16 = 0xA700;
    const DATA_SET_DOES_NOT_MATCH_SOP_CLASS: u16 = 0xA900;
    const CANNOT_UNDERSTAND: u16 = 0xC000;
    const TRANSFER_SYNTAX_NOT_SUPPORTED: u16 = 0xC122;
    const STUDY_UID_MISMATCH: u16 = 0xC409;
    match reason {
        Reason::CannotUnderstand
        | Reason::MissingAttribute
        | Reason::InvalidUid
        | Reason::Truncated
        | Reason::SizeMismatch
        | Reason::ChecksumMismatch => CANNOT_UNDERSTAND,
        Reason::UnsupportedTransferSyntax => TRANSFER_SYNTAX_NOT_SUPPORTED,
        Reason::SopClassNotSupported => SOP_CLASS_NOT_SUPPORTED,
        Reason::DataSetMismatch => DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
        Reason::StudyUidMismatch => STUDY_UID_MISMATCH,
        Reason::ConflictingDuplicate => DUPLICATE_SOP_INSTANCE,
        Reason::TooLarge | Reason::OutOfResources => OUT_OF_RESOURCES,
        Reason::ProcessingFailure => PROCESSING_FAILURE,
    }
}

fn ui(v: &str) -> Json {
    json!({ "vr": "UI", "Value": [v] })
}

/// The store response: 200 when everything was stored, 202 when some parts were not (or
/// carry a warning), 409 when none was; a `Warning` header per problem.
fn render(base: &str, study: Option<&Uid>, outcomes: &[Outcome]) -> Response {
    let mut referenced = Vec::new();
    let mut failed = Vec::new();
    let mut warnings = Vec::new();
    for outcome in outcomes {
        match outcome {
            Outcome::Stored(a) | Outcome::AlreadyStored(a) => {
                referenced.push(Json::Object(referenced_item(base, a)));
                if a.kept_original {
                    warnings.push(format!(
                        "{}: a different copy is stored and was kept unchanged",
                        a.sop_instance_uid
                    ));
                }
            }
            Outcome::Rejected(r) => {
                failed.push(Json::Object(failed_item(r)));
                warnings.push(match &r.sop_instance_uid {
                    Some(uid) => format!("{uid}: {}", r.detail),
                    None => r.detail.clone(),
                });
            }
        }
    }
    let status = match (referenced.is_empty(), failed.is_empty()) {
        (_, true) if warnings.is_empty() => StatusCode::OK,
        (false, _) => StatusCode::ACCEPTED,
        (true, _) => StatusCode::CONFLICT,
    };
    let mut body = Map::new();
    if let Some(study) = study {
        body.insert(
            "00081190".into(),
            json!({ "vr": "UR", "Value": [format!("{base}/dicom-web/studies/{study}")] }),
        );
    }
    if !failed.is_empty() {
        body.insert("00081198".into(), json!({ "vr": "SQ", "Value": failed }));
    }
    if !referenced.is_empty() {
        body.insert(
            "00081199".into(),
            json!({ "vr": "SQ", "Value": referenced }),
        );
    }
    let mut response = (
        status,
        [(header::CONTENT_TYPE, DICOM_JSON)],
        Json::Object(body).to_string(),
    )
        .into_response();
    add_warnings(&mut response, &warnings);
    response
}

/// One `Warning: 299` header per problem (at most 20).
fn add_warnings(response: &mut Response, warnings: &[String]) {
    for w in warnings.iter().take(20) {
        let text = format!(
            "299 pacs-lite \"{}\"",
            w.replace(['"', '\\', '\r', '\n'], "'")
        );
        if let Ok(v) = HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, v);
        }
    }
}

/// An item of the FailedSOPSequence.
fn failed_item(r: &Rejection) -> Map<String, Json> {
    let uid_or_empty = |u: &Option<Uid>| u.as_ref().map_or(json!({"vr": "UI"}), |u| ui(u.as_str()));
    let mut item = Map::new();
    item.insert("00081150".into(), uid_or_empty(&r.sop_class_uid));
    item.insert("00081155".into(), uid_or_empty(&r.sop_instance_uid));
    item.insert(
        "00081197".into(),
        json!({ "vr": "US", "Value": [failure_reason(r.reason)] }),
    );
    item.insert(
        "00000902".into(),
        json!({ "vr": "LO", "Value": [truncate(&r.detail, 64)] }),
    );
    item
}

/// An item of the ReferencedSOPSequence (with the warning of a kept original).
fn referenced_item(base: &str, a: &Accepted) -> Map<String, Json> {
    let mut item = Map::new();
    if a.kept_original {
        item.insert("00081196".into(), json!({ "vr": "US", "Value": [0xB000] }));
    }
    item.insert("00081150".into(), ui(a.sop_class_uid.as_str()));
    item.insert("00081155".into(), ui(a.sop_instance_uid.as_str()));
    item.insert(
        "00081190".into(),
        json!({ "vr": "UR", "Value": [format!(
            "{base}/dicom-web/studies/{}/series/{}/instances/{}",
            a.study_uid, a.series_uid, a.sop_instance_uid
        )] }),
    );
    item
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].to_owned(),
        None => s.to_owned(),
    }
}
