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

/// Transfer syntaxes this server produces on request (from any syntax it can decode).
pub const TARGETS: &[&str] = &[
    TransferSyntax::EXPLICIT_VR_LE,
    TransferSyntax::IMPLICIT_VR_LE,
];

/// Whether objects stored in `from` can be sent in `to`.
pub fn can_transcode(from: &TransferSyntax, to: &TransferSyntax) -> bool {
    from == to || (from.is_decodable() && to.is_native_le())
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
    obj.transcode(to.entry())
        .map_err(|e| RenderError::Decode(e.to_string()))
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
        assert!(!can_transcode(&explicit, &jpeg));
    }
}
