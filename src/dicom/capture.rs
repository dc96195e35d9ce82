//! Secondary Capture instances (PS3.3 A.8) made from photos: the hospital app's JPEG and
//! PNG photos become DICOM objects with the UIDs the device declared and the order's
//! patient and accession data, so viewers show them like any other image. A baseline JPEG
//! is kept as it is (encapsulated, JPEG Baseline transfer syntax: no re-compression); other
//! photos are decoded and stored as uncompressed 8-bit pixels (Explicit VR Little Endian).
//!
//! Format only: the caller streams the JPEG between [`jpeg_envelope`]'s two halves, or
//! hands the decoded image to [`decoded_capture`].

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::meta::meta_table;
use crate::model::{TransferSyntax, Uid};

pub const SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7";
const JPEG_BASELINE: &str = "1.2.840.10008.1.2.4.50";

/// Who and what a captured photo is.
#[derive(Debug, Clone)]
pub struct Capture {
    pub study_uid: Uid,
    pub series_uid: Uid,
    pub sop_instance_uid: Uid,
    pub accession_number: Option<String>,
    pub patient_name: Option<String>,
    pub patient_id: Option<String>,
    pub patient_birth_date: Option<String>,
    pub patient_sex: Option<String>,
}

/// The geometry of a baseline JPEG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JpegFrame {
    pub rows: u16,
    pub columns: u16,
    pub components: u8,
}

/// The photo is not what it claims to be, or cannot be captured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CaptureError(pub String);

impl CaptureError {
    fn new(message: impl Into<String>) -> Self {
        CaptureError(message.into())
    }
}

/// Height, width and components of a baseline (SOF0, 8-bit) JPEG; None for other JPEGs.
pub fn baseline_jpeg(head: &[u8]) -> Result<Option<JpegFrame>, CaptureError> {
    if head.len() < 4 || head[0] != 0xFF || head[1] != 0xD8 {
        return Err(CaptureError::new(
            "the file is not a JPEG image (no SOI marker)",
        ));
    }
    let mut i = 2;
    while i + 4 <= head.len() {
        if head[i] != 0xFF {
            return Err(CaptureError::new("malformed JPEG marker segment"));
        }
        let marker = head[i + 1];
        if marker == 0xFF {
            i += 1;
            continue;
        }
        let len = u16::from_be_bytes([head[i + 2], head[i + 3]]) as usize;
        match marker {
            0xC0 if i + 10 <= head.len() => {
                let precision = head[i + 4];
                let height = u16::from_be_bytes([head[i + 5], head[i + 6]]);
                let width = u16::from_be_bytes([head[i + 7], head[i + 8]]);
                let components = head[i + 9];
                let ok = precision == 8 && height > 0 && width > 0 && matches!(components, 1 | 3);
                return Ok(ok.then_some(JpegFrame {
                    rows: height,
                    columns: width,
                    components,
                }));
            }
            0xC1..=0xCF if marker != 0xC4 && marker != 0xC8 && marker != 0xCC => return Ok(None),
            0xD9 | 0xDA => return Ok(None),
            _ => i += 2 + len,
        }
    }
    Ok(None)
}

fn today() -> (String, String) {
    let iso = crate::model::clock::iso8601(crate::model::clock::now_millis());
    (iso[..10].replace('-', ""), iso[11..19].replace(':', ""))
}

