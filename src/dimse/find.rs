//! C-FIND (PS3.4 C.4.1), Study Root and Patient Root: the identifier becomes a query of the
//! shared query model (`model::query`), answered by the same index search as QIDO-RS.
//! Results are returned as identifiers holding exactly the requested keys, in UTF-8.

use dicom_core::header::Header;
use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::text::SpecificCharacterSet;
use dicom_object::InMemDicomObject;
use serde_json::Value as Json;

use super::status::Status;
use crate::dicom::element_text as text;
use crate::index::query::{Hit, Query};
use crate::index::Index;
use crate::model::query::{AttributeKey, Filter, Level, Matcher};
use crate::model::{AeTitle, TransferSyntax, Uid};

pub const STUDY_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";
pub const PATIENT_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.1.1";

/// The most matches one C-FIND returns.
const MAX_MATCHES: usize = 10_000;

/// A C-FIND, C-MOVE or C-GET identifier as a query of the shared model.
pub struct Identifier {
    /// The Query/Retrieve Level as sent.
    pub level: String,
    pub query: Query,
    /// The requested keys, in order (returned in C-FIND answers).
    pub keys: Vec<(Tag, VR)>,
    /// PATIENT level: answers are patients, found through their studies.
    pub patients: bool,
}

/// Parse an identifier encoded in `ts`; Err(status) when it cannot be used.
pub fn parse(identifier: &[u8], ts: &TransferSyntax) -> Result<Identifier, Status> {
    crate::dicom::check_data_set(identifier, ts.as_str()).map_err(|e| {
        tracing::info!(error = %e, "identifier refused");
        Status::CANNOT_UNDERSTAND
    })?;
    let request = InMemDicomObject::read_dataset_with_ts(identifier, ts.entry())
        .map_err(|_| Status::CANNOT_UNDERSTAND)?;
    let level =
        text(&request, tags::QUERY_RETRIEVE_LEVEL).ok_or(Status::DOES_NOT_MATCH_SOP_CLASS)?;
    let (query_level, patients) = match level.as_str() {
        "PATIENT" => (Level::Study, true),
        "STUDY" => (Level::Study, false),
        "SERIES" => (Level::Series, false),
        "IMAGE" => (Level::Instance, false),
        _ => return Err(Status::DOES_NOT_MATCH_SOP_CLASS),
    };
    let mut filters = Vec::new();
    let mut keys = Vec::new();
    let mut study_uid = None;
    let mut series_uid = None;
    for elem in request.iter() {
        let tag = elem.tag();
        if tag == tags::QUERY_RETRIEVE_LEVEL
            || tag == tags::SPECIFIC_CHARACTER_SET
            || tag.0 == 0x0000
        {
            continue;
        }
        keys.push((tag, elem.vr()));
        if elem.vr() == VR::SQ {
            continue;
        }
        let value = elem
            .to_str()
            .map(|s| s.trim_matches([' ', '\0']).to_owned())
            .unwrap_or_default();
        let key = AttributeKey {
            path: vec![tag],
            vr: elem.vr(),
        };
        let matcher = Matcher::parse(&key, &value).map_err(|_| Status::DOES_NOT_MATCH_SOP_CLASS)?;
        match (tag, &matcher) {
            (tags::STUDY_INSTANCE_UID, Matcher::Exact(u)) if query_level != Level::Study => {
                study_uid = Uid::parse(u.as_str()).ok()
            }
            (tags::SERIES_INSTANCE_UID, Matcher::Exact(u)) if query_level == Level::Instance => {
                series_uid = Uid::parse(u.as_str()).ok()
            }
            _ => {}
        }
        filters.push(Filter { key, matcher });
    }
    Ok(Identifier {
        level,
        query: Query {
            level: query_level,
            study_uid,
            series_uid,
            full_instance_json: query_level == Level::Instance,
            filters,
            fuzzy: false,
            offset: 0,
            limit: MAX_MATCHES,
        },
        keys,
        patients,
    })
}

/// Answer a C-FIND identifier: the encoded result identifiers, or a failure status.
pub async fn find(
    index: &Index,
    identifier: &[u8],
    ts: &TransferSyntax,
    ae_title: &AeTitle,
) -> Result<Vec<Vec<u8>>, Status> {
    let Identifier {
        level,
        query,
        keys,
        patients,
    } = parse(identifier, ts)?;
    let found = index.search(&query).await.map_err(|e| {
        tracing::error!(error = %e, "C-FIND search failed");
        Status::OUT_OF_RESOURCES
    })?;
    let mut hits = found.hits;
    if patients {
        let mut seen = std::collections::HashSet::new();
        hits.retain(|h| seen.insert(json_text(h, tags::PATIENT_ID, VR::LO).unwrap_or_default()));
    }
    Ok(hits
        .iter()
        .map(|hit| encode(hit, &keys, &level, ae_title, ts.entry()))
        .collect())
}

