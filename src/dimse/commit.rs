//! Storage Commitment Push Model (PS3.4 Annex J), SCP role.
//!
//! An N-ACTION request lists SOP instances; it is answered at once, then every instance is
//! looked up, read back from the object store and its SHA-256 recomputed against the one
//! recorded at ingest. The result goes out in an N-EVENT-REPORT: on the requester's
//! association while it is open, otherwise on a new association to the requester's AE title
//! as configured in `dimse.destinations` (we ask for the SCP role there).

use std::sync::Arc;

use super::command::{self, field, Command};
use super::link::{DataSet, Writer};
use super::scu::{self, Proposal};
use super::status::Status;
use crate::context::Context;
use crate::dicom::element_text as text;
use crate::model::{AeTitle, TransferSyntax, Uid};
use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Length, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

pub const STORAGE_COMMITMENT: &str = "1.2.840.10008.1.20.1";
pub const STORAGE_COMMITMENT_INSTANCE: &str = "1.2.840.10008.1.20.1.1";

/// A storage commitment request, checked.
pub struct Request {
    transaction_uid: String,
    references: Vec<(String, String)>,
}

/// Validate an N-ACTION-RQ and its action information: the request, or the N-ACTION-RSP
/// failure status.
pub fn accept(rq: &Command, data: &[u8], ts: &str) -> Result<Request, Status> {
    if rq.requested_sop_class.as_deref() != Some(STORAGE_COMMITMENT) {
        return Err(Status::NO_SUCH_SOP_CLASS);
    }
    if rq.requested_sop_instance.as_deref() != Some(STORAGE_COMMITMENT_INSTANCE) {
        return Err(Status::NO_SUCH_OBJECT_INSTANCE);
    }
    if rq.action_type != Some(1) {
        return Err(Status::NO_SUCH_ACTION);
    }
    let obj = read_information(data, ts, "action information")?;
    let transaction_uid = text(&obj, tags::TRANSACTION_UID)
        .filter(|u| Uid::parse(u).is_ok())
        .ok_or(Status::MISSING_ATTRIBUTE)?;
    let items = obj
        .get(tags::REFERENCED_SOP_SEQUENCE)
        .and_then(|e| e.items())
        .ok_or(Status::MISSING_ATTRIBUTE)?;
    let references = items
        .iter()
        .map(|item| {
            Some((
                text(item, tags::REFERENCED_SOP_CLASS_UID)?,
                text(item, tags::REFERENCED_SOP_INSTANCE_UID)?,
            ))
        })
        .collect::<Option<Vec<_>>>()
        .ok_or(Status::MISSING_ATTRIBUTE_VALUE)?;
    Ok(Request {
        transaction_uid,
        references,
    })
}

/// The data set of an N-ACTION or N-EVENT-REPORT (`what` it is, for the log), checked
/// and read in its transfer syntax; 0x0110 when it cannot be.
pub(super) fn read_information(
    data: &[u8],
    ts: &str,
    what: &str,
) -> Result<InMemDicomObject, Status> {
    crate::dicom::check_data_set(data, ts).map_err(|e| {
        tracing::info!(error = %e, "{what} refused");
        Status::PROCESSING_FAILURE
    })?;
    let ts = TransferSyntaxRegistry
        .get(ts)
        .ok_or(Status::PROCESSING_FAILURE)?;
    InMemDicomObject::read_dataset_with_ts(data, ts).map_err(|_| Status::PROCESSING_FAILURE)
}

/// One referenced instance: its class, its UID, and the failure reason (PS3.4 J.3.2.1.1.2)
/// when it is not committed.
type Verdict = (String, String, Option<Status>);

/// Check every referenced instance.
async fn check(svc: &Context, request: &Request) -> Vec<Verdict> {
    let mut out = Vec::with_capacity(request.references.len());
    for (class, instance) in &request.references {
        let verdict = verify_one(svc, class, instance).await;
        if let Some(reason) = verdict {
            tracing::info!(sop = %instance, %reason, "storage commitment failed for an instance");
        }
        out.push((class.clone(), instance.clone(), verdict));
    }
    out
}

/// Whether the index holds the instance with this class, and its object reads back with
/// the SHA-256 and size recorded at ingest.
async fn verify_one(svc: &Context, class: &str, instance: &str) -> Option<Status> {
    let uid = Uid::parse(instance).ok()?;
    let loc = match svc.index().locate_instance(&uid).await {
        Ok(Some(loc)) => loc,
        Ok(None) => return Some(Status::NO_SUCH_OBJECT_INSTANCE),
        Err(e) => {
            tracing::error!(error = %e, "storage commitment look-up failed");
            return Some(Status::PROCESSING_FAILURE);
        }
    };
    if loc.sop_class_uid.as_str() != class {
        return Some(Status::CLASS_INSTANCE_CONFLICT);
    }
    match svc.store().digest(&loc.object_key).await {
        Ok((digest, size)) if digest == loc.sha256 && size == loc.size => None,
        Ok(_) => {
            tracing::error!(sop = %instance, "stored object does not match its recorded SHA-256");
            Some(Status::PROCESSING_FAILURE)
        }
        Err(e) => {
            tracing::error!(sop = %instance, error = %e, "committed instance unreadable");
            Some(Status::PROCESSING_FAILURE)
        }
    }
}

