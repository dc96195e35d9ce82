//! The HTTP middleware: authenticate the caller, authorize the route (the table is
//! [`super::policy`]), and put the [`Principal`] into the request for handlers that narrow
//! what it sees. Credentials are checked by `auth::Auth`; this file is their HTTP face.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::policy::{need, study_scope_allows, Need};
use crate::auth::{AuthError, Principal, Via};
use crate::context::Context;
use crate::index::admin::AuditEvent;
use crate::model::Role;

/// The cookie the viewer page sets, so that the viewer's own assets load with its token.
pub const COOKIE: &str = "pacs_token";

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = Json(serde_json::json!({ "error": code, "message": message.into() }));
    let mut rsp = (status, body).into_response();
    if status == StatusCode::UNAUTHORIZED {
        rsp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"pacs-lite\""),
        );
    }
    rsp
}

/// The token a request carries: the Authorization header, or for reads a `token` query
/// parameter (the viewer URL) or the viewer cookie.
pub fn presented_token(
    headers: &HeaderMap,
    query: Option<&str>,
    read: bool,
) -> Option<(String, Source)> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        let token = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .unwrap_or(v)
            .trim()
            .to_owned();
        return Some((token, Source::Header));
    }
    if !read {
        return None;
    }
    if let Some(q) = query {
        if let Some((_, t)) = form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "token") {
            return Some((t.into_owned(), Source::Query));
        }
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| (v.to_owned(), Source::Cookie))
}

/// Where a token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Header,
    Query,
    Cookie,
}

fn signed_ok(ctx: &Context, path: &str, query: Option<&str>) -> Option<Result<(), AuthError>> {
    let q = query?;
    let params: std::collections::HashMap<String, String> =
        form_urlencoded::parse(q.as_bytes()).into_owned().collect();
    let signature = params.get("signature")?;
    // The signature covers the path and every other parameter, in order.
    let mut rest = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(q.as_bytes()) {
        if !matches!(k.as_ref(), "expires" | "kid" | "signature") {
            rest.append_pair(&k, &v);
        }
    }
    let rest = rest.finish();
    let target = if rest.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{rest}")
    };
    Some(ctx.auth.verify_signed_path(
        &target,
        params.get("expires").map(String::as_str).unwrap_or(""),
        params.get("kid").map(String::as_str).unwrap_or(""),
        signature,
    ))
}

/// What the middleware knows of a request before it runs.
struct Call {
    method: Method,
    path: String,
    query: Option<String>,
    peer: SocketAddr,
    required: Need,
}

impl Call {
    fn of(req: &Request, peer: SocketAddr) -> Self {
        let (method, path) = (req.method().clone(), req.uri().path().to_owned());
        Call {
            required: need(&method, &path),
            query: req.uri().query().map(str::to_owned),
            method,
            path,
            peer,
        }
    }

    fn is_read(&self) -> bool {
        self.method == Method::GET || self.method == Method::HEAD
    }
}

/// The middleware: public routes pass, a validly signed URL passes for the routes that
/// take one, everything else needs a principal with the route's role (and, for a study
/// token, the route inside its study). Successful reads, queries and deletes are audited.
pub async fn authorize(
    State(ctx): State<Arc<Context>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let call = Call::of(&req, peer);
    let min = match call.required {
        Need::Public => return next.run(req).await,
        Need::SignedOr(role) => match signed_ok(&ctx, &call.path, call.query.as_deref()) {
            Some(Ok(())) => return serve_signed(&ctx, &call, req, next).await,
            Some(Err(e)) => return signature_refused(e),
            None => role,
        },
        Need::Role(role) => role,
    };
    let (principal, cookie) = match identify(&ctx, &call, req.headers()) {
        Ok(found) => found,
        Err(refused) => return *refused,
    };
    if let Err(refused) = permit(&principal, min, &call) {
        return *refused;
    }
    let audit = audit_event(&principal, &call);
    req.extensions_mut().insert(principal);
    let mut rsp = next.run(req).await;
    if let Some(event) = audit.filter(|_| rsp.status().is_success()) {
        ctx.index().audit(event);
    }
    if let Some(token) = cookie {
        set_cookie(&mut rsp, &token, ctx.auth.viewer_token_ttl_secs);
    }
    rsp
}

/// A request with a valid URL signature: served, and audited when it succeeds.
async fn serve_signed(ctx: &Context, call: &Call, req: Request, next: Next) -> Response {
    let rsp = next.run(req).await;
    if rsp.status().is_success() {
        let address = Some(call.peer.ip().to_string());
        let event = AuditEvent::new("signed-url", "signed-url", address, "read").detail(&call.path);
        ctx.index().audit(event);
    }
    rsp
}

