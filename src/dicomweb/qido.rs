//! QIDO-RS (PS3.18 §10.6): search for studies, series and instances.
//!
//! Parses the query string into the shared query model (`model::query`), runs one index
//! search and renders `application/dicom+json`. Unknown query keys are ignored with a
//! `Warning` header; malformed values (a bad UID, a bad date) are a 400.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use dicom_core::Tag;
use serde_json::{json, Map, Value as Json};

use super::media::accepts_any;
use super::resource::Resource;
use super::ApiError;
use crate::auth::Principal;
use crate::context::Context;
use crate::index::query::{Hit, Query};
use crate::model::query::{AttributeKey, Filter, Level, Matcher};
use crate::model::Uid;
use axum::Extension;

/// Results returned when the request names no `limit`.
const DEFAULT_LIMIT: usize = 1000;
/// The most results one request may ask for.
const MAX_LIMIT: usize = 10_000;

/// Search at one level, within the study and series the URL names (if any).
pub async fn search_at(
    level: Level,
    State(app): State<Arc<Context>>,
    r: Resource,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    principal: Option<Extension<Principal>>,
) -> Result<Response, ApiError> {
    let scope = principal.and_then(|Extension(p)| p.study);
    search(app, headers, level, r.study, r.series, q, scope).await
}

/// The query string, parsed.
#[derive(Debug, Default)]
struct Params {
    filters: Vec<Filter>,
    includes: Vec<AttributeKey>,
    include_all: bool,
    fuzzy: bool,
    limit: Option<usize>,
    offset: usize,
    ignored: Vec<String>,
}

fn parse_params(raw: Option<&str>) -> Result<Params, ApiError> {
    let mut p = Params::default();
    let bad = |m: String| ApiError::BadRequest(m);
    for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "limit" => {
                p.limit = Some(
                    v.parse()
                        .map_err(|_| bad(format!("limit {v:?} is not a number")))?,
                )
            }
            "offset" => {
                p.offset = v
                    .parse()
                    .map_err(|_| bad(format!("offset {v:?} is not a number")))?
            }
            "fuzzymatching" => {
                p.fuzzy = match v.as_ref() {
                    "true" => true,
                    "false" => false,
                    other => {
                        return Err(bad(format!(
                            "fuzzymatching must be true or false, not {other:?}"
                        )))
                    }
                }
            }
            "includefield" => {
                for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    if item == "all" {
                        p.include_all = true;
                    } else if let Some(key) = AttributeKey::parse(item) {
                        p.includes.push(key);
                    } else {
                        p.ignored.push(format!("includefield {item}"));
                    }
                }
            }
            name => match AttributeKey::parse(name) {
                Some(key) => {
                    let matcher = Matcher::parse(&key, &v)
                        .map_err(|e| bad(format!("query key {name}: {}", e.reason)))?;
                    merge_filter(&mut p.filters, Filter { key, matcher });
                }
                None => p.ignored.push(name.to_owned()),
            },
        }
    }
    if p.includes.len() > 1000 {
        return Err(bad("includefield lists more than 1000 attributes".into()));
    }
    Ok(p)
}

/// A repeated UID key widens the UID list; any other repeated key narrows (AND).
fn merge_filter(filters: &mut Vec<Filter>, f: Filter) {
    if let Some(existing) = filters.iter_mut().find(|e| e.key == f.key) {
        let merged = match (&existing.matcher, &f.matcher) {
            (Matcher::Exact(a) | Matcher::Wildcard(a), Matcher::Exact(b))
                if f.key.vr == dicom_core::VR::UI =>
            {
                Uid::parse(a)
                    .ok()
                    .zip(Uid::parse(b).ok())
                    .map(|(a, b)| Matcher::UidList(vec![a, b]))
            }
            (Matcher::UidList(list), Matcher::Exact(b)) => Uid::parse(b)
                .ok()
                .map(|b| Matcher::UidList(list.iter().cloned().chain([b]).collect())),
            _ => None,
        };
        if let Some(m) = merged {
            existing.matcher = m;
            return;
        }
    }
    filters.push(f);
}

async fn search(
    app: Arc<Context>,
    headers: HeaderMap,
    level: Level,
    study_uid: Option<Uid>,
    series_uid: Option<Uid>,
    raw: Option<String>,
    scope: Option<String>,
) -> Result<Response, ApiError> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    if !accepts_any(accept, &["application/dicom+json", "application/json"]) {
        return Err(ApiError::NotAcceptable(
            "search results are available as application/dicom+json".into(),
        ));
    }
    let mut p = parse_params(raw.as_deref())?;
    let study_uid = narrow_to_token(&mut p, level, study_uid, scope)?;
    let limit = p.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    let query = Query {
        level,
        study_uid,
        series_uid,
        full_instance_json: level == Level::Instance
            && (p.include_all || !p.includes.is_empty() || !p.filters.is_empty()),
        filters: std::mem::take(&mut p.filters),
        fuzzy: p.fuzzy,
        offset: p.offset,
        limit,
    };
    let found = app.index().search(&query).await?;
    let base = app.base_url(&headers);
    let more = found.more;
    let body: Vec<Json> = found
        .hits
        .into_iter()
        .map(|hit| {
            Json::Object(render_hit(
                hit,
                &base,
                &query.filters,
                &p.includes,
                p.include_all,
            ))
        })
        .collect();
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/dicom+json")],
        Json::Array(body).to_string(),
    )
        .into_response();
    add_warnings(&mut response, &p, more, limit);
    Ok(response)
}

