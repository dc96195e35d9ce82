//! Changing the transfer syntax of a stored object for a client that asked for another
//! one (WADO-RS `transfer-syntax=`): decode compressed pixel data with dicom-pixeldata and
//! write the object again, or decode one frame to native little-endian samples.
//!
//! Blocking, one object in memory at a time; the stored object is never changed.

use std::path::Path;

use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_pixeldata::{PixelDecoder, Transcode};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use super::RenderError;

pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
pub const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";

/// Transfer syntaxes this server produces on request (from any syntax it can decode).
pub const TARGETS: &[&str] = &[EXPLICIT_VR_LE, IMPLICIT_VR_LE];

/// Whether objects stored in `from` can be sent in `to`.
pub fn can_transcode(from: &str, to: &str) -> bool {
    if from == to {
        return true;
    }
    let decodable = TransferSyntaxRegistry
        .get(from)
        .is_some_and(|ts| ts.is_codec_free() || ts.can_decode_all());
    decodable && TARGETS.contains(&to)
}

/// The whole object in transfer syntax `to`, as Part-10 bytes.
pub fn transcode_file(path: &Path, to: &str) -> Result<Vec<u8>, RenderError> {
    let mut obj = crate::ingest::open_stored(path).map_err(RenderError::Read)?;
    let ts = TransferSyntaxRegistry
        .get(to)
        .ok_or_else(|| RenderError::Decode(format!("unknown transfer syntax {to}")))?;
    obj.transcode(ts)
        .map_err(|e| RenderError::Decode(e.to_string()))?;
    let mut out = Vec::new();
    obj.write_all(&mut out)
        .map_err(|e| RenderError::Encode(e.to_string()))?;
    Ok(out)
}

/// Frames (0-based) decoded to native little-endian samples.
pub fn decode_frames(path: &Path, frames: &[u32]) -> Result<Vec<Vec<u8>>, RenderError> {
    let obj = crate::ingest::open_stored(path).map_err(RenderError::Read)?;
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

    #[test]
    fn what_can_be_produced() {
        assert!(can_transcode("1.2.840.10008.1.2.4.50", EXPLICIT_VR_LE));
        assert!(can_transcode("1.2.840.10008.1.2.5", IMPLICIT_VR_LE));
        assert!(can_transcode("1.2.840.10008.1.2.4.90", EXPLICIT_VR_LE));
        assert!(can_transcode(
            "1.2.840.10008.1.2.4.50",
            "1.2.840.10008.1.2.4.50"
        ));
        assert!(!can_transcode(EXPLICIT_VR_LE, "1.2.840.10008.1.2.4.50"));
        assert!(!can_transcode("1.2.3.4", EXPLICIT_VR_LE));
    }
}
