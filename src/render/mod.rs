//! Rendered images and thumbnails (PS3.18 §8.3.5.1.4, §10.4.1.1.3): decode one frame with
//! dicom-pixeldata, apply the requested or stored window, crop and scale to the viewport,
//! encode as JPEG, PNG or GIF.
//!
//! Blocking: callers hand over the path of a stored object and run this on a blocking
//! thread. Owns no I/O beyond reading that file.

pub mod transcode;

use std::io::Cursor;
use std::path::Path;

use dicom_pixeldata::{ConvertOptions, PixelDecoder, VoiLutOption, WindowLevel};
use image::codecs::gif::GifEncoder;
use image::codecs::jpeg::JpegEncoder;
use image::imageops::FilterType;
use image::{DynamicImage, ImageFormat};

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
    /// One frame, palette from the image's own colours (exact for 8-bit grey).
    Gif,
}

impl Format {
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Jpeg => "image/jpeg",
            Format::Png => "image/png",
            Format::Gif => "image/gif",
        }
    }
}

/// A source region: x, y, width, height in pixels.
pub type Region = (u32, u32, u32, u32);

/// The part of the image to show, before scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Crop {
    /// In pixels (WADO-RS `viewport=vw,vh,sx,sy,sw,sh`).
    Pixels(Region),
    /// Top-left and bottom-right corners `[x1, y1, x2, y2]` as fractions (0..1) of the
    /// width and height (WADO-URI `region`); callers check `x1 < x2`, `y1 < y2`.
    Fraction([f64; 4]),
}

impl Crop {
    /// The region in pixels of an image of this size.
    fn pixels(self, width: u32, height: u32) -> Region {
        match self {
            Crop::Pixels(region) => region,
            Crop::Fraction([x1, y1, x2, y2]) => {
                let at = |f: f64, size: u32| (f.clamp(0.0, 1.0) * f64::from(size)).round() as u32;
                let (x, y) = (at(x1, width), at(y1, height));
                let w = at(x2, width).saturating_sub(x).max(1);
                let h = at(y2, height).saturating_sub(y).max(1);
                (x, y, w, h)
            }
        }
    }
}

/// Requested rendering (the `window`, `viewport` and `quality` query parameters).
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub format: Format,
    /// Window center and width; `None`: the stored window (or min-max).
    pub window: Option<(f64, f64)>,
    /// Output size (width, height), keeping the aspect ratio within it.
    pub viewport: Option<(u32, u32)>,
    /// Source region, before scaling.
    pub region: Option<Crop>,
    pub quality: u8,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            format: Format::Jpeg,
            window: None,
            viewport: None,
            region: None,
            quality: 90,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("the instance cannot be read: {0}")]
    Read(String),
    #[error("the instance has no pixel data that can be decoded: {0}")]
    Decode(String),
    #[error("frame {0} does not exist")]
    NoFrame(u32),
    #[error("encoding the image: {0}")]
    Encode(String),
}

/// Parse `window=center,width[,function]`.
pub fn parse_window(raw: &str) -> Result<(f64, f64), String> {
    let parts: Vec<&str> = raw.split(',').map(str::trim).collect();
    if !(2..=3).contains(&parts.len()) {
        return Err(format!("window {raw:?} must be center,width[,function]"));
    }
    let center: f64 = parts[0]
        .parse()
        .map_err(|_| format!("window center {:?} is not a number", parts[0]))?;
    let width: f64 = parts[1]
        .parse()
        .map_err(|_| format!("window width {:?} is not a number", parts[1]))?;
    if width <= 0.0 || !width.is_finite() || !center.is_finite() {
        return Err("window width must be a positive number".into());
    }
    if let Some(f) = parts.get(2) {
        if !matches!(*f, "linear" | "linear-exact" | "sigmoid") {
            return Err(format!(
                "window function {f:?} must be linear, linear-exact or sigmoid"
            ));
        }
    }
    Ok((center, width))
}

