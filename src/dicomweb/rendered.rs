//! WADO-RS rendered resources and thumbnails (PS3.18 §10.4.1.1.3, §10.4.1.1.5): consumer
//! images (JPEG or PNG) of studies, series, instances and frames, via `render/`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::stream::{self, StreamExt};

use super::media::parse_accept;
use super::multipart;
use super::resource::Resource;
use super::wado::{locate, with_object_file};
use super::ApiError;
use crate::context::Context;
use crate::index::read::{InstanceLocation, Scope};
use crate::render::{self, Format, Params, RenderError};

/// Which image of the scope is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pick {
    /// Every instance (study or series `rendered`), as a multipart answer.
    All,
    /// One representative image (thumbnails; instance and frame `rendered`).
    One,
}

/// `…/rendered` at study, series, instance and frame level.
pub async fn rendered(
    State(app): State<Arc<Context>>,
    r: Resource,
    RawQuery(q): RawQuery,
    h: HeaderMap,
) -> Result<Response, ApiError> {
    let frame = r.frames.as_deref().map(single_frame).transpose()?;
    let pick = if r.instance.is_some() {
        Pick::One
    } else {
        Pick::All
    };
    answer(app, r.scope()?, frame, pick, false, q, h).await
}

/// `…/thumbnail` at study, series, instance and frame level.
pub async fn thumbnail(
    State(app): State<Arc<Context>>,
    r: Resource,
    RawQuery(q): RawQuery,
    h: HeaderMap,
) -> Result<Response, ApiError> {
    let frame = r.frames.as_deref().map(single_frame).transpose()?;
    answer(app, r.scope()?, frame, Pick::One, true, q, h).await
}

fn single_frame(list: &str) -> Result<u32, ApiError> {
    match list.trim().parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(ApiError::BadRequest(format!(
            "rendered frames are served one at a time: {list:?} must be one frame number (from 1)"
        ))),
    }
}

/// Parse the query string and the Accept header into rendering parameters.
fn params(raw: Option<&str>, headers: &HeaderMap, thumbnail: bool) -> Result<Params, ApiError> {
    let mut p = Params {
        viewport: thumbnail.then_some((128, 128)),
        ..Default::default()
    };
    for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "window" => p.window = Some(render::parse_window(&v).map_err(ApiError::BadRequest)?),
            "viewport" => {
                let (size, region) = render::parse_viewport(&v).map_err(ApiError::BadRequest)?;
                p.viewport = Some(size);
                p.region = region.map(render::Crop::Pixels);
            }
            "quality" => {
                p.quality = v
                    .parse::<u8>()
                    .ok()
                    .filter(|q| (1..=100).contains(q))
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!("quality {v:?} must be from 1 to 100"))
                    })?
            }
            "charset" | "annotation" | "iccprofile" => {}
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {other:?} for a rendered resource"
                )))
            }
        }
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    p.format = pick_format(accept).ok_or_else(|| {
        ApiError::NotAcceptable("rendered images are available as image/jpeg or image/png".into())
    })?;
    Ok(p)
}

fn pick_format(accept: Option<&str>) -> Option<Format> {
    for a in parse_accept(accept) {
        let inner = match a.media.essence.as_str() {
            "multipart/related" => a
                .media
                .param("type")
                .unwrap_or("image/jpeg")
                .to_ascii_lowercase(),
            other => other.to_owned(),
        };
        match inner.as_str() {
            "image/jpeg" | "image/*" | "*/*" => return Some(Format::Jpeg),
            "image/png" => return Some(Format::Png),
            _ => {}
        }
    }
    None
}

#[allow(clippy::too_many_arguments)]
async fn answer(
    app: Arc<Context>,
    scope: Scope,
    frame: Option<u32>,
    pick: Pick,
    thumbnail: bool,
    raw: Option<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let params = params(raw.as_deref(), &headers, thumbnail)?;
    let mut found = locate(&app, &scope).await?;
    if pick == Pick::One {
        let loc = representative(found);
        let frame = frame.unwrap_or(if thumbnail {
            loc.number_of_frames.max(1) as u32 / 2 + 1
        } else {
            1
        });
        let image = render_one(&app, &loc, frame, &params).await?;
        return Ok(([(header::CONTENT_TYPE, params.format.media_type())], image).into_response());
    }
    found.truncate(10_000);
    let media = params.format.media_type();
    let parts = stream::iter(found)
        .then(move |loc| {
            let (app, params) = (app.clone(), params.clone());
            async move {
                let image = render_one(&app, &loc, 1, &params)
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()));
                let (len, body) = match image {
                    Ok(bytes) => (
                        Some(bytes.len() as u64),
                        stream::once(async move { Ok(Bytes::from(bytes)) }).boxed(),
                    ),
                    Err(e) => (None, stream::once(async move { Err(e) }).boxed()),
                };
                multipart::part(multipart::part_header(media, len, None), body)
            }
        })
        .flatten()
        .chain(multipart::closing());
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, multipart::content_type(media))
        .body(Body::from_stream(parts))
        .expect("valid response"))
}

/// The image that stands for a study or series: the middle instance of its first series.
fn representative(found: Vec<InstanceLocation>) -> InstanceLocation {
    let first_series = found[0].series_uid.clone();
    let mut series: Vec<InstanceLocation> = found
        .into_iter()
        .filter(|l| l.series_uid == first_series)
        .collect();
    let middle = series.len() / 2;
    series.swap_remove(middle)
}

pub(super) async fn render_one(
    app: &Context,
    loc: &InstanceLocation,
    frame: u32,
    params: &Params,
) -> Result<Vec<u8>, ApiError> {
    if frame as i64 > loc.number_of_frames.max(1) {
        return Err(ApiError::NotFound(format!(
            "frame {frame} does not exist; the instance has {} frame(s)",
            loc.number_of_frames
        )));
    }
    let params = params.clone();
    with_object_file(app, loc, move |path| {
        render::render(path, frame - 1, &params)
    })
    .await?
    .map_err(|e| match e {
        RenderError::Decode(_) => ApiError::NotAcceptable(format!("{e}")),
        RenderError::NoFrame(_) => ApiError::NotFound(e.to_string()),
        other => ApiError::Internal(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(pick_format(None), Some(Format::Jpeg));
        assert_eq!(pick_format(Some("image/png")), Some(Format::Png));
        assert_eq!(
            pick_format(Some("image/gif, image/png;q=0.5")),
            Some(Format::Png)
        );
        assert_eq!(
            pick_format(Some("multipart/related; type=image/png")),
            Some(Format::Png)
        );
        assert_eq!(pick_format(Some("image/gif")), None);
    }
}
