//! De-identification of the instances forwarded to a destination configured with
//! `deidentify = "basic"`: the Basic Application Level Confidentiality Profile of PS3.15
//! Annex E, optionally with the Retain Longitudinal Temporal Information with Full Dates
//! Option and the Retain Device Identity Option.
//!
//! Pure format code: [`deidentify`] rewrites a parsed object in place and does no I/O; the
//! forwarding worker calls it on each instance before sending, with the destination's key
//! and name. It never touches Pixel Data or the Image Pixel module, SOP Class UIDs or the
//! transfer syntax.
//!
//! The actions come from Table E.1-1 ([`table`]) and apply to every attribute wherever it
//! is, in items of sequences at any depth. Where the standard leaves a choice, we chose:
//!
//! - **Compound actions.** Which of X, Z or D applies depends on the attribute's type in
//!   the IOD, which we do not model, so each takes the choice that conforms whatever the
//!   type and still says nothing. An element: X/Z → Z (empty); X/D, X/Z/D and Z/D → D (a
//!   dummy). A sequence's dummy would be an invented item, so a sequence takes Z when it is
//!   offered (X/Z, X/Z/D, Z/D → no items) and X/D → removed; X/Z/U* keeps the items and
//!   replaces the UIDs in them, so references stay intact upstream.
//! - **D on a sequence** (Content Sequence, Graphic Annotation Sequence, Verifying Observer
//!   Sequence…) → one empty item: the Basic Profile does not trust structured content
//!   (free text such as Text Value is not in the table), and cleaning it is the separate
//!   Clean Structured Content / Clean Graphics options, which we do not offer. SRs and
//!   presentation states therefore arrive as shells.
//! - **Patient.** Patient ID becomes a keyed pseudonym (16 hex digits of HMAC over the
//!   destination and the original ID), so one patient's studies stay one patient upstream
//!   and cannot be linked across destinations; Patient Name becomes the same pseudonym, so
//!   a viewer upstream shows something that tells patients apart. Without an ID both are
//!   emptied: a pseudonym of "no ID" would merge unrelated patients.
//! - **UIDs.** U replaces each value by [`map_uid`], except UIDs under DICOM's own root
//!   `1.2.840.10008.` (well-known frames of reference, the UTC synchronization frame…),
//!   which name concepts rather than a patient's objects.
//! - **Ranges.** Private attributes (odd groups) are removed everywhere. Curve groups
//!   (50xx) are removed whole; so are overlay groups (60xx): the table removes Overlay Data
//!   and Overlay Comments, and an overlay plane without its data is not a valid module.
//! - **Options.** With an option, the rows its column marks K are kept; the Retain Device
//!   Identity column marks AE titles C, which become keyed pseudonyms (one device stays one
//!   device, its name gone).
//! - **File meta.** Media Storage SOP Instance UID becomes the new SOP Instance UID; the
//!   source, sending and receiving AE titles are treated as Station AE Title (removed, or
//!   pseudonyms with the device option); private meta information is removed.
//! - **Unreadable elements.** An element left as UN whose tag the dictionary does not know,
//!   or knows as a sequence, is removed: it may hide a sequence whose items we cannot clean.
//! - **Everything else** — standard attributes the table does not list — is kept, as the
//!   profile intends; sequences among them have their items cleaned.
//!
//! Not addressed: identifying text burned into the pixels (the Clean Pixel Data Option) and
//! identifying free text in attributes the table does not list.
//!
//! Finally the instance is marked: Patient Identity Removed YES, De-identification Method
//! and its code sequence (113100, plus 113106 and 113109 for the options), and
//! Longitudinal Temporal Information Modified.

mod rows_a;
mod rows_b;
mod rules;
mod table;
mod values;

use std::fmt;

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::header::Header;
use dicom_core::value::{DataSetSequence, PrimitiveValue, Value};
use dicom_core::{DataElement, Length, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::mem::InMemElement;
use dicom_object::{FileDicomObject, InMemDicomObject, StandardDataDictionary};

use super::nesting::MAX_NESTING;
use super::text::text;
use table::{Basic, Retain};
use values::{cleaned_value, dummy_value, keyed, pseudonym, trim, uid_value};

/// The shortest key we accept: the pseudonyms of patient IDs are only as strong as the
/// key (IDs are guessable), so an empty or toy key would make them reversible.
pub const MIN_KEY_LEN: usize = 16;

/// How to de-identify for one destination.
#[derive(Clone, Copy)]
pub struct Profile<'a> {
    /// Secret that keys the UID and identifier mapping (HMAC-SHA256); the caller provides it.
    pub key: &'a [u8],
    /// Scope of the mapping: the destination's name. Same (key, scope, uid) → same new UID always.
    pub scope: &'a str,
    /// The Retain Longitudinal Temporal Information with Full Dates Option.
    pub retain_dates: bool,
    /// The Retain Device Identity Option.
    pub retain_device: bool,
}

