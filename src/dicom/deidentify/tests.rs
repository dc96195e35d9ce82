//! Tests of de-identification as the forwarding worker sees it: a small CT image in, the
//! same image out without its identity.

use super::*;
use dicom_dictionary_std::uids;
use dicom_object::FileMetaTableBuilder;

const KEY: &[u8] = b"a forwarding key of 32 bytes ok!";
const SOP: &str = "1.2.826.0.1.3680043.2.1125.1.1";
const STUDY: &str = "1.2.826.0.1.3680043.2.1125.1.2";
const SERIES: &str = "1.2.826.0.1.3680043.2.1125.1.3";
const FRAME: &str = "1.2.826.0.1.3680043.2.1125.1.4";
const REFERENCED: &str = "1.2.826.0.1.3680043.2.1125.1.5";
const PIXELS: [u16; 4] = [0, 1000, 2000, 4095];

fn profile(retain_dates: bool, retain_device: bool) -> Profile<'static> {
    Profile {
        key: KEY,
        scope: "upstream",
        retain_dates,
        retain_device,
    }
}

fn el(tag: Tag, vr: VR, value: impl Into<PrimitiveValue>) -> InMemElement {
    DataElement::new(tag, vr, value.into())
}

fn item(elements: Vec<InMemElement>) -> InMemDicomObject {
    InMemDicomObject::from_element_iter(elements)
}

/// A small CT image with an identity, dates, a device, a reference, a private
/// block, an overlay and pixels.
fn ct() -> FileDicomObject<InMemDicomObject> {
    let reference = item(vec![
        el(
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            uids::CT_IMAGE_STORAGE,
        ),
        el(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, REFERENCED),
        el(Tag(0x0029, 0x0010), VR::LO, "ACME"),
        el(Tag(0x0029, 0x1001), VR::LO, "nested secret"),
    ]);
    let mut obj = InMemDicomObject::from_element_iter([
        el(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100"),
        el(tags::SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE),
        el(tags::SOP_INSTANCE_UID, VR::UI, SOP),
        el(tags::STUDY_DATE, VR::DA, "20240315"),
        el(tags::ACQUISITION_DATE, VR::DA, "20240315"),
        el(tags::CONTENT_DATE, VR::DA, "20240315"),
        el(tags::STUDY_TIME, VR::TM, "101500"),
        el(tags::ACCESSION_NUMBER, VR::SH, "ACC778899"),
        el(tags::MODALITY, VR::CS, "CT"),
        el(tags::INSTITUTION_NAME, VR::LO, "Saint Elsewhere Hospital"),
        el(tags::REFERRING_PHYSICIAN_NAME, VR::PN, "House^Gregory"),
        el(tags::STATION_NAME, VR::SH, "CTROOM7"),
        el(tags::STATION_AE_TITLE, VR::AE, "CT7_SCU"),
        el(tags::PATIENT_NAME, VR::PN, "Doe^Jane"),
        el(tags::PATIENT_ID, VR::LO, "PID-4711"),
        el(tags::PATIENT_BIRTH_DATE, VR::DA, "19610412"),
        el(tags::PATIENT_SEX, VR::CS, "F"),
        el(tags::PATIENT_AGE, VR::AS, "062Y"),
        el(tags::DEVICE_SERIAL_NUMBER, VR::LO, "SN-99812"),
        el(tags::STUDY_INSTANCE_UID, VR::UI, STUDY),
        el(tags::SERIES_INSTANCE_UID, VR::UI, SERIES),
        el(tags::FRAME_OF_REFERENCE_UID, VR::UI, FRAME),
        el(
            tags::SYNCHRONIZATION_FRAME_OF_REFERENCE_UID,
            VR::UI,
            "1.2.840.10008.15.1.1",
        ),
        el(tags::ROWS, VR::US, PrimitiveValue::U16(vec![2].into())),
        el(tags::COLUMNS, VR::US, PrimitiveValue::U16(vec![2].into())),
        el(
            tags::BITS_ALLOCATED,
            VR::US,
            PrimitiveValue::U16(vec![16].into()),
        ),
        el(Tag(0x0009, 0x0010), VR::LO, "ACME"),
        el(Tag(0x0009, 0x1001), VR::LO, "Doe^Jane at home"),
        el(
            Tag(0x6000, 0x0010),
            VR::US,
            PrimitiveValue::U16(vec![2].into()),
        ),
        el(
            Tag(0x6000, 0x3000),
            VR::OW,
            PrimitiveValue::U8(vec![0xFF; 2].into()),
        ),
        el(Tag(0x6000, 0x4000), VR::LT, "drawn by Dr House"),
        el(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(PIXELS.to_vec().into()),
        ),
    ]);
    obj.put(sequence(tags::REFERENCED_IMAGE_SEQUENCE, vec![reference]));
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(uids::CT_IMAGE_STORAGE)
        .media_storage_sop_instance_uid(SOP)
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .source_application_entity_title("CT7_SCU")
        .build()
        .unwrap();
    obj.with_exact_meta(meta)
}

fn run(p: &Profile) -> FileDicomObject<InMemDicomObject> {
    let mut obj = ct();
    deidentify(&mut obj, p).unwrap();
    obj
}

fn get(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    obj.get(tag).map(|e| trim(&e.to_str().unwrap()).to_owned())
}

fn first_item(obj: &InMemDicomObject, tag: Tag) -> &InMemDicomObject {
    &obj.get(tag).unwrap().items().unwrap()[0]
}

/// PS3.5 §9.1: at most 64 characters, digits and dots, no empty component, no
/// leading zero in a component.
fn is_valid_uid(uid: &str) -> bool {
    uid.len() <= 64
        && uid.split('.').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_digit())
                && (c == "0" || !c.starts_with('0'))
        })
}