fn signature_refused(e: AuthError) -> Response {
    match e {
        AuthError::Expired => error(
            StatusCode::FORBIDDEN,
            "url_expired",
            "this signed URL has expired",
        ),
        _ => error(
            StatusCode::FORBIDDEN,
            "bad_signature",
            "this URL's signature is not valid for it",
        ),
    }
}

/// The answer to a request that is not let through.
type Refused = Box<Response>;

/// Who is calling: the loopback principal when no credentials are configured, else the
/// principal its token proves; with the token to set as the viewer cookie, if any.
fn identify(
    ctx: &Context,
    call: &Call,
    headers: &HeaderMap,
) -> Result<(Principal, Option<String>), Refused> {
    if !ctx.auth.is_enabled() {
        if !call.peer.ip().is_loopback() {
            return Err(Box::new(error(
                StatusCode::FORBIDDEN,
                "loopback_only",
                "authentication is not configured; only loopback clients are served",
            )));
        }
        let local = Principal {
            name: "local".into(),
            role: Role::Admin,
            study: None,
            via: Via::Loopback,
        };
        return Ok((local, None));
    }
    let Some((token, source)) = presented_token(headers, call.query.as_deref(), call.is_read())
    else {
        return Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "a Bearer token is required",
        )));
    };
    match ctx.auth.authenticate(&token) {
        // The viewer page gets its token in the URL: its scripts and assets (loaded
        // without an Authorization header) then carry it as a cookie.
        Ok(p) => {
            let viewer_page = !call.path.starts_with("/dicom-web")
                && !call.path.starts_with("/api/")
                && call.path != "/wado";
            let cookie = (source == Source::Query && viewer_page).then_some(token);
            Ok((p, cookie))
        }
        Err(AuthError::Expired) => Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "token_expired",
            "the token has expired",
        ))),
        Err(e) => {
            tracing::info!(peer = %call.peer, error = %e, "authentication failed");
            Err(Box::new(error(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "the token is not valid",
            )))
        }
    }
}

/// Least privilege: the route's role, and a study token only inside its study.
fn permit(p: &Principal, min: Role, call: &Call) -> Result<(), Refused> {
    if p.role < min {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this needs the {} role", min.as_str()),
        )));
    }
    let in_scope = p
        .study
        .as_deref()
        .is_none_or(|study| study_scope_allows(&call.method, &call.path, study));
    if !in_scope {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "out_of_scope",
            "this token is limited to reading one study",
        )));
    }
    Ok(())
}

fn set_cookie(rsp: &mut Response, token: &str, ttl: u64) {
    let cookie = format!("{COOKIE}={token}; Path=/; Max-Age={ttl}; HttpOnly; SameSite=Lax");
    if let Ok(v) = header::HeaderValue::from_str(&cookie) {
        rsp.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// What a request does, for the audit trail: reads and queries of DICOMweb and the REST
/// API, and deletes (stores are recorded by the ingest path, per instance).
fn audit_event(p: &Principal, call: &Call) -> Option<AuditEvent> {
    let (method, path, query) = (&call.method, call.path.as_str(), call.query.as_deref());
    let via = match p.via {
        Via::Loopback => "loopback",
        Via::ApiKey => "api-key",
        Via::Jwt => "jwt",
        Via::StudyToken => "study-token",
    };
    let event =
        |action: &str| AuditEvent::new(&p.name, via, Some(call.peer.ip().to_string()), action);
    let s: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let read = call.is_read();
    match s.as_slice() {
        ["dicom-web", "changefeed", ..] => None,
        ["dicom-web", "studies", uid, ..] if method == Method::DELETE => {
            Some(event("delete").study(*uid).detail(path))
        }
        ["dicom-web", .., last] if read && matches!(*last, "studies" | "series" | "instances") => {
            // The study in the path, or the one the query names.
            let study = match s.as_slice() {
                ["dicom-web", "studies", uid, ..] => Some((*uid).to_owned()),
                _ => query.and_then(|q| {
                    form_urlencoded::parse(q.as_bytes())
                        .find(|(k, _)| k == "StudyInstanceUID" || k == "0020000D")
                        .map(|(_, v)| v.into_owned())
                }),
            };
            let mut e = event("query").detail(format!("{path}?{}", query.unwrap_or("")));
            e.study_uid = study;
            Some(e)
        }
        ["dicom-web", "studies", uid, ..] if read => Some(event("read").study(*uid).detail(path)),
        ["wado"] if read => {
            // WADO-URI names its study and object in the query (a token there is not recorded).
            let object = query_value(query, "objectUID").unwrap_or_default();
            let mut e = event("read").detail(format!("{path}?objectUID={object}"));
            e.study_uid = query_value(query, "studyUID");
            Some(e)
        }
        ["api", "v1", "radiology", "studies", id, ..] if read => {
            Some(event("read").study(*id).detail(path))
        }
        ["api", "v1", "radiology", "images", ..] if read => Some(event("read").detail(path)),
        _ => None,
    }
}

/// The first value of a query parameter.
fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
