//! Modality Worklist C-FIND (PS3.4 K.6, 1.2.840.10008.5.1.4.31): the identifier becomes a
//! worklist query of the index (matching keys at the top level and in the one item of the
//! Scheduled Procedure Step Sequence); each scheduled step of a scheduled order is one
//! answer, holding exactly the requested keys (IHE RAD-5's return keys have values),
//! in UTF-8.

use dicom_core::header::Header;
use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::text::SpecificCharacterSet;
use dicom_object::InMemDicomObject;

use super::status::Status;
use crate::config::WorklistConfig;
use crate::index::orders::{Order, Step};
use crate::index::worklist::{WorklistKey, WorklistQuery};
use crate::index::Index;
use crate::model::query::{AttributeKey, Matcher};
use crate::model::{AeTitle, OrderStatus, TransferSyntax};

pub const MODALITY_WORKLIST_FIND: &str = "1.2.840.10008.5.1.4.31";

/// The most answers one query gets.
const MAX_MATCHES: usize = 10_000;

/// The Scheduled Procedure Step attributes returned when the sequence is asked for with
/// no item (all of them).
const STEP_KEYS: &[(Tag, VR)] = &[
    (tags::SCHEDULED_STATION_AE_TITLE, VR::AE),
    (tags::SCHEDULED_PROCEDURE_STEP_START_DATE, VR::DA),
    (tags::SCHEDULED_PROCEDURE_STEP_START_TIME, VR::TM),
    (tags::MODALITY, VR::CS),
    (tags::SCHEDULED_PERFORMING_PHYSICIAN_NAME, VR::PN),
    (tags::SCHEDULED_PROCEDURE_STEP_DESCRIPTION, VR::LO),
    (tags::SCHEDULED_PROCEDURE_STEP_ID, VR::SH),
    (tags::SCHEDULED_PROCEDURE_STEP_STATUS, VR::CS),
];

fn top_key(tag: Tag) -> Option<WorklistKey> {
    Some(match tag {
        tags::PATIENT_NAME => WorklistKey::PatientName,
        tags::PATIENT_ID => WorklistKey::PatientId,
        tags::ISSUER_OF_PATIENT_ID => WorklistKey::IssuerOfPatientId,
        tags::ACCESSION_NUMBER => WorklistKey::AccessionNumber,
        tags::REQUESTED_PROCEDURE_ID => WorklistKey::RequestedProcedureId,
        tags::STUDY_INSTANCE_UID => WorklistKey::StudyInstanceUid,
        tags::REFERRING_PHYSICIAN_NAME => WorklistKey::ReferringPhysician,
        _ => return None,
    })
}

fn step_key(tag: Tag) -> Option<WorklistKey> {
    Some(match tag {
        tags::SCHEDULED_STATION_AE_TITLE => WorklistKey::StationAeTitle,
        tags::MODALITY => WorklistKey::Modality,
        tags::SCHEDULED_PROCEDURE_STEP_START_DATE => WorklistKey::StartDate,
        tags::SCHEDULED_PROCEDURE_STEP_START_TIME => WorklistKey::StartTime,
        tags::SCHEDULED_PROCEDURE_STEP_ID => WorklistKey::StepId,
        _ => return None,
    })
}

/// A parsed worklist identifier: the query and the keys to return.
pub struct Identifier {
    pub query: WorklistQuery,
    /// Top-level return keys, in order.
    pub keys: Vec<(Tag, VR)>,
    /// The Scheduled Procedure Step Sequence's return keys, if it was asked for.
    pub step_keys: Option<Vec<(Tag, VR)>>,
}

fn value_of(elem: &DataElement<InMemDicomObject>) -> String {
    elem.to_str()
        .map(|s| s.trim_matches([' ', '\0']).to_owned())
        .unwrap_or_default()
}