#[test]
fn the_identity_is_gone() {
    let p = profile(false, false);
    let obj = run(&p);
    let pseudonym = pseudonym(&p, "patient-id", "PID-4711");
    assert_eq!(
        get(&obj, tags::PATIENT_ID).as_deref(),
        Some(pseudonym.as_str())
    );
    assert_eq!(get(&obj, tags::PATIENT_NAME), Some(pseudonym));
    assert_eq!(get(&obj, tags::PATIENT_BIRTH_DATE).as_deref(), Some(""));
    assert_eq!(get(&obj, tags::PATIENT_SEX).as_deref(), Some(""));
    assert_eq!(get(&obj, tags::PATIENT_AGE), None);
    assert_eq!(get(&obj, tags::ACCESSION_NUMBER).as_deref(), Some(""));
    assert_eq!(
        get(&obj, tags::REFERRING_PHYSICIAN_NAME).as_deref(),
        Some("")
    );
    assert_eq!(
        get(&obj, tags::INSTITUTION_NAME).as_deref(),
        Some(values::DUMMY_TEXT)
    );
    assert_eq!(get(&obj, tags::MODALITY).as_deref(), Some("CT"));
}

#[test]
fn one_patient_stays_one_patient_and_no_id_is_nobody() {
    let p = profile(false, false);
    let mut other = ct();
    other.put(el(tags::PATIENT_NAME, VR::PN, "Doe^Jane^Middle"));
    deidentify(&mut other, &p).unwrap();
    assert_eq!(
        get(&other, tags::PATIENT_ID),
        get(&run(&p), tags::PATIENT_ID)
    );

    let mut anonymous = ct();
    anonymous.put(el(tags::PATIENT_ID, VR::LO, ""));
    deidentify(&mut anonymous, &p).unwrap();
    assert_eq!(get(&anonymous, tags::PATIENT_ID).as_deref(), Some(""));
    assert_eq!(get(&anonymous, tags::PATIENT_NAME).as_deref(), Some(""));
}

#[test]
fn uids_are_replaced_consistently_and_validly() {
    let p = profile(false, false);
    let obj = run(&p);
    for (tag, old) in [
        (tags::SOP_INSTANCE_UID, SOP),
        (tags::STUDY_INSTANCE_UID, STUDY),
        (tags::SERIES_INSTANCE_UID, SERIES),
        (tags::FRAME_OF_REFERENCE_UID, FRAME),
    ] {
        let new = get(&obj, tag).unwrap();
        assert_eq!(new, map_uid(&p, old));
        assert!(new.starts_with("2.25.") && is_valid_uid(&new), "{new}");
    }
    let nested = first_item(&obj, tags::REFERENCED_IMAGE_SEQUENCE);
    assert_eq!(
        get(nested, tags::REFERENCED_SOP_INSTANCE_UID),
        Some(map_uid(&p, REFERENCED))
    );
    assert_eq!(
        get(nested, tags::REFERENCED_SOP_CLASS_UID).as_deref(),
        Some(uids::CT_IMAGE_STORAGE)
    );
    assert_eq!(
        get(&obj, tags::SOP_CLASS_UID).as_deref(),
        Some(uids::CT_IMAGE_STORAGE)
    );
    let utc = get(&obj, tags::SYNCHRONIZATION_FRAME_OF_REFERENCE_UID);
    assert_eq!(utc.as_deref(), Some("1.2.840.10008.15.1.1"));
}