impl fmt::Debug for Profile<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Profile")
            .field("key", &"<redacted>")
            .field("scope", &self.scope)
            .field("retain_dates", &self.retain_dates)
            .field("retain_device", &self.retain_device)
            .finish()
    }
}

/// Why an instance could not be de-identified. The object may then be half rewritten:
/// the caller must not send it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeidentifyError {
    #[error("the de-identification key is {0} bytes long; at least {MIN_KEY_LEN} are required")]
    WeakKey(usize),
    #[error("sequences nest deeper than {MAX_NESTING} levels")]
    TooDeep,
}

/// De-identify in place. Pixel Data (7FE0,0010) and all pixel-module attributes are untouched.
pub fn deidentify(
    obj: &mut FileDicomObject<InMemDicomObject>,
    p: &Profile,
) -> Result<(), DeidentifyError> {
    if p.key.len() < MIN_KEY_LEN {
        return Err(DeidentifyError::WeakKey(p.key.len()));
    }
    clean_data_set(obj, p, 0)?;
    clean_meta(obj, p);
    mark(obj, p);
    Ok(())
}

/// The new UID for `uid`: "2.25." + decimal of the first 128 bits of
/// HMAC-SHA256(key, scope ‖ 0x00 ‖ uid).
///
/// `uid` is taken without its NUL or space padding. The result is at most 44 characters
/// (a 128-bit number has at most 39 digits) and a decimal number has no leading zero, so
/// it is always a valid UID and no cap is needed. Strictly, PS3.5 §B.2 builds 2.25 UIDs
/// from UUIDs, whose version and variant bits these 128 bits do not set; what matters
/// here is that they are unique and reproducible, and they are.
pub fn map_uid(p: &Profile, uid: &str) -> String {
    let mac = keyed(p.key, &[p.scope.as_bytes(), trim(uid).as_bytes()]);
    let mut first = [0u8; 16];
    first.copy_from_slice(&mac[..16]);
    format!("2.25.{}", u128::from_be_bytes(first))
}

/// What happens to one element once its tag, the options and its kind of value decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    /// Unchanged; a sequence keeps its items, which are cleaned in turn.
    Keep,
    Remove,
    /// A zero-length value, or a sequence without items.
    Empty,
    /// A dummy value of the VR, or a sequence of one empty item.
    Dummy,
    /// Keyed pseudonyms of the values.
    Clean,
    /// Values replaced by [`map_uid`].
    Uid,
    PatientId,
    PatientName,
}

fn act(tag: Tag, is_seq: bool, p: &Profile) -> Act {
    let group = tag.group();
    let curve_or_overlay = matches!(group, 0x5000..=0x50FF | 0x6000..=0x60FF);
    if group % 2 == 1 || curve_or_overlay {
        return Act::Remove;
    }
    match tag {
        tags::PATIENT_ID => return Act::PatientId,
        tags::PATIENT_NAME => return Act::PatientName,
        _ => {}
    }
    let Some(rule) = rules::rule(tag) else {
        return Act::Keep;
    };
    if p.retain_dates && rule.dates == Retain::Keep {
        return Act::Keep;
    }
    match (p.retain_device, rule.device) {
        (true, Retain::Keep) => Act::Keep,
        (true, Retain::Clean) => Act::Clean,
        _ => resolve(rule.basic, is_seq),
    }
}

/// The Basic Profile action of a row for an element (`is_seq` false) or a sequence; the
/// module doc gives the reasons.
fn resolve(basic: Basic, is_seq: bool) -> Act {
    use Basic::*;
    match (basic, is_seq) {
        (X, _) | (XD, true) => Act::Remove,
        (Z | XZ, _) | (XZD | ZD, true) => Act::Empty,
        (D, _) | (XD | XZD | ZD, false) => Act::Dummy,
        (U | XZU, false) => Act::Uid,
        (U | XZU, true) => Act::Keep,
    }
}

