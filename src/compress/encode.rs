//! Re-encoding one object and proving nothing changed: the new object's pixel data is
//! decoded again and compared, byte for byte, with the original's, and every other
//! attribute of the data set (all but Pixel Data; the file meta group aside, which names
//! the transfer syntax) must encode to the same bytes.

use std::path::Path;

use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_pixeldata::PixelDecoder;

use crate::dicom::DicomFile;
use crate::model::TransferSyntax;

/// Why an object was not re-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotEncoded {
    /// Not a candidate: left as it is, not looked at again.
    Skip(String),
    /// The re-encoded object is not exact (or could not be made): the original stays.
    Fail(String),
}

fn uint(obj: &DicomFile, tag: dicom_core::Tag) -> Option<u32> {
    obj.element(tag).ok()?.to_int::<u32>().ok()
}

/// Why this object is not one to re-encode, if it is not.
fn unsuitable(obj: &DicomFile) -> Option<String> {
    if obj.element(tags::PIXEL_DATA).is_err() {
        return Some("no pixel data".into());
    }
    if uint(obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1) != 1 {
        return Some("a colour image (re-encoded here for grayscale only)".into());
    }
    if !matches!(uint(obj, tags::BITS_ALLOCATED), Some(8 | 16)) {
        return Some("samples of neither 8 nor 16 bits".into());
    }
    let lossy = obj
        .element(tags::LOSSY_IMAGE_COMPRESSION)
        .ok()
        .and_then(|e| e.to_str().ok().map(|s| s.trim() == "01"));
    if lossy == Some(true) {
        return Some("lossy-compressed once already".into());
    }
    None
}

/// Attributes that describe the pixel data's encoding, not the image: the encapsulated
/// form may add them.
const ENCODING: &[dicom_core::Tag] = &[
    tags::PIXEL_DATA,
    tags::EXTENDED_OFFSET_TABLE,
    tags::EXTENDED_OFFSET_TABLE_LENGTHS,
    tags::ENCAPSULATED_PIXEL_DATA_VALUE_TOTAL_LENGTH,
];

fn text_of(o: &InMemDicomObject, tag: dicom_core::Tag) -> Option<String> {
    o.get(tag)?.to_str().ok().map(|s| s.trim().to_owned())
}

/// Whether two elements hold the same value: sequences item by item and element by
/// element (a sequence's length may be written defined or undefined), others by value.
fn same_element(
    a: Option<&dicom_object::mem::InMemElement>,
    b: Option<&dicom_object::mem::InMemElement>,
) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => match (x.items(), y.items()) {
            (Some(i), Some(j)) => {
                i.len() == j.len() && i.iter().zip(j).all(|(p, q)| same_set(p, q))
            }
            (None, None) => x.vr() == y.vr() && x.value() == y.value(),
            _ => false,
        },
        _ => false,
    }
}

fn same_set(a: &InMemDicomObject, b: &InMemDicomObject) -> bool {
    use dicom_core::header::Header;
    a.iter().count() == b.iter().count() && a.iter().all(|e| same_element(Some(e), b.get(e.tag())))
}

/// The attributes that differ between the original `a` and the re-encoded `b`, but for
/// those of the encoding; NumberOfFrames may appear as 1 where it was absent (implied),
/// LossyImageCompression as 00 (never 01).
fn changed(a: &InMemDicomObject, b: &InMemDicomObject) -> Vec<dicom_core::Tag> {
    use dicom_core::header::Header;
    let mut all: Vec<dicom_core::Tag> = a.iter().chain(b.iter()).map(|e| e.tag()).collect();
    all.sort();
    all.dedup();
    all.into_iter()
        .filter(|t| !ENCODING.contains(t))
        .filter(|&t| !same_element(a.get(t), b.get(t)))
        .filter(|&t| match t {
            tags::NUMBER_OF_FRAMES => a.get(t).is_some() || text_of(b, t).as_deref() != Some("1"),
            tags::LOSSY_IMAGE_COMPRESSION => {
                a.get(t).is_some() || text_of(b, t).as_deref() != Some("00")
            }
            _ => true,
        })
        .collect()
}

/// The object at `path` re-encoded in `to`, as Part-10 bytes, proven exact.
pub fn encode(path: &Path, to: &TransferSyntax) -> Result<Vec<u8>, NotEncoded> {
    let fail = |what: &str, e: &dyn std::fmt::Display| NotEncoded::Fail(format!("{what}: {e}"));
    let original = crate::dicom::open_file(path).map_err(|e| fail("reading", &e))?;
    if let Some(why) = unsuitable(&original) {
        return Err(NotEncoded::Skip(why));
    }
    let pixels = original
        .decode_pixel_data()
        .map_err(|e| NotEncoded::Skip(format!("pixel data cannot be decoded: {e}")))?;
    let mut encoded = original.clone();
    crate::render::transcode::transcode(&mut encoded, to).map_err(|e| fail("encoding", &e))?;
    let mut bytes = Vec::new();
    encoded
        .write_all(&mut bytes)
        .map_err(|e| fail("writing", &e))?;
    // Read back from the bytes that will be stored, as any reader will.
    let back = dicom_object::OpenFileOptions::new()
        .from_reader(std::io::Cursor::new(&bytes[128..]))
        .map_err(|e| fail("reading the re-encoded object", &e))?;
    if back.meta().transfer_syntax() != to.as_str() {
        return Err(NotEncoded::Fail(
            "the re-encoded object names another syntax".into(),
        ));
    }
    let decoded = back
        .decode_pixel_data()
        .map_err(|e| fail("decoding the re-encoded object", &e))?;
    if decoded.data() != pixels.data() {
        return Err(NotEncoded::Fail(
            "the re-encoded pixels differ from the original's (kept as it is)".into(),
        ));
    }
    let changed = changed(&original, &back);
    if !changed.is_empty() {
        let list: Vec<String> = changed.iter().map(|t| format!("{t}")).collect();
        return Err(NotEncoded::Fail(format!(
            "attributes other than the pixel data changed: {} (kept as it is)",
            list.join(", ")
        )));
    }
    Ok(bytes)
}