#[test]
fn map_uid_is_deterministic_scoped_keyed_and_always_valid() {
    let p = profile(false, false);
    assert_eq!(map_uid(&p, STUDY), map_uid(&p, STUDY));
    assert_eq!(map_uid(&p, STUDY), map_uid(&p, &format!("{STUDY}\0")));
    assert_ne!(map_uid(&p, STUDY), map_uid(&p, SERIES));
    let elsewhere = Profile {
        scope: "elsewhere",
        ..p
    };
    assert_ne!(map_uid(&p, STUDY), map_uid(&elsewhere, STUDY));
    let rekeyed = Profile {
        key: b"another key of at least 16 bytes",
        ..p
    };
    assert_ne!(map_uid(&p, STUDY), map_uid(&rekeyed, STUDY));
    for i in 0..2000 {
        let uid = map_uid(&p, &format!("1.2.3.{i}"));
        assert!(is_valid_uid(&uid), "{uid}");
    }
}

#[test]
fn the_file_meta_follows_the_data_set() {
    let p = profile(false, false);
    let obj = run(&p);
    let meta = obj.meta();
    let sop = get(&obj, tags::SOP_INSTANCE_UID).unwrap();
    assert_eq!(sop, map_uid(&p, SOP));
    assert_eq!(meta.media_storage_sop_instance_uid(), sop);
    assert_eq!(meta.media_storage_sop_instance_uid.len() % 2, 0);
    assert_eq!(meta.media_storage_sop_class_uid(), uids::CT_IMAGE_STORAGE);
    assert_eq!(meta.transfer_syntax(), uids::EXPLICIT_VR_LITTLE_ENDIAN);
    assert_eq!(obj.meta().source_application_entity_title, None);
}

#[test]
fn pixels_are_untouched() {
    let before = ct()
        .get(tags::PIXEL_DATA)
        .unwrap()
        .to_bytes()
        .unwrap()
        .into_owned();
    let obj = run(&profile(false, false));
    let after = obj
        .get(tags::PIXEL_DATA)
        .unwrap()
        .to_bytes()
        .unwrap()
        .into_owned();
    assert_eq!(before, after);
    assert_eq!(get(&obj, tags::ROWS).as_deref(), Some("2"));
}

#[test]
fn private_curve_and_overlay_groups_are_removed_at_every_depth() {
    let obj = run(&profile(true, true));
    assert!(obj.iter().all(|e| e.tag().group() % 2 == 0));
    assert!(obj.iter().all(|e| e.tag().group() != 0x6000));
    let nested = first_item(&obj, tags::REFERENCED_IMAGE_SEQUENCE);
    assert!(nested.iter().all(|e| e.tag().group() % 2 == 0));
}

#[test]
fn without_options_dates_and_devices_go() {
    let obj = run(&profile(false, false));
    assert_eq!(get(&obj, tags::STUDY_DATE).as_deref(), Some(""));
    assert_eq!(get(&obj, tags::STUDY_TIME).as_deref(), Some(""));
    assert_eq!(get(&obj, tags::ACQUISITION_DATE).as_deref(), Some(""));
    assert_eq!(get(&obj, tags::CONTENT_DATE).as_deref(), Some("19000101"));
    assert_eq!(
        get(&obj, tags::STATION_NAME).as_deref(),
        Some(values::DUMMY_TEXT)
    );
    assert_eq!(
        get(&obj, tags::DEVICE_SERIAL_NUMBER).as_deref(),
        Some(values::DUMMY_TEXT)
    );
    assert_eq!(get(&obj, tags::STATION_AE_TITLE), None);
}

#[test]
fn the_options_keep_dates_and_devices() {
    let p = profile(true, false);
    let dates = run(&p);
    assert_eq!(get(&dates, tags::STUDY_DATE).as_deref(), Some("20240315"));
    assert_eq!(get(&dates, tags::CONTENT_DATE).as_deref(), Some("20240315"));
    assert_eq!(get(&dates, tags::STUDY_TIME).as_deref(), Some("101500"));
    assert_eq!(get(&dates, tags::PATIENT_BIRTH_DATE).as_deref(), Some(""));
    assert_eq!(
        get(&dates, tags::STATION_NAME).as_deref(),
        Some(values::DUMMY_TEXT)
    );

    let p = profile(false, true);
    let device = run(&p);
    assert_eq!(get(&device, tags::STATION_NAME).as_deref(), Some("CTROOM7"));
    assert_eq!(
        get(&device, tags::DEVICE_SERIAL_NUMBER).as_deref(),
        Some("SN-99812")
    );
    let ae = pseudonym(&p, "device-text", "CT7_SCU");
    assert_eq!(
        get(&device, tags::STATION_AE_TITLE).as_deref(),
        Some(ae.as_str())
    );
    assert_eq!(
        device.meta().source_application_entity_title.as_deref(),
        Some(ae.as_str())
    );
    assert_eq!(get(&device, tags::STUDY_DATE).as_deref(), Some(""));
}

