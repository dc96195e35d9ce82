//! Parse and check one object as it is to be stored: the header (up to Pixel Data) with
//! dicom-object, the pixel data layout with the raw walker, then everything the index
//! keeps (UIDs, attributes, DICOM JSON, the frame table).
//!
//! Blocking; called by `ingest/` on a blocking thread (and by `verify` for orphans).
//! Returns a [`Header`] or the [`HeaderError`] that explains, in words a sender can act
//! on, why the object cannot be stored.

use std::io::{Read, Seek};

use dicom_core::dictionary::UidDictionary;
use dicom_core::Tag;
use dicom_dictionary_std::{tags, StandardSopClassDictionary};
use dicom_object::InMemDicomObject;
use serde_json::{Map, Value as Json};

use super::attributes::{self, SeriesAttributes, StudyAttributes, INSTANCE_TAGS};
use super::frames::{self, Encoding, PixelData, WalkError};
use super::json::{self, dataset_to_json};
use super::open::open_header;
use super::text::{int, text};
use crate::model::{TransferSyntax, Uid};

/// What one object is, as far as the index and the retrieval side need to know.
#[derive(Debug)]
pub struct Header {
    pub study_uid: Uid,
    pub series_uid: Uid,
    pub sop_instance_uid: Uid,
    pub sop_class_uid: Uid,
    pub transfer_syntax: TransferSyntax,
    pub instance_number: Option<i64>,
    pub number_of_frames: i64,
    pub rows: Option<i64>,
    pub columns: Option<i64>,
    /// Instance-level attributes (QIDO-RS defaults) as a DICOM JSON object.
    pub attrs_json: String,
    /// The instance as DICOM JSON (PS3.18 F.2), bulk data as BulkDataURI.
    pub metadata_json: String,
    /// Bytes to put in front of the stored object to make a standard Part-10 file: 0, or
    /// 128 (no preamble), or 132 (neither preamble nor `DICM`).
    pub part10_prefix: i64,
    /// Encoded frame offset table ([`frames::encode_table`]), if frames can be range-read.
    pub frame_table: Option<Vec<u8>>,
    pub study: StudyAttributes,
    pub series: SeriesAttributes,
}

/// What is wrong with an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// Not parseable as DICOM (garbage, truncated, bad encoding).
    Malformed,
    /// A required attribute (Study/Series/SOP Instance UID, SOP Class UID) is missing.
    MissingAttribute,
    /// A UID is not a valid UID.
    InvalidUid,
    /// The transfer syntax is not one this server knows.
    UnsupportedTransferSyntax,
    /// A standard SOP class that is not a storage SOP class.
    NotStorable,
    /// The data set lacks what its SOP class requires.
    IodMismatch,
    /// The bytes could not be read (an I/O error, not the sender's fault).
    Unreadable,
}

/// Why an object cannot be stored, with whatever SOP UIDs were readable.
#[derive(Debug, Clone)]
pub struct HeaderError {
    pub problem: Problem,
    pub detail: String,
    pub sop_class: Option<Uid>,
    pub sop_instance: Option<Uid>,
}

