//! Changing the transfer syntax of a stored object for a client that asked for another
//! one (WADO-RS `transfer-syntax=`, C-MOVE/C-GET peers that accept only uncompressed
//! syntaxes): decode compressed pixel data with dicom-pixeldata and write the object again,
//! or decode one frame to native little-endian samples.
//!
//! Blocking, one object in memory at a time; the stored object is never changed.

use std::path::Path;

use dicom_pixeldata::{PixelDecoder, Transcode};

use super::RenderError;
use crate::model::TransferSyntax;

/// Deflated Explicit VR Little Endian.
pub const DEFLATED: &str = "1.2.840.10008.1.2.1.99";
/// JPEG-LS Lossless Image Compression.
pub const JPEG_LS_LOSSLESS: &str = "1.2.840.10008.1.2.4.80";
/// RLE Lossless: encoded here (`dicom::rle`; dicom-rs only decodes it).
pub const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";
/// JPEG Baseline (Process 1): lossy, 8-bit; sent only to a client that asks for it.
pub const JPEG_BASELINE: &str = "1.2.840.10008.1.2.4.50";

/// Transfer syntaxes this server produces on request (from any syntax it can decode), in
/// the order it prefers them: lossless first.
pub const TARGETS: &[&str] = &[
    TransferSyntax::EXPLICIT_VR_LE,
    TransferSyntax::IMPLICIT_VR_LE,
    DEFLATED,
    JPEG_LS_LOSSLESS,
    RLE_LOSSLESS,
    JPEG_BASELINE,
];

/// Whether objects stored in `from` can be sent in `to` (the pixel data of a particular
/// object may still not fit the target's codec: 16-bit samples in JPEG Baseline, say).
pub fn can_transcode(from: &TransferSyntax, to: &TransferSyntax) -> bool {
    from == to || (from.is_decodable() && TARGETS.contains(&to.as_str()))
}

/// How much `to` is preferred as a target (lower first): the lossless ones in
/// [`TARGETS`]' order, the lossy last.
pub fn preference(to: &TransferSyntax) -> usize {
    TARGETS
        .iter()
        .position(|t| *t == to.as_str())
        .unwrap_or(TARGETS.len())
}

/// The whole object in transfer syntax `to`, as Part-10 bytes.
pub fn transcode_file(path: &Path, to: &TransferSyntax) -> Result<Vec<u8>, RenderError> {
    let mut obj = crate::dicom::open_file(path).map_err(RenderError::Read)?;
    transcode(&mut obj, to)?;
    let mut out = Vec::new();
    obj.write_all(&mut out)
        .map_err(|e| RenderError::Encode(e.to_string()))?;
    Ok(out)
}

/// An object in memory changed to transfer syntax `to` (nothing to do when it is in it).
pub fn transcode(
    obj: &mut crate::dicom::DicomFile,
    to: &TransferSyntax,
) -> Result<(), RenderError> {
    if obj.meta().transfer_syntax() == to.as_str() {
        return Ok(());
    }
    fits(obj, to)?;
    if to.as_str() == RLE_LOSSLESS {
        return to_rle(obj);
    }
    obj.transcode(to.entry())
        .map_err(|e| RenderError::Decode(e.to_string()))
}

/// Encode the pixel data in RLE Lossless (one fragment per frame), then decode it again
/// with dicom-rs and check every sample came back: a layout this cannot keep exact is an
/// error, never a wrong answer.
fn to_rle(obj: &mut crate::dicom::DicomFile) -> Result<(), RenderError> {
    use dicom_core::value::{PixelFragmentSequence, Value};
    use dicom_core::{DataElement, VR};
    use dicom_pixeldata::PlanarConfiguration;
    let decoded = obj
        .decode_pixel_data()
        .map_err(|e| RenderError::Decode(e.to_string()))?;
    let samples = decoded.samples_per_pixel() as usize;
    if samples > 1 && decoded.planar_configuration() != PlanarConfiguration::Standard {
        return Err(RenderError::Encode("RLE of planar colour data".into()));
    }
    let pixels = decoded.rows() as usize * decoded.columns() as usize;
    let bytes = decoded.bits_allocated() as usize / 8;
    let frame_len = pixels * samples * bytes;
    let original = decoded.data().to_vec();
    let frames = decoded.number_of_frames() as usize;
    let fragments = (0..frames)
        .map(|f| {
            let frame = original.get(f * frame_len..(f + 1) * frame_len)?;
            crate::dicom::rle::encode_frame(frame, pixels, samples, bytes)
        })
        .collect::<Option<Vec<Vec<u8>>>>()
        .ok_or_else(|| RenderError::Encode("pixel data RLE cannot hold".into()))?;
    drop(decoded);
    let sequence = PixelFragmentSequence::new(Vec::<u32>::new(), fragments);
    obj.put(DataElement::new(
        dicom_dictionary_std::tags::PIXEL_DATA,
        VR::OB,
        Value::PixelSequence(sequence),
    ));
    obj.update_meta(|m| {
        m.set_transfer_syntax(&dicom_transfer_syntax_registry::entries::RLE_LOSSLESS)
    });
    let back = obj
        .decode_pixel_data()
        .map_err(|e| RenderError::Encode(format!("the RLE data does not decode: {e}")))?;
    if back.data() != original.as_slice() {
        return Err(RenderError::Encode(
            "the RLE data does not decode to the same samples".into(),
        ));
    }
    Ok(())
}