/// An item of a Referenced SOP Sequence or, with a failure reason, a Failed SOP Sequence.
pub(super) fn item(class: &str, instance: &str, reason: Option<Status>) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    o.put(DataElement::new(
        tags::REFERENCED_SOP_CLASS_UID,
        VR::UI,
        PrimitiveValue::from(class),
    ));
    o.put(DataElement::new(
        tags::REFERENCED_SOP_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from(instance),
    ));
    if let Some(r) = reason {
        o.put(DataElement::new(
            tags::FAILURE_REASON,
            VR::US,
            PrimitiveValue::from(r.0),
        ));
    }
    o
}

/// The N-EVENT-REPORT event information: Event Type ID and encoded data set.
fn event_information(
    request: &Request,
    results: &[Verdict],
    ae_title: &AeTitle,
    ts: &str,
) -> Option<(u16, Vec<u8>)> {
    let committed: Vec<_> = results
        .iter()
        .filter(|r| r.2.is_none())
        .map(|(c, i, _)| item(c, i, None))
        .collect();
    let failed: Vec<_> = results
        .iter()
        .filter(|r| r.2.is_some())
        .map(|(c, i, r)| item(c, i, *r))
        .collect();
    let event_type = if failed.is_empty() { 1 } else { 2 };
    let mut obj = InMemDicomObject::new_empty();
    obj.put(DataElement::new(
        tags::TRANSACTION_UID,
        VR::UI,
        PrimitiveValue::from(request.transaction_uid.as_str()),
    ));
    obj.put(DataElement::new(
        tags::RETRIEVE_AE_TITLE,
        VR::AE,
        PrimitiveValue::from(ae_title.as_str()),
    ));
    if !committed.is_empty() {
        obj.put(DataElement::new(
            tags::REFERENCED_SOP_SEQUENCE,
            VR::SQ,
            DataSetSequence::new(committed, Length::UNDEFINED),
        ));
    }
    if !failed.is_empty() {
        obj.put(DataElement::new(
            tags::FAILED_SOP_SEQUENCE,
            VR::SQ,
            DataSetSequence::new(failed, Length::UNDEFINED),
        ));
    }
    let ts = TransferSyntaxRegistry.get(ts)?;
    let mut bytes = Vec::new();
    obj.write_dataset_with_ts(&mut bytes, ts).ok()?;
    Some((event_type, bytes))
}

/// Verify, then report: on the same association if it is still open, else on a new one.
pub async fn report(
    svc: Arc<Context>,
    writer: Arc<Writer>,
    context: u8,
    ts: String,
    requester_ae: AeTitle,
    request: Request,
) {
    let results = check(&svc, &request).await;
    let committed = results.iter().filter(|r| r.2.is_none()).count();
    tracing::info!(
        transaction = %request.transaction_uid,
        committed,
        failed = results.len() - committed,
        "storage commitment checked"
    );
    let ae = &svc.config.dimse.ae_title;
    if writer.is_open() {
        if let Some((event, data)) = event_information(&request, &results, ae, &ts) {
            if send(&writer, context, event, data).await {
                return;
            }
        }
    }
    call_back(&svc, &requester_ae, &request, &results).await;
}

/// The requester's association is gone: report on a new association to it, as the
/// N-EVENT-REPORT's SCU (the SCP role of storage commitment for us).
async fn call_back(svc: &Context, requester_ae: &AeTitle, request: &Request, results: &[Verdict]) {
    let Some(dest) = svc.config.dimse.destination(requester_ae) else {
        tracing::warn!(ae = %requester_ae, "storage commitment result not delivered: the requester is not in dimse.destinations");
        return;
    };
    let proposal = Proposal {
        abstract_syntax: STORAGE_COMMITMENT.to_owned(),
        transfer_syntaxes: vec![
            TransferSyntax::EXPLICIT_VR_LE.to_owned(),
            TransferSyntax::IMPLICIT_VR_LE.to_owned(),
        ],
    };
    let ae = &svc.config.dimse.ae_title;
    let peer = match scu::connect(dest, ae, &[proposal], &[STORAGE_COMMITMENT]).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "storage commitment result not delivered");
            return;
        }
    };
    let context = peer
        .contexts
        .iter()
        .find(|c| c.abstract_syntax == STORAGE_COMMITMENT);
    let delivered = match context {
        Some(c) => match event_information(request, results, ae, c.transfer_syntax.as_str()) {
            Some((event, data)) => send(&peer.writer, c.id, event, data).await,
            None => false,
        },
        None => false,
    };
    if !delivered {
        tracing::warn!(ae = %requester_ae, "storage commitment result not accepted by the requester");
    }
    peer.release().await;
}

async fn send(writer: &Writer, context: u8, event: u16, data: Vec<u8>) -> bool {
    let id = writer.next_message_id();
    let rq =
        command::event_report_request(id, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE, event);
    match writer
        .request(context, id, &rq, Some(DataSet::Bytes(data)))
        .await
    {
        Ok(rsp)
            if rsp.field == field::N_EVENT_REPORT_RSP && rsp.status == Some(Status::SUCCESS) =>
        {
            true
        }
        Ok(rsp) if rsp.field == field::N_EVENT_REPORT_RSP => {
            tracing::info!(status = ?rsp.status, "N-EVENT-REPORT refused on this association");
            false
        }
        Ok(_) => false,
        Err(e) => {
            tracing::info!(error = %e, "N-EVENT-REPORT not delivered on this association");
            false
        }
    }
}
