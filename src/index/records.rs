//! The rows an ingest hands to the index: plain data, built by `ingest/` from a parsed header.

use crate::model::Origin;

/// Study-level attributes, taken from the first instance of the study.
#[derive(Debug, Clone, Default)]
pub struct StudyRecord {
    pub study_uid: String,
    pub patient_name: Option<String>,
    pub patient_name_key: Option<String>,
    pub patient_id: Option<String>,
    pub patient_birth_date: Option<String>,
    pub patient_sex: Option<String>,
    pub study_date: Option<String>,
    pub study_time: Option<String>,
    pub accession_number: Option<String>,
    pub study_id: Option<String>,
    pub study_description: Option<String>,
    pub referring_physician_name: Option<String>,
    pub referring_physician_key: Option<String>,
    /// Study-level attributes as a DICOM JSON object.
    pub attrs_json: String,
}

/// Series-level attributes, taken from the first instance of the series.
#[derive(Debug, Clone, Default)]
pub struct SeriesRecord {
    pub series_uid: String,
    pub modality: Option<String>,
    pub series_number: Option<i64>,
    pub series_description: Option<String>,
    pub body_part_examined: Option<String>,
    pub performed_start_date: Option<String>,
    pub performed_start_time: Option<String>,
    /// Series-level attributes as a DICOM JSON object.
    pub attrs_json: String,
}

/// Everything the index keeps for one instance.
#[derive(Debug, Clone)]
pub struct InstanceRecord {
    pub study: StudyRecord,
    pub series: SeriesRecord,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub instance_number: Option<i64>,
    pub transfer_syntax: String,
    pub number_of_frames: i64,
    pub rows: Option<i64>,
    pub columns: Option<i64>,
    pub object_key: String,
    pub size: i64,
    /// Bytes to put in front of the stored object to make a standard Part-10 file: 0, or
    /// 128 (no preamble), or 132 (neither preamble nor `DICM`).
    pub part10_prefix: i64,
    pub sha256: String,
    /// Instance-level attributes (QIDO-RS defaults) as a DICOM JSON object.
    pub attrs_json: String,
    /// The instance as DICOM JSON (PS3.18 F.2), bulk data as BulkDataURI.
    pub metadata_json: String,
    /// Encoded frame offset table (see `ingest::frames`), if frames can be range-read.
    pub frame_table: Option<Vec<u8>>,
    pub origin: Origin,
    pub stored_at: i64,
}