#[test]
fn the_instance_says_what_was_done() {
    let codes = |obj: &InMemDicomObject| -> Vec<String> {
        let seq = obj
            .get(tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE)
            .unwrap();
        let items = seq.items().unwrap();
        assert!(items
            .iter()
            .all(|i| get(i, tags::CODING_SCHEME_DESIGNATOR).as_deref() == Some("DCM")));
        items
            .iter()
            .filter_map(|i| get(i, tags::CODE_VALUE))
            .collect()
    };
    let basic = run(&profile(false, false));
    assert_eq!(
        get(&basic, tags::PATIENT_IDENTITY_REMOVED).as_deref(),
        Some("YES")
    );
    assert!(get(&basic, tags::DEIDENTIFICATION_METHOD).is_some_and(|m| !m.is_empty()));
    assert_eq!(codes(&basic), ["113100"]);
    let temporal = tags::LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED;
    assert_eq!(get(&basic, temporal).as_deref(), Some("REMOVED"));

    let mut both = run(&profile(true, true));
    assert_eq!(codes(&both), ["113100", "113106", "113109"]);
    assert_eq!(get(&both, temporal).as_deref(), Some("UNMODIFIED"));
    // Twice is once: the codes and the method are not repeated.
    deidentify(&mut both, &profile(true, true)).unwrap();
    assert_eq!(codes(&both), ["113100", "113106", "113109"]);
    let method = both.get(tags::DEIDENTIFICATION_METHOD).unwrap();
    assert_eq!(method.value().multiplicity(), 1);
}