fn matcher(tag: Tag, vr: VR, value: &str) -> Result<Matcher, Status> {
    let key = AttributeKey {
        path: vec![tag],
        vr,
    };
    Matcher::parse(&key, value).map_err(|e| {
        tracing::info!(error = %e, "worklist query key refused");
        Status::DOES_NOT_MATCH_SOP_CLASS
    })
}

/// The statuses a ScheduledProcedureStepStatus key selects: SCHEDULED by default,
/// STARTED for orders in progress.
fn statuses(value: &str) -> Vec<OrderStatus> {
    let mut out = Vec::new();
    for v in value.split('\\').map(str::trim) {
        match v {
            "" | "*" | "SCHEDULED" | "ARRIVED" | "READY" => out.push(OrderStatus::Scheduled),
            "STARTED" | "IN PROGRESS" => out.push(OrderStatus::InProgress),
            _ => {}
        }
    }
    if value.trim().is_empty() || value.trim() == "*" {
        out = vec![OrderStatus::Scheduled];
    }
    out.dedup();
    out
}

/// Parse an identifier encoded in `ts`; Err(status) when it cannot be used.
pub fn parse(
    identifier: &[u8],
    ts: &TransferSyntax,
    calling: &AeTitle,
    config: &WorklistConfig,
) -> Result<Identifier, Status> {
    crate::dicom::check_data_set(identifier, ts.as_str()).map_err(|e| {
        tracing::info!(error = %e, "worklist identifier refused");
        Status::CANNOT_UNDERSTAND
    })?;
    let request = InMemDicomObject::read_dataset_with_ts(identifier, ts.entry())
        .map_err(|_| Status::CANNOT_UNDERSTAND)?;
    let mut query = WorklistQuery {
        filters: Vec::new(),
        statuses: vec![OrderStatus::Scheduled],
        limit: MAX_MATCHES,
    };
    let (mut keys, mut step_keys) = (Vec::new(), None);
    for elem in request.iter() {
        let (tag, vr) = (elem.tag(), elem.vr());
        if tag == tags::SPECIFIC_CHARACTER_SET || tag.0 == 0x0000 {
            continue;
        }
        keys.push((tag, vr));
        if tag == tags::SCHEDULED_PROCEDURE_STEP_SEQUENCE {
            step_keys = Some(step_item(elem, &mut query)?);
        } else if let Some(key) = top_key(tag) {
            query
                .filters
                .push((key, matcher(tag, vr, &value_of(elem))?));
        }
    }
    if config.only_own_station {
        // Its own steps only: a query for another station's gets none.
        let own = Matcher::Exact(calling.as_str().to_owned());
        query.filters.push((WorklistKey::StationAeTitle, own));
    }
    Ok(Identifier {
        query,
        keys,
        step_keys,
    })
}

/// The matching and return keys of the Scheduled Procedure Step Sequence's item.
fn step_item(
    elem: &DataElement<InMemDicomObject>,
    query: &mut WorklistQuery,
) -> Result<Vec<(Tag, VR)>, Status> {
    let Some(item) = elem.items().and_then(|items| items.first()) else {
        return Ok(STEP_KEYS.to_vec());
    };
    let mut keys = Vec::new();
    for sub in item.iter() {
        let (tag, vr) = (sub.tag(), sub.vr());
        if tag.0 == 0x0000 {
            continue;
        }
        keys.push((tag, vr));
        let value = value_of(sub);
        if tag == tags::SCHEDULED_PROCEDURE_STEP_STATUS {
            query.statuses = statuses(&value);
        } else if let Some(key) = step_key(tag) {
            query.filters.push((key, matcher(tag, vr, &value)?));
        }
    }
    Ok(keys)
}

/// Answer a worklist query: the encoded answers, or a failure status.
pub async fn find(
    index: &Index,
    identifier: &[u8],
    ts: &TransferSyntax,
    calling: &AeTitle,
    config: &WorklistConfig,
) -> Result<Vec<Vec<u8>>, Status> {
    let id = parse(identifier, ts, calling, config)?;
    if id.query.statuses.is_empty() {
        return Ok(Vec::new());
    }
    let items = index.worklist(&id.query).await.map_err(|e| {
        tracing::error!(error = %e, "worklist search failed");
        Status::OUT_OF_RESOURCES
    })?;
    Ok(items
        .iter()
        .map(|(order, step)| encode(order, step, &id, ts.entry()))
        .collect())
}

