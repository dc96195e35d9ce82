//! Parse and validate one spooled object: the header (up to Pixel Data) with dicom-object,
//! the pixel data layout with the raw walker, then everything the index keeps.
//!
//! Runs on a blocking thread. Returns a [`Parsed`] or the [`Rejection`] that explains,
//! in words a sender can act on, why the object cannot be stored.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use dicom_core::dictionary::UidDictionary;
use dicom_core::Tag;
use dicom_dictionary_std::{tags, StandardSopClassDictionary};
use dicom_object::file::ReadPreamble;
use dicom_object::{InMemDicomObject, OpenFileOptions};
use serde_json::{Map, Value as Json};
use unicode_normalization::UnicodeNormalization;

use super::frames::{self, Encoding, PixelData, WalkError};
use super::json::{self, dataset_to_json};
use super::{Reason, Rejection};
use crate::index::{SeriesRecord, StudyRecord};
use crate::model::Uid;

/// What ingest learned from one object.
#[derive(Debug)]
pub struct Parsed {
    pub study_uid: Uid,
    pub series_uid: Uid,
    pub sop_instance_uid: Uid,
    pub sop_class_uid: Uid,
    pub transfer_syntax: Uid,
    pub instance_number: Option<i64>,
    pub number_of_frames: i64,
    pub rows: Option<i64>,
    pub columns: Option<i64>,
    pub attrs_json: String,
    pub metadata_json: String,
    pub part10_prefix: i64,
    pub frame_table: Option<Vec<u8>>,
    pub study: StudyRecord,
    pub series: SeriesRecord,
}