#[test]
fn nested_sequences_are_cleaned_at_any_depth() {
    let p = profile(false, false);
    let instance = item(vec![
        el(
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            uids::CT_IMAGE_STORAGE,
        ),
        el(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, REFERENCED),
        el(tags::PATIENT_NAME, VR::PN, "Doe^Jane"),
    ]);
    let series = item(vec![
        el(tags::SERIES_INSTANCE_UID, VR::UI, SERIES),
        sequence(tags::REFERENCED_INSTANCE_SEQUENCE, vec![instance]),
    ]);
    let mut obj = ct();
    obj.put(sequence(tags::REFERENCED_SERIES_SEQUENCE, vec![series]));
    obj.put(sequence(
        tags::SOURCE_IMAGE_SEQUENCE,
        vec![item(vec![el(
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            REFERENCED,
        )])],
    ));
    obj.put(sequence(
        tags::CONTENT_SEQUENCE,
        vec![item(vec![el(
            tags::TEXT_VALUE,
            VR::UT,
            "Jane Doe, 62, from Springfield",
        )])],
    ));
    obj.put(sequence(
        tags::REFERENCED_STUDY_SEQUENCE,
        vec![item(vec![el(
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            STUDY,
        )])],
    ));
    deidentify(&mut obj, &p).unwrap();

    let series = first_item(&obj, tags::REFERENCED_SERIES_SEQUENCE);
    assert_eq!(
        get(series, tags::SERIES_INSTANCE_UID),
        Some(map_uid(&p, SERIES))
    );
    let instance = first_item(series, tags::REFERENCED_INSTANCE_SEQUENCE);
    assert_eq!(
        get(instance, tags::REFERENCED_SOP_INSTANCE_UID),
        Some(map_uid(&p, REFERENCED))
    );
    // No Patient ID at that level: no pseudonym to borrow.
    assert_eq!(get(instance, tags::PATIENT_NAME).as_deref(), Some(""));
    let source = first_item(&obj, tags::SOURCE_IMAGE_SEQUENCE);
    assert_eq!(
        get(source, tags::REFERENCED_SOP_INSTANCE_UID),
        Some(map_uid(&p, REFERENCED))
    );
    // D on a sequence: one empty item; X/Z on a sequence: no items.
    let content = obj.get(tags::CONTENT_SEQUENCE).unwrap().items().unwrap();
    assert!(content.len() == 1 && content[0].iter().next().is_none());
    let study = obj
        .get(tags::REFERENCED_STUDY_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    assert!(study.is_empty());
}

#[test]
fn it_writes_and_reads_back_without_the_identity() {
    let p = profile(false, false);
    let mut obj = ct();
    // A sequence replaced by one empty item and a binary dummy must encode too.
    obj.put(sequence(
        tags::CONTENT_SEQUENCE,
        vec![item(vec![el(
            tags::TEXT_VALUE,
            VR::UT,
            "seen in Springfield",
        )])],
    ));
    obj.put(el(
        tags::FRAME_ORIGIN_TIMESTAMP,
        VR::OB,
        PrimitiveValue::U8(b"20240315".to_vec().into()),
    ));
    deidentify(&mut obj, &p).unwrap();
    let mut bytes = Vec::new();
    obj.write_all(&mut bytes).unwrap();
    for secret in [
        "Springfield",
        "20240315",
        "Doe",
        "PID-4711",
        "19610412",
        "CTROOM7",
        "SN-99812",
        "ACC778899",
        "Elsewhere",
        "House",
        "secret",
        SOP,
        STUDY,
        REFERENCED,
    ] {
        let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
        assert!(!found, "{secret} is still in the written object");
    }
    let back = dicom_object::from_reader(&bytes[..]).unwrap();
    let meta_uid = back.meta().media_storage_sop_instance_uid();
    assert_eq!(trim(meta_uid), map_uid(&p, SOP));
    assert_eq!(get(&back, tags::SOP_INSTANCE_UID), Some(map_uid(&p, SOP)));
    let nested = first_item(&back, tags::REFERENCED_IMAGE_SEQUENCE);
    assert_eq!(
        get(nested, tags::REFERENCED_SOP_INSTANCE_UID),
        Some(map_uid(&p, REFERENCED))
    );
    let content = back.get(tags::CONTENT_SEQUENCE).unwrap().items().unwrap();
    assert!(content.len() == 1 && content[0].iter().next().is_none());
    let stamp = back.get(tags::FRAME_ORIGIN_TIMESTAMP).unwrap();
    assert_eq!(stamp.to_bytes().unwrap().as_ref(), &[0u8; 8]);
    let pixels = back
        .get(tags::PIXEL_DATA)
        .unwrap()
        .to_bytes()
        .unwrap()
        .into_owned();
    let want: Vec<u8> = PIXELS.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(pixels, want);
}

#[test]
fn weak_keys_and_bottomless_nesting_are_refused() {
    let mut obj = ct();
    let weak = Profile {
        key: b"short",
        ..profile(false, false)
    };
    assert_eq!(
        deidentify(&mut obj, &weak),
        Err(DeidentifyError::WeakKey(5))
    );

    let mut deep = item(vec![el(tags::PATIENT_NAME, VR::PN, "Doe^Jane")]);
    for _ in 0..=MAX_NESTING {
        deep = item(vec![sequence(tags::REFERENCED_SERIES_SEQUENCE, vec![deep])]);
    }
    let mut obj = ct();
    obj.put(sequence(tags::REFERENCED_SERIES_SEQUENCE, vec![deep]));
    assert_eq!(
        deidentify(&mut obj, &profile(false, false)),
        Err(DeidentifyError::TooDeep)
    );
}

#[test]
fn the_key_is_not_printed() {
    let shown = format!("{:?}", profile(false, false));
    assert!(!shown.contains("forwarding key") && shown.contains("redacted"));
}

#[test]
fn elements_we_cannot_read_are_removed() {
    let p = profile(false, false);
    let unknown = Tag(0x0018, 0xFFF0);
    assert!(StandardDataDictionary.by_tag(unknown).is_none());
    let bytes = |s: &str| PrimitiveValue::U8(s.as_bytes().to_vec().into());
    let mut obj = ct();
    obj.put(el(unknown, VR::UN, bytes("Doe^Jane")));
    obj.put(el(
        tags::REFERENCED_SERIES_SEQUENCE,
        VR::UN,
        bytes("opaque items"),
    ));
    obj.put(el(tags::DEVICE_UID, VR::UN, bytes(FRAME)));
    deidentify(&mut obj, &p).unwrap();
    assert!(obj.get(unknown).is_none());
    assert!(obj.get(tags::REFERENCED_SERIES_SEQUENCE).is_none());
    let device = obj.get(tags::DEVICE_UID).unwrap();
    assert_eq!(device.vr(), VR::UI);
    assert_eq!(get(&obj, tags::DEVICE_UID), Some(map_uid(&p, FRAME)));
}
