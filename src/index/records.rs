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

/// A record of one CT instance for tests (64 rows, 1 000 bytes, forwarded to `ARCHIVE`).
#[cfg(test)]
pub(crate) fn sample(study: &str, series: &str, sop: &str, modality: &str) -> InstanceRecord {
    let digest = crate::model::Sha256::of(sop.as_bytes());
    InstanceRecord {
        study: StudyAttributes {
            patient_id: Some("P1".into()),
            ..StudyAttributes::new(Uid::parse(study).unwrap())
        },
        series: SeriesAttributes {
            modality: Some(modality.into()),
            ..SeriesAttributes::new(Uid::parse(series).unwrap())
        },
        sop_instance_uid: Uid::parse(sop).unwrap(),
        sop_class_uid: Uid::parse("1.2.840.10008.5.1.4.1.1.2").unwrap(),
        instance_number: Some(1),
        transfer_syntax: crate::model::TransferSyntax::explicit_vr_le(),
        number_of_frames: 1,
        rows: Some(64),
        columns: None,
        object_key: crate::model::ObjectKey::new(&Uid::parse(study).unwrap(), &digest),
        size: 1000,
        part10_prefix: 0,
        sha256: digest,
        attrs_json: "{}".into(),
        metadata_json: "{}".into(),
        frame_table: Some(vec![1, 2, 3]),
        origin: Origin {
            kind: crate::model::OriginKind::CStore,
            who: "SCU".into(),
            address: None,
        },
        stored_at: 1,
        forward_to: vec!["ARCHIVE".into()],
    }
}

/// For tests: a migrated SQLite index in a directory of its own (kept while the first
/// value lives), and its file's path, for connections of the test's own.
#[cfg(test)]
pub(crate) async fn migrated_sqlite() -> (tempfile::TempDir, std::path::PathBuf, super::Index) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.sqlite");
    let index = super::Index::open(&format!("sqlite://{}", path.display()), 2)
        .await
        .unwrap();
    (dir, path, index)
}
