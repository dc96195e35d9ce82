//! Bulk data other than Pixel Data (overlays, waveforms, encapsulated documents, …): the
//! object is parsed on a blocking thread to extract one top-level value. Pixel Data itself
//! never comes this way (see `frames`).

use bytes::Bytes;
use dicom_core::Tag;
use dicom_object::OpenFileOptions;
use futures::StreamExt;
use std::io::Write;

use super::ApiError;
use crate::storage::{ObjectKey, Store};

/// Read the value of a top-level element of a stored object, as little-endian bytes.
pub async fn read_value(store: &Store, key: &ObjectKey, tag: Tag) -> Result<Bytes, ApiError> {
    // Copy the object to a temporary file (bounded memory for any object size), then parse.
    let mut tmp = tempfile::NamedTempFile::new_in(store.spool_dir())
        .map_err(|e| ApiError::Internal(format!("temporary file: {e}")))?;
    let mut stream = store
        .stream(key, None)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::Internal(e.to_string()))?;
        tmp.write_all(&chunk)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
    }
    tokio::task::spawn_blocking(move || {
        let obj = OpenFileOptions::new()
            .open_file(tmp.path())
            .map_err(|e| ApiError::Internal(format!("parsing {}: {e}", tmp.path().display())))?;
        let elem = obj.get(tag).ok_or_else(|| {
            ApiError::NotFound(format!(
                "the instance has no bulk data {:04X}{:04X}",
                tag.0, tag.1
            ))
        })?;
        let bytes = elem
            .value()
            .primitive()
            .map(|p| crate::ingest::json::binary_le(p))
            .ok_or_else(|| {
                ApiError::NotFound(format!("{:04X}{:04X} is not a binary value", tag.0, tag.1))
            })?;
        Ok(Bytes::from(bytes))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
}