/// A study-scoped token sees its study only (the middleware already refused other studies
/// named in the path): the study UID the search is narrowed to.
fn narrow_to_token(
    p: &mut Params,
    level: Level,
    study_uid: Option<Uid>,
    scope: Option<String>,
) -> Result<Option<Uid>, ApiError> {
    let Some(study) = scope else {
        return Ok(study_uid);
    };
    if level == Level::Study {
        p.filters.push(Filter {
            key: AttributeKey {
                path: vec![dicom_dictionary_std::tags::STUDY_INSTANCE_UID],
                vr: dicom_core::VR::UI,
            },
            matcher: Matcher::Exact(study),
        });
        return Ok(study_uid);
    }
    match study_uid {
        Some(uid) => Ok(Some(uid)),
        None => Uid::parse(&study)
            .map(Some)
            .map_err(|e| ApiError::BadRequest(e.to_string())),
    }
}

/// `Warning` headers: query keys ignored, and results cut at the default limit.
fn add_warnings(response: &mut Response, p: &Params, more: bool, limit: usize) {
    let mut warnings: Vec<String> = p
        .ignored
        .iter()
        .map(|k| format!("the query key {k} is not supported and was ignored"))
        .collect();
    if more && p.limit.is_none() {
        warnings.push(format!(
            "the number of results exceeded {limit}; additional results can be requested with offset"
        ));
    }
    for w in warnings.iter().take(20) {
        let text = format!("299 pacs-lite \"{}\"", w.replace(['"', '\\'], "'"));
        if let Ok(v) = HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, v);
        }
    }
}

fn tag_key(tag: Tag) -> String {
    format!("{:04X}{:04X}", tag.0, tag.1)
}

/// The level's attributes, the requested and matched ones from the levels above, and the
/// RetrieveURL. Bulk data is never part of a search result.
fn render_hit(
    hit: Hit,
    base: &str,
    filters: &[Filter],
    includes: &[AttributeKey],
    all: bool,
) -> Map<String, Json> {
    let mut out = hit.attrs;
    if all {
        for (k, v) in hit.context.iter() {
            out.entry(k.clone()).or_insert_with(|| v.clone());
        }
    } else {
        let wanted = includes
            .iter()
            .map(|k| k.path[0])
            .chain(filters.iter().map(|f| f.key.path[0]));
        for tag in wanted {
            let k = tag_key(tag);
            if let Some(v) = hit.context.get(&k) {
                out.entry(k).or_insert_with(|| v.clone());
            }
        }
    }
    out.retain(|_, v| v.get("BulkDataURI").is_none() && v.get("InlineBinary").is_none());
    let mut url = format!("{base}/dicom-web/studies/{}", hit.study_uid);
    if let Some(series) = &hit.series_uid {
        url.push_str(&format!("/series/{series}"));
    }
    if let Some(sop) = &hit.sop_instance_uid {
        url.push_str(&format!("/instances/{sop}"));
    }
    out.insert("00081190".into(), json!({ "vr": "UR", "Value": [url] }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_query_strings() {
        let p = parse_params(Some(
            "PatientName=Do%2A&00100020=P1&includefield=00081030,StudyDescription&includefield=all\
             &limit=5&offset=2&fuzzymatching=true&Bogus=1&StudyInstanceUID=1.2&StudyInstanceUID=1.3",
        ))
        .unwrap();
        assert_eq!(p.filters.len(), 3);
        assert_eq!(p.filters[0].matcher, Matcher::Wildcard("Do*".into()));
        assert!(matches!(&p.filters[2].matcher, Matcher::UidList(l) if l.len() == 2));
        assert_eq!(p.includes.len(), 2);
        assert!(p.include_all && p.fuzzy);
        assert_eq!((p.limit, p.offset), (Some(5), 2));
        assert_eq!(p.ignored, vec!["Bogus".to_owned()]);
        assert!(parse_params(Some("StudyDate=2024")).is_err());
        assert!(parse_params(Some("StudyInstanceUID=abc")).is_err());
        assert!(parse_params(Some("limit=-1")).is_err());
        assert!(parse_params(Some("fuzzymatching=yes")).is_err());
    }
}