fn base_object(c: &Capture) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    let mut put = |tag, vr, v: &str| {
        o.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
    };
    let (date, time) = today();
    put(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
    put(tags::IMAGE_TYPE, VR::CS, "DERIVED\\SECONDARY");
    put(tags::SOP_CLASS_UID, VR::UI, SECONDARY_CAPTURE);
    put(tags::SOP_INSTANCE_UID, VR::UI, c.sop_instance_uid.as_str());
    put(tags::STUDY_DATE, VR::DA, &date);
    put(tags::CONTENT_DATE, VR::DA, &date);
    put(tags::STUDY_TIME, VR::TM, &time);
    put(tags::CONTENT_TIME, VR::TM, &time);
    put(
        tags::ACCESSION_NUMBER,
        VR::SH,
        c.accession_number.as_deref().unwrap_or(""),
    );
    put(tags::MODALITY, VR::CS, "OT");
    put(tags::CONVERSION_TYPE, VR::CS, "WSD");
    put(tags::REFERRING_PHYSICIAN_NAME, VR::PN, "");
    put(
        tags::STUDY_DESCRIPTION,
        VR::LO,
        "Photo from the hospital app",
    );
    put(tags::SERIES_DESCRIPTION, VR::LO, "Uploaded photo");
    put(
        tags::PATIENT_NAME,
        VR::PN,
        c.patient_name.as_deref().unwrap_or(""),
    );
    put(
        tags::PATIENT_ID,
        VR::LO,
        c.patient_id.as_deref().unwrap_or(""),
    );
    put(
        tags::PATIENT_BIRTH_DATE,
        VR::DA,
        c.patient_birth_date.as_deref().unwrap_or(""),
    );
    put(
        tags::PATIENT_SEX,
        VR::CS,
        c.patient_sex.as_deref().unwrap_or(""),
    );
    put(tags::STUDY_INSTANCE_UID, VR::UI, c.study_uid.as_str());
    put(tags::SERIES_INSTANCE_UID, VR::UI, c.series_uid.as_str());
    put(tags::STUDY_ID, VR::SH, "");
    put(tags::SERIES_NUMBER, VR::IS, "1");
    put(tags::INSTANCE_NUMBER, VR::IS, "1");
    put(tags::PATIENT_ORIENTATION, VR::CS, "");
    // General Series, Type 2C: the photo does not say which side; empty is "unknown".
    put(tags::LATERALITY, VR::CS, "");
    o.put(DataElement::new(
        tags::BITS_ALLOCATED,
        VR::US,
        PrimitiveValue::from(8u16),
    ));
    o.put(DataElement::new(
        tags::BITS_STORED,
        VR::US,
        PrimitiveValue::from(8u16),
    ));
    o.put(DataElement::new(
        tags::HIGH_BIT,
        VR::US,
        PrimitiveValue::from(7u16),
    ));
    o.put(DataElement::new(
        tags::PIXEL_REPRESENTATION,
        VR::US,
        PrimitiveValue::from(0u16),
    ));
    o
}

fn image_attributes(
    o: &mut InMemDicomObject,
    rows: u16,
    columns: u16,
    samples: u16,
    photometric: &str,
) {
    o.put(DataElement::new(
        tags::SAMPLES_PER_PIXEL,
        VR::US,
        PrimitiveValue::from(samples),
    ));
    o.put(DataElement::new(
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        PrimitiveValue::from(photometric),
    ));
    if samples == 3 {
        o.put(DataElement::new(
            tags::PLANAR_CONFIGURATION,
            VR::US,
            PrimitiveValue::from(0u16),
        ));
    }
    o.put(DataElement::new(
        tags::ROWS,
        VR::US,
        PrimitiveValue::from(rows),
    ));
    o.put(DataElement::new(
        tags::COLUMNS,
        VR::US,
        PrimitiveValue::from(columns),
    ));
}

/// Part-10 bytes of an object (preamble, meta group, data set).
fn part10(obj: InMemDicomObject, ts: &str, c: &Capture) -> Result<Vec<u8>, CaptureError> {
    let meta = meta_table(SECONDARY_CAPTURE, c.sop_instance_uid.as_str(), ts, None)
        .map_err(CaptureError)?;
    let file = obj.with_exact_meta(meta);
    let mut out = Vec::new();
    file.write_all(&mut out)
        .map_err(|e| CaptureError(e.to_string()))?;
    Ok(out)
}

