//! Modality Performed Procedure Step SCP (PS3.4 F.7, 1.2.840.10008.3.1.2.3.3): N-CREATE
//! records a step IN PROGRESS and starts its order (found by the Study Instance UID or
//! accession number of its Scheduled Step Attributes); N-SET updates it while it is in
//! progress, and COMPLETED or DISCONTINUED finish it and its order. The state machine is
//! `worklist::mpps`; the data set is kept as last set.

use dicom_core::header::Header;
use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::text::SpecificCharacterSet;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN;

use super::command::{field, Command, Response};
use super::status::Status;
use crate::dicom::element_text as text;
use crate::index::mpps::Mpps;
use crate::index::Index;
use crate::model::{AeTitle, TransferSyntax, Uid};
use crate::worklist::mpps::{on_create, on_set, Refusal};

pub const MPPS: &str = "1.2.840.10008.3.1.2.3.3";

/// The response to an N-CREATE or N-SET: a status, and what went wrong.
struct Answer {
    status: Status,
    comment: Option<String>,
    error_id: Option<u16>,
}

impl Answer {
    fn ok() -> Self {
        Answer {
            status: Status::SUCCESS,
            comment: None,
            error_id: None,
        }
    }

    fn failed(status: Status, why: impl ToString) -> Self {
        Answer {
            status,
            comment: Some(why.to_string()),
            error_id: None,
        }
    }

    fn refused(r: Refusal) -> Self {
        let (status, error_id) = match &r {
            Refusal::InvalidStatus(_) => (Status::INVALID_ATTRIBUTE_VALUE, None),
            // PS3.4 F.7.2.2.2: "may no longer be updated", Error ID A710.
            Refusal::Final(_) => (Status::PROCESSING_FAILURE, Some(0xA710)),
            Refusal::Duplicate => (Status::DUPLICATE_SOP_INSTANCE, None),
            Refusal::NoSuchInstance => (Status::NO_SUCH_OBJECT_INSTANCE, None),
        };
        Answer {
            error_id,
            ..Answer::failed(status, r)
        }
    }

    fn encode(self, request: &Command, field: u16) -> Vec<u8> {
        let mut rsp = Response::new(request, field, self.status);
        if let Some(c) = &self.comment {
            rsp = rsp.with_comment(c, self.error_id);
        }
        rsp.encode()
    }
}

fn read(data: &[u8], ts: &TransferSyntax) -> Result<InMemDicomObject, Answer> {
    crate::dicom::check_data_set(data, ts.as_str())
        .map_err(|e| Answer::failed(Status::CANNOT_UNDERSTAND, e))?;
    InMemDicomObject::read_dataset_with_ts(data, ts.entry())
        .map_err(|e| Answer::failed(Status::CANNOT_UNDERSTAND, e))
}

/// The data set as kept: Explicit VR Little Endian, UTF-8.
fn write(obj: &mut InMemDicomObject) -> Vec<u8> {
    obj.put(DataElement::new(
        tags::SPECIFIC_CHARACTER_SET,
        VR::CS,
        PrimitiveValue::from("ISO_IR 192"),
    ));
    let mut out = Vec::new();
    obj.write_dataset_with_ts_cs(
        &mut out,
        &EXPLICIT_VR_LITTLE_ENDIAN.erased(),
        SpecificCharacterSet::ISO_IR_192,
    )
    .expect("writing to memory cannot fail");
    out
}

/// A text attribute of the first item of a sequence.
fn in_first_item(obj: &InMemDicomObject, seq: Tag, tag: Tag) -> Option<String> {
    let item = obj.get(seq)?.items()?.first()?;
    text(item, tag).filter(|v| !v.is_empty())
}

fn performed_series(obj: &InMemDicomObject) -> Vec<String> {
    let items = obj
        .get(tags::PERFORMED_SERIES_SEQUENCE)
        .and_then(|e| e.items());
    items
        .into_iter()
        .flatten()
        .filter_map(|item| text(item, tags::SERIES_INSTANCE_UID))
        .filter(|uid| Uid::parse(uid).is_ok())
        .collect()
}

/// N-CREATE: the response command.
pub async fn create(
    index: &Index,
    request: &Command,
    data: &[u8],
    ts: &TransferSyntax,
    calling: &AeTitle,
) -> Vec<u8> {
    // The SCU may leave the instance UID to us (PS3.7 10.1.5): it is then in the response.
    let mut request = request.clone();
    let uid = match request.affected_sop_instance.as_deref().map(Uid::parse) {
        Some(Ok(uid)) => uid,
        Some(Err(e)) => {
            let why = format!("Affected SOP Instance UID: {e}");
            return Answer::failed(Status::INVALID_ATTRIBUTE_VALUE, why)
                .encode(&request, field::N_CREATE_RSP);
        }
        None => Uid::generate(),
    };
    request.affected_sop_instance = Some(uid.to_string());
    let answer = match created(index, uid, data, ts, calling).await {
        Ok(()) => Answer::ok(),
        Err(a) => a,
    };
    count("create", answer.status);
    answer.encode(&request, field::N_CREATE_RSP)
}

