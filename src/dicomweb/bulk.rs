//! Bulk data other than Pixel Data (overlays, waveforms, encapsulated documents, …): the
//! object is parsed on a blocking thread to extract one top-level value. Pixel Data itself
//! never comes this way (see `frames`).

use bytes::Bytes;
use dicom_core::Tag;

use super::ApiError;
use crate::model::ObjectKey;
use crate::storage::Store;

/// Read the value of a top-level element of a stored object, as little-endian bytes.
pub async fn read_value(store: &Store, key: &ObjectKey, tag: Tag) -> Result<Bytes, ApiError> {
    // A local file keeps memory bounded whatever the object's size until parsing.
    store
        .with_local_file(key, move |path| {
            let obj = crate::dicom::open_file(path)
                .map_err(|e| ApiError::Internal(format!("parsing {}: {e}", path.display())))?;
            let elem = obj.get(tag).ok_or_else(|| {
                ApiError::NotFound(format!(
                    "the instance has no bulk data {:04X}{:04X}",
                    tag.0, tag.1
                ))
            })?;
            let bytes = elem
                .value()
                .primitive()
                .map(crate::dicom::json::binary_le)
                .ok_or_else(|| {
                    ApiError::NotFound(format!("{:04X}{:04X} is not a binary value", tag.0, tag.1))
                })?;
            Ok(Bytes::from(bytes))
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
}
