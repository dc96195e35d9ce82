//! DICOM JSON (PS3.18 §F.2) of a parsed header, computed once at ingest.
//!
//! Large binary values at the top level (pixel data, overlays, encapsulated documents) are
//! replaced by a BulkDataURI. The stored URI starts with [`BULK_PREFIX`], a placeholder the
//! retrieval side swaps for the public base URL, so metadata never needs a re-parse when
//! the server's address changes.

use base64::Engine as _;
use dicom_core::header::Header;
use dicom_core::value::{PrimitiveValue, Value};
use dicom_core::{Tag, VR};
use dicom_object::InMemDicomObject;
use serde_json::{json, Map, Number, Value as Json};

/// Placeholder at the start of every stored BulkDataURI; followed by `studies/…`.
pub const BULK_PREFIX: &str = "pacs-lite:bulk/";

/// Binary values longer than this at the top level become BulkDataURIs.
const INLINE_LIMIT: usize = 1024;

/// Serialize a data set. `bulk_base` is `studies/<s>/series/<se>/instances/<i>` for the
/// instance, used to build BulkDataURIs.
pub fn dataset_to_json(obj: &InMemDicomObject, bulk_base: &str) -> Map<String, Json> {
    object(obj, Some(bulk_base))
}

/// The BulkDataURI for a top-level tag of an instance.
pub fn bulk_uri(bulk_base: &str, tag: Tag) -> String {
    format!(
        "{BULK_PREFIX}{bulk_base}/bulkdata/{:04X}{:04X}",
        tag.0, tag.1
    )
}

/// The JSON key of a tag: eight upper-case hex digits.
pub fn tag_key(tag: Tag) -> String {
    format!("{:04X}{:04X}", tag.0, tag.1)
}

fn object(obj: &InMemDicomObject, bulk_base: Option<&str>) -> Map<String, Json> {
    let mut map = Map::new();
    for elem in obj {
        let tag = elem.tag();
        // Group lengths are not part of DICOM JSON.
        if tag.1 == 0 {
            continue;
        }
        map.insert(
            tag_key(tag),
            element(tag, elem.vr(), elem.value(), bulk_base),
        );
    }
    map
}

fn element(
    tag: Tag,
    vr: VR,
    value: &Value<InMemDicomObject, Vec<u8>>,
    bulk_base: Option<&str>,
) -> Json {
    let mut out = Map::new();
    out.insert("vr".into(), Json::String(vr.to_string().to_owned()));
    match value {
        Value::Sequence(seq) => {
            let items: Vec<Json> = seq
                .items()
                .iter()
                .map(|item| Json::Object(object(item, None)))
                .collect();
            if !items.is_empty() {
                out.insert("Value".into(), Json::Array(items));
            }
        }
        Value::PixelSequence(_) => {
            if let Some(base) = bulk_base {
                out.insert("BulkDataURI".into(), Json::String(bulk_uri(base, tag)));
            }
        }
        Value::Primitive(p) => primitive(&mut out, tag, vr, p, bulk_base),
    }
    Json::Object(out)
}

fn primitive(
    out: &mut Map<String, Json>,
    tag: Tag,
    vr: VR,
    p: &PrimitiveValue,
    bulk: Option<&str>,
) {
    if matches!(p, PrimitiveValue::Empty) {
        return;
    }
    let values: Vec<Json> = match vr {
        VR::OB | VR::OD | VR::OF | VR::OL | VR::OV | VR::OW | VR::UN => {
            let bytes = binary_le(p);
            match bulk {
                Some(base) if bytes.len() > INLINE_LIMIT => {
                    out.insert("BulkDataURI".into(), Json::String(bulk_uri(base, tag)));
                }
                _ if !bytes.is_empty() => {
                    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
                    out.insert("InlineBinary".into(), Json::String(b64));
                }
                _ => {}
            }
            return;
        }
        VR::PN => p.to_multi_str().iter().map(|s| person_name(s)).collect(),
        VR::AT => match p {
            PrimitiveValue::Tags(tags) => tags.iter().map(|t| Json::String(tag_key(*t))).collect(),
            _ => return,
        },
        VR::US | VR::SS | VR::UL | VR::SL | VR::UV | VR::SV => integers(p),
        VR::FL | VR::FD => floats(p),
        VR::IS => strings(p)
            .into_iter()
            .map(|s| {
                s.and_then(|s| s.parse::<i64>().ok())
                    .map(Json::from)
                    .unwrap_or(Json::Null)
            })
            .collect(),
        VR::DS => strings(p)
            .into_iter()
            .map(|s| {
                s.and_then(|s| s.parse::<f64>().ok())
                    .map(number)
                    .unwrap_or(Json::Null)
            })
            .collect(),
        _ => strings(p)
            .into_iter()
            .map(|s| s.map(Json::String).unwrap_or(Json::Null))
            .collect(),
    };
    if !values.is_empty() && !values.iter().all(Json::is_null) {
        out.insert("Value".into(), Json::Array(values));
    }
}

/// The values of a string element, trimmed of padding; empty values become `None`.
fn strings(p: &PrimitiveValue) -> Vec<Option<String>> {
    p.to_multi_str()
        .iter()
        .map(|s| {
            let t = s.trim_matches(|c: char| c == ' ' || c == '\0');
            (!t.is_empty()).then(|| t.to_owned())
        })
        .collect()
}

