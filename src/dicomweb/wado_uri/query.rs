//! The query string of a WADO-URI request (PS3.18 §9.1.2), parsed once into what to send:
//! the object's UIDs, and either the Part-10 object (in a transfer syntax) or a rendered
//! image with its [`Params`]. Every refusal names the parameter at fault.
//!
//! Pure: no I/O. Checks that need the stored instance (the frame count) are the handler's.

use super::super::media::parse_accept;
use super::super::wado::Wanted;
use super::super::ApiError;
use crate::model::{TransferSyntax, Uid};
use crate::render::transcode::TARGETS;
use crate::render::{Crop, Format, Params};

/// The largest `rows` or `columns` served (as WADO-RS `viewport`).
const MAX_SIZE: u32 = 4096;

/// The parameters that shape a rendered image, not a DICOM object.
const IMAGE_ONLY: &[&str] = &[
    "frameNumber",
    "rows",
    "columns",
    "region",
    "windowCenter",
    "windowWidth",
    "imageQuality",
];

/// Standard parameters this server cannot honour: refused rather than ignored, since the
/// answer would not be what was asked for.
const UNSUPPORTED: &[&str] = &["anonymize", "presentationUID", "presentationSeriesUID"];

/// A WADO-URI request, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct WadoQuery {
    pub study: Uid,
    pub series: Uid,
    pub object: Uid,
    pub answer: Answer,
}

/// What the client gets.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// `application/dicom`: the object in the transfer syntax asked for (PS3.18 §9.4.2.4:
    /// without one, the default of DICOM web services, Explicit VR Little Endian, where the
    /// stored object can be decoded; `*`: as stored).
    Dicom(Wanted),
    /// A rendered image of frame `frame` (from 1).
    Image { params: Params, frame: u32 },
}

/// The chosen `contentType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dicom,
    Image(Format),
}

/// The query's pairs (names are case-sensitive, as PS3.18 spells them).
struct Pairs(Vec<(String, String)>);

