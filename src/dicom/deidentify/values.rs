//! The values de-identification writes: dummies of each VR (action D), keyed pseudonyms
//! (patient IDs and names, cleaned AE titles), replacement UIDs, and the text read out of
//! the values being replaced. Nothing here decides *which* action applies; the parent
//! module does.

use dicom_core::value::{PrimitiveValue, Value};
use dicom_core::{Tag, VR};
use dicom_object::mem::InMemElement;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{map_uid, Profile};

type HmacSha256 = Hmac<Sha256>;

/// The root of the UIDs DICOM itself defines (SOP classes, transfer syntaxes, well-known
/// frames of reference and SOP instances). Such a UID names a concept, not a patient's
/// object, and mapping it would break the reference.
const DICOM_ROOT: &str = "1.2.840.10008.";

/// The text placed in string attributes whose action is D.
pub const DUMMY_TEXT: &str = "ANONYMIZED";

/// HMAC-SHA256 of `parts`, each followed by a zero byte except the last, under the
/// profile's key. (The zero byte keeps `("ab", "c")` and `("a", "bc")` apart.)
pub fn keyed(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length: `new_from_slice` cannot fail for it.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            mac.update(&[0]);
        }
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// A 16-hex-digit pseudonym of `value` for the profile's destination, separated by
/// `label` from pseudonyms of other kinds. 64 bits: collisions among a destination's
/// patients are out of reach, and 16 characters fit every string VR (AE and SH included).
pub fn pseudonym(p: &Profile, label: &str, value: &str) -> String {
    let mac = keyed(
        p.key,
        &[label.as_bytes(), p.scope.as_bytes(), value.as_bytes()],
    );
    hex::encode_upper(&mac[..8])
}

/// The replacement of one UID value: [`map_uid`], except for UIDs DICOM defines.
pub fn new_uid(p: &Profile, uid: &str) -> String {
    let uid = trim(uid);
    if uid.starts_with(DICOM_ROOT) {
        uid.to_owned()
    } else {
        map_uid(p, uid)
    }
}

/// DICOM values carry NUL or space padding; identity must not depend on it.
pub fn trim(s: &str) -> &str {
    s.trim_matches(|c: char| c == ' ' || c == '\0')
}

/// The trimmed text values of a primitive element (binary UN bytes read as text, as an
/// implicit-VR attribute the dictionary does not know arrives); `None` for sequences and
/// encapsulated fragments, which hold no text.
pub fn texts(elem: &InMemElement) -> Option<Vec<String>> {
    match elem.value() {
        Value::Primitive(PrimitiveValue::U8(bytes)) => Some(
            String::from_utf8_lossy(bytes)
                .split('\\')
                .map(|s| trim(s).to_owned())
                .collect(),
        ),
        Value::Primitive(v) => Some(
            v.to_multi_str()
                .iter()
                .map(|s| trim(s).to_owned())
                .collect(),
        ),
        _ => None,
    }
}

/// Action U on a primitive element: every value mapped, empty values left empty. An
/// element read as UN becomes UI.
pub fn uid_value(elem: &InMemElement, p: &Profile) -> Option<(VR, PrimitiveValue)> {
    let values = texts(elem)?;
    let vr = if elem.vr() == VR::UN {
        VR::UI
    } else {
        elem.vr()
    };
    if values.iter().all(|v| v.is_empty()) {
        return Some((vr, PrimitiveValue::Empty));
    }
    let mapped: Vec<String> = values
        .iter()
        .map(|v| {
            if v.is_empty() {
                String::new()
            } else {
                new_uid(p, v)
            }
        })
        .collect();
    Some((vr, PrimitiveValue::Strs(mapped.into())))
}

/// Action C (only AE titles, under the Retain Device Identity Option): each value
/// becomes its keyed pseudonym, so one device stays one device upstream without its
/// name. Values of other VRs get a dummy instead.
pub fn cleaned_value(elem: &InMemElement, p: &Profile) -> PrimitiveValue {
    match (is_text(elem.vr()), texts(elem)) {
        (true, Some(values)) => {
            let cleaned: Vec<String> = values
                .iter()
                .map(|v| pseudonym(p, "device-text", v))
                .collect();
            PrimitiveValue::Strs(cleaned.into())
        }
        _ => dummy_value(elem, p),
    }
}