/// A top-level attribute of an order.
fn order_value(o: &Order, tag: Tag) -> Option<String> {
    let v = match tag {
        tags::PATIENT_NAME => &o.patient_name,
        tags::PATIENT_ID => &o.patient_id,
        tags::ISSUER_OF_PATIENT_ID => &o.issuer_of_patient_id,
        tags::PATIENT_BIRTH_DATE => &o.patient_birth_date,
        tags::PATIENT_SEX => &o.patient_sex,
        tags::ACCESSION_NUMBER => &o.accession_number,
        tags::REQUESTED_PROCEDURE_ID => &o.requested_procedure_id,
        tags::REQUESTED_PROCEDURE_DESCRIPTION => &o.requested_procedure_description,
        tags::REFERRING_PHYSICIAN_NAME => &o.referring_physician,
        tags::STUDY_INSTANCE_UID => return o.study_instance_uid.as_ref().map(|u| u.to_string()),
        _ => return None,
    };
    v.clone()
}

/// An attribute of a scheduled step.
fn step_value(o: &Order, s: &Step, tag: Tag) -> Option<String> {
    let (date, time) = s.start_date_time();
    match tag {
        tags::SCHEDULED_STATION_AE_TITLE => s.station_ae.clone(),
        tags::SCHEDULED_PROCEDURE_STEP_START_DATE => date,
        tags::SCHEDULED_PROCEDURE_STEP_START_TIME => time,
        tags::MODALITY => s.modality.clone(),
        tags::SCHEDULED_PROCEDURE_STEP_DESCRIPTION => s.description.clone(),
        tags::SCHEDULED_PROCEDURE_STEP_ID => Some(s.id.clone()),
        tags::SCHEDULED_PROCEDURE_STEP_STATUS => Some(
            match o.status {
                OrderStatus::InProgress => "STARTED",
                _ => "SCHEDULED",
            }
            .to_owned(),
        ),
        _ => None,
    }
}

fn element(tag: Tag, vr: VR, value: Option<String>) -> DataElement<InMemDicomObject> {
    match (vr, value) {
        (VR::SQ, _) => DataElement::new(tag, VR::SQ, DataSetSequence::<InMemDicomObject>::empty()),
        (_, Some(v)) if !v.is_empty() => DataElement::new(tag, vr, PrimitiveValue::from(v)),
        _ => DataElement::new(tag, vr, PrimitiveValue::Empty),
    }
}

/// One answer: the requested keys of one order and one of its steps.
fn encode(
    order: &Order,
    step: &Step,
    id: &Identifier,
    ts: &dicom_encoding::TransferSyntax,
) -> Vec<u8> {
    let mut obj = InMemDicomObject::new_empty();
    obj.put(DataElement::new(
        tags::SPECIFIC_CHARACTER_SET,
        VR::CS,
        PrimitiveValue::from("ISO_IR 192"),
    ));
    for &(tag, vr) in &id.keys {
        if tag == tags::SCHEDULED_PROCEDURE_STEP_SEQUENCE {
            let mut item = InMemDicomObject::new_empty();
            for &(t, v) in id.step_keys.as_deref().unwrap_or(STEP_KEYS) {
                item.put(element(t, v, step_value(order, step, t)));
            }
            let seq = DataSetSequence::from(vec![item]);
            obj.put(DataElement::new(tag, VR::SQ, seq));
            continue;
        }
        obj.put(element(tag, vr, order_value(order, tag)));
    }
    let mut out = Vec::new();
    obj.write_dataset_with_ts_cs(&mut out, ts, SpecificCharacterSet::ISO_IR_192)
        .expect("writing to memory cannot fail");
    out
}