fn json_value(hit: &Hit, tag: Tag) -> Option<&Json> {
    let key = format!("{:04X}{:04X}", tag.0, tag.1);
    hit.attrs.get(&key).or_else(|| hit.context.get(&key))
}

/// An attribute of a hit as DICOM text (multiple values joined by `\`).
pub fn json_text(hit: &Hit, tag: Tag, vr: VR) -> Option<String> {
    let values = json_value(hit, tag)?.get("Value")?.as_array()?;
    let parts: Vec<String> = values
        .iter()
        .map(|v| match v {
            Json::String(s) => s.clone(),
            Json::Number(n) => n.to_string(),
            Json::Object(pn) if vr == VR::PN => ["Alphabetic", "Ideographic", "Phonetic"]
                .iter()
                .map(|k| pn.get(*k).and_then(Json::as_str).unwrap_or(""))
                .collect::<Vec<_>>()
                .join("=")
                .trim_end_matches('=')
                .to_owned(),
            _ => String::new(),
        })
        .collect();
    Some(parts.join("\\"))
}

/// A result identifier with exactly the requested keys.
fn encode(
    hit: &Hit,
    keys: &[(Tag, VR)],
    level: &str,
    ae_title: &AeTitle,
    ts: &dicom_encoding::TransferSyntax,
) -> Vec<u8> {
    let mut obj = InMemDicomObject::new_empty();
    obj.put(DataElement::new(
        tags::SPECIFIC_CHARACTER_SET,
        VR::CS,
        PrimitiveValue::from("ISO_IR 192"),
    ));
    obj.put(DataElement::new(
        tags::QUERY_RETRIEVE_LEVEL,
        VR::CS,
        PrimitiveValue::from(level),
    ));
    obj.put(DataElement::new(
        tags::RETRIEVE_AE_TITLE,
        VR::AE,
        PrimitiveValue::from(ae_title.as_str()),
    ));
    for &(tag, vr) in keys {
        if vr == VR::SQ {
            // Sequence return keys come back present and empty: the index keeps no
            // sequence contents at these levels.
            obj.put(DataElement::new(
                tag,
                VR::SQ,
                dicom_core::value::DataSetSequence::<InMemDicomObject>::empty(),
            ));
            continue;
        }
        let value = match json_text(hit, tag, vr) {
            Some(t) if !t.is_empty() => primitive(vr, &t),
            _ => PrimitiveValue::Empty,
        };
        obj.put(DataElement::new(tag, vr, value));
    }
    let mut out = Vec::new();
    obj.write_dataset_with_ts_cs(&mut out, ts, SpecificCharacterSet::ISO_IR_192)
        .expect("writing to memory cannot fail");
    out
}

fn primitive(vr: VR, text: &str) -> PrimitiveValue {
    let numbers = || text.split('\\').map(str::trim);
    match vr {
        VR::US => numbers()
            .map(|n| n.parse::<u16>().ok())
            .collect::<Option<Vec<_>>>()
            .map(|v| PrimitiveValue::U16(v.into())),
        VR::UL => numbers()
            .map(|n| n.parse::<u32>().ok())
            .collect::<Option<Vec<_>>>()
            .map(|v| PrimitiveValue::U32(v.into())),
        VR::SS => numbers()
            .map(|n| n.parse::<i16>().ok())
            .collect::<Option<Vec<_>>>()
            .map(|v| PrimitiveValue::I16(v.into())),
        VR::SL => numbers()
            .map(|n| n.parse::<i32>().ok())
            .collect::<Option<Vec<_>>>()
            .map(|v| PrimitiveValue::I32(v.into())),
        VR::FL => numbers()
            .map(|n| n.parse::<f32>().ok())
            .collect::<Option<Vec<_>>>()
            .map(|v| PrimitiveValue::F32(v.into())),
        VR::FD => numbers()
            .map(|n| n.parse::<f64>().ok())
            .collect::<Option<Vec<_>>>()
            .map(|v| PrimitiveValue::F64(v.into())),
        _ => Some(PrimitiveValue::Strs(
            text.split('\\').map(str::to_owned).collect(),
        )),
    }
    .unwrap_or(PrimitiveValue::Empty)
}