/// Action D on a primitive element: a non-empty value of its VR that says nothing.
/// Numbers become zeros (as many as there were, at least one) and binary values zero
/// bytes of the same length, so fixed-size structures keep their size.
pub fn dummy_value(elem: &InMemElement, p: &Profile) -> PrimitiveValue {
    let (count, bytes) = match elem.value() {
        Value::Primitive(v) => (v.multiplicity().max(1) as usize, v.calculate_byte_len()),
        _ => (1, 0),
    };
    match elem.vr() {
        VR::DA => PrimitiveValue::from("19000101"),
        VR::TM => PrimitiveValue::from("000000"),
        VR::DT => PrimitiveValue::from("19000101000000"),
        VR::AS => PrimitiveValue::from("000D"),
        VR::DS | VR::IS => PrimitiveValue::from("0"),
        VR::UI => match uid_value(elem, p) {
            Some((_, PrimitiveValue::Strs(uids))) => PrimitiveValue::Strs(uids),
            _ => PrimitiveValue::from(map_uid(p, "")),
        },
        VR::US => PrimitiveValue::U16(vec![0; count].into()),
        VR::SS => PrimitiveValue::I16(vec![0; count].into()),
        VR::UL => PrimitiveValue::U32(vec![0; count].into()),
        VR::SL => PrimitiveValue::I32(vec![0; count].into()),
        VR::UV => PrimitiveValue::U64(vec![0; count].into()),
        VR::SV => PrimitiveValue::I64(vec![0; count].into()),
        VR::FL => PrimitiveValue::F32(vec![0.0; count].into()),
        VR::FD => PrimitiveValue::F64(vec![0.0; count].into()),
        VR::AT => PrimitiveValue::Tags(vec![Tag(0, 0); count].into()),
        vr if is_text(vr) => PrimitiveValue::from(DUMMY_TEXT),
        // OB, OW, OF, OD, OL, OV, UN: zero bytes, in whole values of the VR.
        vr => {
            let unit = match vr {
                VR::OF | VR::OL => 4,
                VR::OD | VR::OV => 8,
                _ => 2,
            };
            PrimitiveValue::U8(vec![0; bytes.max(unit).next_multiple_of(unit)].into())
        }
    }
}

fn is_text(vr: VR) -> bool {
    matches!(
        vr,
        VR::AE | VR::CS | VR::LO | VR::LT | VR::PN | VR::SH | VR::ST | VR::UC | VR::UR | VR::UT
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::DataElement;
    use dicom_dictionary_std::tags;

    const P: Profile = Profile {
        key: b"0123456789abcdef0123456789abcdef",
        scope: "upstream",
        retain_dates: false,
        retain_device: false,
    };

    fn elem(tag: Tag, vr: VR, v: PrimitiveValue) -> InMemElement {
        DataElement::new(tag, vr, v)
    }

    #[test]
    fn dicom_defined_uids_are_not_mapped() {
        assert_eq!(
            new_uid(&P, "1.2.840.10008.1.4.1.1\0"),
            "1.2.840.10008.1.4.1.1"
        );
        assert_eq!(new_uid(&P, "1.2.3.4 "), map_uid(&P, "1.2.3.4"));
    }

    #[test]
    fn uid_values_map_each_value_and_keep_empty_ones_empty() {
        let e = elem(
            tags::FAILED_SOP_INSTANCE_UID_LIST,
            VR::UI,
            PrimitiveValue::Strs(vec!["1.2.3".to_owned(), "1.2.4\0".to_owned()].into()),
        );
        let (vr, v) = uid_value(&e, &P).unwrap();
        assert_eq!(vr, VR::UI);
        assert_eq!(
            v.to_multi_str().to_vec(),
            vec![map_uid(&P, "1.2.3"), map_uid(&P, "1.2.4")]
        );
        let empty = elem(tags::FRAME_OF_REFERENCE_UID, VR::UI, PrimitiveValue::Empty);
        assert_eq!(uid_value(&empty, &P).unwrap().1, PrimitiveValue::Empty);
        let un = elem(
            tags::FRAME_OF_REFERENCE_UID,
            VR::UN,
            PrimitiveValue::U8(b"1.2.3\0".to_vec().into()),
        );
        let (vr, v) = uid_value(&un, &P).unwrap();
        assert_eq!(
            (vr, v.to_str().into_owned()),
            (VR::UI, map_uid(&P, "1.2.3"))
        );
    }

    #[test]
    fn dummies_fit_their_vr() {
        let cases = [
            (VR::DA, PrimitiveValue::from("20240101"), "19000101"),
            (VR::TM, PrimitiveValue::from("101010"), "000000"),
            (
                VR::DT,
                PrimitiveValue::from("20240101101010"),
                "19000101000000",
            ),
            (VR::PN, PrimitiveValue::from("Doe^Jane"), DUMMY_TEXT),
            (VR::CS, PrimitiveValue::Empty, DUMMY_TEXT),
            (VR::DS, PrimitiveValue::from("12.5"), "0"),
        ];
        for (vr, v, want) in cases {
            let got = dummy_value(&elem(tags::CONTENT_DATE, vr, v), &P);
            assert_eq!(got.to_str(), want, "{vr:?}");
        }
        let us = dummy_value(
            &elem(tags::ROWS, VR::US, PrimitiveValue::U16(vec![3, 4].into())),
            &P,
        );
        assert_eq!(us, PrimitiveValue::U16(vec![0, 0].into()));
        let ob = elem(
            tags::FLOW_IDENTIFIER,
            VR::OB,
            PrimitiveValue::U8(vec![7; 16].into()),
        );
        assert_eq!(dummy_value(&ob, &P), PrimitiveValue::U8(vec![0; 16].into()));
    }

    #[test]
    fn pseudonyms_are_keyed_labelled_and_scoped() {
        let a = pseudonym(&P, "patient-id", "12345");
        assert_eq!(a.len(), 16);
        assert_eq!(a, pseudonym(&P, "patient-id", "12345"));
        assert_ne!(a, pseudonym(&P, "device-text", "12345"));
        assert_ne!(
            a,
            pseudonym(
                &Profile {
                    scope: "other",
                    ..P
                },
                "patient-id",
                "12345"
            )
        );
        assert_ne!(
            a,
            pseudonym(
                &Profile {
                    key: b"another key, 16+ bytes",
                    ..P
                },
                "patient-id",
                "12345"
            )
        );
    }
}