async fn created(
    index: &Index,
    uid: Uid,
    data: &[u8],
    ts: &TransferSyntax,
    calling: &AeTitle,
) -> Result<(), Answer> {
    let mut obj = read(data, ts)?;
    let status = text(&obj, tags::PERFORMED_PROCEDURE_STEP_STATUS);
    let status = on_create(status.as_deref()).map_err(Answer::refused)?;
    let ssas = tags::SCHEDULED_STEP_ATTRIBUTES_SEQUENCE;
    let study = in_first_item(&obj, ssas, tags::STUDY_INSTANCE_UID);
    let accession = in_first_item(&obj, ssas, tags::ACCESSION_NUMBER);
    let order = index
        .order_for_step(study.as_deref(), accession.as_deref())
        .await
        .map_err(|e| Answer::failed(Status::PROCESSING_FAILURE, e))?;
    let station = text(&obj, tags::PERFORMED_STATION_AE_TITLE)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| calling.to_string());
    let mpps = Mpps {
        sop_instance_uid: uid,
        order_id: order,
        status: status.as_str().to_owned(),
        station_ae: Some(station),
        performed_series: performed_series(&obj),
        data_set: write(&mut obj),
        updated_at: 0,
    };
    match index.create_mpps(&mpps).await {
        Ok(true) => {
            tracing::info!(sop = %mpps.sop_instance_uid, order = ?mpps.order_id, "MPPS in progress");
            Ok(())
        }
        Ok(false) => Err(Answer::refused(Refusal::Duplicate)),
        Err(e) => Err(Answer::failed(Status::PROCESSING_FAILURE, e)),
    }
}

/// N-SET: the response command.
pub async fn set(index: &Index, request: &Command, data: &[u8], ts: &TransferSyntax) -> Vec<u8> {
    let answer = match updated(index, request, data, ts).await {
        Ok(()) => Answer::ok(),
        Err(a) => a,
    };
    count("set", answer.status);
    answer.encode(request, field::N_SET_RSP)
}

async fn updated(
    index: &Index,
    request: &Command,
    data: &[u8],
    ts: &TransferSyntax,
) -> Result<(), Answer> {
    let uid = request.requested_sop_instance.as_deref().map(Uid::parse);
    let Some(Ok(uid)) = uid else {
        return Err(Answer::refused(Refusal::NoSuchInstance));
    };
    let changes = read(data, ts)?;
    let requested = text(&changes, tags::PERFORMED_PROCEDURE_STEP_STATUS);
    // Optimistic: read, merge, write if nobody wrote in between; else again.
    for _ in 0..5 {
        let failed = |e| Answer::failed(Status::PROCESSING_FAILURE, e);
        let Some(read) = index.mpps(&uid).await.map_err(failed)? else {
            return Err(Answer::refused(Refusal::NoSuchInstance));
        };
        let next_status = on_set(&read.status, requested.as_deref()).map_err(Answer::refused)?;
        let stored = InMemDicomObject::read_dataset_with_ts(
            &read.data_set[..],
            &EXPLICIT_VR_LITTLE_ENDIAN.erased(),
        );
        let mut obj = stored.map_err(|e| Answer::failed(Status::PROCESSING_FAILURE, e))?;
        for elem in changes.iter() {
            if elem.tag() != tags::SPECIFIC_CHARACTER_SET {
                obj.put(elem.clone());
            }
        }
        let next = Mpps {
            status: next_status.as_str().to_owned(),
            performed_series: performed_series(&obj),
            data_set: write(&mut obj),
            ..read.clone()
        };
        let finished = (next_status != crate::worklist::mpps::PpsStatus::InProgress)
            .then(|| next_status.order_status());
        if index
            .set_mpps(&read, &next, finished)
            .await
            .map_err(failed)?
        {
            tracing::info!(sop = %uid, status = next.status, order = ?read.order_id, "MPPS set");
            return Ok(());
        }
    }
    Err(Answer::failed(
        Status::PROCESSING_FAILURE,
        "the step changed while being set; send the N-SET again",
    ))
}

fn count(operation: &str, status: Status) {
    let counter = &crate::metrics::get().worklist;
    counter
        .with_label_values(&[operation, status.class()])
        .inc();
}