fn person_name(raw: &str) -> Json {
    let raw = raw.trim_matches(|c: char| c == ' ' || c == '\0');
    if raw.is_empty() {
        return Json::Null;
    }
    let mut groups = raw.split('=');
    let mut pn = Map::new();
    for key in ["Alphabetic", "Ideographic", "Phonetic"] {
        if let Some(g) = groups.next().filter(|g| !g.is_empty()) {
            pn.insert(key.into(), Json::String(g.to_owned()));
        }
    }
    Json::Object(pn)
}

fn integers(p: &PrimitiveValue) -> Vec<Json> {
    match p {
        PrimitiveValue::U8(v) => v.iter().map(|x| json!(x)).collect(),
        PrimitiveValue::I16(v) => v.iter().map(|x| json!(x)).collect(),
        PrimitiveValue::U16(v) => v.iter().map(|x| json!(x)).collect(),
        PrimitiveValue::I32(v) => v.iter().map(|x| json!(x)).collect(),
        PrimitiveValue::U32(v) => v.iter().map(|x| json!(x)).collect(),
        PrimitiveValue::I64(v) => v.iter().map(|x| json!(x)).collect(),
        PrimitiveValue::U64(v) => v.iter().map(|x| json!(x)).collect(),
        other => other
            .to_multi_int::<i64>()
            .unwrap_or_default()
            .into_iter()
            .map(Json::from)
            .collect(),
    }
}

fn floats(p: &PrimitiveValue) -> Vec<Json> {
    p.to_multi_float64()
        .unwrap_or_default()
        .into_iter()
        .map(number)
        .collect()
}

fn number(x: f64) -> Json {
    // Integral values print without a fraction, as most servers do.
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        Json::Number(Number::from(x as i64))
    } else {
        Number::from_f64(x).map(Json::Number).unwrap_or(Json::Null)
    }
}

/// Binary values as little-endian bytes, as DICOM JSON's InlineBinary expects.
pub fn binary_le(p: &PrimitiveValue) -> Vec<u8> {
    match p {
        PrimitiveValue::U8(v) => v.to_vec(),
        PrimitiveValue::U16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        PrimitiveValue::I16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        PrimitiveValue::U32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        PrimitiveValue::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        PrimitiveValue::U64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        PrimitiveValue::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        PrimitiveValue::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        PrimitiveValue::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        other => other.to_bytes().into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{dicom_value, DataElement};
    use dicom_dictionary_std::tags;

    #[test]
    fn serializes_the_common_vrs() {
        let mut obj = InMemDicomObject::new_empty();
        obj.put(DataElement::new(
            tags::PATIENT_NAME,
            VR::PN,
            PrimitiveValue::from("Doe^John=ド^ジョン"),
        ));
        obj.put(DataElement::new(
            tags::IMAGE_TYPE,
            VR::CS,
            dicom_value!(Strs, ["ORIGINAL", "", "AXIAL"]),
        ));
        obj.put(DataElement::new(
            tags::ROWS,
            VR::US,
            dicom_value!(U16, [512]),
        ));
        obj.put(DataElement::new(
            tags::SLICE_THICKNESS,
            VR::DS,
            PrimitiveValue::from("2.50 "),
        ));
        obj.put(DataElement::new(
            tags::INSTANCE_NUMBER,
            VR::IS,
            PrimitiveValue::from(" 7"),
        ));
        obj.put(DataElement::new(
            tags::STUDY_DESCRIPTION,
            VR::LO,
            PrimitiveValue::Empty,
        ));
        obj.put(DataElement::new(
            Tag(0x6000, 0x3000),
            VR::OW,
            PrimitiveValue::U16(vec![1u16; 1000].into()),
        ));
        let mut item = InMemDicomObject::new_empty();
        item.put(DataElement::new(
            tags::CODE_VALUE,
            VR::SH,
            PrimitiveValue::from("T-1234"),
        ));
        obj.put(DataElement::new(
            tags::ANATOMIC_REGION_SEQUENCE,
            VR::SQ,
            Value::from(dicom_core::value::DataSetSequence::from(vec![item])),
        ));
        let json = Json::Object(dataset_to_json(&obj, "studies/1/series/2/instances/3"));
        assert_eq!(json["00100010"]["Value"][0]["Alphabetic"], "Doe^John");
        assert_eq!(json["00100010"]["Value"][0]["Ideographic"], "ド^ジョン");
        assert_eq!(
            json["00080008"]["Value"],
            json!(["ORIGINAL", null, "AXIAL"])
        );
        assert_eq!(json["00280010"], json!({"vr": "US", "Value": [512]}));
        assert_eq!(json["00180050"]["Value"][0], 2.5);
        assert_eq!(json["00200013"]["Value"][0], 7);
        assert_eq!(json["00081030"], json!({"vr": "LO"}));
        assert_eq!(
            json["60003000"]["BulkDataURI"],
            "pacs-lite:bulk/studies/1/series/2/instances/3/bulkdata/60003000"
        );
        assert_eq!(
            json["00082218"]["Value"][0]["00080100"]["Value"][0],
            "T-1234"
        );
    }
}