/// Parse `viewport=vw,vh[,sx,sy,sw,sh]`.
pub fn parse_viewport(raw: &str) -> Result<((u32, u32), Option<Region>), String> {
    let n: Vec<u32> = raw
        .split(',')
        .map(|p| p.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("viewport {raw:?} must be whole numbers"))?;
    let size = match n.as_slice() {
        [w, h] | [w, h, _, _, _, _] if (1..=4096).contains(w) && (1..=4096).contains(h) => (*w, *h),
        _ => {
            return Err(format!(
                "viewport {raw:?} must be vw,vh[,sx,sy,sw,sh] with sizes from 1 to 4096"
            ))
        }
    };
    let region = match n.as_slice() {
        [_, _, x, y, w, h] if *w > 0 && *h > 0 => Some((*x, *y, *w, *h)),
        [_, _, _, _, _, _] => return Err("the viewport's source region must not be empty".into()),
        _ => None,
    };
    Ok((size, region))
}

/// Render frame `frame` (0-based) of the DICOM file at `path`.
pub fn render(path: &Path, frame: u32, params: &Params) -> Result<Vec<u8>, RenderError> {
    let obj = crate::dicom::open_file(path).map_err(RenderError::Read)?;
    let frames = obj
        .get(dicom_dictionary_std::tags::NUMBER_OF_FRAMES)
        .and_then(|e| e.to_int::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    if frame >= frames {
        return Err(RenderError::NoFrame(frame + 1));
    }
    let pixels = obj
        .decode_pixel_data_frame(frame)
        .map_err(|e| RenderError::Decode(e.to_string()))?;
    use dicom_dictionary_std::tags;
    let stored_voi =
        obj.get(tags::WINDOW_CENTER).is_some() || obj.get(tags::VOILUT_SEQUENCE).is_some();
    let voi = match params.window {
        Some((center, width)) => VoiLutOption::Custom(WindowLevel { center, width }),
        None if stored_voi => VoiLutOption::First,
        // Without a stored window, stretch the frame's own (rescaled) range over the output.
        None => match pixels.to_vec_frame::<f32>(0) {
            Ok(values) if !values.is_empty() => {
                let (lo, hi) = values
                    .iter()
                    .fold((f32::MAX, f32::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
                let width = f64::from(hi - lo).max(1.0) + 1.0;
                VoiLutOption::Custom(WindowLevel {
                    center: f64::from(lo) + width / 2.0,
                    width,
                })
            }
            _ => VoiLutOption::Normalize,
        },
    };
    let options = ConvertOptions::new().with_voi_lut(voi).force_8bit();
    let image = pixels
        .to_dynamic_image_with_options(0, &options)
        .map_err(|e| RenderError::Decode(e.to_string()))?;
    encode(shape(image, params), params)
}

/// Crop to the source region, then scale to fit the viewport (aspect ratio kept).
fn shape(mut image: DynamicImage, params: &Params) -> DynamicImage {
    if let Some(crop) = params.region {
        let (iw, ih) = (image.width(), image.height());
        let (x, y, w, h) = crop.pixels(iw, ih);
        let (x, y) = (x.min(iw.saturating_sub(1)), y.min(ih.saturating_sub(1)));
        image = image.crop_imm(x, y, w.min(iw - x), h.min(ih - y));
    }
    let size = (image.width(), image.height());
    match params.viewport.map(|viewport| fit(size, viewport)) {
        Some((w, h)) if (w, h) != size => image.resize_exact(w, h, FilterType::Triangle),
        _ => image,
    }
}

/// The largest size within `viewport` with the aspect ratio of `size` (at least 1×1).
fn fit((iw, ih): (u32, u32), (vw, vh): (u32, u32)) -> (u32, u32) {
    let ratio = (f64::from(vw) / f64::from(iw)).min(f64::from(vh) / f64::from(ih));
    let scaled = |n: u32| ((f64::from(n) * ratio).round() as u32).max(1);
    (scaled(iw), scaled(ih))
}

fn encode(image: DynamicImage, params: &Params) -> Result<Vec<u8>, RenderError> {
    // 8-bit grey stays grey; everything else becomes 8-bit RGB.
    let image = match image {
        DynamicImage::ImageLuma8(_) => image,
        DynamicImage::ImageLuma16(_)
        | DynamicImage::ImageLumaA8(_)
        | DynamicImage::ImageLumaA16(_) => DynamicImage::ImageLuma8(image.to_luma8()),
        other => DynamicImage::ImageRgb8(other.to_rgb8()),
    };
    let mut out = Cursor::new(Vec::new());
    match params.format {
        Format::Jpeg => {
            let encoder = JpegEncoder::new_with_quality(&mut out, params.quality.clamp(1, 100));
            image
                .write_with_encoder(encoder)
                .map_err(|e| RenderError::Encode(e.to_string()))?;
        }
        Format::Png => image
            .write_to(&mut out, ImageFormat::Png)
            .map_err(|e| RenderError::Encode(e.to_string()))?,
        // As RGB: an image of at most 256 colours (8-bit grey) gets an exact palette;
        // others are quantized (speed 10 of 1..30: near-best quality at a tenth the time).
        Format::Gif => DynamicImage::ImageRgb8(image.to_rgb8())
            .write_with_encoder(GifEncoder::new_with_speed(&mut out, 10))
            .map_err(|e| RenderError::Encode(e.to_string()))?,
    }
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters() {
        assert_eq!(parse_window("40,400").unwrap(), (40.0, 400.0));
        assert_eq!(
            parse_window("-600, 1500, linear").unwrap(),
            (-600.0, 1500.0)
        );
        assert!(parse_window("40").is_err());
        assert!(parse_window("40,0").is_err());
        assert!(parse_window("40,400,cubic").is_err());
        assert_eq!(parse_viewport("256,128").unwrap(), ((256, 128), None));
        assert_eq!(
            parse_viewport("64,64,10,10,100,100").unwrap(),
            ((64, 64), Some((10, 10, 100, 100)))
        );
        assert!(parse_viewport("0,10").is_err());
        assert!(parse_viewport("10,10,0,0,0,5").is_err());
        assert!(parse_viewport("a,b").is_err());
    }

    #[test]
    fn shapes_keep_aspect_ratio() {
        let img = DynamicImage::new_luma8(200, 100);
        let p = Params {
            viewport: Some((50, 50)),
            ..Default::default()
        };
        let out = shape(img.clone(), &p);
        assert_eq!((out.width(), out.height()), (50, 25));
        assert_eq!(fit((200, 100), (4096, 50)), (100, 50));
        assert_eq!(fit((64, 64), (4096, 64)), (64, 64));
        assert_eq!(fit((1000, 1), (10, 10)), (10, 1));
        let p = Params {
            region: Some(Crop::Pixels((150, 50, 100, 100))),
            ..Default::default()
        };
        let out = shape(img.clone(), &p);
        assert_eq!((out.width(), out.height()), (50, 50));
        let p = Params {
            region: Some(Crop::Fraction([0.5, 0.0, 1.0, 0.5])),
            ..Default::default()
        };
        let out = shape(img, &p);
        assert_eq!((out.width(), out.height()), (100, 50));
    }

    #[test]
    fn fractions_stay_inside_the_image() {
        assert_eq!(
            Crop::Fraction([0.0, 0.0, 1.0, 1.0]).pixels(64, 32),
            (0, 0, 64, 32)
        );
        assert_eq!(
            Crop::Fraction([0.25, 0.5, 0.75, 1.0]).pixels(64, 32),
            (16, 16, 32, 16)
        );
        // A sliver thinner than a pixel is still one pixel.
        assert_eq!(Crop::Fraction([0.5, 0.5, 0.501, 0.501]).pixels(10, 10).2, 1);
    }

    #[test]
    fn every_format_encodes() {
        let grey = DynamicImage::ImageLuma8(image::GrayImage::from_fn(16, 8, |x, y| {
            image::Luma([(x * 16 + y) as u8])
        }));
        for (format, magic) in [
            (Format::Jpeg, &b"\xff\xd8"[..]),
            (Format::Png, &b"\x89PNG"[..]),
            (Format::Gif, &b"GIF8"[..]),
        ] {
            let params = Params {
                format,
                ..Default::default()
            };
            let out = encode(grey.clone(), &params).unwrap();
            assert!(out.starts_with(magic), "{format:?}");
        }
        // GIF keeps 8-bit grey exactly.
        let params = Params {
            format: Format::Gif,
            ..Default::default()
        };
        let gif = encode(grey.clone(), &params).unwrap();
        let back = image::load_from_memory_with_format(&gif, ImageFormat::Gif).unwrap();
        assert_eq!(back.to_luma8(), grey.to_luma8());
    }
}
