//! The rows an ingest hands to the index: plain data, built by `ingest/` from a parsed
//! header (the study and series attributes are `dicom`'s, as the header gives them).

pub use crate::dicom::{SeriesAttributes, StudyAttributes};
use crate::model::{ObjectKey, Origin, Sha256, TransferSyntax, Uid};

/// Everything the index keeps for one instance.
#[derive(Debug, Clone)]
pub struct InstanceRecord {
    pub study: StudyAttributes,
    pub series: SeriesAttributes,
    pub sop_instance_uid: Uid,
    pub sop_class_uid: Uid,
    pub instance_number: Option<i64>,
    pub transfer_syntax: TransferSyntax,
    pub number_of_frames: i64,
    pub rows: Option<i64>,
    pub columns: Option<i64>,
    pub object_key: ObjectKey,
    pub size: u64,
    /// Bytes to put in front of the stored object to make a standard Part-10 file: 0, or
    /// 128 (no preamble), or 132 (neither preamble nor `DICM`).
    pub part10_prefix: i64,
    pub sha256: Sha256,
    /// Instance-level attributes (QIDO-RS defaults) as a DICOM JSON object.
    pub attrs_json: String,
    /// The instance as DICOM JSON (PS3.18 F.2), bulk data as BulkDataURI.
    pub metadata_json: String,
    /// Encoded frame offset table (see `dicom::frames`), if frames can be range-read.
    pub frame_table: Option<Vec<u8>>,
    pub origin: Origin,
    pub stored_at: i64,
    /// Destinations to forward it to (the forwarding rules it matched): one outbox job
    /// each, written with the row.
    pub forward_to: Vec<String>,
}
