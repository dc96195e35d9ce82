//! Compression at rest (`[compression]`): once a study has been idle for `after`, its
//! uncompressed grayscale images are re-encoded losslessly in the background, verified
//! pixel for pixel, and swapped in. Off unless `syntax` is set.

use serde::{Deserialize, Serialize};

/// The syntaxes objects can be re-encoded in here: JPEG-LS by CharLS (through dicom-rs),
/// RLE by our own encoder (`dicom::rle`); JPEG 2000 dicom-rs can only decode.
pub const SYNTAXES: &[(&str, &str)] = &[
    ("jpeg-ls-lossless", "1.2.840.10008.1.2.4.80"),
    ("rle", "1.2.840.10008.1.2.5"),
];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompressionConfig {
    /// `jpeg-ls-lossless` or `rle`; none: off.
    pub syntax: Option<String>,
    /// Re-encode a study once nothing has been stored to it for this long (`0s`, `10m`, `1d`;
    /// a study's last store is kept to the second).
    #[serde(
        deserialize_with = "super::retention::duration_secs",
        skip_serializing_if = "Option::is_none"
    )]
    pub after: Option<u64>,
    /// Only these modalities (empty: any).
    pub modalities: Vec<String>,
    /// Only these SOP classes (empty: any).
    pub sop_classes: Vec<String>,
    /// Objects larger than this are left as they are: the job holds one in memory, with
    /// its decoded and re-encoded copies (default 64 MiB).
    #[serde(
        deserialize_with = "super::retention::bytes",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_object_bytes: Option<u64>,
    /// How often the server looks for studies to compress.
    pub interval_secs: u64,
    /// How many objects are encoded and verified at a time, each on a core of its own
    /// (default 1: the job leaves the other cores to ingest and retrieval).
    pub workers: usize,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            syntax: None,
            after: None,
            modalities: Vec::new(),
            sop_classes: Vec::new(),
            max_object_bytes: None,
            interval_secs: 30,
            workers: 1,
        }
    }
}

impl CompressionConfig {
    /// The target transfer syntax UID, or why `syntax` is not one.
    pub fn target(&self) -> Result<Option<&'static str>, String> {
        let Some(name) = self.syntax.as_deref() else {
            return Ok(None);
        };
        SYNTAXES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, uid)| Some(*uid))
            .ok_or_else(|| {
                format!(
                    "compression.syntax {name:?}: this server re-encodes in jpeg-ls-lossless or rle \
                     only (dicom-rs has no JPEG 2000 encoder)"
                )
            })
    }

    pub fn max_object_bytes(&self) -> u64 {
        self.max_object_bytes.unwrap_or(64 << 20)
    }
}
