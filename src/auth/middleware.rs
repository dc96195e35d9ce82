//! The HTTP middleware: authenticate the caller, authorize the route, and put the
//! [`Principal`] into the request for handlers that narrow what it sees.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::policy::{need, study_scope_allows, Need};
use super::{AuthError, Principal, Role, Via};
use crate::app::AppState;
use crate::index::admin::AuditEvent;

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

fn signed_ok(state: &AppState, path: &str, query: Option<&str>) -> Option<Result<(), AuthError>> {
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
    Some(state.auth.verify_signed_path(
        &target,
        params.get("expires").map(String::as_str).unwrap_or(""),
        params.get("kid").map(String::as_str).unwrap_or(""),
        signature,
    ))
}

pub async fn authorize(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let required = need(&method, &path);
    if required == Need::Public {
        return next.run(req).await;
    }
    if let Need::SignedOr(_) = required {
        match signed_ok(&state, &path, query.as_deref()) {
            Some(Ok(())) => {
                let rsp = next.run(req).await;
                if rsp.status().is_success() {
                    let event = AuditEvent::new(
                        "signed-url",
                        "signed-url",
                        Some(peer.ip().to_string()),
                        "read",
                    )
                    .detail(path.clone());
                    state.ingest.index().audit(event);
                }
                return rsp;
            }
            Some(Err(AuthError::Expired)) => {
                return error(
                    StatusCode::FORBIDDEN,
                    "url_expired",
                    "this signed URL has expired",
                )
            }
            Some(Err(_)) => {
                return error(
                    StatusCode::FORBIDDEN,
                    "bad_signature",
                    "this URL's signature is not valid for it",
                )
            }
            None => {}
        }
    }
    let min = match required {
        Need::Role(r) | Need::SignedOr(r) => r,
        Need::Public => unreachable!(),
    };
    let read = method == axum::http::Method::GET || method == axum::http::Method::HEAD;
    let (principal, cookie) = if !state.auth.is_enabled() {
        if !peer.ip().is_loopback() {
            return error(
                StatusCode::FORBIDDEN,
                "loopback_only",
                "authentication is not configured; only loopback clients are served",
            );
        }
        let local = Principal {
            name: "local".into(),
            role: Role::Admin,
            study: None,
            via: Via::Loopback,
        };
        (local, None)
    } else {
        let Some((token, source)) = presented_token(req.headers(), query.as_deref(), read) else {
            return error(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "a Bearer token is required",
            );
        };
        match state.auth.authenticate(&token) {
            // The viewer page gets its token in the URL: its scripts and assets (loaded
            // without an Authorization header) then carry it as a cookie.
            Ok(p) => {
                let viewer_page = !path.starts_with("/dicom-web") && !path.starts_with("/api/");
                let cookie = (source == Source::Query && viewer_page).then_some(token);
                (p, cookie)
            }
            Err(AuthError::Expired) => {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "token_expired",
                    "the token has expired",
                )
            }
            Err(e) => {
                tracing::info!(%peer, error = %e, "authentication failed");
                return error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_token",
                    "the token is not valid",
                );
            }
        }
    };
    if principal.role < min {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this needs the {} role", min.as_str()),
        );
    }
    if !principal_allowed(&principal, min, &method, &path) {
        return error(
            StatusCode::FORBIDDEN,
            "out_of_scope",
            "this token is limited to reading one study",
        );
    }
    let audit = audit_event(&principal, &peer, &method, &path, query.as_deref());
    req.extensions_mut().insert(principal);
    let mut rsp = next.run(req).await;
    if let Some(event) = audit {
        if rsp.status().is_success() {
            state.ingest.index().audit(event);
        }
    }
    if let Some(token) = cookie {
        let ttl = state.auth.viewer_token_ttl_secs;
        if let Ok(v) = header::HeaderValue::from_str(&format!(
            "{COOKIE}={token}; Path=/; Max-Age={ttl}; HttpOnly; SameSite=Lax"
        )) {
            rsp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    rsp
}

/// What a request does, for the audit trail: reads and queries of DICOMweb and the REST
/// API, and deletes (stores are recorded by the ingest path, per instance).
fn audit_event(
    p: &Principal,
    peer: &SocketAddr,
    method: &axum::http::Method,
    path: &str,
    query: Option<&str>,
) -> Option<AuditEvent> {
    let via = match p.via {
        Via::Loopback => "loopback",
        Via::ApiKey => "api-key",
        Via::Jwt => "jwt",
        Via::StudyToken => "study-token",
    };
    let event = |action: &str| AuditEvent::new(&p.name, via, Some(peer.ip().to_string()), action);
    let s: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let read = method == axum::http::Method::GET || method == axum::http::Method::HEAD;
    match s.as_slice() {
        ["dicom-web", "changefeed", ..] => None,
        ["dicom-web", "studies", uid, ..] if method == axum::http::Method::DELETE => {
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
        ["api", "v1", "radiology", "studies", id, ..] if read => {
            Some(event("read").study(*id).detail(path))
        }
        ["api", "v1", "radiology", "images", ..] if read => Some(event("read").detail(path)),
        _ => None,
    }
}

fn principal_allowed(p: &Principal, min: Role, method: &axum::http::Method, path: &str) -> bool {
    p.role >= min
        && p.study
            .as_deref()
            .is_none_or(|study| study_scope_allows(method, path, study))
}