/// Apply the profile to every element of one data set, and to the items of its
/// sequences. `depth` counts the sequences around it.
fn clean_data_set(
    obj: &mut InMemDicomObject,
    p: &Profile,
    depth: u32,
) -> Result<(), DeidentifyError> {
    if depth > MAX_NESTING {
        return Err(DeidentifyError::TooDeep);
    }
    // Read before the loop replaces it: Patient Name (0010,0010) comes first.
    let patient = text(obj, tags::PATIENT_ID).map(|id| pseudonym(p, "patient-id", &id));
    let tags: Vec<Tag> = obj.tags().collect();
    for tag in tags {
        let Some(elem) = obj.get(tag) else { continue };
        let is_seq = matches!(elem.value(), Value::Sequence(_));
        let act = if is_opaque(elem) {
            Act::Remove
        } else {
            act(tag, is_seq, p)
        };
        match act {
            Act::Keep if is_seq => clean_items(obj, tag, p, depth)?,
            Act::Keep => {}
            Act::Remove => {
                obj.remove_element(tag);
            }
            other => match replacement(elem, other, p, patient.as_deref()) {
                Some(new) => {
                    obj.put(new);
                }
                None => {
                    obj.remove_element(tag);
                }
            },
        }
    }
    Ok(())
}

/// An element whose value we cannot see into: VR UN for a tag the dictionary does not
/// know, or knows as a sequence. It may hold a sequence encoded as bytes, whose items —
/// names, IDs, UIDs — we could not clean, so it goes.
fn is_opaque(elem: &InMemElement) -> bool {
    elem.vr() == VR::UN
        && StandardDataDictionary
            .by_tag(elem.tag())
            .is_none_or(|entry| entry.vr().relaxed() == VR::SQ)
}

/// Clean the items of the sequence `tag` (rebuilt with an undefined length, as its
/// recorded one no longer holds).
fn clean_items(
    obj: &mut InMemDicomObject,
    tag: Tag,
    p: &Profile,
    depth: u32,
) -> Result<(), DeidentifyError> {
    let Some(elem) = obj.take(tag) else {
        return Ok(());
    };
    let vr = elem.vr();
    let mut items = match elem.into_value() {
        Value::Sequence(seq) => seq.into_items(),
        other => {
            obj.put(DataElement::new(tag, vr, other));
            return Ok(());
        }
    };
    for item in items.iter_mut() {
        clean_data_set(item, p, depth + 1)?;
    }
    obj.put(sequence(tag, items));
    Ok(())
}

/// The element that replaces `elem` under `act`; `None` when it should go (a value that
/// holds no text where text is needed is removed rather than kept).
fn replacement(
    elem: &InMemElement,
    act: Act,
    p: &Profile,
    patient: Option<&str>,
) -> Option<InMemElement> {
    let tag = elem.tag();
    if let Value::Sequence(_) = elem.value() {
        return match act {
            Act::Empty => Some(sequence(tag, Vec::new())),
            Act::Dummy => Some(sequence(tag, vec![InMemDicomObject::new_empty()])),
            _ => None,
        };
    }
    if !matches!(elem.value(), Value::Primitive(_)) {
        return None;
    }
    let vr = elem.vr();
    let value = match act {
        Act::Empty => PrimitiveValue::Empty,
        Act::Dummy => dummy_value(elem, p),
        Act::Clean => cleaned_value(elem, p),
        Act::Uid => {
            let (vr, value) = uid_value(elem, p)?;
            return Some(DataElement::new(tag, vr, value));
        }
        Act::PatientId | Act::PatientName => {
            patient.map_or(PrimitiveValue::Empty, PrimitiveValue::from)
        }
        Act::Keep | Act::Remove => return None,
    };
    Some(DataElement::new(tag, vr, value))
}

fn sequence(tag: Tag, items: impl Into<dicom_core::value::C<InMemDicomObject>>) -> InMemElement {
    DataElement::new(tag, VR::SQ, DataSetSequence::new(items, Length::UNDEFINED))
}