/// Whether the object's pixel data can be written in `to` without losing what the target
/// promises: JPEG-LS here for single-sample images (dicom-rs' encoder does not keep
/// colour images exact: every decoder, dcmtk's included, reads other pixels back), RLE
/// too (dicom-rs' decoder, which checks every RLE answer, reads colour segments back in
/// another arrangement), JPEG Baseline for 8-bit samples.
fn fits(obj: &crate::dicom::DicomFile, to: &TransferSyntax) -> Result<(), RenderError> {
    let int = |tag| obj.element(tag).ok().and_then(|e| e.to_int::<u16>().ok());
    use dicom_dictionary_std::tags;
    let refused = match to.as_str() {
        JPEG_LS_LOSSLESS if int(tags::SAMPLES_PER_PIXEL).unwrap_or(1) != 1 => {
            "JPEG-LS is produced for single-sample (grayscale) images only"
        }
        RLE_LOSSLESS if int(tags::SAMPLES_PER_PIXEL).unwrap_or(1) != 1 => {
            "RLE is produced for single-sample (grayscale) images only"
        }
        JPEG_BASELINE if int(tags::BITS_ALLOCATED) != Some(8) => {
            "JPEG Baseline holds 8-bit samples only"
        }
        _ => return Ok(()),
    };
    Err(RenderError::Encode(refused.to_owned()))
}

/// Frames (0-based) encoded in `to` (an encapsulated syntax with one fragment per frame):
/// the object is transcoded in memory and the frames' fragments taken from it.
pub fn encode_frames(
    path: &Path,
    frames: &[u32],
    to: &TransferSyntax,
) -> Result<Vec<Vec<u8>>, RenderError> {
    let mut obj = crate::dicom::open_file(path).map_err(RenderError::Read)?;
    transcode(&mut obj, to)?;
    let pixels = obj
        .element(dicom_dictionary_std::tags::PIXEL_DATA)
        .map_err(|e| RenderError::Encode(e.to_string()))?;
    let fragments = pixels
        .fragments()
        .ok_or_else(|| RenderError::Encode("no encapsulated pixel data".into()))?;
    frames
        .iter()
        .map(|&f| {
            fragments
                .get(f as usize)
                .map(|b| b.to_vec())
                .ok_or(RenderError::NoFrame(f + 1))
        })
        .collect()
}

/// Frames (0-based) decoded to native little-endian samples.
pub fn decode_frames(path: &Path, frames: &[u32]) -> Result<Vec<Vec<u8>>, RenderError> {
    let obj = crate::dicom::open_file(path).map_err(RenderError::Read)?;
    frames
        .iter()
        .map(|&f| {
            let pixels = obj
                .decode_pixel_data_frame(f)
                .map_err(|e| RenderError::Decode(e.to_string()))?;
            Ok(pixels.data().to_vec())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(uid: &str) -> TransferSyntax {
        TransferSyntax::parse(uid).unwrap()
    }

    #[test]
    fn what_can_be_produced() {
        let (explicit, implicit) = (
            TransferSyntax::explicit_vr_le(),
            TransferSyntax::implicit_vr_le(),
        );
        assert!(can_transcode(&ts("1.2.840.10008.1.2.4.50"), &explicit));
        assert!(can_transcode(&ts("1.2.840.10008.1.2.5"), &implicit));
        assert!(can_transcode(&ts("1.2.840.10008.1.2.4.90"), &explicit));
        let jpeg = ts("1.2.840.10008.1.2.4.50");
        assert!(can_transcode(&jpeg, &jpeg));
        assert!(can_transcode(&explicit, &jpeg));
        let (jls, j2k) = (ts(JPEG_LS_LOSSLESS), ts("1.2.840.10008.1.2.4.90"));
        assert!(can_transcode(&explicit, &jls) && can_transcode(&jls, &explicit));
        assert!(can_transcode(&j2k, &jls) && !can_transcode(&explicit, &j2k));
        assert!(can_transcode(&jls, &ts(DEFLATED)));
        assert!(preference(&explicit) < preference(&jls));
        assert!(preference(&jls) < preference(&jpeg));
        assert!(can_transcode(&explicit, &ts(RLE_LOSSLESS)));
        assert!(preference(&ts(RLE_LOSSLESS)) < preference(&jpeg));
    }
}