impl HeaderError {
    fn about(self, uids: &Uids) -> Self {
        HeaderError {
            sop_class: Some(uids.sop_class.clone()),
            sop_instance: Some(uids.sop_instance.clone()),
            ..self
        }
    }
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

fn reject(problem: Problem, detail: impl Into<String>) -> HeaderError {
    HeaderError {
        problem,
        detail: detail.into(),
        sop_class: None,
        sop_instance: None,
    }
}

/// Parse and check an object of `len` bytes read from `source` (positioned at its start).
pub fn parse<R: Read + Seek>(source: R, len: u64) -> Result<Header, HeaderError> {
    // No larger than the object: most are a few kilobytes.
    let buffer = usize::try_from(len)
        .unwrap_or(usize::MAX)
        .clamp(512, 16 * 1024);
    let mut reader = super::seekbuf::SeekBuf::new(buffer, source).map_err(io_failure)?;
    let layout = frames::layout(&mut reader, len).map_err(walk_rejection)?;
    let (ts, encoding) = transfer_syntax(&layout)?;
    match encoding {
        Encoding::Deflated => super::nesting::check_deflated(&mut reader, layout.dataset_start),
        _ => super::nesting::check_nesting(&mut reader, len, layout.dataset_start, encoding),
    }
    .map_err(walk_rejection)?;
    let obj = open_header(&mut reader, &layout).map_err(|e| {
        reject(
            Problem::Malformed,
            format!("cannot parse the DICOM header: {e}"),
        )
    })?;
    let uids = read_uids(&obj)?;
    let attribute = |r: HeaderError| r.about(&uids);
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
    Ok(Header {
        instance_number: int(&obj, tags::INSTANCE_NUMBER),
        number_of_frames,
        rows,
        columns,
        study: attributes::study(&obj, &uids.study, &map),
        series: attributes::series(&obj, &uids.series, &map),
        attrs_json: attributes::subset(&map, INSTANCE_TAGS),
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
        transfer_syntax: ts,
    })
}

/// The declared transfer syntax, which must be one dicom-rs knows, and how to walk it.
fn transfer_syntax(layout: &frames::Layout) -> Result<(TransferSyntax, Encoding), HeaderError> {
    let raw = layout.transfer_syntax.as_deref().ok_or_else(|| {
        reject(
            Problem::Malformed,
            "the file meta group has no TransferSyntaxUID (0002,0010)",
        )
    })?;
    let uid = Uid::parse(raw).map_err(|e| {
        reject(
            Problem::Malformed,
            format!("TransferSyntaxUID {raw:?}: {e}"),
        )
    })?;
    let unsupported = || {
        reject(
            Problem::UnsupportedTransferSyntax,
            format!("transfer syntax {uid} is not supported"),
        )
    };
    let encoding = Encoding::of(uid.as_str()).ok_or_else(unsupported)?;
    let ts = TransferSyntax::parse(uid.as_str()).map_err(|_| unsupported())?;
    Ok((ts, encoding))
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

/// The four identifying UIDs of an instance.
struct Uids {
    study: Uid,
    series: Uid,
    sop_instance: Uid,
    sop_class: Uid,
}

/// Read and parse the identifying UIDs; a refusal names whichever SOP UIDs were readable.
fn read_uids(obj: &InMemDicomObject) -> Result<Uids, HeaderError> {
    let get = |tag: Tag, name: &str| match text(obj, tag) {
        None => Err(reject(
            Problem::MissingAttribute,
            format!("{name} is missing or empty"),
        )),
        Some(s) => {
            Uid::parse(&s).map_err(|e| reject(Problem::InvalidUid, format!("{name} {s:?}: {e}")))
        }
    };
    let sop_class = get(tags::SOP_CLASS_UID, "SOPClassUID");
    let sop_instance = get(tags::SOP_INSTANCE_UID, "SOPInstanceUID");
    let attribute = |r: HeaderError| HeaderError {
        sop_class: sop_class.as_ref().ok().cloned(),
        sop_instance: sop_instance.as_ref().ok().cloned(),
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
fn check_iod(sop_class: &Uid, obj: &InMemDicomObject, has_pixels: bool) -> Result<(), HeaderError> {
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
        Problem::IodMismatch,
        format!(
            "the data set does not match its SOP class {} ({}): {} missing",
            sop_class,
            entry.name,
            missing.join(", ")
        ),
    ))
}

fn walk_rejection(e: WalkError) -> HeaderError {
    match e {
        WalkError::Io(e) => io_failure(e),
        WalkError::NotPart10 => reject(
            Problem::Malformed,
            "not a DICOM Part-10 object: the 'DICM' marker is missing (expected after a 128-byte preamble or at the start)",
        ),
        other => reject(Problem::Malformed, other.to_string()),
    }
}

fn io_failure(e: std::io::Error) -> HeaderError {
    reject(
        Problem::Unreadable,
        format!("reading the spooled object: {e}"),
    )
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

/// A standard SOP class must be a storage SOP class; private ones are accepted.
pub fn check_sop_class(uid: &Uid) -> Result<(), HeaderError> {
    match StandardSopClassDictionary.by_uid(uid.as_str()) {
        Some(entry) if !is_storage_class(entry.name) => Err(reject(
            Problem::NotStorable,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_classes_are_told_apart() {
        assert!(check_sop_class(&Uid::parse("1.2.840.10008.5.1.4.1.1.2").unwrap()).is_ok());
        assert!(check_sop_class(&Uid::parse("1.2.840.10008.5.1.4.1.1.104.1").unwrap()).is_ok());
        assert!(
            check_sop_class(&Uid::parse("1.2.3.4.5").unwrap()).is_ok(),
            "private classes pass"
        );
        let verification = check_sop_class(&Uid::parse("1.2.840.10008.1.1").unwrap()).unwrap_err();
        assert_eq!(verification.problem, Problem::NotStorable);
        assert!(check_sop_class(&Uid::parse("1.2.840.10008.1.20.1").unwrap()).is_err());
    }
}
