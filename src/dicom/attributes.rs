//! The study-, series- and instance-level attributes the index keeps of an instance: the
//! columns it matches on and the DICOM JSON subsets QIDO-RS answers with. Taken from the
//! parsed header; the study's and series' come from their first instance.

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use serde_json::{Map, Value as Json};

use super::json;
use super::text::{fold, int, text};
use crate::model::Uid;

/// Study-level attributes (Patient and General Study modules).
#[derive(Debug, Clone)]
pub struct StudyAttributes {
    pub study_uid: Uid,
    pub patient_name: Option<String>,
    /// The name folded for case- and accent-insensitive matching.
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

impl StudyAttributes {
    /// A study known by its UID only.
    pub fn new(study_uid: Uid) -> Self {
        StudyAttributes {
            study_uid,
            patient_name: None,
            patient_name_key: None,
            patient_id: None,
            patient_birth_date: None,
            patient_sex: None,
            study_date: None,
            study_time: None,
            accession_number: None,
            study_id: None,
            study_description: None,
            referring_physician_name: None,
            referring_physician_key: None,
            attrs_json: "{}".into(),
        }
    }
}

/// Series-level attributes (General Series module and friends).
#[derive(Debug, Clone)]
pub struct SeriesAttributes {
    pub series_uid: Uid,
    pub modality: Option<String>,
    pub series_number: Option<i64>,
    pub series_description: Option<String>,
    pub body_part_examined: Option<String>,
    pub performed_start_date: Option<String>,
    pub performed_start_time: Option<String>,
    /// Series-level attributes as a DICOM JSON object.
    pub attrs_json: String,
}

impl SeriesAttributes {
    /// A series known by its UID only.
    pub fn new(series_uid: Uid) -> Self {
        SeriesAttributes {
            series_uid,
            modality: None,
            series_number: None,
            series_description: None,
            body_part_examined: None,
            performed_start_date: None,
            performed_start_time: None,
            attrs_json: "{}".into(),
        }
    }
}

/// Study-level attributes copied into the study's JSON (Patient and General Study modules).
pub(super) const STUDY_TAGS: &[Tag] = &[
    tags::SPECIFIC_CHARACTER_SET,
    tags::STUDY_DATE,
    tags::STUDY_TIME,
    tags::ACCESSION_NUMBER,
    tags::ISSUER_OF_ACCESSION_NUMBER_SEQUENCE,
    tags::REFERRING_PHYSICIAN_NAME,
    tags::TIMEZONE_OFFSET_FROM_UTC,
    tags::STUDY_DESCRIPTION,
    tags::PROCEDURE_CODE_SEQUENCE,
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::ISSUER_OF_PATIENT_ID,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_SEX,
    tags::OTHER_PATIENT_I_DS_SEQUENCE,
    tags::PATIENT_AGE,
    tags::PATIENT_SIZE,
    tags::PATIENT_WEIGHT,
    tags::STUDY_INSTANCE_UID,
    tags::STUDY_ID,
];

/// Series-level attributes copied into the series' JSON (General Series module and friends).
pub(super) const SERIES_TAGS: &[Tag] = &[
    tags::SPECIFIC_CHARACTER_SET,
    tags::SERIES_DATE,
    tags::SERIES_TIME,
    tags::MODALITY,
    tags::TIMEZONE_OFFSET_FROM_UTC,
    tags::SERIES_DESCRIPTION,
    tags::PERFORMING_PHYSICIAN_NAME,
    tags::BODY_PART_EXAMINED,
    tags::LATERALITY,
    tags::SERIES_INSTANCE_UID,
    tags::SERIES_NUMBER,
    tags::PERFORMED_PROCEDURE_STEP_START_DATE,
    tags::PERFORMED_PROCEDURE_STEP_START_TIME,
    tags::REQUEST_ATTRIBUTES_SEQUENCE,
];

/// Instance-level attributes kept for QIDO-RS (PS3.18 Table 6.7.1-2 and what viewers sort by).
pub(super) const INSTANCE_TAGS: &[Tag] = &[
    tags::SPECIFIC_CHARACTER_SET,
    tags::IMAGE_TYPE,
    tags::SOP_CLASS_UID,
    tags::SOP_INSTANCE_UID,
    tags::CONTENT_DATE,
    tags::CONTENT_TIME,
    tags::TIMEZONE_OFFSET_FROM_UTC,
    tags::ACQUISITION_NUMBER,
    tags::INSTANCE_NUMBER,
    tags::NUMBER_OF_FRAMES,
    tags::ROWS,
    tags::COLUMNS,
    tags::BITS_ALLOCATED,
];

pub(super) fn study(
    obj: &InMemDicomObject,
    study_uid: &Uid,
    map: &Map<String, Json>,
) -> StudyAttributes {
    StudyAttributes {
        study_uid: study_uid.clone(),
        patient_name: text(obj, tags::PATIENT_NAME),
        patient_name_key: text(obj, tags::PATIENT_NAME).map(|n| fold(&n)),
        patient_id: text(obj, tags::PATIENT_ID),
        patient_birth_date: text(obj, tags::PATIENT_BIRTH_DATE),
        patient_sex: text(obj, tags::PATIENT_SEX),
        study_date: text(obj, tags::STUDY_DATE),
        study_time: text(obj, tags::STUDY_TIME),
        accession_number: text(obj, tags::ACCESSION_NUMBER),
        study_id: text(obj, tags::STUDY_ID),
        study_description: text(obj, tags::STUDY_DESCRIPTION),
        referring_physician_name: text(obj, tags::REFERRING_PHYSICIAN_NAME),
        referring_physician_key: text(obj, tags::REFERRING_PHYSICIAN_NAME).map(|n| fold(&n)),
        attrs_json: subset(map, STUDY_TAGS),
    }
}

pub(super) fn series(
    obj: &InMemDicomObject,
    series_uid: &Uid,
    map: &Map<String, Json>,
) -> SeriesAttributes {
    SeriesAttributes {
        series_uid: series_uid.clone(),
        modality: text(obj, tags::MODALITY),
        series_number: int(obj, tags::SERIES_NUMBER),
        series_description: text(obj, tags::SERIES_DESCRIPTION),
        body_part_examined: text(obj, tags::BODY_PART_EXAMINED),
        performed_start_date: text(obj, tags::PERFORMED_PROCEDURE_STEP_START_DATE),
        performed_start_time: text(obj, tags::PERFORMED_PROCEDURE_STEP_START_TIME),
        attrs_json: subset(map, SERIES_TAGS),
    }
}

pub(super) fn subset(map: &Map<String, Json>, wanted: &[Tag]) -> String {
    let mut out = Map::new();
    for tag in wanted {
        let key = json::tag_key(*tag);
        if let Some(v) = map.get(&key) {
            out.insert(key, v.clone());
        }
    }
    Json::Object(out).to_string()
}