/// What goes before and after a baseline JPEG of `jpeg_len` bytes to make it a Secondary
/// Capture object: the header and the Pixel Data element with its (empty) offset table
/// and the fragment's item header; then the pad byte (odd lengths) and the sequence
/// delimiter.
pub fn jpeg_envelope(
    c: &Capture,
    frame: JpegFrame,
    jpeg_len: u64,
) -> Result<(Vec<u8>, Vec<u8>), CaptureError> {
    let fragment = u32::try_from(jpeg_len + (jpeg_len & 1))
        .map_err(|_| CaptureError::new("the photo is larger than 4 GiB"))?;
    let mut obj = base_object(c);
    let photometric = if frame.components == 3 {
        "YBR_FULL_422"
    } else {
        "MONOCHROME2"
    };
    let samples = u16::from(frame.components);
    image_attributes(&mut obj, frame.rows, frame.columns, samples, photometric);
    obj.put(DataElement::new(
        tags::LOSSY_IMAGE_COMPRESSION,
        VR::CS,
        PrimitiveValue::from("01"),
    ));
    let mut head = part10(obj, JPEG_BASELINE, c)?;
    head.extend_from_slice(&[
        0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
    ]);
    head.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]); // empty offset table
    head.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
    head.extend_from_slice(&fragment.to_le_bytes());
    let mut tail = Vec::with_capacity(9);
    if jpeg_len & 1 == 1 {
        tail.push(0);
    }
    tail.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    Ok((head, tail))
}

/// A Secondary Capture object holding a decoded photo as 8-bit pixels (grey or RGB).
pub fn decoded_capture(c: &Capture, photo: &image::DynamicImage) -> Result<Vec<u8>, CaptureError> {
    let (columns, rows) = (photo.width(), photo.height());
    let (Ok(rows), Ok(columns)) = (u16::try_from(rows), u16::try_from(columns)) else {
        return Err(CaptureError::new(
            "the photo is larger than 65535 pixels on a side",
        ));
    };
    let mut obj = base_object(c);
    let (samples, photometric, pixels) = if photo.color().has_color() {
        (3, "RGB", photo.to_rgb8().into_raw())
    } else {
        (1, "MONOCHROME2", photo.to_luma8().into_raw())
    };
    image_attributes(&mut obj, rows, columns, samples, photometric);
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::from(pixels),
    ));
    part10(obj, TransferSyntax::EXPLICIT_VR_LE, c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_baseline_jpeg_dimensions() {
        let img =
            image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 6, y as u8 * 8, 100]));
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new(&mut jpeg)
            .encode_image(&img)
            .unwrap();
        let frame = JpegFrame {
            rows: 30,
            columns: 40,
            components: 3,
        };
        assert_eq!(baseline_jpeg(&jpeg).unwrap(), Some(frame));
        assert!(baseline_jpeg(b"\x89PNG....").is_err());
    }

    #[test]
    fn an_envelope_parses_with_its_photo() {
        let img = image::GrayImage::from_fn(8, 6, |x, _| image::Luma([x as u8 * 30]));
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new(&mut jpeg)
            .encode_image(&img)
            .unwrap();
        let uid = |s: &str| Uid::parse(s).unwrap();
        let c = Capture {
            study_uid: uid("1.2.3"),
            series_uid: uid("1.2.3.4"),
            sop_instance_uid: uid("1.2.3.4.5"),
            accession_number: None,
            patient_name: Some("Doe^Jane".into()),
            patient_id: None,
            patient_birth_date: None,
            patient_sex: None,
        };
        let frame = baseline_jpeg(&jpeg).unwrap().unwrap();
        let (head, tail) = jpeg_envelope(&c, frame, jpeg.len() as u64).unwrap();
        let whole = [head, jpeg, tail].concat();
        let parsed =
            super::super::parse_header(std::io::Cursor::new(&whole), whole.len() as u64).unwrap();
        assert_eq!(parsed.sop_instance_uid, uid("1.2.3.4.5"));
        assert_eq!(parsed.transfer_syntax.as_str(), JPEG_BASELINE);
        assert!(parsed.frame_table.is_some());
    }
}