impl Pairs {
    /// The value of a parameter given at most once.
    fn get(&self, name: &str) -> Result<Option<&str>, ApiError> {
        let mut found = self.0.iter().filter(|(k, _)| k == name);
        let first = found.next().map(|(_, v)| v.as_str());
        if found.next().is_some() {
            return Err(bad(format!("{name} is given more than once")));
        }
        Ok(first)
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::BadRequest(message.into())
}

impl WadoQuery {
    /// Parse a raw query string. Parameters this server does not know (a `token`, say)
    /// are ignored, as are `charset` and `annotation`.
    pub fn parse(raw: &str) -> Result<WadoQuery, ApiError> {
        let pairs = Pairs(
            form_urlencoded::parse(raw.as_bytes())
                .into_owned()
                .collect(),
        );
        match pairs.get("requestType")? {
            Some("WADO") => {}
            Some(other) => return Err(bad(format!("requestType must be WADO, not {other:?}"))),
            None => return Err(bad("requestType=WADO is required")),
        }
        let study = uid(&pairs, "studyUID")?;
        let series = uid(&pairs, "seriesUID")?;
        let object = uid(&pairs, "objectUID")?;
        if let Some(name) = UNSUPPORTED.iter().find(|n| pairs.has(n)) {
            return Err(bad(format!("{name} is not supported by this server")));
        }
        let answer = match content_type(pairs.get("contentType")?)? {
            Kind::Dicom => Answer::Dicom(dicom(&pairs)?),
            Kind::Image(format) => image(&pairs, format)?,
        };
        Ok(WadoQuery {
            study,
            series,
            object,
            answer,
        })
    }
}

fn uid(pairs: &Pairs, name: &str) -> Result<Uid, ApiError> {
    let raw = pairs
        .get(name)?
        .ok_or_else(|| bad(format!("{name} is required")))?;
    Uid::parse(raw).map_err(|e| bad(format!("{name} {raw:?}: {e}")))
}

/// The first supported type of the `contentType` list (q-values honoured); absent:
/// `image/jpeg`, the standard's default for images.
fn content_type(raw: Option<&str>) -> Result<Kind, ApiError> {
    let Some(raw) = raw else {
        return Ok(Kind::Image(Format::Jpeg));
    };
    if raw.trim().is_empty() {
        return Err(bad("contentType is empty"));
    }
    for a in parse_accept(Some(raw)) {
        match a.media.essence.as_str() {
            "application/dicom" => return Ok(Kind::Dicom),
            "image/jpeg" | "image/*" | "*/*" => return Ok(Kind::Image(Format::Jpeg)),
            "image/png" => return Ok(Kind::Image(Format::Png)),
            "image/gif" => return Ok(Kind::Image(Format::Gif)),
            _ => {}
        }
    }
    Err(ApiError::NotAcceptable(format!(
        "contentType {raw:?}: none of these is available; objects are sent as application/dicom, \
         image/jpeg, image/png or image/gif"
    )))
}

/// `application/dicom`: only `transferSyntax` applies (absent: the default; `*`: as stored).
fn dicom(pairs: &Pairs) -> Result<Wanted, ApiError> {
    if let Some(name) = IMAGE_ONLY.iter().find(|n| pairs.has(n)) {
        return Err(bad(format!(
            "{name} applies to image content types, not to application/dicom"
        )));
    }
    match pairs.get("transferSyntax")?.map(str::trim) {
        None => Ok(Wanted::Default),
        Some("*") => Ok(Wanted::AsStored),
        Some(raw) => {
            let uid = Uid::parse(raw).map_err(|e| bad(format!("transferSyntax {raw:?}: {e}")))?;
            TransferSyntax::parse(uid.as_str())
                .map(Wanted::Exactly)
                .map_err(|e| {
                    ApiError::NotAcceptable(format!(
                        "transferSyntax: {e}; this server sends the stored syntax or decodes to {}",
                        TARGETS.join(" or ")
                    ))
                })
        }
    }
}

/// A rendered image: frame, size, region, window and quality.
fn image(pairs: &Pairs, format: Format) -> Result<Answer, ApiError> {
    if pairs.has("transferSyntax") {
        return Err(bad(format!(
            "transferSyntax applies to application/dicom only, not to {}",
            format.media_type()
        )));
    }
    let frame = number(pairs, "frameNumber", u32::MAX)?.unwrap_or(1);
    let rows = number(pairs, "rows", MAX_SIZE)?;
    let columns = number(pairs, "columns", MAX_SIZE)?;
    // Each given size is a maximum; a missing one follows the aspect ratio.
    let viewport = match (columns, rows) {
        (None, None) => None,
        (w, h) => Some((w.unwrap_or(MAX_SIZE), h.unwrap_or(MAX_SIZE))),
    };
    let quality = number(pairs, "imageQuality", 100)?.map_or(90, |q| q as u8);
    let params = Params {
        format,
        window: window(pairs)?,
        viewport,
        region: pairs.get("region")?.map(region).transpose()?,
        quality,
    };
    Ok(Answer::Image { params, frame })
}

/// A whole number from 1 to `max`, if given.
fn number(pairs: &Pairs, name: &str, max: u32) -> Result<Option<u32>, ApiError> {
    let Some(raw) = pairs.get(name)? else {
        return Ok(None);
    };
    match raw.trim().parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(Some(n)),
        _ if max == u32::MAX => Err(bad(format!("{name} {raw:?} must be a whole number from 1"))),
        _ => Err(bad(format!(
            "{name} {raw:?} must be a whole number from 1 to {max}"
        ))),
    }
}

/// `windowCenter` and `windowWidth`: both or neither.
fn window(pairs: &Pairs) -> Result<Option<(f64, f64)>, ApiError> {
    let value = |name: &str, raw: &str| {
        raw.trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| bad(format!("{name} {raw:?} is not a number")))
    };
    match (pairs.get("windowCenter")?, pairs.get("windowWidth")?) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(bad("windowCenter needs windowWidth")),
        (None, Some(_)) => Err(bad("windowWidth needs windowCenter")),
        (Some(c), Some(w)) => {
            let (center, width) = (value("windowCenter", c)?, value("windowWidth", w)?);
            if width < 1.0 {
                return Err(bad(format!("windowWidth {w:?} must be at least 1")));
            }
            Ok(Some((center, width)))
        }
    }
}

/// `region=x1,y1,x2,y2`: the top-left and bottom-right corners as fractions of the image.
fn region(raw: &str) -> Result<Crop, ApiError> {
    let malformed = || {
        bad(format!(
            "region {raw:?} must be x1,y1,x2,y2 with 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1"
        ))
    };
    let v: Vec<f64> = raw
        .split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| malformed())?;
    let [x1, y1, x2, y2] = v[..] else {
        return Err(malformed());
    };
    let unit = |f: f64| (0.0..=1.0).contains(&f);
    if !(v.iter().all(|f| unit(*f)) && x1 < x2 && y1 < y2) {
        return Err(malformed());
    }
    Ok(Crop::Fraction([x1, y1, x2, y2]))
}

#[cfg(test)]
#[path = "query_tests.rs"]
mod tests;