/// Study-level attributes copied into the study's JSON (Patient and General Study modules).
const STUDY_TAGS: &[Tag] = &[
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
const SERIES_TAGS: &[Tag] = &[
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
const INSTANCE_TAGS: &[Tag] = &[
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

fn reject(reason: Reason, detail: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        detail: detail.into(),
        sop_class_uid: None,
        sop_instance_uid: None,
    }
}

/// Parse and check an object of `len` bytes read from `source` (positioned at its start).
pub fn parse<R: Read + Seek>(source: R, len: u64) -> Result<Parsed, Rejection> {
    let mut reader = super::seekbuf::SeekBuf::new(16 * 1024, source).map_err(io_failure)?;
    let layout = frames::layout(&mut reader, len).map_err(walk_rejection)?;
    let (ts_uid, encoding) = transfer_syntax(&layout)?;
    match encoding {
        Encoding::Deflated => super::nesting::check_deflated(&mut reader, layout.dataset_start),
        _ => super::nesting::check_nesting(&mut reader, len, layout.dataset_start, encoding),
    }
    .map_err(walk_rejection)?;
    let obj = open_header(&mut reader, &layout).map_err(|e| {
        reject(
            Reason::CannotUnderstand,
            format!("cannot parse the DICOM header: {e}"),
        )
    })?;
    let uids = read_uids(&obj)?;
    let attribute = |r: Rejection| r.about(&uids.sop_class, &uids.sop_instance);
    check_meta(obj.meta(), &uids.sop_class, &uids.sop_instance);
    check_sop_class(&uids.sop_class).map_err(attribute)?;
    let pixel = frames::find_pixel_data(&mut reader, len, layout.dataset_start, encoding)
        .map_err(|e| attribute(walk_rejection(e)))?;
    // Deflated data sets cannot be walked; dicom-object has read them up to Pixel Data.
    let has_pixels = pixel.is_some() || encoding == Encoding::Deflated;
    check_iod(&uids.sop_class, &obj, has_pixels).map_err(attribute)?;

    let number_of_frames = int(&obj, tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1);
    let (rows, columns) = (int(&obj, tags::ROWS), int(&obj, tags::COLUMNS));
    let bulk_base = format!(
        "studies/{}/series/{}/instances/{}",
        uids.study, uids.series, uids.sop_instance
    );
    let mut map = dataset_to_json(&obj, &bulk_base);
    let mut frame_table = None;
    if let Some(pd) = &pixel {
        map.insert(
            json::tag_key(tags::PIXEL_DATA),
            pixel_data_json(pd, &obj, &bulk_base),
        );
        let native_len = native_frame_len(&obj, rows, columns);
        frame_table = frames::frames(pd, number_of_frames as u64, native_len)
            .map(|f| frames::encode_table(&f));
    }
    Ok(Parsed {
        instance_number: int(&obj, tags::INSTANCE_NUMBER),
        number_of_frames,
        rows,
        columns,
        study: study_record(&obj, &uids.study, &map),
        series: series_record(&obj, &uids.series, &map),
        attrs_json: subset(&map, INSTANCE_TAGS),
        part10_prefix: match (layout.has_marker, layout.meta_start) {
            (true, 132) => 0,
            (true, _) => 128,
            (false, _) => 132,
        },
        metadata_json: Json::Object(map).to_string(),
        frame_table,
        study_uid: uids.study,
        series_uid: uids.series,
        sop_instance_uid: uids.sop_instance,
        sop_class_uid: uids.sop_class,
        transfer_syntax: ts_uid,
    })
}

/// The declared transfer syntax, which must be one dicom-rs knows, and how to walk it.
fn transfer_syntax(layout: &frames::Layout) -> Result<(Uid, Encoding), Rejection> {
    let raw = layout.transfer_syntax.as_deref().ok_or_else(|| {
        reject(
            Reason::CannotUnderstand,
            "the file meta group has no TransferSyntaxUID (0002,0010)",
        )
    })?;
    let uid = Uid::parse(raw).map_err(|e| {
        reject(
            Reason::CannotUnderstand,
            format!("TransferSyntaxUID {raw:?}: {e}"),
        )
    })?;
    let encoding = Encoding::of(uid.as_str()).ok_or_else(|| {
        reject(
            Reason::UnsupportedTransferSyntax,
            format!("transfer syntax {uid} is not supported"),
        )
    })?;
    Ok((uid, encoding))
}

/// The Pixel Data entry of the metadata: its VR and a BulkDataURI.
fn pixel_data_json(pd: &PixelData, obj: &InMemDicomObject, bulk_base: &str) -> Json {
    let vr = match pd {
        PixelData::Native { vr: Some(vr), .. } => String::from_utf8_lossy(vr).into_owned(),
        PixelData::Native { vr: None, .. } if int(obj, tags::BITS_ALLOCATED).unwrap_or(16) > 8 => {
            "OW".into()
        }
        _ => "OB".into(),
    };
    let mut entry = Map::new();
    entry.insert("vr".into(), Json::String(vr));
    entry.insert(
        "BulkDataURI".into(),
        Json::String(json::bulk_uri(bulk_base, tags::PIXEL_DATA)),
    );
    Json::Object(entry)
}

fn study_record(obj: &InMemDicomObject, study_uid: &Uid, map: &Map<String, Json>) -> StudyRecord {
    StudyRecord {
        study_uid: study_uid.to_string(),
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

fn series_record(
    obj: &InMemDicomObject,
    series_uid: &Uid,
    map: &Map<String, Json>,
) -> SeriesRecord {
    SeriesRecord {
        series_uid: series_uid.to_string(),
        modality: text(obj, tags::MODALITY),
        series_number: int(obj, tags::SERIES_NUMBER),
        series_description: text(obj, tags::SERIES_DESCRIPTION),
        body_part_examined: text(obj, tags::BODY_PART_EXAMINED),
        performed_start_date: text(obj, tags::PERFORMED_PROCEDURE_STEP_START_DATE),
        performed_start_time: text(obj, tags::PERFORMED_PROCEDURE_STEP_START_TIME),
        attrs_json: subset(map, SERIES_TAGS),
    }
}

/// Parse the header up to Pixel Data. dicom-object wants `DICM` and a correct group
/// length first; objects in the wild lack one or both, so the parser reads a marker and a
/// group length computed by the walker, then the meta elements and the data set as they
/// are stored (the stored bytes are never changed).
fn open_header<R: Read + Seek>(
    source: R,
    layout: &frames::Layout,
) -> Result<dicom_object::DefaultDicomObject, String> {
    open_with_layout(source, layout, true)
}

/// Parse a whole stored object (for rendering and non-pixel bulk data), tolerating what
/// ingest tolerates: no preamble, no `DICM`, no or a wrong meta group length.
pub fn open_stored(path: &Path) -> Result<dicom_object::DefaultDicomObject, String> {
    let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    let mut reader = BufReader::new(File::open(path).map_err(|e| e.to_string())?);
    let layout = frames::layout(&mut reader, len).map_err(|e| e.to_string())?;
    open_with_layout(File::open(path).map_err(|e| e.to_string())?, &layout, false)
}

fn open_with_layout<R: Read + Seek>(
    mut file: R,
    layout: &frames::Layout,
    header_only: bool,
) -> Result<dicom_object::DefaultDicomObject, String> {
    file.seek(SeekFrom::Start(layout.meta_body_start))
        .map_err(|e| e.to_string())?;
    let group_length =
        u32::try_from(layout.dataset_start - layout.meta_body_start).map_err(|e| e.to_string())?;
    let mut prefix = Vec::with_capacity(16);
    prefix.extend_from_slice(b"DICM\x02\x00\x00\x00UL\x04\x00");
    prefix.extend_from_slice(&group_length.to_le_bytes());
    let reader = std::io::Cursor::new(prefix).chain(BufReader::with_capacity(64 * 1024, file));
    let options = if header_only {
        OpenFileOptions::new().read_until(tags::PIXEL_DATA)
    } else {
        OpenFileOptions::new()
    };
    options
        .read_preamble(ReadPreamble::Never)
        .from_reader(reader)
        .map_err(|e| e.to_string())
}

/// The four identifying UIDs of an instance.
struct Uids {
    study: Uid,
    series: Uid,
    sop_instance: Uid,
    sop_class: Uid,
}

/// Read and parse the identifying UIDs; a refusal names whichever SOP UIDs were readable.
fn read_uids(obj: &InMemDicomObject) -> Result<Uids, Rejection> {
    let get = |tag: Tag, name: &str| match text(obj, tag) {
        None => Err(reject(
            Reason::MissingAttribute,
            format!("{name} is missing or empty"),
        )),
        Some(s) => {
            Uid::parse(&s).map_err(|e| reject(Reason::InvalidUid, format!("{name} {s:?}: {e}")))
        }
    };
    let sop_class = get(tags::SOP_CLASS_UID, "SOPClassUID");
    let sop_instance = get(tags::SOP_INSTANCE_UID, "SOPInstanceUID");
    let attribute = |r: Rejection| Rejection {
        sop_class_uid: sop_class.as_ref().ok().map(Uid::to_string),
        sop_instance_uid: sop_instance.as_ref().ok().map(Uid::to_string),
        ..r
    };
    Ok(Uids {
        study: get(tags::STUDY_INSTANCE_UID, "StudyInstanceUID").map_err(attribute)?,
        series: get(tags::SERIES_INSTANCE_UID, "SeriesInstanceUID").map_err(attribute)?,
        sop_instance: sop_instance.clone().map_err(attribute)?,
        sop_class: sop_class.clone().map_err(attribute)?,
    })
}

/// The file meta group is media bookkeeping; the data set is authoritative. Files whose
/// meta group disagrees with the data set are common after anonymisation, so they are
/// stored under the data set's UIDs and the disagreement is logged.
fn check_meta(meta: &dicom_object::FileMetaTable, sop_class: &Uid, sop_instance: &Uid) {
    let trim = |s: &str| s.trim_end_matches(['\0', ' ']).to_owned();
    let meta_instance = trim(&meta.media_storage_sop_instance_uid);
    let meta_class = trim(&meta.media_storage_sop_class_uid);
    if (!meta_instance.is_empty() && meta_instance != sop_instance.as_str())
        || (!meta_class.is_empty() && meta_class != sop_class.as_str())
    {
        tracing::warn!(
            sop = %sop_instance,
            meta_sop = %meta_instance,
            meta_class = %meta_class,
            "file meta group disagrees with the data set; the data set's UIDs are used"
        );
    }
}

/// Image storage SOP classes need pixel data and its geometry (PS3.3 Image Pixel module).
fn check_iod(sop_class: &Uid, obj: &InMemDicomObject, has_pixels: bool) -> Result<(), Rejection> {
    let Some(entry) = StandardSopClassDictionary.by_uid(sop_class.as_str()) else {
        return Ok(());
    };
    if !entry.name.contains("Image Storage") {
        return Ok(());
    }
    let float_pixels = obj.get(tags::FLOAT_PIXEL_DATA).is_some()
        || obj.get(tags::DOUBLE_FLOAT_PIXEL_DATA).is_some();
    let missing: Vec<&str> = [
        (!has_pixels && !float_pixels).then_some("PixelData"),
        int(obj, tags::ROWS).is_none().then_some("Rows"),
        int(obj, tags::COLUMNS).is_none().then_some("Columns"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(reject(
        Reason::DataSetMismatch,
        format!(
            "the data set does not match its SOP class {} ({}): {} missing",
            sop_class,
            entry.name,
            missing.join(", ")
        ),
    ))
}

/// A standard SOP class must be a storage SOP class; private ones are accepted.
pub fn check_sop_class(uid: &Uid) -> Result<(), Rejection> {
    match StandardSopClassDictionary.by_uid(uid.as_str()) {
        Some(entry) if !is_storage_class(entry.name) => Err(reject(
            Reason::SopClassNotSupported,
            format!("{uid} ({}) is not a storage SOP class", entry.name),
        )),
        _ => Ok(()),
    }
}

/// Whether a standard SOP class name denotes something that can be stored.
pub fn is_storage_class(name: &str) -> bool {
    name.contains("Storage")
        && !name.contains("Commitment")
        && !name.contains("Media Storage Directory")
}

fn walk_rejection(e: WalkError) -> Rejection {
    match e {
        WalkError::Io(e) => io_failure(e),
        WalkError::NotPart10 => reject(
            Reason::CannotUnderstand,
            "not a DICOM Part-10 object: the 'DICM' marker is missing (expected after a 128-byte preamble or at the start)",
        ),
        other => reject(Reason::CannotUnderstand, other.to_string()),
    }
}

fn io_failure(e: std::io::Error) -> Rejection {
    reject(
        Reason::ProcessingFailure,
        format!("reading the spooled object: {e}"),
    )
}

/// Trimmed text of a top-level element, `None` when absent or empty. (`get`, not
/// `element_opt`: the latter builds an error with a captured backtrace for every absent tag.)
pub fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let elem = obj.get(tag)?;
    let s = elem.to_str().ok()?;
    let t = s.trim_matches(|c: char| c == ' ' || c == '\0');
    (!t.is_empty()).then(|| t.to_owned())
}

fn int(obj: &InMemDicomObject, tag: Tag) -> Option<i64> {
    let elem = obj.get(tag)?;
    elem.to_int::<i64>()
        .ok()
        .or_else(|| text(obj, tag)?.parse().ok())
}

fn native_frame_len(
    obj: &InMemDicomObject,
    rows: Option<i64>,
    columns: Option<i64>,
) -> Option<u64> {
    let bits = int(obj, tags::BITS_ALLOCATED)?;
    if bits % 8 != 0 {
        return None;
    }
    let spp = int(obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    let n = rows? * columns? * spp * (bits / 8);
    u64::try_from(n).ok()
}

fn subset(map: &Map<String, Json>, wanted: &[Tag]) -> String {
    let mut out = Map::new();
    for tag in wanted {
        let key = json::tag_key(*tag);
        if let Some(v) = map.get(&key) {
            out.insert(key, v.clone());
        }
    }
    Json::Object(out).to_string()
}

/// Case- and accent-insensitive form of a name, for fuzzy matching.
pub fn fold(name: &str) -> String {
    name.nfkd()
        .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fold_case_and_accents() {
        assert_eq!(fold("Müller^JOSÉ"), "muller^jose");
        assert_eq!(fold("Иванов^Иван"), "иванов^иван");
        assert_eq!(fold("山田^太郎"), "山田^太郎");
    }

    #[test]
    fn storage_classes_are_told_apart() {
        assert!(check_sop_class(&Uid::parse("1.2.840.10008.5.1.4.1.1.2").unwrap()).is_ok());
        assert!(check_sop_class(&Uid::parse("1.2.840.10008.5.1.4.1.1.104.1").unwrap()).is_ok());
        assert!(
            check_sop_class(&Uid::parse("1.2.3.4.5").unwrap()).is_ok(),
            "private classes pass"
        );
        let verification = check_sop_class(&Uid::parse("1.2.840.10008.1.1").unwrap()).unwrap_err();
        assert_eq!(verification.reason, Reason::SopClassNotSupported);
        assert!(check_sop_class(&Uid::parse("1.2.840.10008.1.20.1").unwrap()).is_err());
    }
}