/// The file meta group follows the data set: the new SOP Instance UID, and AE titles
/// treated as Station AE Title.
fn clean_meta(obj: &mut FileDicomObject<InMemDicomObject>, p: &Profile) {
    let mut instance = text(obj, tags::SOP_INSTANCE_UID)
        .unwrap_or_else(|| values::new_uid(p, &obj.meta().media_storage_sop_instance_uid));
    // The table keeps its values padded to even length, as its builder does.
    if instance.len() % 2 == 1 {
        instance.push('\0');
    }
    let ae = |title: Option<String>| {
        title
            .filter(|_| p.retain_device)
            .map(|t| pseudonym(p, "device-text", trim(&t)))
    };
    obj.update_meta(|meta| {
        meta.media_storage_sop_instance_uid = instance;
        meta.source_application_entity_title = ae(meta.source_application_entity_title.take());
        meta.sending_application_entity_title = ae(meta.sending_application_entity_title.take());
        meta.receiving_application_entity_title =
            ae(meta.receiving_application_entity_title.take());
        meta.private_information_creator_uid = None;
        meta.private_information = None;
    });
}

/// The codes of PS3.16 CID 7050 (De-identification Method) we claim.
const BASIC_PROFILE: (&str, &str) = ("113100", "Basic Application Confidentiality Profile");
const FULL_DATES: (&str, &str) = (
    "113106",
    "Retain Longitudinal Temporal Information Full Dates Option",
);
const DEVICE_IDENTITY: (&str, &str) = ("113109", "Retain Device Identity Option");

/// Say what was done (PS3.15 E.1.1): Patient Identity Removed, the method as text and
/// codes (added to any an earlier de-identification recorded), and whether dates were kept.
fn mark(obj: &mut InMemDicomObject, p: &Profile) {
    let mut codes = vec![BASIC_PROFILE];
    let mut method = String::from("DICOM PS3.15 Basic Profile");
    if p.retain_dates {
        codes.push(FULL_DATES);
        method.push_str(" + Full Dates");
    }
    if p.retain_device {
        codes.push(DEVICE_IDENTITY);
        method.push_str(" + Device Ident.");
    }
    obj.put(DataElement::new(
        tags::PATIENT_IDENTITY_REMOVED,
        VR::CS,
        PrimitiveValue::from("YES"),
    ));
    put_method(obj, method);
    put_codes(obj, &codes);
    // Dates kept by this profile are only as unmodified as they arrived.
    let earlier = text(obj, tags::LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED);
    let temporal = match (p.retain_dates, earlier.as_deref()) {
        (false, _) => "REMOVED",
        (true, Some(e @ ("MODIFIED" | "REMOVED"))) => e,
        (true, _) => "UNMODIFIED",
    }
    .to_owned();
    obj.put(DataElement::new(
        tags::LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED,
        VR::CS,
        PrimitiveValue::from(temporal),
    ));
}

fn put_method(obj: &mut InMemDicomObject, method: String) {
    let mut methods: Vec<String> = obj
        .get(tags::DEIDENTIFICATION_METHOD)
        .and_then(values::texts)
        .unwrap_or_default()
        .into_iter()
        .filter(|m| !m.is_empty() && *m != method)
        .collect();
    methods.push(method);
    obj.put(DataElement::new(
        tags::DEIDENTIFICATION_METHOD,
        VR::LO,
        PrimitiveValue::Strs(methods.into()),
    ));
}

fn put_codes(obj: &mut InMemDicomObject, codes: &[(&str, &str)]) {
    let mut items: Vec<InMemDicomObject> = obj
        .get(tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE)
        .and_then(|e| e.items())
        .map(<[_]>::to_vec)
        .unwrap_or_default();
    for (value, meaning) in codes {
        let present = items.iter().any(|item| {
            text(item, tags::CODE_VALUE).as_deref() == Some(value)
                && text(item, tags::CODING_SCHEME_DESIGNATOR).as_deref() == Some("DCM")
        });
        if !present {
            items.push(code_item(value, meaning));
        }
    }
    obj.put(sequence(tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE, items));
}

fn code_item(value: &str, meaning: &str) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        DataElement::new(tags::CODE_VALUE, VR::SH, PrimitiveValue::from(value)),
        DataElement::new(
            tags::CODING_SCHEME_DESIGNATOR,
            VR::SH,
            PrimitiveValue::from("DCM"),
        ),
        DataElement::new(tags::CODE_MEANING, VR::LO, PrimitiveValue::from(meaning)),
    ])
}

#[cfg(test)]
mod tests;
