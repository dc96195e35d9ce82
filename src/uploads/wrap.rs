//! Photos (JPEG, PNG) from the hospital app become DICOM Secondary Capture instances with
//! the UIDs the device declared and the order's patient and accession data, so viewers
//! show them like any other image. A baseline JPEG is kept as it is (encapsulated, JPEG
//! Baseline transfer syntax: no re-compression); other photos are decoded and stored as
//! uncompressed 8-bit pixels (Explicit VR Little Endian).

use std::io::Read;

use axum::http::StatusCode;
use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use tokio::io::AsyncReadExt;

use crate::index::uploads::{Order, Upload};
use crate::ingest::Ingest;
use crate::radiology::error::RestError;
use crate::storage::SpooledFile;

const SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7";
const JPEG_BASELINE: &str = "1.2.840.10008.1.2.4.50";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

fn unreadable(message: impl Into<String>) -> RestError {
    RestError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_image", message)
}

/// Height, width and components of a baseline (SOF0, 8-bit) JPEG; None for other JPEGs.
fn baseline_jpeg(head: &[u8]) -> Result<Option<(u16, u16, u8)>, RestError> {
    if head.len() < 4 || head[0] != 0xFF || head[1] != 0xD8 {
        return Err(unreadable("the file is not a JPEG image (no SOI marker)"));
    }
    let mut i = 2;
    while i + 4 <= head.len() {
        if head[i] != 0xFF {
            return Err(unreadable("malformed JPEG marker segment"));
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
                return Ok(ok.then_some((height, width, components)));
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

fn base_object(u: &Upload, order: Option<&Order>) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    let mut put = |tag, vr, v: &str| {
        o.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
    };
    let (date, time) = today();
    let text = |v: Option<&String>| v.cloned().unwrap_or_default();
    put(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
    put(tags::IMAGE_TYPE, VR::CS, "DERIVED\\SECONDARY");
    put(tags::SOP_CLASS_UID, VR::UI, SECONDARY_CAPTURE);
    put(tags::SOP_INSTANCE_UID, VR::UI, &u.image_uid);
    put(tags::STUDY_DATE, VR::DA, &date);
    put(tags::CONTENT_DATE, VR::DA, &date);
    put(tags::STUDY_TIME, VR::TM, &time);
    put(tags::CONTENT_TIME, VR::TM, &time);
    put(
        tags::ACCESSION_NUMBER,
        VR::SH,
        &text(order.and_then(|o| o.accession_number.as_ref())),
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
        &text(order.and_then(|o| o.patient_name.as_ref())),
    );
    put(
        tags::PATIENT_ID,
        VR::LO,
        &text(order.and_then(|o| o.patient_id.as_ref())),
    );
    put(
        tags::PATIENT_BIRTH_DATE,
        VR::DA,
        &text(order.and_then(|o| o.patient_birth_date.as_ref())),
    );
    put(
        tags::PATIENT_SEX,
        VR::CS,
        &text(order.and_then(|o| o.patient_sex.as_ref())),
    );
    put(tags::STUDY_INSTANCE_UID, VR::UI, &u.study_uid);
    put(tags::SERIES_INSTANCE_UID, VR::UI, &u.series_uid);
    put(tags::STUDY_ID, VR::SH, "");
    put(tags::SERIES_NUMBER, VR::IS, "1");
    put(tags::INSTANCE_NUMBER, VR::IS, "1");
    put(tags::PATIENT_ORIENTATION, VR::CS, "");
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
fn part10(obj: InMemDicomObject, ts: &str, u: &Upload) -> Result<Vec<u8>, RestError> {
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(SECONDARY_CAPTURE)
        .media_storage_sop_instance_uid(u.image_uid.as_str())
        .transfer_syntax(ts)
        .implementation_class_uid(crate::dimse::store::IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(crate::dimse::store::IMPLEMENTATION_VERSION)
        .build()
        .map_err(RestError::internal)?;
    let file = obj.with_exact_meta(meta);
    let mut out = Vec::new();
    file.write_all(&mut out).map_err(RestError::internal)?;
    Ok(out)
}

/// Wrap a verified photo into a Secondary Capture instance, spooled for ingest.
pub async fn secondary_capture(
    ingest: &Ingest,
    photo: SpooledFile,
    u: &Upload,
    order: Option<&Order>,
) -> Result<SpooledFile, RestError> {
    // Read back by path (a small photo may still be in memory).
    let photo = photo
        .on_disk()
        .await
        .map_err(|e| RestError::internal(format!("spooling a photo: {e}")))?;
    let photo_path = photo.path().expect("on disk").to_owned();
    let mut head = vec![0u8; 64 * 1024];
    let mut file = tokio::fs::File::open(&photo_path)
        .await
        .map_err(RestError::internal)?;
    let n = read_up_to(&mut file, &mut head).await?;
    head.truncate(n);
    let mut spool = ingest
        .start_spool()
        .map_err(|r| RestError::internal(r.detail))?;
    let baseline = if u.mime_type == "image/jpeg" {
        baseline_jpeg(&head)?
    } else {
        None
    };
    if let Some((rows, columns, components)) = baseline {
        // Encapsulated as it is: header, then the JPEG as the single fragment.
        let mut obj = base_object(u, order);
        let photometric = if components == 3 {
            "YBR_FULL_422"
        } else {
            "MONOCHROME2"
        };
        image_attributes(&mut obj, rows, columns, u16::from(components), photometric);
        obj.put(DataElement::new(
            tags::LOSSY_IMAGE_COMPRESSION,
            VR::CS,
            PrimitiveValue::from("01"),
        ));
        let header = part10(obj, JPEG_BASELINE, u)?;
        let mut pixel = Vec::with_capacity(28);
        pixel.extend_from_slice(&[
            0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ]);
        pixel.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]); // empty offset table
        let len = photo.len + (photo.len & 1);
        pixel.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
        pixel.extend_from_slice(&(len as u32).to_le_bytes());
        let write =
            |e: crate::storage::StorageError| RestError::internal(format!("spooling a photo: {e}"));
        spool.write(&header).await.map_err(write)?;
        spool.write(&pixel).await.map_err(write)?;
        spool.write(&head).await.map_err(write)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).await.map_err(RestError::internal)?;
            if n == 0 {
                break;
            }
            spool.write(&buf[..n]).await.map_err(write)?;
        }
        if photo.len & 1 == 1 {
            spool.write(&[0]).await.map_err(write)?;
        }
        spool
            .write(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0])
            .await
            .map_err(write)?;
        return spool
            .finish()
            .await
            .map_err(|e| RestError::internal(format!("spooling a photo: {e}")));
    }
    // Decode (PNG, progressive or other JPEGs) and store 8-bit pixels.
    drop(file);
    let path = photo_path;
    let decoded = tokio::task::spawn_blocking(move || {
        let mut bytes = Vec::new();
        std::fs::File::open(&path)?.read_to_end(&mut bytes)?;
        Ok::<_, std::io::Error>(image::load_from_memory(&bytes))
    })
    .await
    .map_err(RestError::internal)?
    .map_err(RestError::internal)?
    .map_err(|e| unreadable(format!("the photo cannot be decoded: {e}")))?;
    let (columns, rows) = (decoded.width(), decoded.height());
    if rows > u16::MAX as u32 || columns > u16::MAX as u32 {
        return Err(unreadable(
            "the photo is larger than 65535 pixels on a side",
        ));
    }
    let grey = !decoded.color().has_color();
    let mut obj = base_object(u, order);
    let (samples, photometric, pixels) = if grey {
        (1, "MONOCHROME2", decoded.to_luma8().into_raw())
    } else {
        (3, "RGB", decoded.to_rgb8().into_raw())
    };
    image_attributes(&mut obj, rows as u16, columns as u16, samples, photometric);
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::from(pixels),
    ));
    let bytes = part10(obj, EXPLICIT_LE, u)?;
    spool
        .write(&bytes)
        .await
        .map_err(|e| RestError::internal(format!("spooling a photo: {e}")))?;
    spool
        .finish()
        .await
        .map_err(|e| RestError::internal(format!("spooling a photo: {e}")))
}

async fn read_up_to(file: &mut tokio::fs::File, buf: &mut [u8]) -> Result<usize, RestError> {
    let mut n = 0;
    while n < buf.len() {
        let got = file
            .read(&mut buf[n..])
            .await
            .map_err(RestError::internal)?;
        if got == 0 {
            break;
        }
        n += got;
    }
    Ok(n)
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
        assert_eq!(baseline_jpeg(&jpeg).unwrap(), Some((30, 40, 3)));
        assert!(baseline_jpeg(b"\x89PNG....").is_err());
    }
}
